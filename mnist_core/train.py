"""The training loop. Metrics leave it through one callback as plain dict records.

Records (all numbers are plain floats/ints):
  {"kind": "batch", "epoch", "batch", "batches", "step", "loss", "acc", "images_per_s"}
  {"kind": "epoch", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
   "test_correct", "test_total", "lr", "seconds", "elapsed", "images_per_s"}
  {"kind": "stopped", "epoch", "batch", "step"}
The loop knows nothing about files, charts or processes: checkpoints leave through `checkpoint`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnist_core.config import EVAL_BATCH, ConfigError, ModelConfig, TrainConfig
from mnist_core.data import MNIST, normalize, training_batch
from mnist_core.model import Net, build_model
from mnist_core.checkpoint import load_checkpoint
from mnist_core.handwriting import load as load_handwriting

Callback = Callable[[dict], None]
# checkpoint(model, record, is_best): called after every epoch and once on a stop
Checkpoint = Callable[[Net, dict, bool], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available: choose cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps was requested but Apple's MPS backend is not available: choose cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is unknown: choose one of auto, cpu, cuda, mps")
    return torch.device(name)


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 convolutions are faster than float32 here: a CUDA GPU that supports them, or
    a CPU with AMX or AVX-512 BF16. Elsewhere autocast to bf16 is emulated, and about 3x slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # not Linux: fp32, the safe choice
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and fast_bf16(device))


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The layout the recipe keeps models and batches in (channels-last: NHWC)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def check_can_train(cfg: TrainConfig, train_size: int = 60000) -> None:
    """Refuse, before anything is written, settings that cannot train here: an unavailable
    device, a validation split that leaves nothing to train on, or a batch larger than the training
    set (train_size images unless limit_train, less the validation split)."""
    resolve_device(cfg.device)
    size = min(cfg.limit_train or train_size, train_size)
    if cfg.val_split >= size:
        raise ConfigError(f"val-split {cfg.val_split} leaves no training images of {size}")
    size -= cfg.val_split
    if cfg.batch_size > size:
        raise ConfigError(f"batch-size {cfg.batch_size} is larger than the training set ({size} images)")


@dataclass
class Scores:
    """A model's outputs on a set of images, with the labels when they were given."""

    logits: torch.Tensor  # (N, 10) float32, on the model's device
    labels: torch.Tensor | None = None  # (N,)

    def probs(self) -> torch.Tensor:
        return F.softmax(self.logits, dim=1)

    @property
    def correct(self) -> int:
        return int((self.logits.argmax(1) == self.labels).sum().item())

    @property
    def acc(self) -> float:
        """Accuracy in %."""
        return 100.0 * self.correct / max(len(self.logits), 1)

    @property
    def loss(self) -> float:
        """Mean cross-entropy."""
        return F.cross_entropy(self.logits, self.labels, reduction="sum").item() / max(len(self.logits), 1)


@torch.no_grad()
def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = EVAL_BATCH) -> Scores:
    """The model's logits for images x, uint8 (N, 28, 28) as stored or float (N, 1, 28, 28) already
    normalised, in batches and in eval mode (the model's mode is restored). The one evaluation:
    the training's test pass, the Runs page's confusion matrix and the Draw page's reading."""
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)
    device = first.device if first is not None else x.device
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        out.append(model(normalize(xb) if xb.dtype == torch.uint8 else xb).float())
    model.train(was_training)
    logits = torch.cat(out) if out else torch.zeros((0, 10), device=device)
    return Scores(logits, None if y is None else y.to(device))


def make_optimizer(model: Net, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


class Schedule:
    """The learning-rate schedule of a recipe, stepped as each kind needs: OneCycle and cosine after
    every batch, step and multistep after every epoch, plateau after every epoch on the test loss."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        S = torch.optim.lr_scheduler
        kind, total = cfg.scheduler, cfg.epochs * steps_per_epoch
        self.per_batch = kind in ("onecycle", "cosine")
        self.on_loss = kind == "plateau"
        if kind == "step":
            self.sched = S.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        elif kind == "multistep":
            self.sched = S.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
        elif kind == "onecycle":
            self.sched = S.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup_pct,
                                      div_factor=10, final_div_factor=cfg.final_div)
        elif kind == "cosine":
            warm = cfg.warmup_epochs * steps_per_epoch
            cosine = S.CosineAnnealingLR(opt, T_max=total - warm)
            self.sched = cosine if not warm else S.SequentialLR(
                opt, [S.LinearLR(opt, start_factor=0.1, total_iters=warm), cosine], milestones=[warm])
        elif kind == "plateau":
            self.sched = S.ReduceLROnPlateau(opt, mode="min", factor=cfg.gamma, patience=cfg.patience)
        else:
            self.sched = None

    def after_batch(self) -> None:
        if self.sched is not None and self.per_batch:
            self.sched.step()

    def after_epoch(self, test_loss: float) -> None:
        if self.sched is None or self.per_batch:
            return
        if self.on_loss:
            self.sched.step(test_loss)
        else:
            self.sched.step()


@dataclass
class TrainResult:
    model: Net
    epochs_done: int
    stopped: bool
    best_test_acc: float  # the test accuracy of the best epoch: chosen on validation when there is a split
    best_epoch: int


def initial_model(model_cfg: ModelConfig, checkpoint: str | None) -> Net:
    """A fresh model, or the weights of `checkpoint`, which must be of the same architecture."""
    if not checkpoint:
        return build_model(model_cfg)
    model, meta = load_checkpoint(Path(checkpoint))
    if meta["model_config"] != model_cfg:
        raise ConfigError(f"{checkpoint}: its architecture ({meta['model_config'].describe()}) "
                          f"differs from the run's ({model_cfg.describe()})")
    return model.train()


def with_handwriting(data: MNIST, folder: str, repeat: int) -> MNIST:
    """data with the user's drawings appended `repeat` times to the training split."""
    x, y = load_handwriting(Path(folder))
    if len(x) == 0:
        raise ConfigError(f"{folder}: no saved drawings to train on")
    return MNIST(
        torch.cat([data.train_x, x.repeat(repeat, 1, 1)]), torch.cat([data.train_y, y.repeat(repeat)]),
        data.test_x, data.test_y,
    )


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: MNIST,
    callback: Callback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Checkpoint | None = None,
    model: Net | None = None,
) -> TrainResult:
    """Train a model for cfg.epochs on data (already limited/moved as wanted)."""
    callback = callback or (lambda record: None)
    should_stop = should_stop or (lambda: False)
    device = resolve_device(cfg.device)
    data = data.limit(cfg.limit_train, cfg.limit_test)
    val_x = val_y = None
    if cfg.val_split:
        if cfg.val_split >= len(data.train_x):
            raise ConfigError(f"val-split {cfg.val_split} leaves no training images of {len(data.train_x)}")
        data, val_x, val_y = data.hold_out(cfg.val_split)
        val_x, val_y = val_x.to(device), val_y.to(device)
    if cfg.handwriting:
        data = with_handwriting(data, cfg.handwriting, cfg.handwriting_repeat)
    if cfg.batch_size > len(data.train_x):
        raise ConfigError(f"batch-size {cfg.batch_size} is larger than the training set ({len(data.train_x)} images)")
    data = data.to(device)

    torch.manual_seed(cfg.seed)  # weight init
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # shuffling and augmentation
    if model is None:
        model = initial_model(model_cfg, cfg.init_checkpoint)
    model = model.to(device, memory_format=memory_format(cfg))
    n = len(data.train_x)
    batches = math.ceil(n / cfg.batch_size)
    opt = make_optimizer(model, cfg)
    schedule = Schedule(opt, cfg, batches)
    # With cfg.ema, a moving average of the weights and BatchNorm statistics is what is tested, saved
    # and returned; the optimizer keeps stepping the live weights.
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    tested = average.module if average is not None else model

    t_start = time.perf_counter()
    best_acc, best_epoch, best_test_acc = -1.0, 0, 0.0  # best_acc: on validation when there is a split
    first, last = cfg.start_epoch + 1, cfg.start_epoch + cfg.epochs  # a resumed run continues the numbering
    step = cfg.start_epoch * batches
    for epoch in range(first, last + 1):
        t0 = time.perf_counter()
        step, trained = train_epoch(model, opt, schedule, average, data, cfg, gen, epoch, step, callback, should_stop)
        if trained is None:  # stopped mid-epoch
            record = {"kind": "stopped", "epoch": epoch, "batch": step - (epoch - 1) * batches, "step": step}
            callback(record)
            if checkpoint:
                checkpoint(tested, record, False)
            return TrainResult(tested, epoch - first, True, best_test_acc, best_epoch)
        lr = opt.param_groups[0]["lr"]  # the rate of this epoch's last step
        train_seconds = time.perf_counter() - t0
        test = evaluate(tested, data.test_x, data.test_y, cfg.eval_batch_size)
        val = evaluate(tested, val_x, val_y, cfg.eval_batch_size) if val_x is not None else None
        chooser = val or test  # best.pt is chosen on validation when there is a split, else on test
        schedule.after_epoch(chooser.loss)
        record = {
            "kind": "epoch", "epoch": epoch, "epochs": last, **trained,
            "test_loss": test.loss, "test_acc": test.acc, "test_correct": test.correct, "test_total": len(data.test_x),
            **({"val_loss": val.loss, "val_acc": val.acc, "val_total": len(val_x)} if val else {}),
            "lr": lr, "seconds": time.perf_counter() - t0, "elapsed": time.perf_counter() - t_start,
            "images_per_s": n / train_seconds,
        }
        is_best = chooser.acc > best_acc
        if is_best:
            best_acc, best_epoch, best_test_acc = chooser.acc, epoch, test.acc
        callback(record)
        if checkpoint:
            checkpoint(tested, record, is_best)
    return TrainResult(tested, cfg.epochs, False, best_test_acc, best_epoch)


def training_step(model: Net, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                  bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a prepared batch as the recipe says: the batch in the recipe's memory
    layout, the forward pass (bf16 autocast when asked), cross-entropy with its label smoothing,
    backward, gradient clipping, the step. Returns (loss, logits (B, 10)). The training loop and the
    LR range test both step through it."""
    x = x.contiguous(memory_format=memory_format(cfg))
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x).float()  # (B, 10)
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    opt.step()
    return loss, logits


def train_epoch(model: Net, opt, schedule: Schedule, average, data: MNIST, cfg: TrainConfig, gen: torch.Generator,
                epoch: int, step: int, callback: Callback, should_stop: Callable[[], bool]) -> tuple[int, dict | None]:
    """One pass over the shuffled training set, a "batch" record per step. Returns the step count
    and {"train_loss", "train_acc"}, or None in its place when should_stop() said stop."""
    model.train()
    t0 = time.perf_counter()
    device = data.train_x.device
    n = len(data.train_x)
    batches = math.ceil(n / cfg.batch_size)
    bf16 = use_bf16(cfg.precision, device)  # autocast: convolutions in bfloat16 (AMX / AVX-512 BF16: about 1.9x)
    augmentation = cfg.augmentation()
    perm = torch.randperm(n, device=device, generator=gen)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for b in range(batches):
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        x = training_batch(data.train_x[idx], augmentation, gen)  # (B, 1, 28, 28)
        y = data.train_y[idx]  # (B,)
        loss, logits = training_step(model, opt, x, y, cfg, bf16)
        if average is not None:
            average.update_parameters(model)
        schedule.after_batch()
        step += 1
        seen += len(y)
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        # report: the one deliberate sync point per batch
        callback({"kind": "batch", "epoch": epoch, "batch": b + 1, "batches": batches, "step": step,
                  "loss": loss.item(), "acc": 100.0 * correct.item() / seen,
                  "images_per_s": seen / (time.perf_counter() - t0)})
        if should_stop():
            return step, None
    return step, {"train_loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen}

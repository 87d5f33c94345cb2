"""The training loop. Metrics leave it through one callback as plain dict records.

Records (all numbers are plain floats/ints):
  {"kind": "batch", "epoch", "batch", "batches", "step", "loss", "acc", "images_per_s"}
  {"kind": "epoch", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
   "test_correct", "test_total", "lr", "seconds", "elapsed", "images_per_s"}
  {"kind": "stopped", "epoch", "batch", "step"}
The loop knows nothing about files, charts or processes: checkpoints leave through `checkpoint`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnist_core.config import ConfigError, ModelConfig, TrainConfig
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


def check_can_train(cfg: TrainConfig, train_size: int = 60000) -> None:
    """Refuse, before anything is written, settings that cannot train here: an unavailable
    device, or a batch larger than the training set (train_size images unless limit_train)."""
    resolve_device(cfg.device)
    size = cfg.limit_train or train_size
    if cfg.batch_size > size:
        raise ConfigError(f"batch-size {cfg.batch_size} is larger than the training set ({size} images)")


@torch.no_grad()
def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> tuple[float, float, int]:
    """(mean loss, accuracy in %, correct count) on uint8 images x and labels y, in large batches."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        logits = model(normalize(x[start : start + batch_size]))
        yb = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(x), 1)
    c = int(correct.item())
    return loss_sum.item() / n, 100.0 * c / n, c


def make_optimizer(model: Net, cfg: TrainConfig, steps_per_epoch: int):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        per_batch = False
    elif cfg.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25,
            div_factor=10, final_div_factor=100,
        )
        per_batch = True
    else:
        sched, per_batch = None, False
    return opt, sched, per_batch


@dataclass
class TrainResult:
    model: Net
    epochs_done: int
    stopped: bool
    best_test_acc: float
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
    if cfg.handwriting:
        data = with_handwriting(data, cfg.handwriting, cfg.handwriting_repeat)
    if cfg.batch_size > len(data.train_x):
        raise ConfigError(f"batch-size {cfg.batch_size} is larger than the training set ({len(data.train_x)} images)")
    data = data.to(device)

    torch.manual_seed(cfg.seed)  # weight init
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # shuffling and augmentation
    if model is None:
        model = initial_model(model_cfg, cfg.init_checkpoint)
    model = model.to(device)
    n = len(data.train_x)
    batches = math.ceil(n / cfg.batch_size)
    # bf16 autocast: convolutions in bfloat16 (AMX / AVX-512 BF16 on recent CPUs: about 1.9x here)
    bf16 = cfg.precision == "bf16"
    opt, sched, sched_per_batch = make_optimizer(model, cfg, batches)
    # With cfg.ema, a moving average of the weights and BatchNorm statistics is what is tested, saved
    # and returned; the optimizer keeps stepping the live weights.
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    tested = average.module if average is not None else model

    t_start = time.perf_counter()
    step, best_acc, best_epoch = cfg.start_epoch * batches, -1.0, 0
    first, last = cfg.start_epoch + 1, cfg.start_epoch + cfg.epochs  # a resumed run continues the numbering
    for epoch in range(first, last + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        for b in range(batches):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = training_batch(data.train_x[idx], cfg.augment, gen)  # (B, 1, 28, 28)
            y = data.train_y[idx]  # (B,)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x).float()  # (B, 10)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update_parameters(model)
            if sched_per_batch:
                sched.step()
            step += 1
            seen += len(y)
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()

            # report: the one deliberate sync point per batch
            callback(
                {
                    "kind": "batch", "epoch": epoch, "batch": b + 1, "batches": batches, "step": step,
                    "loss": loss.item(), "acc": 100.0 * correct.item() / seen,
                    "images_per_s": seen / (time.perf_counter() - t0),
                }
            )
            if should_stop():
                record = {"kind": "stopped", "epoch": epoch, "batch": b + 1, "step": step}
                callback(record)
                if checkpoint:
                    checkpoint(tested, record, False)
                return TrainResult(tested, epoch - first, True, max(best_acc, 0.0), best_epoch)

        lr = opt.param_groups[0]["lr"]  # the rate of this epoch's last step
        if sched is not None and not sched_per_batch:
            sched.step()
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc, test_correct = evaluate(tested, data.test_x, data.test_y, cfg.eval_batch_size)
        record = {
            "kind": "epoch", "epoch": epoch, "epochs": last,
            "train_loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen,
            "test_loss": test_loss, "test_acc": test_acc,
            "test_correct": test_correct, "test_total": len(data.test_x),
            "lr": lr, "seconds": time.perf_counter() - t0, "elapsed": time.perf_counter() - t_start,
            "images_per_s": seen / train_seconds,
        }
        is_best = test_acc > best_acc
        if is_best:
            best_acc, best_epoch = test_acc, epoch
        callback(record)
        if checkpoint:
            checkpoint(tested, record, is_best)
    return TrainResult(tested, cfg.epochs, False, best_acc, best_epoch)

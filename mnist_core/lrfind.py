"""The learning-rate range test ("LR finder"): train briefly while raising the rate exponentially,
and read a good peak rate off the loss.

A fresh model of the chosen architecture is trained with the recipe's optimizer, augmentation,
label smoothing and clipping for `steps` batches, the rate growing from `start` to `end` by the
same factor every step (Smith, "Cyclical Learning Rates", 2017). The test stops early once an
exponential average of the loss is four times its best (the rate is far too high). Nothing is
written: no run, no checkpoint.

The suggestion's rule: the rate where the loss, smoothed by a centred moving average (no lag),
falls fastest against log(rate), looking only before its minimum (past it the rate is already
too high). When the minimum is at the very end, the loss was still falling: there is no
suggestion, only the advice to raise the end rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from mnist_core.config import ConfigError, ModelConfig, TrainConfig
from mnist_core.data import MNIST, training_batch
from mnist_core.model import build_model
from mnist_core.train import make_optimizer, memory_format, resolve_device, training_step, use_bf16

RULE = "the rate where the smoothed loss falls fastest against log(rate), before the loss's minimum"
SMOOTHING = 0.98  # the early stop's exponential average: its weight of the past


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # each batch's loss
    smoothed: list[float]  # centred moving average of the losses
    suggestion: float | None  # None when there is none: see `why`
    why: str  # how the suggestion was found, or why there is none
    rule: str = RULE


def smooth(losses) -> np.ndarray:
    """Centred moving average over a window of about a tenth of the points (odd, at least 5):
    no lag, so the fall is read where it happens; shorter windows at the ends."""
    y = np.asarray(losses, float)
    half = max(2, len(y) // 20)
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(len(y))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(y))
    return (c[hi] - c[lo]) / (hi - lo)


def suggest(lrs, smoothed) -> tuple[float | None, str]:
    """(rate, how) at the steepest fall of the smoothed loss per unit of log(rate), before its
    minimum; (None, why) when the loss never fell or was still falling at the end."""
    lrs, smoothed = np.asarray(lrs, float), np.asarray(smoothed, float)
    if len(lrs) < 5:
        return None, "too few steps to read a slope"
    low = int(np.argmin(smoothed))
    if low >= len(lrs) - max(2, len(lrs) // 20):
        return None, (f"the loss was still falling at the last rate ({lrs[-1]:.3g}): raise the end rate "
                      "until it turns up")
    slope = np.gradient(smoothed[: low + 1], np.log(lrs[: low + 1])) if low >= 2 else np.zeros(1)
    i = int(np.argmin(slope))
    if slope[i] >= 0:
        return None, "the loss did not fall over this range: try higher rates or more steps"
    return float(lrs[i]), (f"{RULE}; the loss is lowest at {lrs[low]:.3g}")


def check_range(start: float, end: float, steps: int) -> None:
    if not 0 < start < end <= 100:
        raise ConfigError(f"the range test's rates must satisfy 0 < start < end <= 100, got {start:g} to {end:g}")
    if not 10 <= steps <= 5000:
        raise ConfigError(f"the range test takes between 10 and 5000 steps, got {steps}")


def range_test(model_cfg: ModelConfig, cfg: TrainConfig, data: MNIST, start: float = 1e-5, end: float = 10.0,
               steps: int = 200, progress: Callable[[int, int], None] | None = None) -> RangeTest:
    """Train a fresh model for at most `steps` batches at rates from `start` to `end`."""
    check_range(start, end, steps)
    device = resolve_device(cfg.device)
    data = data.limit(cfg.limit_train, None)
    if cfg.batch_size > len(data.train_x):
        raise ConfigError(f"batch-size {cfg.batch_size} is larger than the training set ({len(data.train_x)} images)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device, memory_format=memory_format(cfg)).train()
    opt = make_optimizer(model, replace(cfg, lr=start))
    factor = (end / start) ** (1 / (steps - 1))
    augmentation = cfg.augmentation()
    bf16 = use_bf16(cfg.precision, device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    lrs, losses, avg, best = [], [], 0.0, math.inf
    perm = torch.randperm(len(train_x), device=device, generator=gen)
    pos = 0
    for i in range(steps):
        if pos + cfg.batch_size > len(perm):
            perm, pos = torch.randperm(len(train_x), device=device, generator=gen), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        lr = start * factor**i
        for group in opt.param_groups:
            group["lr"] = lr
        loss, _ = training_step(model, opt, training_batch(train_x[idx], augmentation, gen), train_y[idx], cfg, bf16)
        value = loss.item()
        if not math.isfinite(value):
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        s = avg / (1 - SMOOTHING ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        if progress:
            progress(i + 1, steps)
        best = min(best, s)
        if i > 10 and s > 4 * best:
            break
    smoothed = smooth(losses)
    return RangeTest(lrs, losses, smoothed.tolist(), *suggest(lrs, smoothed))

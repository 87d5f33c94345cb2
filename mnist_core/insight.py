"""Looking inside a trained model: test-set confusion, feature maps, filters, saliency, cost.

Everything here is plain torch/numpy on a model and a tensor; the pages only draw the results.
The test-set evaluation of a checkpoint is cached on disk next to it, keyed by the checkpoint's
SHA-256, so it is computed once per checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnist_core.checkpoint import MAX_CHECKPOINT_BYTES, inspect_archive
from mnist_core.files import atomic_write_bytes, read_bytes
from mnist_core.model import Net
from mnist_core.model import summary
from mnist_core.train import evaluate

CACHE_FORMAT = "mnist-lab-eval/2"  # /2: probabilities kept in float32, so predictions match the training's own test


@dataclass
class Evaluation:
    probs: np.ndarray  # (N, 10) float32 softmax probabilities on the test set
    labels: np.ndarray  # (N,) int64

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean() * 100)

    def confusion(self) -> np.ndarray:
        """(10, 10) counts: row = true digit, column = predicted digit."""
        m = np.zeros((10, 10), np.int64)
        np.add.at(m, (self.labels, self.predicted), 1)
        return m

    def per_class_accuracy(self) -> np.ndarray:
        m = self.confusion()
        return 100 * np.diag(m) / np.maximum(m.sum(1), 1)

    def cell(self, true: int, predicted: int) -> np.ndarray:
        """Indices of the test images of one confusion-matrix cell, most confident first."""
        idx = np.flatnonzero((self.labels == true) & (self.predicted == predicted))
        return idx[np.argsort(-self.probs[idx, predicted])]


def evaluate_probs(model: Net, x: torch.Tensor) -> np.ndarray:
    """(N, 10) float32 probabilities for uint8 images x (N, 28, 28)."""
    return evaluate(model, x).probs().cpu().numpy().astype(np.float32)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(read_bytes(path, MAX_CHECKPOINT_BYTES)).hexdigest()


def _read_cache(cache: Path, digest: str, test_y: torch.Tensor) -> Evaluation | None:
    """The cached evaluation when it is ours, of this checkpoint and of this test set; else None.
    The file is input like any in a run folder: it is inspected before loading, and its labels
    must be the test set's and its probabilities (N, 10) and finite."""
    try:
        data = read_bytes(cache, 4 * 1024 * 1024, follow_links=False)
        inspect_archive(data, str(cache))
        c = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        probs, labels = c["probs"], c["labels"]
        if (c.get("format") != CACHE_FORMAT or c.get("checkpoint_sha256") != digest
                or not isinstance(probs, torch.Tensor) or not isinstance(labels, torch.Tensor)
                or not torch.equal(labels, test_y) or probs.shape != (len(test_y), 10)
                or not torch.isfinite(probs).all()):
            return None
        return Evaluation(probs.float().numpy(), labels.numpy())
    except Exception:  # missing, stale, damaged or forged: whatever torch raises for it, compute again
        return None


def cached_evaluation(checkpoint: Path, model: Net, test_x: torch.Tensor, test_y: torch.Tensor) -> Evaluation:
    """The test-set evaluation of a checkpoint, from `<checkpoint>.eval` when it matches the file."""
    checkpoint = Path(checkpoint)
    cache = checkpoint.with_suffix(checkpoint.suffix + ".eval")
    digest = file_sha256(checkpoint)
    ev = _read_cache(cache, digest, test_y)
    if ev is not None:
        return ev
    ev = Evaluation(evaluate_probs(model, test_x), test_y.numpy())
    buf = io.BytesIO()
    torch.save(
        {"format": CACHE_FORMAT, "checkpoint_sha256": digest,
         "probs": torch.from_numpy(ev.probs), "labels": torch.from_numpy(ev.labels)},
        buf,
    )
    try:
        atomic_write_bytes(cache, buf.getvalue())
    except OSError:
        pass  # read-only location (e.g. an installed bundled model): the result is still returned
    return ev


@torch.no_grad()
def feature_maps(model: Net, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """(label, (C, H, W) activations) at the end of each group of layers that still has a map: a
    conv with its BN / ReLU / dropout / residual add, or a pooling layer."""
    model.eval()
    rows = model.config.rows
    out = []
    for i, (row, h) in enumerate(zip(rows, model.outputs(x))):
        nxt = rows[i + 1].layer.type if i + 1 < len(rows) else None
        if row.flat or row.out_size < 2 or nxt in ("bn", "relu", "dropout", "add"):
            continue  # the group goes on (a residual add is part of its block), or the map is gone
        first = next(r for r in reversed(rows[: i + 1]) if r.layer.type not in ("bn", "relu", "dropout", "add"))
        label = f"layer {first.index} {first.layer.type}: {row.out_channels} channels, {row.out_size}x{row.out_size}"
        out.append((label, h[0].cpu().numpy()))
    return out


def first_filters(model: Net) -> np.ndarray | None:
    """(C, k, k) weights of the first convolution, on the input image's one channel; None for a
    model without one (a linear layer straight on the pixels)."""
    conv = next((m for m in model if isinstance(m, torch.nn.Conv2d)), None)
    return None if conv is None else conv.weight.detach().cpu()[:, 0].numpy()


def saliency(model: Net, x: torch.Tensor, target: int | None = None) -> tuple[np.ndarray, int]:
    """(|d logit / d input| as (28, 28) scaled to 0..1, the class it explains)."""
    model.eval()
    x = x.clone().requires_grad_(True)
    logits = model(x)
    target = int(logits.argmax(1)) if target is None else target
    logits[0, target].backward()
    g = x.grad[0, 0].abs()
    return (g / g.max().clamp(min=1e-12)).numpy(), target


def tile(maps: np.ndarray, cols: int | None = None, pad: int = 1, scale_each: bool = True,
         fill: float = 1.0) -> np.ndarray:
    """(C, H, W) -> one image with the channels in a grid, `fill` between them: each scaled to 0..1
    for st.image, or (scale_each=False) the values as they are."""
    c, h, w = maps.shape
    cols = cols or min(c, 8)
    rows = -(-c // cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), fill, np.float32)
    for i in range(c):
        m = maps[i].astype(np.float32)
        if scale_each:
            lo, hi = m.min(), m.max()
            m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        r, k = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = m
    return out


def inference_ms(model: Net, repeat: int = 50, budget_ms: float | None = None) -> float:
    """Wall time of one single-image forward pass, in ms: the fastest of `repeat` passes after a
    warm-up, or of fewer (three at least) once `budget_ms` of measuring is spent. The fastest, not
    the median: in the app the server's other threads take the interpreter between passes (a page
    being sent, another session's rerun) and a median of such passes read 3-100 ms for a model that
    runs in 0.2 ms."""
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    with torch.no_grad():
        model(x)
        samples = []
        start = time.perf_counter()
        for _ in range(repeat):
            t = time.perf_counter()
            model(x)
            samples.append((time.perf_counter() - t) * 1000)
            if budget_ms is not None and len(samples) >= 3 and (time.perf_counter() - start) * 1000 > budget_ms:
                break
    return min(samples)


def macs(cfg) -> int:
    """Multiply-adds per image, as torchinfo counts them."""
    return int(summary(cfg).total_mult_adds)

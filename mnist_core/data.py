"""MNIST on disk -> uint8 tensors in memory, and batched augmentation on the training device.

The project carries its own copy of MNIST in ``data/mnist`` (gzip IDX files with SHA-256 sums).
Every load checks the sums, decompresses once into ``data/mnist/MNIST/raw`` and reads the IDX
files with torchvision's own MNIST reader. The whole split then sits in memory as one uint8
tensor; the training loop slices batches out of it by index, so there is no per-image Python.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

DATA_DIR = Path(os.environ.get("MNIST_LAB_DATA", Path(__file__).resolve().parent.parent / "data" / "mnist"))
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MEAN, STD = 0.1307, 0.3081  # training-set pixel statistics (see data/mnist/README.md)


class DataError(RuntimeError):
    """MNIST is missing or fails its checksum; the message names the file."""


VAL_SEED = 20250101  # the validation split's fixed choice


@dataclass
class MNIST:
    train_x: torch.Tensor  # (60000, 28, 28) uint8
    train_y: torch.Tensor  # (60000,) int64
    test_x: torch.Tensor  # (10000, 28, 28) uint8
    test_y: torch.Tensor  # (10000,) int64

    def to(self, device) -> "MNIST":
        return MNIST(*(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))

    def limit(self, train: int | None = None, test: int | None = None) -> "MNIST":
        """The first `train` training and `test` test images (all of a split when None)."""
        return MNIST(self.train_x[:train], self.train_y[:train], self.test_x[:test], self.test_y[:test])

    def hold_out(self, n: int) -> tuple["MNIST", torch.Tensor, torch.Tensor]:
        """(the data without n training images, their images, their labels). The n are a fixed
        choice (seed VAL_SEED), the same for every run and every seed, so a group of seeds is
        validated on one set."""
        perm = torch.randperm(len(self.train_x), generator=torch.Generator().manual_seed(VAL_SEED))
        keep, held = perm[n:].sort().values, perm[:n].sort().values
        rest = MNIST(self.train_x[keep], self.train_y[keep], self.test_x, self.test_y)
        return rest, self.train_x[held], self.train_y[held]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sums(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: checksum list is missing") from None
    sums = {}
    for line in lines:
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


def verify(data_dir: Path = DATA_DIR) -> Path:
    """Check the carried MNIST files and make the decompressed copy; returns torchvision's root.

    Raises DataError naming the first file that is missing or does not match its SHA-256 sum.
    """
    data_dir = Path(data_dir)
    gz_sums = read_sums(data_dir / "SHA256SUMS")
    idx_sums = read_sums(data_dir / "SHA256SUMS.idx")
    raw_dir = data_dir / "MNIST" / "raw"
    for name in FILES:
        gz = data_dir / f"{name}.gz"
        if not gz.is_file():
            raise DataError(f"{gz}: MNIST file is missing (restore it with `git checkout -- data/mnist`)")
        if sha256(gz) != gz_sums[f"{name}.gz"]:
            raise DataError(f"{gz}: SHA-256 checksum does not match; the file is corrupted, refusing to use it")
        raw = raw_dir / name
        if raw.is_file() and sha256(raw) == idx_sums[name]:
            continue
        _decompress(gz, raw, idx_sums[name])
    return data_dir


def _decompress(gz: Path, raw: Path, expected: str) -> None:
    raw.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=raw.parent, prefix=f".{raw.name}.")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(gz, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        if sha256(Path(tmp)) != expected:
            raise DataError(f"{gz}: decompresses to data that fails its SHA-256 checksum")
        os.replace(tmp, raw)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_mnist(data_dir: Path = DATA_DIR, download: bool = False) -> MNIST:
    """Both splits as in-memory tensors, read by torchvision.datasets.MNIST.

    With download=True and no carried copy, torchvision fetches MNIST into data_dir instead
    (torchvision checks those files against its own MD5 sums).
    """
    from torchvision.datasets import MNIST as TorchvisionMNIST  # heavy: imported only to read the IDX files

    data_dir = Path(data_dir)
    if download and not (data_dir / "SHA256SUMS").is_file():
        root = data_dir
    else:
        root = verify(data_dir)
    splits = [TorchvisionMNIST(str(root), train=t, download=download) for t in (True, False)]
    return MNIST(splits[0].data, splits[0].targets, splits[1].data, splits[1].targets)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) or float in [0, 1] -> normalised float (B, 1, 28, 28)."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return (x - MEAN) / STD


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, (B, C, h, w), align_corners=False) as two broadcast multiply-adds:
    the same sampling grid (B, h, w, 2), without the batched matrix product that made it cost as
    much as the sampling itself on a CPU."""
    xs = ((torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1).view(1, 1, w)
    ys = ((torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1).view(1, h, 1)
    t = theta.reshape(-1, 6, 1, 1)
    return torch.stack([t[:, 0] * xs + t[:, 1] * ys + t[:, 2], t[:, 3] * xs + t[:, 4] * ys + t[:, 5]], dim=-1)


def augment(x: torch.Tensor, rotate: float = 0.0, translate: float = 0.0, scale: float = 0.0, shear: float = 0.0,
            erase: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random augmentation per sample, for the whole batch at once, on x's device: no per-image Python.

    x: (B, 1, H, W) float in [0, 1] (ink on 0, so the zero padding is background).
    rotate: up to +- degrees; translate: up to +- pixels each way; scale: zoom within 1 +- scale;
    shear: up to +- degrees (horizontal); erase: the share of images in which one random square
    patch, a quarter to a half of the side, is set to background (cutout).
    The affine part draws its random numbers as the single `augment` strength always did, so a
    rotation of s with a shift of s/4 and a scale of s/100 repeats an old run exactly.
    """
    b, _, h, w = x.shape
    if rotate or translate or scale or shear:
        u = torch.rand(b, 4, device=x.device, generator=generator) * 2 - 1  # (B, 4) in [-1, 1]
        angle = u[:, 0] * math.radians(rotate)
        zoom = 1 + u[:, 1] * scale
        shift = u[:, 2:] * translate * (2 / w)  # pixels -> grid units of [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        rows = [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)]
        theta = torch.stack(rows, 1)  # (B, 2, 3): output grid -> input grid
        if shear:
            k = torch.tan((torch.rand(b, device=x.device, generator=generator) * 2 - 1) * math.radians(shear))
            theta = theta.clone()
            theta[:, 0, 1] = theta[:, 0, 1] + k * theta[:, 0, 0]  # x' = x + k y, applied before the rotation
            theta[:, 1, 1] = theta[:, 1, 1] + k * theta[:, 1, 0]
        grid = affine_grid(theta, h, w)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if erase:
        v = torch.rand(b, 4, device=x.device, generator=generator)  # (B, 4): erase?, side, centre x, centre y
        side = (0.25 + 0.25 * v[:, 1]) * w
        cx, cy = v[:, 2] * w, v[:, 3] * h
        xs = torch.arange(w, device=x.device).view(1, 1, w) + 0.5
        ys = torch.arange(h, device=x.device).view(1, h, 1) + 0.5
        patch = ((xs - cx.view(b, 1, 1)).abs() < side.view(b, 1, 1) / 2) & \
                ((ys - cy.view(b, 1, 1)).abs() < side.view(b, 1, 1) / 2)  # (B, H, W)
        patch &= (v[:, 0] < erase).view(b, 1, 1)
        x = x.masked_fill(patch.unsqueeze(1), 0.0)
    return x


def training_batch(x_uint8: torch.Tensor, augmentation: dict | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A training batch as the model sees it: (B, 28, 28) uint8 -> augmented, normalised (B, 1, 28, 28).
    augmentation: augment()'s keyword arguments (TrainConfig.augmentation())."""
    x = x_uint8.unsqueeze(1).float().div_(255)
    return normalize(augment(x, **(augmentation or {}), generator=generator))

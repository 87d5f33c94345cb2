"""The user's own labelled drawings: a small local set, saved as 28x28 PNGs in one folder per digit.

    handwriting/
      3/20261124-101500-1a2b.png   (the preprocessed 28x28 image the model saw, ink white on black)
      7/...
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnist_core.files import atomic_write_bytes, read_bytes

HANDWRITING_DIR = Path(os.environ.get("MNIST_LAB_HANDWRITING", Path(__file__).resolve().parent.parent / "handwriting"))


def save(image28: np.ndarray, label: int, folder: Path = HANDWRITING_DIR) -> Path:
    """Store a preprocessed drawing ((28, 28), 0..1) under its label; returns the file."""
    if not (isinstance(label, (int, np.integer)) and 0 <= int(label) <= 9):
        raise ValueError(f"label must be a digit 0-9, got {label!r}")
    a = np.asarray(image28, np.float32)
    if a.shape != (28, 28):
        raise ValueError(f"expected a 28x28 image, got shape {a.shape}")
    d = Path(folder) / str(int(label))
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}.png"
    buf = io.BytesIO()
    Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


MAX_FILE_BYTES = 256 * 1024  # a saved 28x28 PNG is under 1 KB


def load(folder: Path = HANDWRITING_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 28, 28) uint8, labels (N,) int64). The folder is input like a run folder: only
    regular files (no pipes, no links out), of a bounded size, that are 28x28 images are read; the
    size is checked in the image's header before any pixel is decoded, so a decompression bomb
    costs nothing. Anything else is skipped."""
    images, labels = [], []
    folder = Path(folder)
    for digit in range(10):
        for f in sorted((folder / str(digit)).glob("*.png")):
            try:
                data = read_bytes(f, MAX_FILE_BYTES, follow_links=False)
                with Image.open(io.BytesIO(data)) as im:
                    if im.size != (28, 28):
                        continue
                    a = np.asarray(im.convert("L"))
            except (OSError, ValueError, Image.DecompressionBombError):  # UnreadableFile is a ValueError
                continue
            images.append(a)
            labels.append(digit)
    if not images:
        return torch.zeros((0, 28, 28), dtype=torch.uint8), torch.zeros((0,), dtype=torch.long)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long)


def counts(folder: Path = HANDWRITING_DIR) -> dict[int, int]:
    return {d: len(list((Path(folder) / str(d)).glob("*.png"))) for d in range(10)}

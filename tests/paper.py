"""Digits on paper, as a phone or a scanner sees them: for the preprocessing tests and its figures."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CONDITIONS = ("white", "grey 200", "grey 225", "uneven light", "noisy grey", "noisy grey jpeg", "light on dark",
              "grey, light on dark")


def on_paper(digit28: np.ndarray, condition: str, seed: int = 0, size=(300, 400)) -> np.ndarray:
    """A (28, 28) uint8 MNIST digit (white ink on black) as a (H, W) uint8 picture of paper,
    the digit about 150 px tall, off-centre, in the given condition."""
    rng = np.random.default_rng(seed)
    h, w = size
    ink = np.asarray(Image.fromarray(digit28).resize((150, 150), Image.BILINEAR), np.float32) / 255.0
    field = np.zeros((h, w), np.float32)
    y, x = 60 + rng.integers(0, 60), 90 + rng.integers(0, 140)
    field[y : y + 150, x : x + 150] = ink
    light_on_dark = "light on dark" in condition
    paper = {"white": 250, "grey 200": 200, "grey 225": 225, "uneven light": 0, "noisy grey": 210,
             "noisy grey jpeg": 210, "light on dark": 20, "grey, light on dark": 70}[condition] / 255.0
    if condition == "uneven light":  # a lamp on one side: paper from 120 to 240
        paper = np.linspace(120, 240, w, dtype=np.float32)[None, :] / 255.0 * np.ones((h, 1), np.float32)
    pen = 0.12 if not light_on_dark else 0.92
    img = paper + (pen - paper) * field
    if "noisy" in condition:
        img = img + rng.normal(0, 0.04, img.shape)
    out = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if "jpeg" in condition:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=60)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return out


def blank_paper(kind: str, seed: int = 0, size=(300, 400)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = size
    if kind == "plain":
        img = np.full((h, w), 215 / 255.0)
    elif kind == "noise":
        img = 210 / 255.0 + rng.normal(0, 0.04, (h, w))
    else:  # "gradient": uneven light on empty paper
        img = np.linspace(120, 240, w)[None, :] / 255.0 * np.ones((h, 1))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)

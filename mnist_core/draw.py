"""Any digit image -> an MNIST-style 28x28 input, and the model's answer for it.

MNIST digits were made by cropping the ink, scaling it to fit a 20x20 box (keeping the aspect
ratio, with anti-aliasing), and placing that box in a 28x28 field so that the ink's centre of
mass sits at the centre. A drawing goes through the same steps, so a digit drawn small, thick,
thin or off-centre looks to the model like the digits it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnist_core.data import normalize

INK_THRESHOLD = 0.1  # ink level (0..1) that counts as drawn
MIN_EXTENT = 0.1  # the ink must span this share of the image's longer side: smaller is a dot, not a digit


class EmptyDrawing(ValueError):
    """The image holds no ink to read."""


class TooSmall(EmptyDrawing):
    """The ink is a dot or a speck: blown up to MNIST's 20 pixels it would read as anything."""


class ImageError(ValueError):
    """A file that cannot be read as an image."""


@dataclass
class Preprocessed:
    ink: np.ndarray  # (H, W) float 0..1, ink = 1, whatever the original colours
    box: tuple[int, int, int, int]  # top, bottom, left, right of the ink (exclusive ends)
    crop: np.ndarray  # the ink's bounding box, (h, w)
    fitted: np.ndarray  # scaled so the longer side is 20, (h', w')
    centred: np.ndarray  # 28x28, the fitted box at the geometric centre
    final: np.ndarray  # 28x28, shifted so the centre of mass is at the centre (what MNIST did)
    tensor: torch.Tensor  # (1, 1, 28, 28), normalised as in training


def to_ink(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) pixels -> (H, W) float ink in 0..1.

    Transparent images (a canvas): ink is the alpha channel. Opaque ones: the luminance, inverted
    when the background (the border's median) is light, so dark-on-light and light-on-dark agree.
    An opaque RGBA image of one colour is the Draw page's canvas (white strokes on black) either
    untouched or painted edge to edge: read as it is, so the painted one is all ink, not blank paper.
    """
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    a = a.astype(np.float32)
    if a.max(initial=0) > 1.0:
        a = a / 255.0
    if a.ndim == 3 and a.shape[2] == 4:
        alpha = a[..., 3]
        if alpha.min() < 0.99:  # some transparency: what was drawn is what is opaque, any colour
            return np.clip(alpha, 0, 1)
        a = a[..., :3]
        if np.ptp(a) < INK_THRESHOLD:
            return a @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32) if a.shape[2] == 3 else a[..., 0]
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return 1.0 - a if np.median(border) > 0.5 else a


def preprocess(image: np.ndarray) -> Preprocessed:
    ink = to_ink(image)
    mask = ink > INK_THRESHOLD
    if not mask.any():
        raise EmptyDrawing("the drawing is empty: draw a digit first")
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = ink[top:bottom, left:right]
    h, w = crop.shape
    if max(h, w) < MIN_EXTENT * max(ink.shape):
        raise TooSmall(f"the ink spans only {w}x{h} of {ink.shape[1]}x{ink.shape[0]} pixels, too small to read "
                       f"as a digit: draw it larger")
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    t = torch.from_numpy(np.ascontiguousarray(crop))[None, None]
    fitted = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=scale < 1, align_corners=False)[0, 0]
    fitted = (fitted / fitted.max().clamp(min=1e-6)).clamp(0, 1).numpy()  # full-strength ink, as MNIST's

    centred = np.zeros((28, 28), np.float32)
    oy, ox = (28 - nh) // 2, (28 - nw) // 2
    centred[oy : oy + nh, ox : ox + nw] = fitted

    # centre of mass of the fitted box -> placed at (14, 14), kept inside the field
    ys, xs = np.indices(fitted.shape)
    mass = fitted.sum()
    cy, cx = (ys * fitted).sum() / mass, (xs * fitted).sum() / mass
    py = int(np.clip(round(14 - cy - 0.5), 0, 28 - nh))
    px = int(np.clip(round(14 - cx - 0.5), 0, 28 - nw))
    final = np.zeros((28, 28), np.float32)
    final[py : py + nh, px : px + nw] = fitted

    tensor = normalize(torch.from_numpy(final)[None])  # (1, 1, 28, 28)
    return Preprocessed(ink, (int(top), int(bottom), int(left), int(right)), crop, fitted, centred, final, tensor)


def load_image(path: str | Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("L")
            return np.asarray(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__})") from None


@torch.no_grad()
def probabilities(model, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (B, 10) for normalised inputs (B, 1, 28, 28)."""
    model.eval()
    device = next(model.parameters()).device
    return F.softmax(model(x.to(device)), dim=1).cpu()


def predict(model, image: np.ndarray) -> tuple[int, np.ndarray, Preprocessed]:
    """(digit, probabilities (10,), the preprocessing steps) for one image."""
    pre = preprocess(image)
    p = probabilities(model, pre.tensor)[0].numpy()
    return int(p.argmax()), p, pre


def describe(p: np.ndarray, others: int = 2) -> str:
    """'7 (99.2%); then 1 (0.5%), 2 (0.1%)'."""
    order = np.argsort(-p)
    head = f"{order[0]} ({100 * p[order[0]]:.1f}%)"
    rest = ", ".join(f"{d} ({100 * p[d]:.1f}%)" for d in order[1 : 1 + others])
    return f"{head}; then {rest}"


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    shrink = h < img.shape[0] or w < img.shape[1]
    return F.interpolate(t, size=(h, w), mode="bilinear", antialias=shrink, align_corners=False)[0, 0].numpy()


def steps(pre: Preprocessed) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Each preprocessing stage as (caption, stage image, the 28x28 input it would give the model).

    Shows why each step matters: the raw canvas squeezed to 28x28, the crop stretched to fill it,
    the 20x20 fit at the geometric centre, and the final centre-of-mass placement.
    """
    def as_input(img):
        return np.clip(img / max(img.max(), 1e-6), 0, 1).astype(np.float32)

    return [
        ("raw canvas, squeezed to 28x28", pre.ink, as_input(_resize(pre.ink, 28, 28))),
        ("ink crop, stretched to 28x28", pre.crop, as_input(_resize(pre.crop, 28, 28))),
        ("fit in 20x20, geometric centre", pre.fitted, pre.centred),
        ("centre of mass at the centre (final)", pre.final, pre.final),
    ]


def step_predictions(model, pre: Preprocessed) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(caption, stage image, 28x28 input, probabilities) for every stage of `steps`."""
    stages = steps(pre)
    batch = normalize(torch.from_numpy(np.stack([s[2] for s in stages])))  # (4, 1, 28, 28)
    probs = probabilities(model, batch).numpy()
    return [(c, img, x, p) for (c, img, x), p in zip(stages, probs)]

"""Any digit image -> an MNIST-style 28x28 input, and the model's answer for it.

MNIST digits were made by cropping the ink, scaling it to fit a 20x20 box (keeping the aspect
ratio, with anti-aliasing), and placing that box in a 28x28 field so that the ink's centre of
mass sits at the centre. A drawing goes through the same steps, so a digit drawn small, thick,
thin or off-centre looks to the model like the digits it was trained on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
import torch.nn.functional as F

from mnist_core.data import normalize
from mnist_core.files import UnreadableFile, read_bytes
from mnist_core.train import evaluate

INK_THRESHOLD = 0.1  # ink level (0..1) that counts as drawn
INK_SIGMAS = 5.0  # paper: ink must stand this many robust standard deviations above the paper's noise
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

    Images with an alpha channel (the Draw page's canvas, a digit drawn with transparency): ink is
    what is opaque; an opaque one is the canvas itself (white strokes on black), read as it is.
    Everything else is a picture of paper (a scan, a phone photo): see `paper_ink`.
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
        grey = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        if np.ptp(grey) < INK_THRESHOLD:  # one colour: untouched, or painted edge to edge (all ink)
            return grey
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        return 1.0 - grey if np.median(border) > 0.5 else grey
    grey = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32) if a.ndim == 3 and a.shape[2] == 3 else \
        a.reshape(a.shape[0], a.shape[1])
    return paper_ink(grey)


def paper_ink(grey: np.ndarray) -> np.ndarray:
    """A grey picture of a digit on paper ((H, W), 0..1) -> (H, W) ink in 0..1, paper 0.

    The paper is whatever fills the border (light: the ink is dark; dark: the ink is light), at
    any level of grey. Uneven lighting is removed by subtracting the paper's own large-scale
    level (a morphological opening wider than a stroke erases the strokes and keeps the light).
    What remains counts as ink only where it stands out of the paper's noise: a threshold at
    Otsu's split, and never below the paper's median plus INK_SIGMAS robust standard deviations.
    Specks narrower than a stroke go; a picture with nothing standing out has no digit on it.
    """
    h, w = grey.shape
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ink = 1.0 - grey if np.median(border) > 0.5 else grey.copy()  # light paper: dark ink
    t = torch.from_numpy(np.ascontiguousarray(ink))[None, None]

    # the paper's level, everywhere: an opening (erosion, then dilation) with a window wider than
    # any stroke, at a reduced size for speed, smoothed and brought back to full size
    scale = min(1.0, 160.0 / max(h, w))
    small = F.interpolate(t, scale_factor=scale, mode="area") if scale < 1 else t
    k = max(3, int(max(small.shape[-2:]) * 0.15) | 1)  # strokes are a few % of the digit's height
    opened = F.max_pool2d(-F.max_pool2d(-small, k, 1, k // 2), k, 1, k // 2)
    paper = F.avg_pool2d(opened, k, 1, k // 2, count_include_pad=False)
    paper = F.interpolate(paper, size=(h, w), mode="bilinear", align_corners=False)
    flat = (t - paper).clamp(min=0)[0, 0].numpy()

    med = float(np.median(flat))
    sigma = 1.4826 * float(np.median(np.abs(flat - med))) + 1e-3  # robust spread of the paper
    threshold = max(_otsu(flat), med + INK_SIGMAS * sigma, med + INK_THRESHOLD)
    mask = keep = flat > threshold
    if mask.any():
        # drop specks: an opening of the mask at the scale of a thin stroke
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        r = max(1, int(round(max(h, w) * 0.004)))
        m = F.max_pool2d(-F.max_pool2d(-m, 2 * r + 1, 1, r), 2 * r + 1, 1, r)
        keep = F.max_pool2d(m, 4 * r + 1, 1, 2 * r)[0, 0].numpy() > 0  # the strokes and their soft edges
        mask = mask & keep
    if not mask.any():
        raise EmptyDrawing("the image is empty: no digit stands out of the paper")
    level = float(np.percentile(flat[mask], 90))  # full-strength ink
    floor = med + 0.5 * (threshold - med)  # soft edges between paper and ink, as a pen's are
    out = np.clip((flat - floor) / max(level - floor, 1e-6), 0, 1)
    return np.where(keep, out, 0).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in 0..1: the split that best separates two classes."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


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


MAX_IMAGE_BYTES = 50 * 1024 * 1024  # a phone photo is a few MB
MAX_PIXELS = 64_000_000  # 8000x8000; the size is read from the file's header, before any pixel is decoded


def load_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Pixels of an image file (a path, or the bytes of an upload named `name`), as (H, W) grey or
    (H, W, 4) RGBA when it has transparency. Only a regular file of at most MAX_IMAGE_BYTES is read,
    and an image of more than MAX_PIXELS is refused from its header: ImageError names the file."""
    name = name or str(source)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageError(f"{name}: {len(data) / 1e6:.0f} MB is too large for an image of a digit")
    else:
        try:
            data = read_bytes(source, MAX_IMAGE_BYTES)
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except UnreadableFile as e:
            raise ImageError(str(e)) from None
        except OSError as e:
            raise ImageError(f"{name}: cannot read it ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{name}: {w}x{h} pixels is more than the {MAX_PIXELS / 1e6:.0f} million "
                                     "an image of a digit needs; scale it down")
                im = ImageOps.exif_transpose(im)  # a phone photo, upright as its camera meant it
                if im.mode.startswith("I") or im.mode == "F":  # 16-bit or float scans: keep their levels
                    a = np.asarray(im, dtype=np.float32)
                    top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
                    return np.clip(a / top, 0, 1)
                im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("L")
                return np.asarray(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: its header claims more pixels than an image of a digit has; refusing it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: not a readable image ({type(e).__name__})") from None


def probabilities(model, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (B, 10) for normalised inputs (B, 1, 28, 28)."""
    return evaluate(model, x).probs().cpu()


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

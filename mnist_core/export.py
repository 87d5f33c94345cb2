"""A run for use outside the app: one archive with everything, and a TorchScript model."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import torch

from mnist_core.model import Net, summary_text
from mnist_core.runs import Run, load_checkpoint


def torchscript_bytes(model: Net) -> bytes:
    """The model traced to TorchScript: `torch.jit.load(f)(x)` gives logits (B, 10) for (B, 1, 28, 28)
    inputs normalised with mean 0.1307 and std 0.3081; no mnist-lab code needed to run it."""
    model = model.eval().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still the most portable
        traced = torch.jit.trace(model, torch.zeros(1, 1, 28, 28))
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def archive_bytes(run: Run, ckpt: Path | None = None) -> bytes:
    """A zip of the run: config (with seed), weights (ckpt, by default best.pt, else last.pt), TorchScript
    model, layer summary, metrics, card."""
    if ckpt is None:
        ckpt = run.path / "best.pt" if (run.path / "best.pt").exists() else run.path / "last.pt"
    model, meta = load_checkpoint(ckpt)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        cfg = run.config
        z.writestr(f"{run.name}/config.json", json.dumps(cfg, indent=2) + "\n")
        z.writestr(f"{run.name}/seed.txt", f"{cfg.get('train', {}).get('seed')}\n")
        z.writestr(f"{run.name}/{ckpt.name}", ckpt.read_bytes())
        z.writestr(f"{run.name}/model.torchscript.pt", torchscript_bytes(model))
        z.writestr(f"{run.name}/summary.txt", summary_text(meta["model_config"]) + "\n")
        for name in ("metrics.jsonl", "card.md", "status.json"):
            f = run.path / name
            if f.exists():
                z.writestr(f"{run.name}/{name}", f.read_bytes())
        z.writestr(
            f"{run.name}/README.txt",
            "mnist-lab run export\n\n"
            f"{ckpt.name}: load with mnist_core.runs.load_checkpoint (torch.load weights_only=True).\n"
            "model.torchscript.pt: torch.jit.load(path)(x) -> logits, x of shape (B, 1, 28, 28),\n"
            "  pixels in 0..1 normalised as (x - 0.1307) / 0.3081.\n",
        )
    return buf.getvalue()

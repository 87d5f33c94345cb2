"""A run for use outside the app: one archive with everything, and a TorchScript model."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import torch

from mnist_core.checkpoint import load_checkpoint
from mnist_core.files import UnreadableFile
from mnist_core.model import Net, summary_text
from mnist_core.runs import Run


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
    model, layer summary, metrics, card. Only the run's own regular files go in: a symbolic link (to
    a file outside the run, say), a pipe or a directory in their place is left out, and README.txt
    says so."""
    if ckpt is None:
        ckpt = run.path / "best.pt" if (run.path / "best.pt").exists() else run.path / "last.pt"
    model, meta = load_checkpoint(ckpt, follow_links=False)
    weights = run.read_file(ckpt.name)  # the file load_checkpoint just checked
    left_out = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        cfg = run.config
        z.writestr(f"{run.name}/config.json", json.dumps(cfg, indent=2) + "\n")
        z.writestr(f"{run.name}/seed.txt", f"{cfg.get('train', {}).get('seed')}\n")
        z.writestr(f"{run.name}/{ckpt.name}", weights)
        z.writestr(f"{run.name}/model.torchscript.pt", torchscript_bytes(model))
        z.writestr(f"{run.name}/summary.txt", summary_text(meta["model_config"]) + "\n")
        for name in ("metrics.jsonl", "card.md", "status.json"):
            try:
                data = run.read_file(name)
            except UnreadableFile as e:
                left_out.append(str(e).replace(str(run.path) + "/", ""))
                continue
            if data is not None:
                z.writestr(f"{run.name}/{name}", data)
        z.writestr(
            f"{run.name}/README.txt",
            "mnist-lab run export\n\n"
            f"{ckpt.name}: load with mnist_core.checkpoint.load_checkpoint (torch.load weights_only=True).\n"
            "model.torchscript.pt: torch.jit.load(path)(x) -> logits, x of shape (B, 1, 28, 28),\n"
            "  pixels in 0..1 normalised as (x - 0.1307) / 0.3081.\n"
            + "".join(f"left out: {reason}\n" for reason in left_out),
        )
    return buf.getvalue()


"""A run for use outside the app: one archive with everything, a TorchScript or ONNX model, and the
run as plain PyTorch code (codegen: a script or a notebook)."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import torch

from mnist_core import codegen
from mnist_core.checkpoint import CheckpointError, load_checkpoint
from mnist_core.config import ConfigError
from mnist_core.files import UnreadableFile
from mnist_core.model import Net, summary_text
from mnist_core.runs import Run, RunError


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


def onnx_bytes(model: Net) -> bytes:
    """The model through torch's ONNX exporter (dynamo), any batch size: input "image" (B, 1, 28, 28)
    normalised with mean 0.1307 and std 0.3081, output "logits" (B, 10)."""
    model = model.eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress notes
        program = torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), input_names=["image"],
                                    output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                    dynamo=True, verbose=False)
    buf = io.BytesIO()
    program.save(buf)
    return buf.getvalue()


def onnx_difference(data: bytes, model: Net, x: torch.Tensor) -> float:
    """The largest difference between ONNX Runtime's logits for the exported `data` and torch's, on x."""
    import onnxruntime  # heavy: only the ONNX check needs it

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (theirs,) = session.run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        ours = model.eval().cpu()(x).numpy()
    return float(abs(theirs - ours).max())


FORMATS = {  # --format: (file name ending, what it is)
    "script": (".py", "a standalone PyTorch script: the model as nn.Module code, the data, the recipe, the loop"),
    "notebook": (".ipynb", "the same as a Jupyter notebook, with the run's log and curves as its outputs"),
    "onnx": (".onnx", "the model for ONNX Runtime and other runtimes"),
    "torchscript": (".torchscript.pt", "the model traced to TorchScript"),
    "archive": (".zip", "config, weights, TorchScript model, layer table, metrics and card"),
}


def export_bytes(run: Run, fmt: str, ckpt: Path | None = None) -> bytes:
    """The run in format `fmt` (FORMATS). Raises CheckpointError when no checkpoint of the run loads
    (the model formats) and RunError when its settings cannot be read (the code formats)."""
    if fmt not in FORMATS:
        raise RunError(f"format {fmt!r} is unknown: choose one of {', '.join(FORMATS)}")
    if fmt in ("script", "notebook"):
        try:
            return (codegen.script_text(run) if fmt == "script" else codegen.notebook_json(run)).encode()
        except (ConfigError, KeyError) as e:
            raise RunError(f"run {run.name!r}: its config.json cannot be read as a model and a recipe ({e})") from None
    if fmt == "archive":
        return archive_bytes(run, ckpt or loadable_checkpoint(run))
    model, _ = load_checkpoint(ckpt or loadable_checkpoint(run), follow_links=False)
    return onnx_bytes(model) if fmt == "onnx" else torchscript_bytes(model)


def loadable_checkpoint(run: Run) -> Path:
    """best.pt, else last.pt: the first that loads; CheckpointError naming why neither does."""
    reasons = []
    for name in ("best.pt", "last.pt"):
        path = run.path / name
        if not path.exists():
            continue
        try:
            load_checkpoint(path, follow_links=False)
            return path
        except CheckpointError as e:
            reasons.append(str(e))
    raise CheckpointError(f"run {run.name!r} has no checkpoint that loads" + (f": {'; '.join(reasons)}" if reasons
                                                                               else " (no best.pt or last.pt)"))


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


"""Checkpoints: a dict of plain values and tensors, saved with torch.save, loaded with nothing trusted.

    {"format": "mnist-lab-checkpoint/1", "model_config": {"layers": [...]}, "state_dict": {...},
     "run": name, "epoch": n, "test_acc": x}

A checkpoint is a file users upload and share, so loading one is taking input. Before torch
unpickles anything, `inspect_archive` reads the zip's directory and walks its pickle with a
scanner that builds nothing: the members' unpacked sizes, the globals it names (only the few a
checkpoint of ours needs) and the size every tensor storage declares are all bounded. Then
torch.load(weights_only=True) loads it, the weights must fit the architecture the file names,
and the model must give finite outputs on a fixed input.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from pathlib import Path

import torch

from mnist_core.config import ConfigError, ModelConfig
from mnist_core.files import UnreadableFile, atomic_write_bytes, read_bytes
from mnist_core.model import Net, build_model

CHECKPOINT_FORMAT = "mnist-lab-checkpoint/1"
MAX_CHECKPOINT_BYTES = 20 * 1024 * 1024  # a model of this family is ~50 KB; anything this big is not ours
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "bundled.pt"

# What the pickle of a checkpoint of ours may name: tensors, their storages, OrderedDict.
_STORAGE_BYTES = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                  "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1}
_ALLOWED = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
            *(("torch", name) for name in _STORAGE_BYTES)}


class CheckpointError(ValueError):
    """A file that is not a loadable mnist-lab checkpoint; the message says why."""


def save_checkpoint(path: Path, model: Net, extra: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"format": CHECKPOINT_FORMAT, "model_config": model.config.to_dict(), "state_dict": state, **(extra or {})}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Looking inside a file before torch does


class _OrderedDict(dict):
    """Stands in for OrderedDict, attributes included (a state_dict carries `_metadata`)."""


class _Storage:
    def __init__(self, name: str):
        self.itemsize = _STORAGE_BYTES[name]


class _Scanner(pickle.Unpickler):
    """Runs a checkpoint's pickle with every callable replaced by an inert stand-in: it records the
    storages and tensor views the file declares and allocates nothing they ask for."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, tuple[int, int]] = {}  # key -> (elements, bytes per element)
        self.views: list[tuple[str, int, tuple, tuple]] = []  # (storage key, offset, size, stride)

    def find_class(self, module, name):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # protocol 2 writes Python 2's names
        if (module, name) not in _ALLOWED:
            raise CheckpointError(f"it names {module}.{name}, which no mnist-lab checkpoint holds "
                                  "(possibly code), so it is refused")
        if name in _STORAGE_BYTES:
            return _Storage(name)
        if name == "OrderedDict":
            return _OrderedDict
        return self._tensor

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements), as torch.save writes it
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage" or not isinstance(pid[1], _Storage)
                or not isinstance(pid[2], str) or not isinstance(pid[4], int) or pid[4] < 0):
            raise CheckpointError("its tensor storage records are not torch.save's")
        self.storages[pid[2]] = (pid[4], pid[1].itemsize)
        return pid[2]

    def _tensor(self, key, offset, size, stride, *rest):
        if (not isinstance(key, str) or not isinstance(offset, int) or not isinstance(size, tuple)
                or not isinstance(stride, tuple) or len(size) != len(stride)
                or not all(isinstance(v, int) for v in (*size, *stride))):
            raise CheckpointError("its tensor records are not torch.save's")
        self.views.append((key, offset, size, stride))
        return None


def inspect_archive(data: bytes, name: str, limit: int = MAX_CHECKPOINT_BYTES) -> None:
    """Refuse, before anything is unpickled, a file that would make the loader allocate more than
    `limit` bytes, name anything but tensors and containers, or that is not a checkpoint at all."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        members = {i.filename: i for i in z.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError):
        raise CheckpointError(f"{name}: not a PyTorch checkpoint (not a torch.save archive); refusing to load it")
    unpacked = sum(i.file_size for i in members.values())
    if unpacked > limit:
        raise CheckpointError(f"{name}: it unpacks to {unpacked / 1e6:.0f} MB, more than a checkpoint of this app "
                              f"({limit / 1e6:.0f} MB); refusing to load it")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in members):
        raise CheckpointError(f"{name}: this is a TorchScript export (a model.torchscript.pt), which runs with "
                              "torch.jit.load; the app loads a run's checkpoint, best.pt or last.pt")
    pkl = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise CheckpointError(f"{name}: cannot load checkpoint: the archive has no data.pkl, so torch.save did "
                              "not write it")
    prefix = pkl[0][: -len("data.pkl")]
    scanner = _Scanner(z.read(pkl[0]))
    try:
        scanner.load()
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from None
    except Exception as e:  # a malformed pickle: whatever pickle raises for it
        raise CheckpointError(f"{name}: cannot load checkpoint: its pickle is damaged ({type(e).__name__})") from None
    declared = 0
    for key, (numel, itemsize) in scanner.storages.items():
        member = members.get(f"{prefix}data/{key}")
        if member is None or member.file_size != numel * itemsize:
            raise CheckpointError(f"{name}: tensor storage {key!r} declares {numel * itemsize:,} bytes but the "
                                  f"archive holds {member.file_size if member else 0:,}; refusing to load it")
        declared += numel * itemsize
    if declared > limit:
        raise CheckpointError(f"{name}: its tensors declare {declared / 1e6:.0f} MB; refusing to load it")
    for key, offset, size, stride in scanner.views:
        numel = scanner.storages.get(key, (0, 0))[0]
        if any(s < 0 for s in size) or any(st < 0 for st in stride) or offset < 0 or (
                all(size) and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= numel):
            raise CheckpointError(f"{name}: a tensor reaches outside its storage; refusing to load it")


# ---------------------------------------------------------------------------------------------
# Loading

_PROBE = torch.linspace(-1.0, 3.0, 2 * 28 * 28).reshape(2, 1, 28, 28)  # fixed input: zeros are too kind


def load_checkpoint(path: Path | bytes, device: str = "cpu", follow_links: bool = True) -> tuple[Net, dict]:
    """(model in eval mode, checkpoint metadata). Never executes code from the file.

    `path` may also be the raw bytes of an uploaded file. Only a regular file is read (a pipe
    or a device is refused), and never more than MAX_CHECKPOINT_BYTES of it; a run's own
    checkpoints are read with follow_links=False, so a link out of the run folder is refused.
    """
    name = "uploaded file" if isinstance(path, (bytes, bytearray)) else str(path)
    if isinstance(path, (bytes, bytearray)):
        data = bytes(path)
    else:
        try:
            data = read_bytes(path, MAX_CHECKPOINT_BYTES, follow_links)
        except UnreadableFile as e:
            raise CheckpointError(str(e).replace("is more than the", "is too large: more than the")
                                  .replace("allowed", "allowed for a checkpoint of this app")) from None
        except OSError as e:
            raise CheckpointError(f"{name}: cannot read checkpoint ({e.strerror or e})") from None
    if not data:
        raise CheckpointError(f"{name}: file is empty, not a checkpoint")
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{name}: {len(data) / 1e6:.1f} MB is too large for a checkpoint of this app")
    inspect_archive(data, name)
    try:
        # weights_only: the unpickler accepts tensors and plain containers only, never code
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains Python objects other than weights (possibly code), so it is refused"
        raise CheckpointError(f"{name}: cannot load checkpoint: {reason[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name}: not an mnist-lab checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        model = build_model(cfg)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (ConfigError, KeyError, TypeError, RuntimeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:
            lines = lines[1:]  # torch's header; the first real reason follows it
        raise CheckpointError(f"{name}: weights do not fit the architecture it names: {lines[0][:200]}") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise CheckpointError(f"{name}: its weights contain NaN or infinite values (a training that diverged?)")
    model.eval()
    with torch.no_grad():
        out = model(_PROBE)
    if not torch.isfinite(out).all():
        raise CheckpointError(f"{name}: the model gives NaN or infinite outputs (broken weights or BatchNorm "
                              "statistics), so it is refused")
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["model_config"] = cfg
    return model.to(device), meta

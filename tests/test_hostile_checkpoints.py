"""Checkpoints built to hurt: memory bombs, forged storages, NaN-making statistics, special files,
TorchScript passed off as a checkpoint. Each is refused in one line, before it costs memory."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from mnist_core.checkpoint import BUNDLED_CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from mnist_core.config import ModelConfig, TrainConfig
from mnist_core.model import build_model

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def good_archive(tmp_path) -> bytes:
    path = tmp_path / "good.pt"
    save_checkpoint(path, build_model(ModelConfig()))
    return path.read_bytes()


def with_members(archive: bytes, replace: dict[str, bytes], deflate: set[str] = frozenset()) -> bytes:
    """The archive with some members replaced or added (names relative to its top folder)."""
    src = zipfile.ZipFile(io.BytesIO(archive))
    top = src.namelist()[0].split("/")[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel not in replace:
                z.writestr(info, src.read(info))
        for rel, data in replace.items():
            z.writestr(f"{top}/{rel}", data, zipfile.ZIP_DEFLATED if rel in deflate else zipfile.ZIP_STORED)
    return buf.getvalue()


class Call:
    """Pickles as a call of `fn(*args)` (what a hostile file can ask of any unpickler)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class StoragePickler(pickle.Pickler):
    """Writes persistent ids as torch.save does: ('storage', torch.FloatStorage, key, 'cpu', numel)."""

    def persistent_id(self, obj):
        if isinstance(obj, tuple) and obj and obj[0] == "STORAGE":
            return ("storage", torch.FloatStorage, obj[1], "cpu", obj[2])
        return None


def forged_pickle(obj) -> bytes:
    buf = io.BytesIO()
    StoragePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def peak_rss_growth_mb(path: Path) -> tuple[float, str]:
    """(growth of the peak resident memory of a fresh process that tries to load `path`, its error)."""
    code = (
        "import resource, sys\n"
        "from mnist_core.checkpoint import load_checkpoint, CheckpointError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load_checkpoint(sys.argv[1]); err = 'loaded'\n"
        "except CheckpointError as e:\n"
        "    err = str(e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
        "print(err)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    growth, err = p.stdout.strip().splitlines()
    print(f"FIGURE peak_rss_growth_mb[{path.name}] = {float(growth):.1f}")
    return float(growth), err


@pytest.mark.process
def test_a_tiny_file_asking_for_a_gigabyte_is_refused_before_allocating(tmp_path):
    # 'bytearray' is on torch's weights_only list: unguarded, torch.load zero-fills the 1 GiB it asks for
    payload = forged_pickle({"format": "mnist-lab-checkpoint/1", "pad": Call(bytearray, 1024 * MB)})
    path = tmp_path / "bytearray.pt"
    path.write_bytes(with_members(good_archive(tmp_path), {"data.pkl": payload}))
    assert path.stat().st_size < 64 * 1024
    growth, err = peak_rss_growth_mb(path)
    assert "builtins.bytearray" in err and "refused" in err
    assert growth < 100


@pytest.mark.process
def test_a_deflate_bomb_is_refused_by_its_unpacked_size(tmp_path):
    archive = good_archive(tmp_path)
    zeros = bytes(200 * MB)  # 200 MB of float zeros deflate to about 200 KB
    numel = len(zeros) // 4
    payload = forged_pickle({"format": "mnist-lab-checkpoint/1", "model_config": ModelConfig().to_dict(),
                             "state_dict": {"big": Call(torch._utils._rebuild_tensor_v2, ("STORAGE", "999", numel),
                                                        0, (numel,), (1,), False, {})}})
    path = tmp_path / "bomb.pt"
    path.write_bytes(with_members(archive, {"data.pkl": payload, "data/999": zeros}, deflate={"data/999"}))
    del zeros
    assert path.stat().st_size < 2 * MB
    growth, err = peak_rss_growth_mb(path)
    assert "unpacks to 210 MB" in err or "unpacks to 209 MB" in err, err
    assert growth < 100


@pytest.mark.process
def test_a_storage_declaring_more_than_its_member_holds_is_refused(tmp_path):
    archive = good_archive(tmp_path)
    numel = 10**9  # 4 GB declared; the member holds 16 bytes
    payload = forged_pickle({"format": "mnist-lab-checkpoint/1", "model_config": ModelConfig().to_dict(),
                             "state_dict": {"w": Call(torch._utils._rebuild_tensor_v2, ("STORAGE", "77", numel),
                                                      0, (4,), (1,), False, {})}})
    path = tmp_path / "forged.pt"
    path.write_bytes(with_members(archive, {"data.pkl": payload, "data/77": bytes(16)}))
    growth, err = peak_rss_growth_mb(path)
    assert "declares 4,000,000,000 bytes but the archive holds 16" in err
    assert growth < 100


def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path):
    payload = forged_pickle({"format": "mnist-lab-checkpoint/1",
                             "w": Call(torch._utils._rebuild_tensor_v2, ("STORAGE", "5", 4), 0, (10**6,), (1,),
                                       False, {})})
    path = tmp_path / "view.pt"
    path.write_bytes(with_members(good_archive(tmp_path), {"data.pkl": payload, "data/5": bytes(16)}))
    with pytest.raises(CheckpointError, match="reaches outside its storage"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["negative running variance", "huge weights"])
def test_finite_weights_that_give_nan_outputs_are_refused(tmp_path, damage):
    model = build_model(ModelConfig())
    with torch.no_grad():
        if damage == "negative running variance":
            model[1].running_var.fill_(-1.0)  # sqrt of a negative number in every forward pass
        else:
            for m in model:
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.fill_(3e38)  # finite, but their products overflow
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    path = tmp_path / "nan.pt"
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="NaN or infinite outputs"):
        load_checkpoint(path)


@pytest.mark.timeout(60)
def test_special_files_are_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is a named pipe, not a file"):
        load_checkpoint(fifo)  # before: waited for a writer forever
    zero = tmp_path / "zero.pt"
    zero.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="is a device, not a file"):
        load_checkpoint(zero)  # before: read until memory ran out
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.process
def test_predict_refuses_a_pipe_and_a_torchscript_export_in_one_line(tmp_path):
    from mnist_core.export import torchscript_bytes

    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    ts = tmp_path / "model.torchscript.pt"
    ts.write_bytes(torchscript_bytes(model))
    with pytest.raises(CheckpointError, match="TorchScript export .* best.pt or last.pt"):
        load_checkpoint(ts)
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    digit = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28), 255).save(digit)
    for ckpt, says in ((ts, "TorchScript export"), (fifo, "named pipe")):
        p = subprocess.run([sys.executable, "-m", "mnist_core", "predict", "--checkpoint", str(ckpt), str(digit)],
                           cwd=ROOT, capture_output=True, text=True, timeout=100)
        assert p.returncode == 2 and p.stdout == ""
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {ckpt}: ") and says in lines[0], p.stderr


def test_the_bundled_model_and_a_fresh_checkpoint_still_load(tmp_path):
    load_checkpoint(BUNDLED_CHECKPOINT)
    model, meta = load_checkpoint(good_archive(tmp_path))
    assert meta["model_config"] == ModelConfig()


# -- links and special files in a run folder ---------------------------------------------------


def test_a_run_never_serves_a_file_through_a_link(tmp_path):
    from mnist_core.export import archive_bytes
    from mnist_core.files import UnreadableFile
    from mnist_core.runs import Run

    run = Run.create(tmp_path, ModelConfig(), TrainConfig(epochs=1), name="r")
    save_checkpoint(run.path / "last.pt", build_model(ModelConfig()))
    (run.path / "best.pt").symlink_to("/etc/passwd")
    (run.path / "card.md").symlink_to("/etc/hostname")
    os.mkfifo(run.path / "metrics.jsonl")
    for name, says in (("best.pt", "symbolic link"), ("card.md", "symbolic link"), ("metrics.jsonl", "named pipe")):
        with pytest.raises(UnreadableFile, match=says):
            run.read_file(name)
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_checkpoint(run.path / "best.pt", follow_links=False)
    data = archive_bytes(run, run.path / "last.pt")
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(n.split("/", 1)[1] for n in z.namelist()) == [
        "README.txt", "config.json", "last.pt", "model.torchscript.pt", "seed.txt", "summary.txt"]
    readme = z.read("r/README.txt").decode()
    assert "left out: card.md: is a symbolic link" in readme and "left out: metrics.jsonl: is a named pipe" in readme
    assert b"root:" not in b"".join(z.read(n) for n in z.namelist())


def test_runs_page_offers_no_download_through_a_link(app, runs_dir):
    from apptest_kit import page, texts

    from mnist_core.config import TrainConfig
    from mnist_core.runs import Run

    run = Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=1), name="linked")
    save_checkpoint(run.path / "last.pt", build_model(ModelConfig()))
    (run.path / "best.pt").symlink_to("/etc/passwd")
    page(app, "views/runs.py")
    labels = [b.proto.label for b in app.get("download_button")]
    assert "⬇ last.pt" in labels and "⬇ best.pt" not in labels
    assert any("best.pt is not offered" in c and "symbolic link" in c for c in texts(app.caption)), texts(app.caption)


def test_the_upload_cache_is_bounded_in_bytes():
    from views.common import ByteBoundedCache

    cache = ByteBoundedCache(limit=100)
    for i in range(10):
        cache.put(i, f"model {i}", size=30)
        assert cache.total <= 100 and cache.get(i) == f"model {i}"
    assert len(cache) == 3 and cache.get(0) is None
    cache.get(7)  # used again: now the most recent
    cache.put("big", "one huge file", size=500)  # alone over the limit: it stays, the rest goes
    assert len(cache) == 1 and cache.total == 500 and cache.get(7) is None

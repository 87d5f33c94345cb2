import gzip
import io
import json
import os
import pickle
import shutil
import zipfile

import pytest
import torch

from mnist_core.config import ModelConfig, TrainConfig
from mnist_core.data import DATA_DIR, DataError, load_mnist, verify
from mnist_core.model import build_model
from mnist_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mnist_core.files import atomic_write_text
from mnist_core.runner import train_run
from mnist_core.runs import Run, RunError, check_run_name, list_runs


# --- data ----------------------------------------------------------------------------------


@pytest.fixture
def data_copy(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for f in DATA_DIR.glob("*"):
        if f.is_file():
            shutil.copy(f, d / f.name)
    return d


def test_carried_mnist_loads_with_known_statistics(mnist):
    assert mnist.train_x.shape == (60000, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.test_x.shape == (10000, 28, 28)
    counts = torch.bincount(mnist.train_y).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(mnist.train_x.float().mean().item() / 255 - 0.1307) < 1e-3


@pytest.mark.process  # loads MNIST
def test_corrupted_file_is_refused_and_named(data_copy):
    victim = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: SHA-256 checksum does not match"):
        load_mnist(data_copy)


def test_missing_file_is_named(data_copy):
    (data_copy / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: MNIST file is missing"):
        verify(data_copy)


def test_corrupted_decompressed_copy_is_rebuilt(data_copy):
    verify(data_copy)
    raw = data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw.write_bytes(b"\x00" * raw.stat().st_size)  # same size, wrong bytes
    verify(data_copy)
    assert raw.read_bytes() == gzip.decompress((data_copy / "t10k-labels-idx1-ubyte.gz").read_bytes())


# --- atomic files ----------------------------------------------------------------------------


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "card.md"
    atomic_write_text(target, "good")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "half" * 1000)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["card.md"]  # no temp file left behind


def test_checkpoint_save_failure_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    model = build_model(ModelConfig())
    save_checkpoint(path, model)
    good = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        save_checkpoint(path, build_model(ModelConfig.template(widths=(4, 4, 4, 4, 4, 4))))
    assert path.read_bytes() == good
    load_checkpoint(path)


# --- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig.template(widths=(8, 12, 10, 12, 16, 20), batchnorm=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_checkpoint(tmp_path / "m.pt", model, {"epoch": 3})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["model_config"] == cfg and meta["epoch"] == 3
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this creates the marker file


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    model = build_model(ModelConfig())
    torch.save({"format": "mnist-lab-checkpoint/1", "model_config": {}, "state_dict": model.state_dict(),
                "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()

    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
    assert not marker.exists()


def make_bad_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model(ModelConfig()))
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "text": b"hello, I am not a checkpoint\n",
        "random zip": _zip_with(b"junk"),
    }
    other = {"format": "mnist-lab-checkpoint/1", "model_config": {"widths": [12, 16, 10, 12, 16, 30]},
             "state_dict": build_model(ModelConfig.template(widths=(8, 8, 8, 8, 8, 8))).state_dict()}
    buf = io.BytesIO()
    torch.save(other, buf)
    files["other architecture"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buf)
    files["foreign torch file"] = buf.getvalue()
    diverged = build_model(ModelConfig())
    with torch.no_grad():
        diverged[0].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(tmp_path / "diverged.pt", diverged)
    files["not finite"] = (tmp_path / "diverged.pt").read_bytes()
    return files


def _zip_with(content):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.pkl", content)
    return buf.getvalue()


@pytest.mark.parametrize("kind, says", [
    ("empty", "empty"), ("truncated", "not a PyTorch checkpoint"), ("text", "not a PyTorch checkpoint"),
    ("random zip", "cannot load"), ("other architecture", "size mismatch for 0.weight"),
    ("foreign torch file", "not an mnist-lab checkpoint"), ("not finite", "NaN or infinite"),
])
def test_bad_checkpoints_are_refused_clearly(tmp_path, kind, says):
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(make_bad_files(tmp_path)[kind])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and says in msg and "\n" not in msg
    with pytest.raises(CheckpointError):
        load_checkpoint(path.read_bytes())  # same refusal for uploaded bytes


# --- runs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/b", "", ".hidden", "x" * 65, "semi;colon", ".."])
def test_hostile_run_names_are_refused(name):
    with pytest.raises(RunError):
        check_run_name(name)


def test_execute_writes_a_complete_run(mnist, runs_dir):
    cfg = TrainConfig(epochs=2, batch_size=64, limit_train=640, limit_test=300, lr=0.05)
    run = Run.create(runs_dir, ModelConfig(), cfg, name="tiny")
    train_run(run, mnist)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["best.pt", "card.md", "config.json", "last.pt", "metrics.jsonl", "status.json"]
    assert run.status["status"] == "finished"
    assert [e["epoch"] for e in run.epochs()] == [1, 2]
    card = (run.path / "card.md").read_text()
    for part in ("**TARGET:**", "**RESULTS:**", "*#params:* 9596", "*final test acc:*", "*last 3 min:*", "*goal:* **misses**",
                 "**ANALYSIS:**", "Total params: 9,596"):
        assert part in card
    model, meta = load_checkpoint(run.path / "best.pt")
    assert meta["run"] == "tiny"
    assert list_runs(runs_dir)[0].name == "tiny"
    with pytest.raises(RunError, match="already exists"):
        Run.create(runs_dir, ModelConfig(), cfg, name="tiny")


def test_stop_file_stops_and_marks_stopped(mnist, runs_dir):
    run = Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=5, limit_train=3200, limit_test=200), name="s")
    count = {"n": 0}

    def progress(r):
        count["n"] += 1
        if count["n"] == 5:
            run.request_stop()

    train_run(run, mnist, progress=progress)
    assert run.status["status"] == "stopped"
    assert count["n"] == 6  # five batches, then the stop record
    load_checkpoint(run.path / "last.pt")
    assert "stopped" in (run.path / "card.md").read_text()


def test_truncated_metrics_still_list(mnist, runs_dir):
    run = Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=1, limit_train=320, limit_test=100), name="t")
    train_run(run, mnist)
    text = (run.path / "metrics.jsonl").read_text()
    (run.path / "metrics.jsonl").write_text(text + '{"kind": "epoch", "epo')
    (run.path / "card.md").unlink()
    (run.path / "stray.bin").write_bytes(b"\x00\x01")
    row = list_runs(runs_dir)[0].summary()
    assert row["name"] == "t" and row["epochs"] == "1/1" and row["status"] == "finished"


def test_failed_training_is_marked_failed(mnist, runs_dir, monkeypatch):
    import mnist_core.runner as runner_mod

    run = Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=1, limit_train=320, limit_test=100), name="f")

    def explode(*a, **k):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(runner_mod, "train", explode)  # the loop the runner calls
    with pytest.raises(RuntimeError):
        train_run(run, mnist)
    assert run.status["status"] == "failed"
    assert "simulated out of memory" in run.status["reason"]
    assert json.loads((run.path / "config.json").read_text())["name"] == "f"

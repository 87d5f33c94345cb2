"""Run folders are input: every file in them may be damaged, hostile or strange. A folder holding one
run per such case keeps every page up; each page lists what it can, shows what it can and names the
bad file, and nothing hangs (every test here has a timeout)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from apptest_kit import button, page, texts
from mnist_core import jobs
from mnist_core.runs import MetricsLog, Run, list_runs

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["views/home.py", "views/architecture.py", "views/train.py", "views/draw.py", "views/runs.py"]
DEEP = "[" * 100_000 + "]" * 100_000




@pytest.fixture(scope="module")
def sleeper():
    """A live process whose command line names mnist_core, as a training's does: runs whose status
    points at it count as running."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "mnist_core"])
    yield p.pid
    p.kill()
    p.wait()


def copy_run(trained: Path, runs_dir: Path, name: str) -> Path:
    d = runs_dir / name
    shutil.copytree(trained, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "name": name}))
    return d


def big_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no pixel data behind it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def write_status(d: Path, **status) -> None:
    (d / "status.json").write_text(json.dumps({"status": "running", "started": "2026-01-01T00:00:00", **status}))


def live_metrics(d: Path, *records) -> None:
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def batch(**kw):
    return {"kind": "batch", "epoch": 1, "batch": 3, "batches": 10, "step": 3, "loss": 1.0, "acc": 50.0,
            "images_per_s": 100.0, **kw}


@pytest.fixture
def hostile(tmp_path, monkeypatch, trained, sleeper):
    """A runs folder (and a handwriting folder) with one damaged run per case."""
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("MNIST_LAB_RUNS", str(runs))
    hw = tmp_path / "handwriting"
    (hw / "3").mkdir(parents=True)
    monkeypatch.setattr("mnist_core.handwriting.HANDWRITING_DIR", hw)
    os.mkfifo(hw / "3" / "x.png")
    (hw / "3" / "bomb.png").write_bytes(big_png_header(30000, 30000))

    copy_run(trained, runs, "intact")
    (copy_run(trained, runs, "deep-config") / "config.json").write_text(DEEP)
    (copy_run(trained, runs, "deep-status") / "status.json").write_text(DEEP)
    with open(copy_run(trained, runs, "deep-metrics") / "metrics.jsonl", "a") as f:
        f.write(DEEP + "\n")
    for name, pid in (("pid-string", "123"), ("pid-list", [1, 2]), ("pid-huge", 10**30), ("pid-float", 1.5),
                      ("pid-minus-one", -1)):
        write_status(copy_run(trained, runs, name), pid=pid)
    d = copy_run(trained, runs, "inf-metrics")
    text = (d / "metrics.jsonl").read_text()
    (d / "metrics.jsonl").write_text(text + text.replace('"test_acc": ', '"test_acc": 1e400, "x": ')
                                     .replace('"epoch": 1,', '"epoch": 1e400,'))
    for name, f in (("dir-best", "best.pt"), ("dir-card", "card.md")):
        p = copy_run(trained, runs, name) / f
        p.unlink()
        p.mkdir()
    for name, f in (("fifo-config", "config.json"), ("fifo-card", "card.md"), ("fifo-metrics", "metrics.jsonl")):
        p = copy_run(trained, runs, name) / f
        p.unlink()
        os.mkfifo(p)
    d = copy_run(trained, runs, "forged-eval")
    ev = torch.load(d / "best.pt.eval", weights_only=True) if (d / "best.pt.eval").exists() else None
    n = 100
    torch.save({"format": "mnist-lab-eval/2", "checkpoint_sha256": ev["checkpoint_sha256"] if ev else "x",
                "probs": torch.full((n, 10), 0.1), "labels": torch.full((n,), 99)}, d / "best.pt.eval")
    for name, train, rec in (
        ("live-zero-epochs", {"epochs": 0}, batch()),
        ("live-abc-epochs", {"epochs": "abc"}, batch()),
        ("live-zero-batches", {}, batch(batches=0, batch=0)),
        ("live-past-total", {}, batch(batch=50)),
        ("live-huge-rate", {}, batch(images_per_s=1e300)),
    ):
        d = copy_run(trained, runs, name)
        cfg = json.loads((d / "config.json").read_text())
        cfg["train"].update(train)
        (d / "config.json").write_text(json.dumps(cfg))
        write_status(d, pid=sleeper)
        live_metrics(d, rec)
    return runs


@pytest.mark.timeout(300)
def test_every_page_stays_up_on_a_hostile_runs_folder(hostile):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    names = {r.name for r in list_runs(hostile)}
    assert len(names) == len([p for p in hostile.iterdir() if p.is_dir()])  # every run is listed
    for path in PAGES:
        page(at, path)
    # Runs: each run in turn, with its card, downloads and confusion matrix
    page(at, "views/runs.py")
    for name in sorted(names):
        at.selectbox(key="runs_one").select(name).run()
        assert not at.exception, (name, at.exception)
    for name, says in (("fifo-config", "config.json: is a named pipe"), ("deep-config", "config.json: not valid JSON"),
                       ("deep-status", "status.json: not valid JSON"), ("fifo-metrics", "metrics.jsonl: is a named pipe, not a file")):
        at.selectbox(key="runs_one").select(name).run()
        assert any(says in w for w in texts(at.warning)), (name, texts(at.warning))
    # the card is made from the run's files, so a broken card.md still shows it; its download is refused
    for name, says in (("dir-card", "card.md: is a directory"), ("fifo-card", "card.md: is a named pipe")):
        at.selectbox(key="runs_one").select(name).run()
        assert any(m.startswith(f"# {name}") for m in texts(at.markdown)), name
        assert any("card.md is not offered" in c and says in c for c in texts(at.caption)), texts(at.caption)
    # Train: each live run with impossible numbers
    for name in ("live-zero-epochs", "live-abc-epochs", "live-zero-batches", "live-past-total", "live-huge-rate"):
        at.session_state["tr_run"] = name
        page(at, "views/train.py")
        assert f"{name}: running" in texts(at.subheader)
    # the bogus pids are not running, and such runs can be deleted
    for name in ("pid-string", "pid-list", "pid-huge", "pid-float", "pid-minus-one"):
        assert jobs.state(Run(hostile / name)) == "interrupted", name
        jobs.delete(Run(hostile / name))


@pytest.mark.timeout(60)
def test_records_with_impossible_values_are_skipped(tmp_path):
    good = {"kind": "epoch", "epoch": 1, "train_loss": 0.1, "train_acc": 97.0, "test_loss": 0.1, "test_acc": 98.0,
            "test_correct": 98, "test_total": 100, "lr": 0.01, "seconds": 1.0, "images_per_s": 10.0}
    lines = [json.dumps(good),
             json.dumps(good).replace('"test_acc": 98.0', '"test_acc": 1e400'),  # inf
             json.dumps(good).replace('"epoch": 1,', '"epoch": 1e400,'),
             json.dumps(good).replace('"epoch": 1,', '"epoch": 10000000000000000000000000000,'),
             json.dumps(good).replace('"seconds": 1.0', '"seconds": -1'),
             DEEP, '{"kind": "epoch"', json.dumps({**good, "train_loss": float("nan")})]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    log = MetricsLog(path).update()
    assert [e["epoch"] for e in log.epochs] == [1, 1]  # the good one, and a diverged loss is still a record
    assert log.error is None


@pytest.mark.timeout(120)
def test_metrics_are_read_incrementally_and_kept_bounded(tmp_path):
    """A long log is parsed once; each later look reads only the lines appended since."""
    path = tmp_path / "metrics.jsonl"
    rec = batch()
    with open(path, "w") as f:
        for step in range(1, 50_001):
            f.write(json.dumps({**rec, "step": step, "batch": step % 10 or 10}) + "\n")
    log = MetricsLog(path)
    start = time.perf_counter()
    log.update()
    first = time.perf_counter() - start
    assert len(log.batches) <= MetricsLog.MAX_BATCHES and log.batch_count == 50_000
    assert log.last_batch["step"] == 50_000
    steps = [r["step"] for _, r in log.batches]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] - steps[0] > 40_000  # spread over the run
    size = path.stat().st_size
    with open(path, "a") as f:
        f.write(json.dumps({**rec, "step": 50_001}) + "\n")
    start = time.perf_counter()
    log.update()
    again = time.perf_counter() - start
    assert log.offset == path.stat().st_size > size and log.last_batch["step"] == 50_001
    assert again < first / 20, (again, first)  # one line read, not the whole file
    print(f"FIGURE metrics_first_read_s[50k batches] = {first:.3f}; next poll = {again * 1000:.2f} ms")
    # a line still being written is left for the next look
    with open(path, "a") as f:
        f.write('{"kind": "epoch", "epoch": 1')
    log.update()
    assert log.epochs == [] and log.offset < path.stat().st_size


@pytest.mark.timeout(60)
def test_a_pipe_in_place_of_the_training_lock_hangs_nothing(tmp_path):
    os.mkfifo(tmp_path / jobs.LOCK_NAME)
    assert jobs.active(tmp_path) is None


@pytest.mark.timeout(60)
def test_pids_that_are_not_processes_of_ours(sleeper):
    for pid in (None, 0, -1, 1, "123", [1], 10**30, 1.5, True, 2**22 + 1):
        assert not jobs.pid_alive(pid), pid
    assert jobs.pid_alive(sleeper)


# -- a full or read-only disk, from the pages ---------------------------------------------------


def refuse_writes(monkeypatch, err: int):
    """Every atomic write fails as on a full (ENOSPC) or read-only (EROFS) disk."""
    import errno as errno_mod
    import tempfile

    def mkstemp(*a, **kw):
        raise OSError(err, os.strerror(err), kw.get("dir", "?"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return errno_mod.errorcode[err]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("err", [28, 30])  # ENOSPC, EROFS
def test_start_continue_delete_and_save_on_a_disk_that_refuses(tmp_path, monkeypatch, trained, err):
    from mnist_core import handwriting

    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("MNIST_LAB_RUNS", str(runs))
    monkeypatch.setattr(handwriting, "HANDWRITING_DIR", tmp_path / "hw")
    copy_run(trained, runs, "done")
    at = AppTest.from_file(APP, default_timeout=120).run()
    refuse_writes(monkeypatch, err)
    reason = os.strerror(err)

    page(at, "views/train.py")
    at.text_input(key="tr_name").set_value("new")
    button(at, "Start training").click().run()
    assert not at.exception
    assert any(e.startswith("cannot start the training: ") and "config.json" in e and reason in e
               for e in texts(at.error)), texts(at.error)
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["done"]  # nothing half-made

    page(at, "views/runs.py")
    at.selectbox(key="runs_one").select("done").run()
    button(at, "Continue").click().run()
    assert not at.exception
    assert any("cannot start the training" in e and reason in e for e in texts(at.error)), texts(at.error)

    def rmtree(path, *a, **kw):
        raise OSError(err, reason, str(Path(path) / "best.pt"))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    button(at, "Delete run").click().run()
    button(at, "Yes, delete").click().run()
    assert not at.exception
    assert any(e.startswith("cannot delete run 'done': ") and "best.pt" in e and reason in e
               for e in texts(at.error)), texts(at.error)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("err", [28, 30])
def test_save_to_handwriting_on_a_disk_that_refuses(tmp_path, monkeypatch, err):
    import numpy as np

    from mnist_core import handwriting

    folder = tmp_path / "hw"
    refuse_writes(monkeypatch, err)
    with pytest.raises(OSError) as e:
        handwriting.save(np.zeros((28, 28), np.float32), 3, folder)
    assert e.value.filename and str(folder / "3") in e.value.filename and e.value.strerror == os.strerror(err)
    assert list((folder / "3").iterdir()) == []  # nothing half-written

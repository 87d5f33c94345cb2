"""Fault injection: every fault here is done for real, and the app has to survive it.

Real training processes are started with `jobs.start` and stopped, killed with SIGKILL or starved of
memory; a real Streamlit server is killed under a running training and replaced; a real 256 KB
tmpfs fills up under a training; real MNIST files are corrupted; real code-executing pickles are
offered as checkpoints. RELIABILITY.md lists each fault with what is asserted and the figures
measured here (set MNIST_LAB_FIGURES=path.json to have them written out).

Everything is kept tiny (a few hundred to a few thousand images): the file runs in about a minute
on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from apptest_kit import button, free_port, texts
from mnist_core import jobs
from mnist_core import checkpoint as checkpoint_mod
from mnist_core.__main__ import main
from mnist_core.config import ConfigError, ModelConfig, TrainConfig
from mnist_core.data import DATA_DIR, FILES
from mnist_core.draw import EmptyDrawing, TooSmall, predict, preprocess
from mnist_core.model import build_model
from mnist_core.checkpoint import (
    BUNDLED_CHECKPOINT,
    MAX_CHECKPOINT_BYTES,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from mnist_core.runner import train_run
from mnist_core.runs import Run, RunError, list_runs

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGES = ["views/home.py", "views/architecture.py", "views/train.py", "views/draw.py", "views/runs.py"]


# --- helpers -----------------------------------------------------------------------------------


def figure(key: str, value) -> None:
    """Print a measured figure; with MNIST_LAB_FIGURES=path also keep it in that JSON file."""
    print(f"FIGURE {key} = {value}")
    path = os.environ.get("MNIST_LAB_FIGURES")
    if path:
        p = Path(path)
        data = json.loads(p.read_text()) if p.exists() else {}
        data[key] = value
        p.write_text(json.dumps(data, indent=2) + "\n")


def tiny(epochs: int = 1, n: int = 640, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.05, limit_train=n, limit_test=200, device="cpu", **kw)


def wait_for(cond, timeout: float = 60.0, what: str = "a condition", step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


def wait_gone(pid: int, timeout: float = 60.0) -> None:
    wait_for(lambda: not jobs.pid_alive(pid), timeout, f"process {pid} to end")


def kill_quietly(pid) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, TypeError):
        pass


def one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A runs folder that the pages and the CLI both use (MNIST_LAB_RUNS, read by lab.runs_dir)."""
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("MNIST_LAB_RUNS", str(d))
    return d


@pytest.fixture(autouse=True)
def no_stray_trainings():
    """Whatever a test starts, no training process outlives it."""
    before = set(jobs._children)
    extra: list[int] = []
    yield extra
    for pid in [p for p in jobs._children if p not in before] + extra:
        if jobs.pid_alive(pid):
            kill_quietly(pid)


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def run_dirs(runs_dir: Path) -> list[str]:
    return sorted(p.name for p in runs_dir.iterdir() if p.is_dir())


# --- training lifecycle ------------------------------------------------------------------------


@pytest.mark.process
def test_concurrent_starts_make_exactly_one_run(runs, capsys):
    """Two tabs, a double click, the CLI at once: 16 threads race jobs.start on one runs folder."""
    n = 16
    barrier = threading.Barrier(n)
    started, busy, other = [], [], []

    def attempt(i):
        barrier.wait()
        try:
            started.append(jobs.start(runs, ModelConfig(), tiny(epochs=20), name=f"race-{i}"))
        except jobs.Busy as e:
            busy.append(str(e))
        except Exception as e:  # noqa: BLE001 - anything else is a failure of this test
            other.append(repr(e))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert other == []
    assert len(started) == 1 and len(busy) == n - 1
    run = started[0]
    assert all("a training (" in m and ") is running" in m for m in busy)
    assert run_dirs(runs) == [run.name]  # no second directory, nothing half made
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "status.json", "train.log"]
    assert run.status["status"] == "running" and jobs.active(runs) == run.name
    config = (run.path / "config.json").read_bytes()

    # the command line, at the same moment, aimed at the very directory the app's training is starting in
    code = main(["train", "--epochs", "1", "--limit-train", "64", "--quiet", "--run-dir", str(run.path)])
    assert "already holds a run" in one_error_line(code, capsys.readouterr().err)
    assert (run.path / "config.json").read_bytes() == config

    pid = run.status["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert jobs.active(runs) is None  # the kernel dropped the lock with the process: it never goes stale


def test_stop_saves_a_usable_checkpoint_and_marks_stopped(runs, mnist):
    run = jobs.start(runs, ModelConfig(), tiny(epochs=50, n=2000), name="stop-me")
    pid = run.status["pid"]
    # stop in the middle of the first epoch: no epoch-end checkpoint exists, the stop must write one
    wait_for(lambda: any(r["kind"] == "batch" for r in run.metrics()), 90, "the first batch")
    assert not (run.path / "last.pt").exists()
    jobs.stop(run)
    wait_gone(pid, 60)
    assert jobs._children[pid].returncode == 0
    assert jobs.state(run) == "stopped"
    records = run.metrics()
    assert records[-1]["kind"] == "stopped"
    model, meta = load_checkpoint(run.path / "last.pt")
    assert meta["run"] == "stop-me" and meta["epoch"] == records[-1]["epoch"] == 1
    with torch.no_grad():
        out = model(((mnist.test_x[:50].float() / 255 - 0.1307) / 0.3081).unsqueeze(1))
    assert out.shape == (50, 10) and torch.isfinite(out).all()
    assert "stopped" in (run.path / "card.md").read_text()
    assert not (run.path / "STOP").exists() and jobs.active(runs) is None


@pytest.mark.process
def test_kill_9_of_the_training_marks_it_failed_and_keeps_its_epochs(runs):
    run = jobs.start(runs, ModelConfig(), tiny(epochs=50, n=320), name="killed")
    pid = run.status["pid"]
    wait_for(lambda: len(run.epochs()) >= 2 and (run.path / "last.pt").exists(), 90, "two epochs")
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert jobs.state(run) == "failed"
    reason = jobs.status(run)["reason"]
    assert "killed by signal 9" in reason
    figure("kill_9.reason", reason)
    # the app's watcher writes what reading only derives: the final status and the card
    wait_for(lambda: "*status:* failed" in run.card_text(), 10, "the watcher to write the final status and card")
    assert run.status["status"] == "failed" and run.status["reason"] == reason
    epochs = [e["epoch"] for e in run.epochs()]
    assert len(epochs) >= 2 and epochs == list(range(1, len(epochs) + 1))
    _, meta = load_checkpoint(run.path / "last.pt")
    assert meta["epoch"] in (epochs[-1], epochs[-1] - 1)
    assert jobs.active(runs) is None

    # the app stays up and says what happened
    at = app("views/train.py")
    assert "killed: failed" in texts(at.subheader)
    assert any("killed by signal 9" in w for w in texts(at.warning))


SITECUSTOMIZE_OOM = '''
"""Test hook (tests/test_faults.py): run out of memory for real in the second epoch."""
import os
import resource

if os.environ.get("MNIST_LAB_FAULT") == "oom-in-epoch-2":
    import mnist_core.runner as _runner

    _train_run = _runner.train_run

    def train_run(run, data, progress=None, should_stop=None):
        def hook(record):
            if progress:
                progress(record)
            if record["kind"] == "batch" and record["epoch"] == 2:
                import torch

                vm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize:")))
                resource.setrlimit(resource.RLIMIT_AS, ((vm + 256 * 1024) * 1024, resource.RLIM_INFINITY))
                torch.ones(512 * 2**20, dtype=torch.uint8)  # 512 MB more than the address space allows

        return _train_run(run, data, progress=hook, should_stop=should_stop)

    _runner.train_run = train_run
'''


@pytest.mark.process
def test_out_of_memory_in_the_training_process_marks_it_failed(runs, tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE_OOM)
    monkeypatch.setenv("PYTHONPATH", f"{hook}{os.pathsep}{ROOT}")
    monkeypatch.setenv("MNIST_LAB_FAULT", "oom-in-epoch-2")
    run = jobs.start(runs, ModelConfig(), tiny(epochs=5, n=320), name="oom")
    pid = run.status["pid"]
    wait_gone(pid, 90)
    assert jobs.state(run) == "failed"
    reason = jobs.status(run)["reason"]
    assert "can't allocate memory" in reason or "MemoryError" in reason, reason
    figure("out_of_memory.reason", reason)
    assert [e["epoch"] for e in run.epochs()] == [1]
    _, meta = load_checkpoint(run.path / "last.pt")
    assert meta["epoch"] == 1
    assert jobs.active(runs) is None

    at = app("views/train.py")
    assert "oom: failed" in texts(at.subheader)
    assert any("allocate memory" in w or "MemoryError" in w for w in texts(at.warning))


def start_server(runs_dir: Path, log: Path, train_first: TrainConfig | None = None) -> tuple[subprocess.Popen, str]:
    """A real `streamlit run app.py` on a free port; with train_first, the same process first calls
    jobs.start and then becomes the server (exec), so that the training is the server's own child."""
    port = free_port()
    env = {**os.environ, "MNIST_LAB_RUNS": str(runs_dir)}
    serve = [sys.executable, "-m", "streamlit", "run", APP, "--server.port", str(port), "--server.headless", "true"]
    if train_first is not None:
        env["TRAIN_FIRST"] = json.dumps(dataclasses.asdict(train_first))
        code = ("import json, os, sys; from mnist_core import jobs; from mnist_core.config import ModelConfig, TrainConfig; "
                "jobs.start(os.environ['MNIST_LAB_RUNS'], ModelConfig(), TrainConfig(**json.loads(os.environ['TRAIN_FIRST']))); "
                "os.execv(sys.executable, sys.argv[1:])")
        serve = [sys.executable, "-c", code, *serve]
    with open(log, "ab") as out:
        server = subprocess.Popen(serve, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)  # own process group
    url = f"http://127.0.0.1:{port}"
    import requests

    def healthy():
        try:
            return requests.get(f"{url}/_stcore/health", timeout=1).ok
        except requests.RequestException:
            assert server.poll() is None, log.read_text()[-2000:]
            return False

    wait_for(healthy, 90, "the server to answer")
    return server, url


def browser_or_none():
    """(playwright, browser) with Chromium, or None when no Chromium can be started here."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    pw = sync_playwright().start()
    for kw in [{"executable_path": p} for p in [shutil.which("chromium")] if p] + [{}]:
        try:
            return pw, pw.chromium.launch(**kw)
        except Exception:  # noqa: BLE001 - try the next, then fall back to starting without a browser
            pass
    pw.stop()
    return None


@pytest.mark.process
def test_killing_the_app_server_leaves_the_training_running_and_shown(runs, tmp_path, no_stray_trainings):
    """SIGKILL to the server's whole process group while it trains; a new server picks the run up."""
    import requests

    log = tmp_path / "server.log"
    pb = browser_or_none()
    server, url = start_server(runs, log, train_first=None if pb else TrainConfig(epochs=100, limit_train=1000))
    try:
        if pb is not None:  # press Start in the real app: the training is the server's own child
            page = pb[1].new_page()
            page.goto(f"{url}/train")
            page.get_by_role("button", name="Start training").wait_for(timeout=60000)
            page.get_by_label("Epochs", exact=True).fill("100")
            page.get_by_label("Epochs", exact=True).press("Enter")
            page.get_by_role("combobox", name="Training images").click()
            page.get_by_role("option", name="1,000", exact=True).click()
            page.wait_for_timeout(300)
            page.get_by_role("button", name="Start training").click()
            started_by = "the server (Start pressed in Chromium)"
        else:
            started_by = "the server process itself (jobs.start, then exec into streamlit: no Chromium here)"
        figure("server_kill.training_started_by", started_by)
        run = Run(wait_for(lambda: next((p for p in runs.iterdir() if p.is_dir()), None), 60, "the run"))
        pid = wait_for(lambda: run.status.get("pid"), 30, "the training's pid")
        no_stray_trainings.append(pid)
        assert int(Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[1]) == server.pid  # its parent
        assert os.getsid(pid) != os.getsid(server.pid)
        steps = lambda: sum(r["kind"] == "batch" for r in run.metrics())  # noqa: E731
        wait_for(steps, 120, "the first batch")

        os.killpg(server.pid, signal.SIGKILL)  # the server and everything in its group, like a closed terminal
        server.wait(10)
        done = steps()
        assert jobs.pid_alive(pid), "the training died with the server"
        assert jobs.state(run) == "running" and jobs.active(runs) == run.name
        assert [r.summary()["status"] for r in list_runs(runs)] == ["running"]
        wait_for(lambda: steps() > done + 3, 60, "batches after the server died")  # still learning

        server, url = start_server(runs, log)  # a new server over the same runs folder
        latencies = {"/": [], "/_stcore/health": []}
        for _ in range(10):
            for path in latencies:
                t0 = time.perf_counter()
                r = requests.get(url + path, timeout=5)
                latencies[path].append(time.perf_counter() - t0)
                assert r.status_code == 200
            time.sleep(0.05)
        worst = {p: max(v) for p, v in latencies.items()}
        figure("responsive_under_training.max_s", {p: round(v, 4) for p, v in worst.items()})
        figure("responsive_under_training.median_s",
               {p: round(sorted(v)[len(v) // 2], 4) for p, v in latencies.items()})
        assert max(worst.values()) < 2.0, worst
        if lan_ip():  # the default config: nothing but this machine can reach it
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((lan_ip(), int(url.rsplit(":", 1)[1])), timeout=2).close()
        if pb is not None:
            t0 = time.perf_counter()
            page.goto(f"{url}/train")
            page.get_by_text(f"{run.name}: running").wait_for(timeout=60000)  # shown live by the new server
            figure("responsive_under_training.train_page_shows_run_s", round(time.perf_counter() - t0, 2))
        assert jobs.pid_alive(pid)

        # now the training dies as well (power cut, OOM killer): the run must read as interrupted
        wait_for(lambda: (run.path / "last.pt").exists(), 120, "the first epoch's checkpoint")
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        epochs = [e["epoch"] for e in run.epochs()]
        assert len(epochs) >= 1 and epochs == list(range(1, len(epochs) + 1))
        assert jobs.state(run) == "interrupted"
        assert f"after {len(epochs)} epoch{'' if len(epochs) == 1 else 's'}" in jobs.status(run)["reason"]
        figure("server_kill.then_training_killed.reason", jobs.status(run)["reason"])
        _, meta = load_checkpoint(run.path / "last.pt")
        assert meta["epoch"] in (epochs[-1], epochs[-1] - 1)
        # the lock goes with the process's files, a moment after its memory (what pid_alive reads)
        wait_for(lambda: jobs.active(runs) is None, 10, "the training lock to be released")
        if pb is not None:
            page.goto(f"{url}/train")
            page.get_by_text(f"{run.name}: interrupted").wait_for(timeout=60000)
    finally:
        if pb is not None:
            pb[1].close()
            pb[0].stop()
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(10)


# --- files -----------------------------------------------------------------------------------------


def test_damaged_run_directories_still_list_and_show(runs, mnist):
    base = Run.create(runs, ModelConfig(), tiny(epochs=2, n=320), name="intact")
    train_run(base, mnist)

    def variant(name, damage):
        # checkpoints are left out of the copies: damage to them is the Draw page's test, and each one
        # would cost the Runs page a full test-set evaluation here
        path = runs / name
        shutil.copytree(base.path, path, ignore=shutil.ignore_patterns("*.pt"))
        damage(path)

    def cut(path, fname, keep=0.5):
        data = (path / fname).read_bytes()
        (path / fname).write_bytes(data[: int(len(data) * keep)])

    variant("truncated-metrics", lambda p: cut(p, "metrics.jsonl", 0.7))
    variant("no-metrics", lambda p: (p / "metrics.jsonl").unlink())
    variant("garbled-metrics", lambda p: open(p / "metrics.jsonl", "ab").write(
        b'\xff\xfe\x00garbage\n{"kind": "epoch"}\n{"kind": "epoch", "epoch": "x", "test_acc": null}\n[1, 2]\n"text"\n'))
    variant("no-card", lambda p: (p / "card.md").unlink())
    variant("binary-card", lambda p: (p / "card.md").write_bytes(os.urandom(300)))
    variant("extra-files", lambda p: ((p / "stray.bin").write_bytes(os.urandom(64)), (p / "subdir").mkdir(),
                                      (p / ".hidden").write_text("x"), (p / "notes.txt").symlink_to("/etc/hostname")))
    variant("no-config", lambda p: (p / "config.json").unlink())
    variant("list-config", lambda p: (p / "config.json").write_text("[1, 2, 3]\n"))
    variant("truncated-config", lambda p: cut(p, "config.json"))
    variant("odd-config", lambda p: (p / "config.json").write_text(
        '{"name": 5, "created": 7, "model": {"widths": "wide"}, "train": [], "params": "many"}'))
    variant("text-status", lambda p: (p / "status.json").write_text('"finished"'))
    variant("unknown-status", lambda p: (p / "status.json").write_text('{"status": "exploded", "reason": 42}'))
    variant("no-checkpoints", lambda p: None)
    (runs / "empty").mkdir()
    (runs / "notes.txt").write_text("not a run")
    (runs / "bad name!").mkdir()
    (runs / ".hidden").mkdir()

    expected = sorted(["intact", "truncated-metrics", "no-metrics", "garbled-metrics", "no-card", "binary-card",
                       "extra-files", "no-config", "list-config", "truncated-config", "odd-config", "text-status",
                       "unknown-status", "no-checkpoints", "empty"])
    listed = list_runs(runs)
    assert sorted(r.name for r in listed) == expected
    rows = {r.name: r.summary() for r in listed}
    assert rows["truncated-metrics"]["epochs"] == "1/2"  # the cut second epoch is dropped, the first kept
    assert rows["garbled-metrics"]["epochs"] == "2/2" and rows["garbled-metrics"]["best test acc"] is not None
    assert rows["no-card"]["best test acc"] == rows["intact"]["best test acc"]
    assert rows["no-config"]["epochs"] == "2/?" and rows["no-config"]["status"] == "finished"
    assert rows["empty"]["status"] == "unknown"

    at = app("views/runs.py")
    assert not at.exception
    assert sorted(at.dataframe[0].value["name"]) == expected
    for name in expected:
        at.selectbox(key="runs_one").set_value(name).run()
        assert not at.exception, (name, at.exception)
    at.multiselect(key="runs_compare").set_value(expected).run()
    assert not at.exception
    at.switch_page("views/train.py")
    for name in expected:  # the Train page shows this session's last run: make it each one in turn
        at.session_state["tr_run"] = name
        at.run()
        assert not at.exception, (name, at.exception)
        assert any(h.startswith(f"{name}: ") for h in texts(at.subheader)), texts(at.subheader)
    for page in PAGES:  # every other page copes with the same folder
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)


HOSTILE_NAMES = ["../escape", "../../etc/cron.d/x", "/tmp/absolute", "a/b", "..", ".", ".hidden", "x" * 65,
                 "semi;colon", "new\nline", "tab\tname", "spa ce", "-dash", "ütf8", "$(touch pwned)", "nul\x00byte"]


@pytest.mark.process  # the Train page loads MNIST for its preview
def test_hostile_run_names_cannot_escape_the_runs_folder(runs, tmp_path, capsys):
    outside = sorted(p.name for p in tmp_path.iterdir())
    for name in HOSTILE_NAMES:
        with pytest.raises(RunError, match="run name"):
            jobs.start(runs, ModelConfig(), tiny(), name=name)
        assert jobs.active(runs) is None
        if "\x00" in name:
            continue  # a NUL cannot be passed on a command line at all
        code = main(["train", f"--name={name}", "--epochs", "1", "--limit-train", "64", "--limit-test", "10"])
        _, err = capsys.readouterr()
        assert "run name" in one_error_line(code, err)
    assert run_dirs(runs) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == outside
    assert not Path("/tmp/absolute").exists() and not (ROOT / "pwned").exists()

    at = app("views/train.py")  # the same through the Train page's name box
    at.text_input(key="tr_name").set_value("../escape")
    button(at, "Start training").click().run()
    assert not at.exception and any("run name '../escape' is not allowed" in e for e in texts(at.error))
    assert run_dirs(runs) == []


@pytest.fixture
def small_fs(tmp_path):
    """A real 256 KB filesystem (tmpfs), so that a disk really fills up."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; returns the filler."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_full_disk_real_filesystem_keeps_the_last_good_checkpoint(small_fs, mnist, capsys):
    run = Run.create(small_fs, ModelConfig(), tiny(epochs=3, n=320), name="full")
    state = {}

    def progress(record):  # epoch 1 is complete and checkpointed: now the disk fills up
        if record["kind"] == "batch" and record["epoch"] == 2 and "good" not in state:
            state["good"] = (run.path / "last.pt").read_bytes()
            fill(small_fs)

    with pytest.raises(OSError) as e:
        train_run(run, mnist, progress=progress)
    assert e.value.errno == errno.ENOSPC and e.value.filename  # it names the file it could not write
    figure("full_disk.real_error", f"{type(e.value).__name__}: {e.value}")
    assert (run.path / "last.pt").read_bytes() == state["good"]
    _, meta = load_checkpoint(run.path / "last.pt")
    assert meta["epoch"] == 1
    load_checkpoint(run.path / "best.pt")
    assert not [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")]  # no half-written temp files
    assert [e["epoch"] for e in run.epochs()] in ([1], [1, 2])  # epoch 2's record may fit, its checkpoint did not

    # the CLI on the still-full disk: one clear line, exit 2
    code = main(["train", "--epochs", "1", "--limit-train", "64", "--limit-test", "10", "--quiet",
                 "--run-dir", str(small_fs / "second")])
    out, err = capsys.readouterr()
    line = one_error_line(code, err)
    assert "No space left on device" in line and str(small_fs) in line
    figure("full_disk.real_cli_line", line)
    assert not (small_fs / "second").exists()  # nothing half made


@pytest.mark.process
def test_full_disk_simulated_enospc_while_saving(runs, monkeypatch, capsys):
    """fsync of the second last.pt fails with ENOSPC: the CLI says so, the run keeps epoch 1's file."""
    seen = {"last.pt": 0}
    real_fsync = os.fsync

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if Path(target).name.startswith(".last.pt."):
            seen["last.pt"] += 1
            if seen["last.pt"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run_dir = runs / "enospc"
    code = main(["train", "--epochs", "3", "--limit-train", "320", "--limit-test", "100", "--lr", "0.05",
                 "--quiet", "--run-dir", str(run_dir)])
    out, err = capsys.readouterr()
    line = one_error_line(code, err)
    assert line == f"error: {run_dir / 'last.pt'}: No space left on device"
    figure("full_disk.simulated_cli_line", line)
    run = Run(run_dir)
    assert run.status["status"] == "failed" and "No space left on device" in run.status["reason"]
    _, meta = load_checkpoint(run_dir / "last.pt")
    assert meta["epoch"] == 1
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# --- checkpoints -----------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this runs a shell command (the classic pickle exploit)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoints(tmp_path: Path, marker: Path) -> dict[str, bytes]:
    good = io.BytesIO()
    model = build_model(ModelConfig())
    torch.save({"format": checkpoint_mod.CHECKPOINT_FORMAT, "model_config": {"widths": [12, 16, 10, 12, 16, 30]},
                "state_dict": model.state_dict()}, good)
    data = good.getvalue()
    evil_zip = io.BytesIO()
    torch.save({"format": checkpoint_mod.CHECKPOINT_FORMAT, "model_config": {}, "state_dict": model.state_dict(),
                "payload": RunsCode(marker)}, evil_zip)
    other = io.BytesIO()
    torch.save({"format": checkpoint_mod.CHECKPOINT_FORMAT, "model_config": {"widths": [12, 16, 10, 12, 16, 30]},
                "state_dict": build_model(ModelConfig.template(widths=(8, 8, 8, 8, 8, 8), batchnorm=False)).state_dict()}, other)
    foreign = io.BytesIO()
    torch.save(model.state_dict(), foreign)  # a plain state_dict: a torch file, not ours
    return {
        "code in a torch archive": evil_zip.getvalue(),
        "code in a plain pickle": pickle.dumps(RunsCode(marker)),
        "truncated": data[: len(data) // 3],
        "other architecture": other.getvalue(),
        "not a checkpoint": b"PNG? no: just some text\n" * 10,
        "foreign torch file": foreign.getvalue(),
        "empty": b"",
    }


BAD_KINDS = ["code in a torch archive", "code in a plain pickle", "truncated", "other architecture",
             "not a checkpoint", "foreign torch file", "empty"]


@pytest.fixture
def digit_png(tmp_path, mnist):
    from PIL import Image

    path = tmp_path / "digit.png"
    Image.fromarray(mnist.test_x[0].numpy()).resize((112, 112)).save(path)
    return path


@pytest.mark.process
def test_the_exploit_is_live_when_loaded_unsafely(tmp_path):
    """Control: the payload used below really runs code when unpickled without protection."""
    marker = tmp_path / "marker"
    evil = bad_checkpoints(tmp_path, marker)["code in a plain pickle"]
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=evil, check=True, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_cli_predict_refuses_bad_checkpoints(kind, tmp_path, digit_png, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    path.write_bytes(bad_checkpoints(tmp_path, marker)[kind])
    code = main(["predict", "--checkpoint", str(path), str(digit_png)])
    out, err = capsys.readouterr()
    line = one_error_line(code, err)
    assert str(path) in line and out == ""
    assert not marker.exists()


def test_cli_predict_refuses_a_code_executing_checkpoint_in_a_real_process(tmp_path, digit_png):
    marker = tmp_path / "marker"
    procs = {}
    for kind in ("code in a torch archive", "code in a plain pickle"):
        path = tmp_path / f"{kind.replace(' ', '-')}.pt"
        path.write_bytes(bad_checkpoints(tmp_path, marker)[kind])
        procs[path] = subprocess.Popen(
            [sys.executable, "-m", "mnist_core", "predict", "--checkpoint", str(path), str(digit_png)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for path, p in procs.items():
        out, err = p.communicate(timeout=120)
        line = one_error_line(p.returncode, err)
        assert str(path) in line and out == ""
    assert not marker.exists()
    big = tmp_path / "huge.pt"
    with open(big, "wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)
    with pytest.raises(CheckpointError, match="too large"):
        load_checkpoint(big)


def test_draw_page_upload_refuses_bad_checkpoints_and_accepts_a_good_one(runs, tmp_path):
    marker = tmp_path / "marker"
    at = app("views/draw.py")
    before = at.selectbox(key="draw_model").value
    files = bad_checkpoints(tmp_path, marker)
    files["too large"] = b"PK" + b"\0" * (MAX_CHECKPOINT_BYTES + 10)
    for kind, data in files.items():
        at.file_uploader(key="draw_upload").set_value((f"{kind}.pt", data, "application/octet-stream")).run()
        assert not at.exception, (kind, at.exception)
        errors = texts(at.error)
        assert len(errors) == 1 and errors[0].startswith(f"{kind}.pt: "), (kind, errors)
        assert at.selectbox(key="draw_model").value == before
        assert not marker.exists()

    cfg = ModelConfig.template(widths=(8, 10, 8, 10, 12, 16), batchnorm=False)
    save_checkpoint(tmp_path / "mine.pt", build_model(cfg), {"test_acc": 12.5})
    at.file_uploader(key="draw_upload").set_value(("mine.pt", (tmp_path / "mine.pt").read_bytes(),
                                                   "application/octet-stream")).run()
    assert not at.exception and not at.error
    label = at.selectbox(key="draw_model").value
    assert label == f"uploaded mine.pt ({cfg.describe()})" and label in at.selectbox(key="draw_model").options
    assert any("Draw a digit" in i for i in texts(at.info))  # the page goes on with the uploaded model
    at.selectbox(key="draw_model").set_value(before).run()  # and it stays selectable
    assert not at.exception and label in at.selectbox(key="draw_model").options


def test_draw_page_shows_an_error_for_a_damaged_run_checkpoint(runs, mnist):
    run = Run.create(runs, ModelConfig(), tiny(n=320), name="damaged")
    train_run(run, mnist)
    data = (run.path / "best.pt").read_bytes()
    (run.path / "best.pt").write_bytes(data[: len(data) // 2])
    at = app("views/draw.py")
    label = next(o for o in at.selectbox(key="draw_model").options if o.startswith("damaged "))
    at.selectbox(key="draw_model").set_value(label).run()
    assert not at.exception
    assert any("best.pt: " in e and "checkpoint" in e for e in texts(at.error)), texts(at.error)


# --- inputs ----------------------------------------------------------------------------------------


@pytest.mark.process  # the Train page loads MNIST for its preview
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("tr_lr", 0.0, "lr is 0: it must be above 0"),
        ("tr_device", "cuda", "no CUDA GPU is available"),
        ("tr_device", "mps", "MPS backend is not available"),
    ],
)
def test_train_page_refuses_impossible_settings_with_the_cores_message(runs, key, value, message):
    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present, so cuda is a valid choice here")
    if value == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here, so mps is a valid choice")
    at = app("views/train.py")
    widget = at.number_input(key=key) if key == "tr_lr" else at.selectbox(key=key)
    widget.set_value(value).run()
    if not button(at, "Start training").disabled:  # refused when pressed (the device), or before (the rate)
        button(at, "Start training").click().run()
    assert not at.exception
    assert any(message in e for e in texts(at.error)), texts(at.error)
    assert run_dirs(runs) == [] and jobs.active(runs) is None


@pytest.mark.process  # the Train page loads MNIST for its preview
def test_train_page_pulls_forged_out_of_range_values_back_into_range(runs):
    """A value outside a widget's bounds (a crafted websocket message) never reaches the core as is."""
    at = app("views/train.py")
    for key, forged in [("tr_epochs", 0), ("tr_epochs", 10**6), ("tr_lr", -1.0), ("tr_lr", 1e9), ("tr_seed", -3)]:
        w = at.number_input(key=key)
        w.set_value(forged).run()
        w = at.number_input(key=key)
        assert not at.exception and w.min <= w.value <= w.max, (key, forged, w.value)
    assert at.number_input(key="tr_lr").value == 0.0  # pulled to the bound, which the core refuses:
    assert any("lr is 0" in e for e in texts(at.error))  # said next to the control,
    assert button(at, "Start training").disabled and run_dirs(runs) == []  # and nothing can start


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--augment", "90"], "augment is 90"),
        (["train", "--momentum", "1"], "momentum is 1"),
        (["train", "--weight-decay", "-1"], "weight-decay is -1"),
        (["train", "--seed", "-1"], "seed is -1"),
        (["train", "--epochs", "501"], "epochs is 501"),
        (["train", "--lr", "nan"], "lr must be a number"),
        (["train", "--lr", "inf"], "lr is inf"),
        (["train", "--limit-test", "-5"], "limit-test is -5"),
        (["train", "--widths", "12,16,10,12,16,0"], "block5 is 0"),
        (["train", "--dropout", "-0.1"], "dropout is -0.1"),
        (["train", "--batch-size", "100000"], "batch-size is 100000"),
        (["train", "--batch-size", "65", "--limit-train", "64"], "larger than the training set (64 images)"),
        (["train", "--device", "cuda:0"], "device 'cuda:0' is unknown"),
        (["predict", "--checkpoint", "/etc", "x.png"], "/etc"),
    ],
)
def test_cli_refuses_more_out_of_range_values(args, needle, runs, capsys):
    code = main(args)
    _, err = capsys.readouterr()
    assert needle in one_error_line(code, err)
    assert run_dirs(runs) == []


def test_jobs_start_refuses_settings_that_cannot_train_before_writing_anything(runs):
    with pytest.raises(ConfigError, match="larger than the training set"):
        jobs.start(runs, ModelConfig(), TrainConfig(batch_size=512, limit_train=100))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            jobs.start(runs, ModelConfig(), TrainConfig(device="cuda"))
    assert list(runs.iterdir()) == []


def canvas(fill_rgb=(0, 0, 0), alpha=255):
    """A 280x280 RGBA canvas as the Draw page gets it: opaque black, strokes in white."""
    a = np.zeros((280, 280, 4), np.uint8)
    a[..., :3] = fill_rgb
    a[..., 3] = alpha
    return a


def specks() -> dict[str, np.ndarray]:
    d = {}
    d["single pixel"] = canvas(); d["single pixel"][140, 140, :3] = 255
    d["pixel in a corner"] = canvas(); d["pixel in a corner"][0, 0, :3] = 255
    d["one click of a 20 px pen"] = canvas(); d["one click of a 20 px pen"][130:150, 130:150, :3] = 255
    d["a 27 px scribble"] = canvas(); d["a 27 px scribble"][100:127, 100:104, :3] = 255
    return d


def drawings() -> dict[str, np.ndarray]:
    d = {}
    d["a 28 px stroke: a tenth of the canvas"] = canvas(); d["a 28 px stroke: a tenth of the canvas"][100:128, 100:104, :3] = 255
    d["stroke touching top and bottom"] = canvas(); d["stroke touching top and bottom"][:, 120:160, :3] = 255
    d["ink along every border"] = canvas(); frame = d["ink along every border"]
    frame[:20, :, :3] = frame[-20:, :, :3] = frame[:, :20, :3] = frame[:, -20:, :3] = 255
    d["fully painted"] = canvas((255, 255, 255))
    d["one row"] = canvas(); d["one row"][0, :, :3] = 255
    d["transparent, one stroke"] = canvas(alpha=0); d["transparent, one stroke"][100:180, 138:142] = 255
    d["fully painted, half transparent"] = canvas((255, 255, 255), alpha=128)
    d["grey haze"] = canvas((30, 30, 30))
    return d


def test_drawing_edge_cases_never_raise_except_for_an_empty_canvas_or_a_speck():
    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    for empty in (canvas(), canvas(alpha=0)):
        with pytest.raises(EmptyDrawing, match="empty") as e:
            preprocess(empty)
        assert not isinstance(e.value, TooSmall)
        with pytest.raises(EmptyDrawing):
            predict(model, empty)
    for name, speck in specks().items():
        with pytest.raises(TooSmall, match=r"spans only \d+x\d+ of 280x280 pixels, too small"):
            predict(model, speck)
    for name, image in drawings().items():
        digit, probs, pre = predict(model, image)
        assert 0 <= digit <= 9 and np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-4, name
        assert pre.final.shape == (28, 28) and np.isfinite(pre.final).all() and pre.final.max() > 0, name


# --- data ------------------------------------------------------------------------------------------


def mnist_copy(tmp_path: Path, damage: str, victim: str) -> Path:
    """A copy of data/mnist in which `victim` is corrupted or missing (the other files are links)."""
    d = tmp_path / "mnist"
    (d / "MNIST" / "raw").mkdir(parents=True)
    for f in ("SHA256SUMS", "SHA256SUMS.idx"):
        shutil.copy(DATA_DIR / f, d / f)
    for name in FILES:
        (d / f"{name}.gz").symlink_to(DATA_DIR / f"{name}.gz")
        raw = DATA_DIR / "MNIST" / "raw" / name
        if raw.exists():
            (d / "MNIST" / "raw" / name).symlink_to(raw)
    target = d / victim
    target.unlink()
    if damage == "corrupted":
        data = bytearray((DATA_DIR / victim).read_bytes())
        data[len(data) // 2] ^= 0x55
        target.write_bytes(bytes(data))
    return d


@pytest.mark.parametrize("damage, victim, needle", [
    ("corrupted", "t10k-labels-idx1-ubyte.gz", "SHA-256 checksum does not match"),
    ("missing", "train-labels-idx1-ubyte.gz", "MNIST file is missing"),
])
@pytest.mark.process
def test_cli_train_on_damaged_data_names_the_file_and_leaves_nothing(tmp_path, runs, damage, victim, needle):
    from mnist_core.data import load_mnist

    load_mnist()  # make sure the decompressed copies exist to link to
    data = mnist_copy(tmp_path, damage, victim)
    env = {**os.environ, "MNIST_LAB_DATA": str(data), "MNIST_LAB_RUNS": str(runs)}
    procs = [subprocess.Popen([sys.executable, "-m", "mnist_core", "train", "--epochs", "1", "--limit-train", "64",
                               "--quiet", *where], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for where in (["--name", "bad-data"], ["--run-dir", str(tmp_path / "explicit")])]
    for p in procs:
        out, err = p.communicate(timeout=120)
        line = one_error_line(p.returncode, err)
        assert f"{data / victim}: {needle}" in line and out == ""
        figure(f"data.{damage}.cli_line", line)
    assert run_dirs(runs) == [] and not (tmp_path / "explicit").exists()


@pytest.mark.process
def test_a_training_started_from_the_app_on_corrupted_data_fails_with_the_file_named(tmp_path, runs, monkeypatch):
    data = mnist_copy(tmp_path, "corrupted", "train-images-idx3-ubyte.gz")
    monkeypatch.setenv("MNIST_LAB_DATA", str(data))
    run = jobs.start(runs, ModelConfig(), tiny(), name="bad-data")
    wait_gone(run.status["pid"], 90)
    assert jobs.state(run) == "failed"
    reason = jobs.status(run)["reason"]
    assert "train-images-idx3-ubyte.gz: SHA-256 checksum does not match" in reason
    figure("data.corrupted.app_run_reason", reason)
    assert run.metrics() == [] and not (run.path / "last.pt").exists()  # not one batch on wrong data


# --- resources -------------------------------------------------------------------------------------

MEMORY_SCRIPT = r'''
import gc, json, sys
from pathlib import Path
from mnist_core.config import ModelConfig, TrainConfig
from mnist_core.data import load_mnist
from mnist_core.runner import train_run
from mnist_core.runs import Run

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

data = load_mnist()
out = {"after_load_mb": rss_mb(), "after_run_mb": []}
for i in range(10):
    run = Run.create(Path(sys.argv[1]), ModelConfig(), TrainConfig(epochs=1, batch_size=64, lr=0.05, limit_train=2000,
                     limit_test=200, device="cpu"), name=f"mem-{i}")
    train_run(run, data)
    gc.collect()
    out["after_run_mb"].append(round(rss_mb(), 1))
print(json.dumps(out))
'''


@pytest.mark.process
def test_ten_trainings_in_one_process_do_not_grow_memory_without_bound(runs):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(runs)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    rss = out["after_run_mb"]
    figure("memory.rss_after_load_mb", round(out["after_load_mb"], 1))
    figure("memory.rss_after_each_of_ten_runs_mb", rss)
    figure("memory.growth_run3_to_run10_mb", round(rss[9] - rss[2], 1))
    figure("memory.seconds_for_ten_runs", round(time.perf_counter() - t0, 1))
    assert len(rss) == 10 and all(r["status"] == "finished" for r in (Run(d).status for d in runs.iterdir()))
    assert rss[9] - rss[2] < 50, rss


# --- exposure --------------------------------------------------------------------------------------


def lan_ip() -> str | None:
    """This machine's address on its network (not loopback), or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP: picks the outgoing interface, sends nothing
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.mark.process
def test_default_config_serves_localhost_only_with_xsrf_protection(tmp_path):
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["maxUploadSize"] * 2**20 >= MAX_CHECKPOINT_BYTES  # the uploader's own limit decides

    # README's "Serving on a network" says so and gives a command that works
    import requests

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Serving on a network", 1)[1].split("\n## ", 1)[0]
    assert "127.0.0.1" in section and "XSRF" in section
    command = shlex.split(next(line for line in section.splitlines() if line.startswith("./run.sh")))
    assert command[1] == "app"  # run.sh's first argument is its mode; options after it go to streamlit
    args = command[2:]
    assert args[args.index("--server.address") + 1] == "0.0.0.0"
    ip = lan_ip()
    if ip is None:
        pytest.skip("this machine has no network address besides loopback to serve on")
    port = free_port()
    args[args.index("--server.port") + 1] = str(port)
    args[args.index("--server.allowedHosts") + 1] = ip  # the name people use: here, the address itself
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", *args], cwd=ROOT,
                              env={**os.environ, "MNIST_LAB_RUNS": str(tmp_path)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def up():
            try:
                return requests.get(f"http://{ip}:{port}/_stcore/health", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(up, 90, f"the server on {ip}:{port}")
        # the allowed name drives the app; others, still, cannot
        from test_e2e_security import websocket_handshake

        assert websocket_handshake(f"http://{ip}:{port}", f"{ip}:{port}") == 101
        assert websocket_handshake(f"http://{ip}:{port}", f"rebind.test:{port}") != 101
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)

"""Start, stop and watch trainings that run outside the Streamlit script.

Why a subprocess and not a thread: a training is `python -m mnist_core train --from-run` on a
prepared run directory, in its own process session. A rerun, a page switch, a closed tab or a
restarted app server cannot kill or duplicate it; a crash in it (an exception, out of memory,
kill -9) cannot take the app down; and everything the app shows comes from the run directory,
so a restarted app picks the run up where it is.

One training at a time per runs folder: `start` takes an exclusive flock on `runs/.train.lock`
and hands the locked file to the child, which holds it for as long as it lives. The kernel drops
the lock when the child ends, however it ends, so the lock can never go stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mnist_core.card import plural
from mnist_core.config import ModelConfig, TrainConfig
from mnist_core.files import UnreadableFile, describe_os_error, open_regular, read_tail
from mnist_core.runs import META, NAME_RE, Run, RunError
from mnist_core.runner import write_card
from mnist_core.train import check_can_train

ROOT = Path(__file__).resolve().parent.parent
LOCK_NAME = ".train.lock"
SWEEPS = ".sweeps"  # the sweeps' folders in a runs folder (sweep.py)
LOCK_FD_ENV = "MNIST_LAB_LOCK_FD"  # tells a queue's training process which inherited fd is the lock

_children: dict[int, subprocess.Popen] = {}  # pid -> process started by this app process


class Busy(RuntimeError):
    """A training is already running in this runs folder."""


def active(runs_dir: Path) -> str | None:
    """Name of the run that holds the training lock, or None when no training runs."""
    lock = Path(runs_dir) / LOCK_NAME
    try:  # the runs folder is input too: a pipe in the lock's place must not hang every page
        with open_regular(lock, follow_links=False) as (fd, _):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                name = os.pread(fd, 256, 0).decode("utf-8", errors="replace").strip()
                return name if NAME_RE.match(name) else "?"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    except (OSError, UnreadableFile):
        return None


def start(runs_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, name: str | None = None,
          target: str | None = None, preset: str | None = None, parent: str | None = None) -> Run:
    """Create a run and start its training process; raises Busy if one is running.

    Settings that cannot train here (an unavailable device, a batch larger than the training
    set) raise ConfigError before anything is written.
    """
    spec = dict(model_cfg=model_cfg, train_cfg=train_cfg, name=name, target=target, preset=preset, parent=parent)
    return start_queue(runs_dir, [spec])[0]


def start_queue(runs_dir: Path, specs: list[dict]) -> list[Run]:
    """Create several runs and train them one after the other in one process (an A/B pair, say).

    Each spec holds start()'s arguments. The first run is `running`, the others `queued` until
    their turn; stopping one cancels those after it. Raises Busy if a training is running.
    """
    for spec in specs:
        check_can_train(spec["train_cfg"])
    runs_dir = Path(runs_dir)
    fd = _lock(runs_dir, "cannot start the training")
    try:
        runs: list[Run] = []
        try:
            for spec in specs:
                runs.append(Run.create(runs_dir, spec["model_cfg"], spec["train_cfg"], name=spec.get("name"),
                                       **{k: spec.get(k) for k in META}))
            with open(runs[0].path / "train.log", "wb") as log:
                proc = _spawn(runs, fd, log)
        except BaseException as e:
            for run in runs:  # all or nothing: no orphan queued runs
                shutil.rmtree(run.path, ignore_errors=True)
            if isinstance(e, OSError):  # a full or read-only disk: one line naming the file
                raise RunError(f"cannot start the training: {describe_os_error(e)}") from None
            raise
        for i, run in enumerate(runs):
            try:
                run.set_status("running" if i == 0 else "queued", pid=proc.pid)
            except OSError:
                pass  # a disk that filled just now: the process reports for itself, or _watch does
        _children[proc.pid] = proc
        threading.Thread(target=_watch, args=(proc, runs), daemon=True).start()
        return runs
    finally:
        os.close(fd)  # the child's inherited copy keeps the lock


def _lock(runs_dir: Path, doing: str) -> int:
    """The runs folder's lock file, opened and locked exclusively: its descriptor. Busy when a
    training holds it; RunError ('<doing>: <why>') when the folder will not have it."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(runs_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunError(f"{doing}: {describe_os_error(e)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(f"{holder_text(runs_dir, active(runs_dir))} is running: stop it or wait for it to finish") from None
    return fd


def holder_text(runs_dir: Path, holder: str | None) -> str:
    """What holds the training lock, in words: a sweep (named by its folder in SWEEPS) or a training."""
    if holder and (Path(runs_dir) / SWEEPS / holder / "spec.json").is_file():
        return f"sweep {holder}"
    return f"a training ({holder})"


@contextlib.contextmanager
def hold(runs_dir: Path, label: str):
    """The runs folder's training lock for this process, for as long as the block runs (a sweep):
    Start in the app says Busy meanwhile, and a sweep waits for no training. Busy if it is taken.
    A process the app started (start_sweep) holds the lock already: it keeps the one it inherited."""
    inherited = os.environ.pop(LOCK_FD_ENV, "")  # popped: Ray's workers must not think they hold it
    fd = int(inherited) if inherited.isdigit() else _lock(Path(runs_dir), "cannot take the training lock")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, label.encode(), 0)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def _spawn(runs: list[Run], fd: int, log) -> subprocess.Popen:
    """The training process for the queue `runs`, holding the lock `fd`, writing to `log`."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, runs[0].name.encode(), 0)
    cmd = [sys.executable, "-m", "mnist_core", "train", "--from-run", "--run-dir", str(runs[0].path), "--quiet"]
    for run in runs[1:]:
        cmd += ["--then", str(run.path)]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        pass_fds=(fd,), start_new_session=True,  # survives the app; holds the lock
        env={**os.environ, LOCK_FD_ENV: str(fd)},
    )


def start_sweep(runs_dir: Path, folder: Path, resume: bool = False) -> int:
    """Start the sweep prepared in `folder` (sweep.create) in a process of its own, like a training:
    `python -m mnist_core sweep --from-dir FOLDER` (or --resume FOLDER), its output in FOLDER/sweep.log. The
    lock is taken here and handed over, so two clicks cannot start two. Busy when it is taken; the pid."""
    runs_dir = Path(runs_dir)
    fd = _lock(runs_dir, "cannot start the sweep")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, folder.name.encode(), 0)
        cmd = [sys.executable, "-m", "mnist_core", "sweep", "--resume" if resume else "--from-dir", str(folder)]
        try:
            with open(folder / "sweep.log", "ab") as log:
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(fd,),
                    start_new_session=True, env={**os.environ, LOCK_FD_ENV: str(fd)})
        except OSError as e:
            raise RunError(f"cannot start the sweep: {describe_os_error(e)}") from None
        _children[proc.pid] = proc
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped: never a zombie that reads as alive
        return proc.pid
    finally:
        os.close(fd)  # the child's inherited copy keeps the lock


def announce(name: str) -> None:
    """In a training process started by start_queue: name the run now training in the lock file."""
    fd = os.environ.get(LOCK_FD_ENV)
    if fd and fd.isdigit():
        try:
            os.ftruncate(int(fd), 0)
            os.pwrite(int(fd), name.encode(), 0)
        except OSError:
            pass  # not our lock after all (a stray variable): nothing to announce


def stop(run: Run) -> None:
    """Ask a running training to stop; it finishes the batch, saves last.pt and marks itself stopped."""
    run.request_stop()


MAX_PID = 2**22  # Linux's ceiling (pid_max): anything else in a status file is not a process of ours


def pid_alive(pid) -> bool:
    """Whether `pid` (as read from a run's status.json: any JSON value) is a live training process.
    Only a whole number from 2 to MAX_PID can be: never 0, -1 (which signals every process) or 1."""
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 < pid <= MAX_PID:
        return False
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie, or a recycled pid that is not a training, does not count
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (not Linux): trust the signal check
    # ours: the training command, the app's entry point, or a sweep's trial in a Ray worker
    return stat.split(")")[-1].split()[0] != "Z" and (
        b"mnist_core" in cmdline or b"mnist-lab" in cmdline or cmdline.startswith(b"ray::"))


def status(run: Run) -> dict:
    """The run's status.json as it stands, except that a running or queued run whose process is
    gone reads as failed or interrupted, with the reason. Reading never writes: the final status
    is written by the training process itself or, when it dies without one, by `_watch`."""
    current = run.status
    if current.get("status") not in ("running", "queued") or pid_alive(current.get("pid")):
        return current
    current = run.status  # re-read: the process may have written its final status meanwhile
    if current.get("status") not in ("running", "queued"):
        return current
    return {**current, **_ending(run, current)}


def state(run: Run) -> str:
    """'running', 'queued', 'finished', 'stopped', 'failed', 'interrupted' or 'unknown'."""
    return str(status(run).get("status", "unknown"))


def _ending(run: Run, current: dict) -> dict:
    """The status and reason of a run whose process ended without writing a final status."""
    if current.get("status") == "queued":
        return {"status": "interrupted", "reason": "the training process ended before this queued run's turn"}
    pid = current.get("pid")
    proc = _children.get(pid) if isinstance(pid, int) else None
    code = proc.returncode if proc is not None else None
    if code is not None and code < 0:
        return {"status": "failed",
                "reason": f"the training process was killed by signal {-code} ({signal.Signals(-code).name})"}
    if code is not None and code != 0:
        return {"status": "failed", "reason": f"the training process exited with code {code}: {_last_log_line(run)}"}
    return {"status": "interrupted",
            "reason": f"the training process ended without a final status after {plural(len(run.epochs()), 'epoch')}"}


def _watch(proc: subprocess.Popen, runs: list[Run]) -> None:
    """Wait for a training process of this app (reaping it, so it never lingers as a zombie); if it
    ended without writing its runs' final status (killed, out of memory), write it and the card."""
    proc.wait()
    for run in runs:
        current = run.status
        if current.get("status") not in ("running", "queued"):
            continue
        ending = _ending(run, current)
        try:  # a full or read-only disk: the state is still derived on every read
            run.set_status(ending["status"], reason=ending["reason"])
            write_card(run)
        except OSError:
            pass


def _last_log_line(run: Run) -> str:
    try:
        data = read_tail(run.path / "train.log", 64 * 1024)  # the end of a log of any length
    except (OSError, UnreadableFile):
        return "no log"
    lines = [l for l in data.decode("utf-8", errors="replace").splitlines() if l.strip()]
    return lines[-1][:200] if lines else "no output"


def delete(run: Run) -> None:
    """Remove a run directory; refuses a run that is still training. A disk that will not let go
    (read-only, say) is a RunError naming the file."""
    if state(run) == "running":
        raise RunError(f"run {run.name!r} is still training: stop it first")
    try:
        shutil.rmtree(run.path)
    except OSError as e:
        raise RunError(f"cannot delete run {run.name!r}: {describe_os_error(e)}") from None

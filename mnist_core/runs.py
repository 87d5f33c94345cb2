"""A run on disk: config, metrics, status, checkpoints and card, every file written atomically.

    runs/<name>/
      config.json     {"name", "created", "model": ModelConfig, "train": TrainConfig, ...}
      metrics.jsonl   one JSON record per line, appended as training goes (see train.py)
      status.json     {"status": running|finished|stopped|failed|interrupted, "pid", "reason", ...}
      best.pt         checkpoint of the epoch with the best test accuracy
      last.pt         checkpoint of the latest epoch (or of the moment of a stop)
      card.md         TARGET / RESULTS / ANALYSIS, as in the reference experiment
      STOP            present = please stop (written by whoever wants the run to stop)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_core.checkpoint import MAX_CHECKPOINT_BYTES
from mnist_core.config import ConfigError, ModelConfig, TrainConfig, model_config_from_dict, train_config_from_dict
from mnist_core.goal import Goal, judge, run_facts
from mnist_core.files import (
    SMALL_FILE_BYTES,
    UnreadableFile,
    atomic_write_json,
    open_regular,
    read_bytes,
    read_json,
)

METRICS_LIMIT = 512 * 1024**2  # metrics.jsonl of a long command-line run is hundreds of MB: an archive takes it whole
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATUSES = ("queued", "running", "finished", "stopped", "failed", "interrupted")
# the fields every record of a kind carries (train.py); a record without them is garbled and skipped
RECORD_FIELDS = {
    "batch": ("epoch", "batch", "batches", "step", "loss", "acc", "images_per_s"),
    "epoch": ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_correct", "test_total", "lr",
              "seconds", "images_per_s"),
    "stopped": ("epoch", "batch", "step"),
}


META = ("preset", "target", "parent", "group", "sweep")  # what config.json says of a run besides its settings


class RunError(ValueError):
    """A run name or run directory that cannot be used."""


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


_COUNTS = ("epoch", "batch", "batches", "step", "test_correct", "test_total", "epochs", "val_total")  # whole numbers
_SHARES = ("acc", "train_acc", "test_acc", "val_acc")  # percentages
_RATES = ("lr", "seconds", "images_per_s", "elapsed")  # finite, not negative


def _well_formed(rec) -> bool:
    """A record as train.py writes it: a known kind, its fields there, counts whole and in range,
    accuracies 0-100, rates finite. Losses may be NaN or infinite (a training that diverged)."""
    if not isinstance(rec, dict) or rec.get("kind") not in RECORD_FIELDS:
        return False
    for f in RECORD_FIELDS[rec["kind"]]:
        v = rec.get(f)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
    for f, v in rec.items():
        if f in _COUNTS and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 10**9):
            return False
        if f in _SHARES and (not isinstance(v, (int, float)) or not 0.0 <= v <= 100.0):
            return False
        if f in _RATES and (not isinstance(v, (int, float)) or not 0.0 <= v < 1e12):
            return False
    return True


class MetricsLog:
    """The records of one metrics.jsonl, read incrementally: each look parses only the lines
    appended since the last one. What is kept is bounded whatever the file's size: every epoch
    and stop record, the latest batch, and an evenly spaced sample of at most MAX_BATCHES batch
    records (the stride doubles as the file grows). Batch lines that the sample skips are
    recognised without being parsed, so a 200 MB log of a long run costs one pass, then nothing."""

    MAX_BATCHES = 2000
    MAX_EPOCHS = 20000
    CHUNK = 8 * 1024 * 1024

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self._reset(None)

    def _reset(self, ident) -> None:
        self.ident, self.offset = ident, 0
        self.epochs: list[dict] = []
        self.others: list[tuple[int, dict]] = []  # (line number, epoch or stop record)
        self.batches: list[tuple[int, dict]] = []  # (line number, record) of every `stride`-th batch
        self.last_batch: dict | None = None
        self.lines = self.batch_count = 0
        self.stride = 1
        self.error: str | None = None

    def update(self) -> "MetricsLog":
        """Read what was appended; a missing file is an empty log, one that cannot be read says why in .error."""
        with self.lock:
            try:
                with open_regular(self.path, follow_links=False) as (fd, st):
                    ident = (st.st_dev, st.st_ino)
                    if ident != self.ident or st.st_size < self.offset:  # a new file, or one cut short
                        self._reset(ident)
                    while self.offset < st.st_size:
                        chunk = os.pread(fd, min(self.CHUNK, st.st_size - self.offset), self.offset)
                        if not chunk:
                            break
                        end = chunk.rfind(b"\n")
                        if end < 0:
                            if len(chunk) < self.CHUNK:
                                break  # a line still being written: read it when it is whole
                            end = len(chunk) - 1  # a line longer than a chunk is no record of ours: skip it
                        self._parse(chunk[: end + 1])
                        self.offset += end + 1
            except FileNotFoundError:
                self._reset(None)
            except (OSError, UnreadableFile) as e:
                self._reset(None)
                self.error = str(e) if isinstance(e, UnreadableFile) else f"{self.path}: {e.strerror}"
        return self

    def _parse(self, data: bytes) -> None:
        skipped = None  # the last batch line the sample skipped: parsed at the end, as the latest batch
        for line in data.split(b"\n"):
            if not line:
                continue
            self.lines += 1
            if line.startswith(b'{"kind": "batch"'):  # train.py writes the kind first
                self.batch_count += 1
                if (self.batch_count - 1) % self.stride:
                    skipped = line
                    continue
            rec = _record(line)
            if rec is None:
                continue
            if rec["kind"] == "batch":
                skipped, self.last_batch = None, rec
                if (self.batch_count - 1) % self.stride == 0:
                    self.batches.append((self.lines, rec))
                    if len(self.batches) > self.MAX_BATCHES:
                        self.batches = self.batches[::2]
                        self.stride *= 2
            elif len(self.others) < self.MAX_EPOCHS:
                self.others.append((self.lines, rec))
                if rec["kind"] == "epoch":
                    self.epochs.append(rec)
        if skipped is not None:
            self.last_batch = _record(skipped) or self.last_batch

    def records(self) -> list[dict]:
        """Epochs, stops, the sampled batches and the latest batch, in the order they were written."""
        with self.lock:
            kept = sorted([*self.batches, *self.others], key=lambda item: item[0])
        out = [r for _, r in kept]
        if self.last_batch is not None and not any(r is self.last_batch for _, r in self.batches[-1:]):
            out.append(self.last_batch)
        return out


def _record(line: bytes) -> dict | None:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # a cut line, garbage, or JSON nested thousands deep
        return None
    return rec if _well_formed(rec) else None


_LOGS: OrderedDict = OrderedDict()  # path -> MetricsLog, the most recently used last
_LOGS_LOCK = threading.Lock()
MAX_LOGS = 256


def metrics_log(path: Path) -> MetricsLog:
    """The process-wide MetricsLog of a metrics.jsonl, brought up to date."""
    path = Path(path)
    with _LOGS_LOCK:
        log = _LOGS.pop(path, None) or MetricsLog(path)
        _LOGS[path] = log
        while len(_LOGS) > MAX_LOGS:
            _LOGS.popitem(last=False)
    return log.update()


# ---------------------------------------------------------------------------------------------
# Runs


def check_run_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise RunError(
            f"run name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def new_run_name(runs_dir: Path, prefix: str = "run") -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{prefix}-{stamp}"
    name, i = base, 2
    while (Path(runs_dir) / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


@dataclass
class Run:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, name: str | None = None,
               **meta) -> "Run":
        """A new run directory; refuses a name that exists (mkdir is the lock against doubles)."""
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        name = check_run_name(name) if name else new_run_name(runs_dir)
        path = runs_dir / name
        try:
            path.mkdir()
        except FileExistsError:
            raise RunError(f"run {name!r} already exists in {runs_dir}") from None
        run = cls(path)
        try:
            run.write_config(model_cfg, train_cfg, **meta)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # a full disk, say: leave no half-made run behind
            raise
        return run

    @classmethod
    def at(cls, path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, **kw) -> "Run":
        """A run in the directory `path`: new, or empty, or prepared with a config.json and no metrics.

        A directory whose run has started (metrics or a status, e.g. one the app just started) is refused.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} exists and is not a directory")
        if path.is_dir() and ((path / "metrics.jsonl").exists() or (path / "status.json").exists()):
            raise RunError(f"{path} already holds a run; choose a new --run-dir")
        made = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        try:
            run.write_config(model_cfg, train_cfg, **kw)
        except BaseException:
            if made:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return run

    def write_config(self, model_cfg, train_cfg, **meta) -> None:
        """config.json: the name, the model, the recipe and META's keys (preset, target, parent: the
        run it continues, group: the seed group it belongs to); a key not given keeps its old value."""
        if unknown := set(meta) - set(META):
            raise TypeError(f"unknown run metadata: {', '.join(sorted(unknown))}")
        old = read_json(self.path / "config.json", {}) or {}
        atomic_write_json(
            self.path / "config.json",
            {
                "name": self.name,
                "created": old.get("created") or dt.datetime.now().isoformat(timespec="seconds"),
                **{k: meta[k] if meta.get(k) is not None else old.get(k) for k in META},
                "params": model_cfg.params,
                "model": model_cfg.to_dict(),
                "train": asdict(train_cfg),
            },
        )

    # -- reading ---------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """config.json as a mapping: {} when unreadable, without a "model" or "train" that is not one."""
        cfg = _mapping(read_json(self.path / "config.json"))
        return {k: v for k, v in cfg.items() if k not in ("model", "train") or isinstance(v, dict)}

    def model_config(self) -> ModelConfig:
        return model_config_from_dict(self.config["model"])

    def train_config(self) -> TrainConfig:
        return train_config_from_dict(self.config["train"])

    @property
    def status(self) -> dict:
        return _mapping(read_json(self.path / "status.json"))

    def log(self) -> "MetricsLog":
        """metrics.jsonl, read from where the last look at it stopped (see MetricsLog)."""
        return metrics_log(self.path / "metrics.jsonl")

    def metrics(self) -> list[dict]:
        """The records kept of metrics.jsonl, in order: every epoch and stop, a bounded sample of batches."""
        return self.log().records()

    def read_file(self, name: str) -> bytes | None:
        """One of the run's own files for a download or an archive: None when it is missing;
        UnreadableFile when it is a link (nothing outside the run is ever read), a pipe, a
        directory or too large."""
        limit = MAX_CHECKPOINT_BYTES if name.endswith(".pt") else METRICS_LIMIT if name.endswith(".jsonl") \
            else SMALL_FILE_BYTES
        try:
            return read_bytes(self.path / name, limit, follow_links=False)
        except FileNotFoundError:
            return None

    def problems(self) -> list[str]:
        """A line for each of the run's files that is there but cannot be read or understood."""
        out = []
        for name in ("config.json", "status.json"):
            path = self.path / name
            if not os.path.lexists(path):
                continue
            try:
                value = json.loads(read_bytes(path, SMALL_FILE_BYTES, follow_links=False))
            except UnreadableFile as e:
                out.append(str(e).replace(f"{self.path}/", ""))
            except (ValueError, RecursionError):
                out.append(f"{name}: not valid JSON")
            except OSError as e:
                out.append(f"{name}: {e.strerror}")
            else:
                if not isinstance(value, dict):
                    out.append(f"{name}: not a JSON object")
        error = self.log().error
        if error:
            out.append(error.replace(f"{self.path}/", ""))
        return out

    @property
    def notes(self) -> dict:
        """notes.json: {"notes": text, "tags": [tag, ...]}, each empty when unset or unreadable."""
        d = _mapping(read_json(self.path / "notes.json"))
        tags = d.get("tags") if isinstance(d.get("tags"), list) else []
        return {"notes": d["notes"] if isinstance(d.get("notes"), str) else "",
                "tags": [t for t in tags if isinstance(t, str)]}

    def card_text(self) -> str | None:
        """card.md's text, None when there is none; UnreadableFile names a card that cannot be read."""
        data = self.read_file("card.md")
        return None if data is None else data.decode("utf-8", errors="replace")

    def epochs(self) -> list[dict]:
        return list(self.log().epochs)

    # -- writing during training -----------------------------------------------------------
    def set_status(self, status: str, **extra) -> None:
        assert status in STATUSES, status
        now = dt.datetime.now().isoformat(timespec="seconds")
        cur = self.status
        cur.update(extra)
        cur["status"] = status
        cur["updated"] = now
        if status == "running":
            cur.setdefault("started", now)
        elif status != "queued":  # a queued run has not ended: it ends after its turn
            cur.setdefault("ended", now)
        atomic_write_json(self.path / "status.json", cur)

    def open_metrics(self):
        """Append-mode writer: one JSON line per record, flushed as it happens."""
        return open(self.path / "metrics.jsonl", "a", encoding="utf-8", buffering=1)

    def request_stop(self) -> None:
        (self.path / "STOP").touch()

    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def summary(self, status: dict | None = None, goal: Goal | None = None) -> dict:
        """One row for the runs table, from whatever files are readable, judged against `goal`;
        `status` in place of status.json's when given (jobs.status, which knows whether the process
        is alive)."""
        cfg, epochs = self.config, self.epochs()
        status = self.status if status is None else status
        model, train = _mapping(cfg.get("model")), _mapping(cfg.get("train"))
        try:
            architecture = model_config_from_dict(model).describe()
        except ConfigError:
            architecture = "?"
        params, before = run_facts(cfg)
        verdict = judge(goal or Goal(), epochs, params, before)
        state = str(status.get("status", "unknown" if not epochs else "interrupted"))
        return {
            "name": self.name,
            "created": str(cfg.get("created", "")),
            "status": state,
            "architecture": architecture,
            "params": params,
            "final test acc": verdict.final,
            "last min": verdict.last_min,
            # a run still training has no verdict yet: its last epochs are still to come
            "verdict": "…" if state in ("running", "queued") else verdict.word,
            "why": verdict.reason,
            "best train acc": max((e["train_acc"] for e in epochs), default=None),
            "best test acc": max((e["test_acc"] for e in epochs), default=None),
            "epochs": f"{len(epochs)}/{train.get('epochs', '?')}",
            "epochs in all": before + len(epochs),
            "seed": train.get("seed"),
            "group": str(cfg.get("group") or ""),
            "sweep": str(cfg.get("sweep") or ""),
            "parent": str(cfg.get("parent") or ""),
            "tags": ", ".join(self.notes["tags"]),
            "reason": str(status.get("reason", "")),
        }


def list_runs(runs_dir: Path) -> list[Run]:
    """Every run directory, newest first; hidden and stray files are ignored."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [Run(p) for p in runs_dir.iterdir() if p.is_dir() and NAME_RE.match(p.name)]
    return sorted(runs, key=lambda r: (str(r.config.get("created", "")), r.name), reverse=True)


def get_run(runs_dir: Path, name: str) -> Run:
    path = Path(runs_dir) / check_run_name(name)
    if not path.is_dir():
        raise RunError(f"no run named {name!r} in {runs_dir}")
    return Run(path)

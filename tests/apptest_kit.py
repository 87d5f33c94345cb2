"""Helpers shared by the tests: AppTest pages and buttons, tiny trained runs, free ports."""

import json
import socket
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from mnist_core import jobs
from mnist_core.config import ModelConfig, TrainConfig
from mnist_core.runner import train_run
from mnist_core.runs import Run


def page(at: AppTest, path: str) -> AppTest:
    """Switch to a page script (e.g. "views/draw.py"), run it, and insist it raised nothing."""
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def chart_keys(node) -> set[str]:
    """Keys of the plotly charts under an AppTest or an element (the user key ends the element id)."""
    return {c.proto.id.rsplit("-", 1)[-1] for c in node.get("plotly_chart")}


def finished_tiny_run(folder: Path, mnist, **settings) -> Path:
    """A finished one-epoch run named "tiny" of the reference model, trained with lr 0.05 and `settings`."""
    run = Run.create(folder, ModelConfig(), TrainConfig(epochs=1, lr=0.05, **settings), name="tiny")
    train_run(run, mnist)
    assert run.status["status"] == "finished"
    return run.path


def epoch_record(epoch: int, test_acc: float = 99.4, lr: float = 0.1) -> str:
    """One metrics.jsonl line: an epoch as training writes it, at this test accuracy."""
    return json.dumps({"kind": "epoch", "epoch": epoch, "train_loss": 0.05, "train_acc": 99.0, "test_loss": 0.02,
                       "test_acc": test_acc, "test_correct": round(test_acc * 100), "test_total": 10000, "lr": lr,
                       "seconds": 1.0, "images_per_s": 1000.0}) + "\n"


def made_run(folder: Path, name: str, accuracies, model: ModelConfig | None = None, **meta) -> Run:
    """A finished run whose epochs reached these test accuracies, written by hand (no training)."""
    run = Run.create(folder, model or ModelConfig(), TrainConfig(epochs=len(accuracies), seed=meta.pop("seed", 1)),
                     name=name, **meta)
    with run.open_metrics() as f:
        for i, acc in enumerate(accuracies, 1):
            f.write(epoch_record(i, acc))
    run.set_status("finished")
    return run


def button(at: AppTest, label: str):
    """The one button with this label (failing if there is none, or several)."""
    found = [b for b in at.button if b.label == label]
    assert len(found) == 1, [b.label for b in at.button]
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(runs_dir: Path, timeout: float = 240) -> None:
    """Until no training holds the runs folder's lock (polling; fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while jobs.active(runs_dir) is not None:
        assert time.monotonic() < deadline, f"the training process did not end in {timeout} s"
        time.sleep(0.2)

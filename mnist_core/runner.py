"""Trains one run directory end to end: the loop, then checkpoints, the evaluation cache, the card.

The training loop (train.py) knows nothing of files; this module's callback writes every record
to metrics.jsonl, each epoch's checkpoints and card, and the final status. A failure of any kind
marks the run failed with its reason and is raised again.
"""

from __future__ import annotations

import json
import os

from mnist_core import goal
from mnist_core.card import render as render_card
from mnist_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mnist_core.config import ConfigError, TrainConfig
from mnist_core.files import atomic_write_text
from mnist_core.insight import cached_evaluation
from mnist_core.model import summary_text
from mnist_core.runs import Run
from mnist_core.train import train


def card_markdown(run: Run, status: str | None = None) -> str:
    """The run's card from its files, judged by the runs folder's goal; `status` in place of
    status.json's when given."""
    try:
        table = summary_text(run.model_config())
    except (ConfigError, KeyError):
        table = ""
    return render_card(run.config, run.epochs(), status or run.status.get("status", "unknown"), table,
                       goal.load(run.path.parent), run.notes)


def write_card(run: Run) -> None:
    atomic_write_text(run.path / "card.md", card_markdown(run))


def train_run(run: Run, data, progress=None, should_stop=None):
    """Train the run's config on data, writing metrics, checkpoints, status and card as it goes.

    progress(record) sees every record after it is written; should_stop() is polled every batch
    along with the run's STOP file. Returns train.TrainResult. Any exception marks the run
    failed, with the reason, and is raised again.
    """
    model_cfg, train_cfg = run.model_config(), run.train_config()
    # A STOP already present is honoured, not cleared: Stop may be pressed while the process
    # is still loading MNIST, before this point.
    run.set_status("running", pid=os.getpid())
    metrics = run.open_metrics()

    def callback(record):
        try:
            metrics.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: say which file
            raise OSError(e.errno, e.strerror, str(run.path / "metrics.jsonl")) from None
        if progress:
            progress(record)

    def checkpoint(model, record, is_best):
        extra = {"run": run.name, "epoch": record["epoch"], "test_acc": record.get("test_acc")}
        save_checkpoint(run.path / "last.pt", model, extra)
        if is_best:
            save_checkpoint(run.path / "best.pt", model, extra)
        write_card(run)

    def stop():
        return run.stop_requested() or bool(should_stop and should_stop())

    try:
        result = train(model_cfg, train_cfg, data, callback=callback, should_stop=stop, checkpoint=checkpoint)
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}".splitlines()[0]
        try:  # on a full disk these fail too; the original error is the one to report
            metrics.close()
        except OSError:
            pass
        try:
            run.set_status("failed", reason=reason[:300])
            write_card(run)
        except OSError:
            pass
        raise
    metrics.close()
    precompute_evaluation(run, data, train_cfg)
    run.set_status("stopped" if result.stopped else "finished", best_test_acc=result.best_test_acc, best_epoch=result.best_epoch)
    write_card(run)
    (run.path / "STOP").unlink(missing_ok=True)
    return result


def precompute_evaluation(run: Run, data, train_cfg: TrainConfig) -> None:
    """Cache the best checkpoint's test-set predictions while the data is in memory, so the
    Runs page's confusion matrix opens at once (about a second of work here, in the background)."""
    best = run.path / "best.pt"
    if train_cfg.limit_test is not None or not best.exists() or data is None:
        return
    try:
        model, _ = load_checkpoint(best)
        cached_evaluation(best, model, data.test_x, data.test_y)
    except (OSError, CheckpointError):
        pass  # only a cache: the page computes it when it is missing

"""The assignment's goal and the verdicts against it.

A goal is a triple: a test accuracy held in each of the last epochs (99.4% in each of the last 3),
an epoch limit (at most 15, counting the epochs a continued run's weights saw before it) and a
parameter budget (under 8,000). A run *meets* it or *misses* it, with the reason; a group of runs
that differ only in their seed holds it on k of N seeds.

The goal is set once and kept in settings.json in the runs folder, so that the pages, the cards and
the command line judge by the same one.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_core.files import atomic_write_json, describe_os_error, read_json

SETTINGS = "settings.json"


class GoalError(ValueError):
    """A goal that cannot be: one line, for a page's error box or the command line."""


@dataclass(frozen=True)
class Goal:
    accuracy: float = 99.4  # test accuracy, in %, to hold in each of the last `last` epochs
    last: int = 3  # how many of the last epochs must hold it
    max_epochs: int = 15  # epochs the weights may have seen in all
    max_params: int = 8000  # parameters: strictly fewer than this

    def __post_init__(self):
        for name, lo, hi in (("last", 1, 100), ("max_epochs", 1, 10000), ("max_params", 1, 10**9)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise GoalError(f"goal {name.replace('_', ' ')} must be a whole number from {lo} to {hi}, got {v!r}")
        a = self.accuracy
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 100:
            raise GoalError(f"goal accuracy must be a percentage above 0 and at most 100, got {a!r}")
        if self.last > self.max_epochs:
            raise GoalError(f"the goal asks for {self.last} last epochs but allows only {self.max_epochs}")

    def text(self) -> str:
        """'99.4% in each of the last 3 epochs, at most 15 epochs, under 8,000 parameters'."""
        return (f"{self.accuracy:g}% in each of the last {self.last} epochs, at most {self.max_epochs} epochs, "
                f"under {self.max_params:,} parameters")

    def held(self) -> str:
        """'99.4% in the last 3 epochs'."""
        return f"{self.accuracy:g}% in the last {self.last} epochs"


@dataclass(frozen=True)
class Verdict:
    meets: bool
    reason: str  # why it misses, or what it holds; one short phrase
    last_min: float | None  # the lowest test accuracy of the last `goal.last` epochs (None: too few)
    final: float | None  # the last epoch's test accuracy

    @property
    def word(self) -> str:
        return "meets" if self.meets else "misses"

    def text(self) -> str:
        return f"{self.word}: {self.reason}"


def load(runs_dir: Path) -> Goal:
    """The goal saved in the runs folder; the assignment's triple when none is saved or it cannot be read."""
    d = read_json(Path(runs_dir) / SETTINGS)
    if isinstance(d, dict) and isinstance(d.get("goal"), dict):
        try:
            return Goal(**{k: v for k, v in d["goal"].items() if k in Goal.__dataclass_fields__})
        except (GoalError, TypeError):
            pass
    return Goal()


def save(runs_dir: Path, goal: Goal) -> None:
    path = Path(runs_dir) / SETTINGS
    d = read_json(path)
    d = d if isinstance(d, dict) else {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**d, "goal": asdict(goal)})
    except OSError as e:
        raise GoalError(f"cannot save the goal: {describe_os_error(e)}") from None


def run_facts(cfg: dict) -> tuple[int | None, int]:
    """(parameters, epochs before it) of a run, from its config.json as a mapping: what a verdict
    needs besides the epochs. The file is input: a value that is not a whole number reads as unknown
    (parameters) or none (epochs before)."""
    params = cfg.get("params")
    before = cfg.get("train", {}).get("start_epoch") if isinstance(cfg.get("train"), dict) else None
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    return (params if whole(params) else None), (before if whole(before) and before >= 0 else 0)


def judge_run(goal: Goal, cfg: dict, epochs: list[dict]) -> Verdict:
    """judge() for a run from its config.json mapping and its epoch records."""
    params, before = run_facts(cfg)
    return judge(goal, epochs, params, before)


def judge(goal: Goal, epochs: list[dict], params: int | None, epochs_before: int = 0) -> Verdict:
    """The verdict on a run's epoch records (each with "epoch" and "test_acc"); `epochs_before` is
    how many epochs the weights saw in the runs it continues. Reasons, the first that applies:
    over budget, too many epochs, too few epochs, and the first of the last epochs under the goal."""
    tail = epochs[-goal.last:] if len(epochs) >= goal.last else []
    last_min = min(e["test_acc"] for e in tail) if tail else None
    final = epochs[-1]["test_acc"] if epochs else None

    def verdict(meets, reason):
        return Verdict(meets, reason, last_min, final)

    if params is None:
        return verdict(False, "parameters unknown")
    if params >= goal.max_params:
        return verdict(False, f"{params:,} parameters (the budget is under {goal.max_params:,})")
    seen = epochs_before + len(epochs)
    if seen > goal.max_epochs:
        where = f" ({epochs_before} before + {len(epochs)} here)" if epochs_before else ""
        return verdict(False, f"{seen} epochs{where}, over the limit of {goal.max_epochs}")
    if not tail:
        return verdict(False, f"{len(epochs)} of the {goal.last} epochs the goal looks at")
    under = [e for e in tail if e["test_acc"] < goal.accuracy]
    if under:
        e = under[0]
        return verdict(False, f"epoch {e['epoch']} at {e['test_acc']:.2f}%")
    return verdict(True, f"{goal.accuracy:g}% held in the last {goal.last} epochs (min {last_min:.2f}%)")


def holds_from(goal: Goal, epochs: list[dict]) -> int | None:
    """The epoch from which every later epoch is at or above the goal's accuracy (None: the last is not)."""
    start = None
    for e in epochs:
        if e["test_acc"] >= goal.accuracy:
            start = e["epoch"] if start is None else start
        else:
            start = None
    return start


def analysis(goal: Goal, epochs: list[dict], verdict: Verdict) -> str:
    """One ANALYSIS line against the goal: 'Holds 99.4% from epoch 9.' / 'Misses by 0.04 on epoch 13.'"""
    if not epochs:
        return f"No epoch to judge against the goal ({goal.text()})."
    start = holds_from(goal, epochs)
    if start is not None and epochs[-1]["epoch"] - start + 1 >= goal.last:
        line = f"Holds {goal.accuracy:g}% from epoch {start}"
        return line + ("." if verdict.meets else f", but {verdict.reason}: it misses the goal.")
    tail = epochs[-goal.last:]
    worst = min(tail, key=lambda e: e["test_acc"])
    return (f"Misses {goal.accuracy:g}% by {goal.accuracy - worst['test_acc']:.2f} on epoch {worst['epoch']}"
            + ("." if verdict.reason.startswith("epoch ") else f"; and {verdict.reason}."))


@dataclass(frozen=True)
class GroupVerdict:
    held: int  # seeds that meet the goal
    seeds: int  # seeds with a verdict
    mean: float | None  # mean of the seeds' last-epochs minimum
    low: float | None  # the lowest of them

    def text(self, goal: Goal) -> str:
        """'holds 99.4% in the last 3 epochs on 2 of 3 seeds (mean 99.43, min 99.38)'."""
        stats = f" (mean {self.mean:.2f}, min {self.low:.2f})" if self.mean is not None else ""
        return f"holds {goal.held()} on {self.held} of {self.seeds} seeds{stats}"

    @property
    def meets(self) -> bool:
        return self.seeds > 0 and self.held == self.seeds


def judge_group(verdicts: list[Verdict]) -> GroupVerdict:
    """The group's verdict from each seed's: how many meet the goal; the mean and the lowest of
    their last-epochs minimum (a seed with too few epochs has none and counts as missing)."""
    floors = [v.last_min for v in verdicts if v.last_min is not None]
    return GroupVerdict(sum(v.meets for v in verdicts), len(verdicts),
                        statistics.fmean(floors) if floors else None, min(floors) if floors else None)

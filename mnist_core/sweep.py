"""Sweeps: many trainings chosen by a search, on Ray Tune with Optuna's TPE and ASHA early stopping.

A space file (JSON) says what to search:

    {
      "templates": ["conv{w1}p1 bn relu conv{w2}p1 bn relu maxpool conv{w3}p1 bn relu gap conv10k1"],
      "params": {"w1": {"int": [4, 12]}, "w2": {"int": [8, 16]}, "w3": {"int": [8, 24]},
                 "lr": {"log": [0.02, 0.3]}, "batch_size": {"choice": [64, 128]}},
      "recipe": {"preset": "quick", "epochs": 1, "limit_train": 2000, "limit_test": 1000},
      "budget": 8000, "objective": "accuracy", "goal": 99.4, "trials": 3, "concurrent": 2,
      "early_stop": {"grace": 1, "reduction": 3}
    }

Each template is a layer list in the one-line text form with `{name}` placeholders; each entry of
"params" is either such a placeholder (a width, or a choice of tokens such as {"choice": ["bn", ""]})
or a recipe setting (a TrainConfig field). Kinds: {"int": [lo, hi]}, {"float": [lo, hi]},
{"log": [lo, hi]} (log-uniform), {"choice": [...]}. With several templates the search picks one too.
"recipe" is the starting recipe: a preset and the settings that change it. The parameter budget is a
hard constraint: a trial whose model is over it is rejected before any training. Objectives:
"accuracy" (the best last-epochs minimum under the budget) or "params" (the fewest parameters that
reach the goal); either way the sweep reports the Pareto front of parameters against accuracy.
"early_stop" sets ASHA: no trial is stopped before `grace` epochs (default: a third of the epochs),
and at each rung (grace, grace x reduction, ...) only the best 1/`reduction` (default 3) go on;
{"grace": 0} turns early stopping off.

Every trained trial is an ordinary run in the runs folder (config, metrics, checkpoints, card),
named <sweep>-t<N> and tagged with its sweep. The sweep's own folder, runs/.sweeps/<name>/, holds
spec.json, trials.jsonl (one line per finished trial) and status.json.

Sharing the machine: a sweep holds the runs folder's training lock for as long as it runs (the
command takes it with jobs.hold; the app's Start takes it and hands it to the sweep's process, as
for a training), so the app's Start and a sweep never train at once, and a second sweep is Busy;
its trials share the cores among themselves, one thread each, as many at once as `concurrent`
(default: the cores). The app's Stop asks by a file (STOP) and the sweep's process ends its trials
after their batch; a killed sweep can be resumed (see "running" below).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import time
from dataclasses import fields, replace
from itertools import product
from pathlib import Path

import torch

from mnist_core import jobs
from mnist_core.config import ConfigError, ModelConfig, TrainConfig, get_preset
from mnist_core.data import load_mnist
from mnist_core.files import atomic_write_json, describe_os_error, read_json
from mnist_core.goal import Goal, judge
from mnist_core.runner import train_run, write_card
from mnist_core.runs import NAME_RE, Run, RunError, check_run_name, list_runs

SWEEPS = jobs.SWEEPS
KINDS = ("int", "float", "log", "choice")
OBJECTIVES = ("accuracy", "params")
RECIPE_FIELDS = {f.name for f in fields(TrainConfig)} - {"init_checkpoint", "start_epoch", "handwriting"}
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_TRIALS = 1000


class SweepError(ValueError):
    """A space that cannot be searched, or a sweep that cannot start: one line."""


# -- the space ----------------------------------------------------------------------------------


def load_space(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SweepError(f"{path}: cannot read the space file ({e.strerror})") from None
    try:
        space = json.loads(text)
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    return check_space(space)


def check_space(space) -> dict:
    """The space with its defaults filled in; SweepError naming the first thing that is wrong."""
    if not isinstance(space, dict):
        raise SweepError("the space must be a JSON object with templates, params and recipe")
    unknown = set(space) - {"about", "templates", "params", "recipe", "budget", "objective", "goal", "trials",
                            "concurrent", "name", "early_stop"}
    if unknown:
        raise SweepError(f"unknown key(s) in the space: {', '.join(sorted(unknown))}")
    templates = space.get("templates")
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise SweepError("templates must be a list of layer lists in the text form, e.g. \"conv{w1} bn relu ...\"")
    params = space.get("params", {})
    if not isinstance(params, dict):
        raise SweepError("params must be an object: name -> {\"int\": [lo, hi]} and the like")
    for name, d in params.items():
        check_param(name, d)
    used = {m for t in templates for m in PLACEHOLDER.findall(t)}
    if missing := used - set(params):
        raise SweepError(f"the templates use {', '.join('{' + m + '}' for m in sorted(missing))}, which params "
                         "do not define")
    if stray := set(params) - used - RECIPE_FIELDS:
        raise SweepError(f"params {', '.join(sorted(stray))}: neither a placeholder of the templates nor a setting "
                         "of the recipe")
    recipe = base_recipe(space.get("recipe", {}))
    out = {**space, "params": params, "recipe": space.get("recipe", {}), "budget": space.get("budget", 8000),
           "objective": space.get("objective", "accuracy"), "goal": space.get("goal", 99.4),
           "trials": space.get("trials", 12), "concurrent": space.get("concurrent", os.cpu_count() or 1)}
    for key, lo, hi in (("budget", 1, 10**9), ("trials", 1, MAX_TRIALS), ("concurrent", 1, 256)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise SweepError(f"{key} must be a whole number from {lo} to {hi}, got {v!r}")
    if out["objective"] not in OBJECTIVES:
        raise SweepError(f"objective {out['objective']!r} is unknown: choose one of {', '.join(OBJECTIVES)}")
    g = out["goal"]
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 < g <= 100:
        raise SweepError(f"goal must be a test accuracy above 0 and at most 100, got {g!r}")
    out["early_stop"] = check_early_stop(space.get("early_stop", {}), recipe.epochs)
    smallest = smallest_model(out)
    if smallest is None:
        raise SweepError("no model in this space is valid: " + first_problem(out))
    if smallest >= out["budget"]:
        raise SweepError(f"the budget of {out['budget']:,} is below the smallest model in the space "
                         f"({smallest:,} parameters)")
    for name, d in params.items():  # a recipe setting's extremes must make a recipe
        if name in RECIPE_FIELDS:
            for value in extremes(d):
                try:
                    replace(recipe, **{name: value})
                except ConfigError as e:
                    raise SweepError(f"params {name}: {e}") from None
    return out


def check_early_stop(d, epochs: int) -> dict:
    """ASHA's grace (epochs before any stop; 0: none) and reduction factor, the defaults filled in."""
    if not isinstance(d, dict) or set(d) - {"grace", "reduction"}:
        raise SweepError("early_stop must be an object with grace (epochs) and reduction, e.g. "
                         "{\"grace\": 5, \"reduction\": 3}")
    out = {"grace": d.get("grace", max(1, epochs // 3)), "reduction": d.get("reduction", 3)}
    for key, lo in (("grace", 0), ("reduction", 2)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 1000:
            raise SweepError(f"early_stop {key} must be a whole number from {lo} to 1000, got {v!r}")
    return out


def check_param(name: str, d) -> None:
    if not isinstance(d, dict) or len(d) != 1 or next(iter(d)) not in KINDS:
        raise SweepError(f"params {name}: give one of {', '.join(KINDS)}, e.g. {{\"int\": [8, 16]}}")
    kind, value = next(iter(d.items()))
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise SweepError(f"params {name}: choice needs a non-empty list")
        return
    if not isinstance(value, list) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise SweepError(f"params {name}: {kind} needs [low, high]")
    lo, hi = value
    if kind == "int" and not all(isinstance(v, int) for v in value):
        raise SweepError(f"params {name}: int needs whole numbers, got {value}")
    if lo > hi or (kind != "int" and lo == hi):
        raise SweepError(f"params {name}: the range [{lo}, {hi}] is {'inverted' if lo > hi else 'empty'}")
    if kind == "log" and lo <= 0:
        raise SweepError(f"params {name}: a log range must be above 0, got [{lo}, {hi}]")


def extremes(d: dict) -> list:
    kind, value = next(iter(d.items()))
    return list(value) if kind == "choice" else [value[0], value[1]]


def base_recipe(d) -> TrainConfig:
    if not isinstance(d, dict):
        raise SweepError("recipe must be an object: {\"preset\": \"quick\", \"epochs\": 1, ...}")
    d = dict(d)
    try:
        preset = get_preset(d.pop("preset", "reference"))
    except ConfigError as e:
        raise SweepError(f"recipe: {e}") from None
    if unknown := set(d) - RECIPE_FIELDS:
        raise SweepError(f"recipe: unknown setting(s) {', '.join(sorted(unknown))}")
    try:
        return replace(preset.train, **d)
    except ConfigError as e:
        raise SweepError(f"recipe: {e}") from None


def fill(template: str, values: dict) -> str:
    return " ".join(PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template).split())


def _corners(space: dict):
    """Each template with its placeholders at the low end of their ranges, every choice tried."""
    params = space["params"]
    for template in space["templates"]:
        names = sorted(set(PLACEHOLDER.findall(template)))
        options = [extremes(params[n])[:1] if next(iter(params[n])) != "choice" else extremes(params[n])
                   for n in names]
        for combo in product(*options):
            yield template, dict(zip(names, combo))


def smallest_model(space: dict) -> int | None:
    sizes = []
    for template, values in _corners(space):
        try:
            sizes.append(ModelConfig.parse(fill(template, values)).params)
        except ConfigError:
            continue
    return min(sizes) if sizes else None


def first_problem(space: dict) -> str:
    for template, values in _corners(space):
        try:
            ModelConfig.parse(fill(template, values))
        except ConfigError as e:
            return f"{fill(template, values)!r}: {e}"
    return "?"


def trial_settings(space: dict, config: dict) -> tuple[str, TrainConfig]:
    """(layer list text, recipe) for one point of the space."""
    template = space["templates"][config.get("template", 0)]
    text = fill(template, config)
    recipe = replace(base_recipe(space["recipe"]), **{k: v for k, v in config.items() if k in RECIPE_FIELDS})
    return text, recipe


# -- results ------------------------------------------------------------------------------------


def pareto(trials: list[dict]) -> list[dict]:
    """The finished trials no other beats on both parameters (fewer) and accuracy (higher), by params."""
    done = [t for t in trials if t.get("status") == "finished" and t.get("last_min") is not None]
    front = [t for t in done if not any(
        o["params"] <= t["params"] and o["last_min"] >= t["last_min"] and
        (o["params"] < t["params"] or o["last_min"] > t["last_min"]) for o in done)]
    return sorted(front, key=lambda t: t["params"])


def sweep_dir(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / SWEEPS / check_run_name(name)


def read_trials(folder: Path) -> list[dict]:
    path = Path(folder) / "trials.jsonl"
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict):
            out.append(d)
    return out


def status(folder: Path) -> dict:
    """status.json as it stands, except that a live sweep whose process is gone reads as
    interrupted (it can be resumed), and one asked to stop as stopping."""
    d = read_json(Path(folder) / "status.json")
    d = d if isinstance(d, dict) else {}
    if d.get("status") in ("starting", "running") and not jobs.pid_alive(d.get("pid")):
        d = read_json(Path(folder) / "status.json") or {}  # the process may have written its end meanwhile
        if d.get("status") in ("starting", "running"):
            d = {**d, "status": "interrupted", "reason": "the sweep's process ended before it finished: resume it, "
                 "or read what it found"}
    if d.get("status") == "running" and (Path(folder) / STOP).exists():
        d = {**d, "status": "stopping"}
    return d


def trial_line(t: dict, n: int, total: int, goal_last: int) -> str:
    acc = "–" if t.get("last_min") is None else f"{t['last_min']:.2f}%"
    params = f"{t['params']:,}" if isinstance(t.get("params"), int) else "?"
    what = t.get("verdict") or t.get("reason") or ""
    return (f"trial {n}/{total} {t.get('run') or t.get('trial', '?')}: {t['status']}, {params} params, "
            f"last {goal_last} min {acc}" + (f", {what}" if what else "") + f" ({t.get('seconds', 0):.0f} s)")


def table(trials: list[dict]) -> str:
    rows = [f"{'trial':<22} {'status':<10} {'params':>8} {'last min':>9}  layers"]
    for t in trials:
        acc = "–" if t.get("last_min") is None else f"{t['last_min']:.2f}"
        params = f"{t['params']:,}" if isinstance(t.get("params"), int) else "?"
        rows.append(f"{str(t.get('run') or t.get('trial')):<22} {t['status']:<10} {params:>8} {acc:>9}  "
                    f"{t.get('layers', '')}")
    return "\n".join(rows)


# -- running --------------------------------------------------------------------------------------
#
# A sweep is one process (the command, or one the app starts with jobs.start_sweep) that holds the
# runs folder's training lock from start to end and drives Ray Tune; its folder says how it stands:
#   spec.json     the checked space
#   status.json   starting | running | finished | stopped | failed (+ pid, reason, times, address);
#                 running with its process gone reads as interrupted, with STOP present as stopping
#   trials.jsonl  one line per ended trial: its run, params, accuracy, verdict, status, reason,
#                 and the point of the space with its score (what a resumed search starts from)
#   STOP          present = please stop: running trials end after their batch, none starts
# Resuming starts a new Tune experiment for the trials still to run, its TPE warm-started with
# every recorded point and score: nothing of Tune's own state is needed, on a laptop or a cluster.

STOP = "STOP"
LIVE = ("starting", "running", "stopping")
DONE = ("finished", "stopped", "failed", "rejected", "invalid")  # trials that count toward the total


def search_space(space: dict) -> dict:
    from ray import tune  # heavy: only a sweep needs Ray

    out = {}
    for name, d in space["params"].items():
        kind, v = next(iter(d.items()))
        out[name] = {"int": lambda: tune.randint(v[0], v[1] + 1), "float": lambda: tune.uniform(v[0], v[1]),
                     "log": lambda: tune.loguniform(v[0], v[1]), "choice": lambda: tune.choice(v)}[kind]()
    if len(space["templates"]) > 1:
        out["template"] = tune.choice(list(range(len(space["templates"]))))
    return out


def new_name() -> str:
    return "sweep-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def create(runs_dir: Path, space: dict, name: str | None = None, address: str | None = None) -> Path:
    """The sweep's folder with its spec and a 'starting' status; SweepError when the name is taken
    or the disk refuses (nothing is left half-made)."""
    try:
        name = check_run_name(name) if name else new_name()
    except RunError as e:
        raise SweepError(str(e).replace("run name", "sweep name")) from None
    folder = sweep_dir(Path(runs_dir), name)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
    except FileExistsError:
        raise SweepError(f"a sweep named {name!r} exists already in {folder.parent}: choose another name") from None
    except OSError as e:
        raise SweepError(f"cannot create the sweep's folder: {describe_os_error(e)}") from None
    try:
        atomic_write_json(folder / "spec.json", space)
        atomic_write_json(folder / "status.json", {"status": "starting", "trials": space["trials"],
                                                   "address": address or None, "created": _now()})
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise SweepError(f"cannot write the sweep's files: {describe_os_error(e)}") from None
    return folder


def run_sweep(space: dict, runs_dir: Path, name: str | None = None, address: str | None = None, log=print) -> Path:
    """Create the sweep and run it to its end in this process; returns its folder. An unreachable
    cluster is refused before anything is written."""
    check_address(address)
    folder = create(runs_dir, space, name, address)
    run(folder, log=log)
    return folder


def start(runs_dir: Path, space: dict, name: str | None = None, address: str | None = None) -> Path:
    """The app's Start: create the sweep and run it in a process of its own (it survives reloads,
    page switches and the app). jobs.Busy when a training or a sweep holds the machine."""
    check_address(address)
    if holder := jobs.active(runs_dir):
        raise jobs.Busy(f"{jobs.holder_text(runs_dir, holder)} is running: stop it or wait for it to finish")
    folder = create(runs_dir, space, name, address)
    try:
        pid = jobs.start_sweep(runs_dir, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _set_status(folder, status="starting", pid=pid)
    return folder


def resume(folder: Path) -> None:
    """The app's Resume: an interrupted or stopped sweep goes on in a process of its own."""
    folder = Path(folder)
    state = status(folder).get("status")
    if state in LIVE:
        raise SweepError(f"sweep {folder.name} is {state}: nothing to resume")
    if state == "finished":
        raise SweepError(f"sweep {folder.name} has finished: all its trials ran")
    check_address(status(folder).get("address"))
    pid = jobs.start_sweep(folder.parent.parent, folder, resume=True)
    _set_status(folder, status="starting", pid=pid, reason=None, ended=None)


def request_stop(folder: Path) -> None:
    """Ask a running sweep to stop: its trials end after their batch (checkpoint and card written),
    no new trial starts, and the sweep can be resumed later."""
    try:
        (Path(folder) / STOP).touch()
    except OSError as e:
        raise SweepError(f"cannot ask the sweep to stop: {describe_os_error(e)}") from None


def active(runs_dir: Path) -> Path | None:
    """The folder of the sweep that holds the machine now, or None."""
    holder = jobs.active(runs_dir)
    if not holder or holder == "?":
        return None
    folder = Path(runs_dir) / SWEEPS / holder
    return folder if (folder / "spec.json").is_file() else None


def list_sweeps(runs_dir: Path) -> list[Path]:
    """The sweeps' folders, newest first."""
    root = Path(runs_dir) / SWEEPS
    try:
        found = [p for p in root.iterdir() if (p / "spec.json").is_file() and NAME_RE.match(p.name)]
    except OSError:
        return []
    return sorted(found, key=lambda p: (p / "spec.json").stat().st_mtime, reverse=True)


def read_spec(folder: Path) -> dict:
    """The sweep's space as checked again (the file is input: SweepError when it is not one)."""
    spec = read_json(Path(folder) / "spec.json")
    if spec is None:
        raise SweepError(f"{folder}: not a sweep, or its spec.json is unreadable")
    return check_space(spec)


def _set_status(folder: Path, **changes) -> dict:
    d = read_json(Path(folder) / "status.json")
    d = {**(d if isinstance(d, dict) else {}), **changes}
    d = {k: v for k, v in d.items() if v is not None}
    atomic_write_json(Path(folder) / "status.json", d)
    return d


def run(folder: Path, resume: bool = False, log=print) -> str:
    """The sweep in `folder`, in this process, to its end: 'finished' or 'stopped'. With resume, only
    the trials still to run. Holds the training lock throughout."""
    folder = Path(folder)
    runs_dir, name = folder.parent.parent, folder.name
    space = read_spec(folder)
    with jobs.hold(runs_dir, name):
        (folder / STOP).unlink(missing_ok=True)
        before = status(folder)
        address = before.get("address")
        settle_runs(folder, "interrupted", "the sweep's process ended while this trial trained")
        _set_status(folder, status="running", pid=os.getpid(), started=before.get("started") or _now(),
                    resumed=_now() if resume else None, reason=None, ended=None)
        try:
            ray = _connect(address)
        except SweepError as e:
            _set_status(folder, status="failed", reason=str(e), ended=_now())
            raise
        try:
            ended = _fit(space, folder, log)
        except BaseException as e:
            why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            _set_status(folder, status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                        reason=why, ended=_now())
            raise
        finally:
            ray.shutdown()
            settle_runs(folder, "stopped", "the sweep ended while this trial trained")
        _set_status(folder, status=ended, ended=_now(),
                    reason="stopped from the page or the command line: it can be resumed" if ended == "stopped"
                    else None)
        return ended


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def reachable(address: str, timeout: float = 3.0) -> bool:
    """Whether host:port (or ray://host:port) answers a TCP connection: Ray itself would retry for
    minutes before giving up on an address that is wrong."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return address == "auto"  # Ray finds a cluster started on this machine
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def check_address(address: str | None) -> None:
    """SweepError at once when the cluster named (or RAY_ADDRESS's) does not answer."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and not reachable(address):
        raise SweepError(f"cannot reach the Ray cluster at {address}: nothing answers there (start it with "
                         "`ray start --head`, or leave the address and RAY_ADDRESS empty for a local Ray)")


def _connect(address: str | None):
    check_address(address)
    address = address or os.environ.get("RAY_ADDRESS") or None
    import ray  # heavy: only a sweep needs Ray, and only once it has somewhere to run

    try:
        if address:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        else:
            ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SweepError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    return ray


def _fit(space: dict, folder: Path, log) -> str:
    """Tune runs the trials not yet recorded; 'stopped' when STOP ended it, else 'finished'."""
    from ray import tune  # heavy, as above
    from ray.tune.search import ConcurrencyLimiter  # as above
    from ray.tune.search.optuna import OptunaSearch  # as above

    runs_dir, name = folder.parent.parent, folder.name
    epochs = base_recipe(space["recipe"]).epochs
    goal = Goal(accuracy=float(space["goal"]), last=min(3, epochs), max_epochs=max(15, epochs),
                max_params=space["budget"])
    total = space["trials"]
    recorded = read_trials(folder)
    todo = total - sum(t.get("status") in DONE for t in recorded)
    if todo <= 0:
        _summary(folder, log)
        return "finished"
    seen = [t for t in recorded if isinstance(t.get("config"), dict) and isinstance(t.get("score"), (int, float))]

    class Watch(tune.Callback, tune.Stopper):
        """One line per ended trial and the trial table on disk as it grows; and the stop request:
        the experiment ends once STOP is present and no trial is still finishing its batch."""

        def __init__(self):
            self.started: dict[str, float] = {}
            self.busy = False

        def on_step_begin(self, iteration, trials, **info):
            self.busy = any(t.status == "RUNNING" for t in trials)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.record(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.record(trial, error=True)

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return (folder / STOP).exists() and not self.busy

        def record(self, trial, error=False):
            last = dict(trial.last_result or {})
            if last.get("state") == "cancelled":
                return  # never started: a resumed sweep runs it
            row = {k: last.get(k) for k in ("run", "params", "layers", "epoch", "last_min", "final", "verdict",
                                            "reason", "score")}
            row.update(trial=trial.trial_id, config=dict(trial.config),
                       seconds=round(time.time() - self.started.get(trial.trial_id, time.time()), 1))
            if error:
                row["status"], row["reason"], row["score"] = "failed", _error_line(trial), PENALTY
                row["layers"] = row["layers"] or trial_settings(space, trial.config)[0]
                if not row["run"] and (runs_dir / f"{name}-{trial.trial_id}").is_dir():  # died before reporting
                    row["run"] = f"{name}-{trial.trial_id}"
                    row["params"] = _params(Run(runs_dir / row["run"]))
            else:
                row["status"] = last.get("state", "finished")
            if row["status"] == "finished" and last.get("epoch", 0) < last.get("epochs", 0):
                row["status"], row["reason"] = "stopped", "stopped early by ASHA: it could not catch up"
            _mark_run(runs_dir, row)
            if row.get("run") and (ran := Run(runs_dir / row["run"])).path.is_dir():
                state = ran.status  # what the run itself says: stopped by the scheduler or the sweep, failed
                if state.get("status") in ("stopped", "failed"):
                    row["status"], row["reason"] = state["status"], state.get("reason") or row.get("reason")
                if state.get("status") == "stopped" and (folder / STOP).exists() and last.get("epoch", 0) < last.get(
                        "epochs", 1):  # cut short by the sweep's stop: not a result, and a resumed sweep runs another
                    row["status"], row["reason"] = "interrupted", "the sweep was stopped while this trial trained"
            with open(folder / "trials.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            log(trial_line(row, len(read_trials(folder)), total, goal.last))

    watch = Watch()
    trainable = tune.with_parameters(_trial, space=space, runs_dir=str(runs_dir), sweep=name,
                                     folder=str(folder), goal=goal)
    searcher = ConcurrencyLimiter(
        OptunaSearch(seed=1 + len(seen), points_to_evaluate=[t["config"] for t in seen] or None,
                     evaluated_rewards=[t["score"] for t in seen] or None),
        max_concurrent=space["concurrent"])
    experiment = name if not recorded and not (folder / "ray").exists() else f"{name}-{dt.datetime.now():%H%M%S}"
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=search_space(space),
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=todo, search_alg=searcher,
                                    scheduler=scheduler(space["early_stop"], epochs)),
        run_config=tune.RunConfig(name=experiment, storage_path=str(folder / "ray"), verbose=0, callbacks=[watch],
                                  stop=watch, failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
    )
    tuner.fit()
    _summary(folder, log)
    return "stopped" if (folder / STOP).exists() else "finished"


def _summary(folder: Path, log) -> None:
    trials = read_trials(folder)
    log("")
    log(table(trials))
    front = pareto(trials)
    log("\nPareto front (fewest parameters for each accuracy):")
    for t in front:
        log(f"  {t['params']:>7,} params  {t['last_min']:.2f}%  {t['run']}  {t.get('layers', '')}")
    if not front:
        log("  (no finished trial)")
def early_stop_text(space: dict) -> str:
    grace, reduction = space["early_stop"]["grace"], space["early_stop"]["reduction"]
    if not grace or grace >= base_recipe(space["recipe"]).epochs:
        return "no early stopping"
    return f"ASHA stops the trials outside the best 1/{reduction} after {grace}, {grace * reduction}, ... epochs"


def scheduler(early_stop: dict, epochs: int):
    """ASHA on the epoch count, or Tune's FIFO (no early stopping) for a grace of 0 or past the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # heavy, as above

    if not early_stop["grace"] or early_stop["grace"] >= epochs:
        return FIFOScheduler()
    # max_t past the last epoch: a trial that reaches it ends by itself, after its last checkpoint and
    # card, not at the report before them
    return ASHAScheduler(time_attr="epoch", grace_period=early_stop["grace"], reduction_factor=early_stop["reduction"],
                         max_t=epochs + 1)


def _error_line(trial) -> str:
    """Why a trial failed, in one line: its exception's message, or what became of its process."""
    try:
        text = Path(trial.error_file).read_text(errors="replace").strip()
    except (OSError, TypeError):
        return "the trial failed"
    return failure_reason(text)


def failure_reason(text: str) -> str:
    """One line from the error Ray recorded for a trial."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(m in text for m in ("OutOfMemoryError", "MemoryError", "can't allocate memory", "out of memory")):
        detail = next((line for line in reversed(lines) if "memory" in line.lower()), "")
        return ("out of memory: " + detail)[:300]
    if "ActorDiedError" in text or "died unexpectedly" in text or "SYSTEM_ERROR" in text:
        return "its process died (killed, or out of memory: the system's OOM killer leaves no message)"
    return (lines[-1] if lines else "the trial failed")[:300]


def _mark_run(runs_dir: Path, row: dict) -> None:
    """A trial's run that the scheduler stopped or that crashed reads so, not as 'running'."""
    name = row.get("run")
    if not name or not NAME_RE.match(str(name)):
        return
    run = Run(Path(runs_dir) / name)
    if run.path.is_dir() and run.status.get("status") == "running":
        run.set_status("stopped" if row["status"] == "stopped" else "failed",
                       reason=row.get("reason") or "the sweep ended this trial")


def sweep_runs(folder: Path) -> list[Run]:
    """The runs of the sweep's trials, newest first."""
    return [r for r in list_runs(Path(folder).parent.parent) if r.config.get("sweep") == Path(folder).name]


def settle_runs(folder: Path, state: str, reason: str) -> None:
    """The sweep's runs left 'running' by a process that is gone (a killed sweep, a trial Tune
    ended) get their final status and card, and an 'interrupted' line in the trial table: cut
    short, they are not results, and a resumed sweep runs other trials in their place."""
    recorded = {t.get("run") for t in read_trials(folder)}
    for run in sweep_runs(folder):
        if run.name in recorded or run.status.get("status") != "running" or jobs.pid_alive(run.status.get("pid")):
            continue
        try:
            run.set_status(state, reason=reason)
            write_card(run)
        except OSError:
            continue  # a full disk: the run reads as interrupted all the same
        epochs = run.epochs()
        with open(Path(folder) / "trials.jsonl", "a") as f:
            f.write(json.dumps({"run": run.name, "status": "interrupted", "reason": reason, "params": _params(run),
                                "layers": _layers(run), "epoch": len(epochs), "last_min": None}) + "\n")


def _params(run: Run) -> int | None:
    try:
        return run.model_config().params
    except (ConfigError, KeyError, TypeError):
        return None


def _layers(run: Run) -> str:
    try:
        return run.model_config().text()
    except (ConfigError, KeyError, TypeError):
        return ""


def trial_table(folder: Path) -> list[dict]:
    """The recorded trials, then those training now (from their runs), each with its epoch count."""
    rows = read_trials(folder)
    recorded = {t.get("run") for t in rows}
    live = []
    for run in sweep_runs(folder):
        if run.name in recorded:
            continue
        state = jobs.status(run)
        epochs = run.epochs()
        accs = [e["test_acc"] for e in epochs[-3:]]
        live.append({"run": run.name, "status": str(state.get("status", "unknown")), "params": _params(run),
                     "layers": _layers(run), "epoch": len(epochs),
                     "last_min": min(accs) if accs else None, "epochs": run.config.get("train", {}).get("epochs")})
    by_run = {r.name: r for r in sweep_runs(folder)}
    for row in rows:  # epochs trained, for the table
        if row.get("epoch") is None and row.get("run") in by_run:
            row["epoch"] = len(by_run[row["run"]].epochs())
    return rows + live


PENALTY = -1000.0  # the score of a trial that was not trained: the search learns to stay away




def screen(space: dict, text: str) -> tuple[ModelConfig | None, dict | None]:
    """(the model, None) for a layer list to train; (None, what to report) for one that is invalid or
    over the budget: such a trial is recorded and never trained."""
    try:
        model = ModelConfig.parse(text)
    except ConfigError as e:
        return None, {"score": PENALTY, "state": "invalid", "reason": str(e)[:300], "layers": text, "epoch": 0}
    if model.params >= space["budget"]:
        return None, {"score": PENALTY, "state": "rejected", "params": model.params, "layers": text, "epoch": 0,
                      "reason": f"{model.params:,} parameters: over the budget of {space['budget']:,}, not trained"}
    return model, None




def _trial(config: dict, space: dict, runs_dir: str, sweep: str, folder: str, goal: Goal) -> None:
    """One trial, in a Ray worker: the model over budget or invalid is reported and not trained;
    otherwise an ordinary run whose epochs are reported to Tune, which may stop it early. The last
    epoch is reported after the run has written its checkpoints and card. The sweep's STOP ends the
    training after its batch, and keeps a trial that had not started from starting."""
    from ray import tune  # heavy: in the worker process

    torch.set_num_threads(1)  # trials share the cores: one thread each
    stop_file = Path(folder) / STOP
    if stop_file.exists():
        tune.report({"score": PENALTY, "state": "cancelled", "epoch": 0})
        return
    text, recipe = trial_settings(space, config)
    model, refusal = screen(space, text)
    if refusal is not None:
        tune.report(refusal)
        return
    run = Run.create(Path(runs_dir), model, recipe, name=f"{sweep}-{tune.get_context().get_trial_id()}",
                     target=f"Sweep {sweep}: {text}", sweep=sweep)
    epochs: list[dict] = []

    def result() -> dict:
        verdict = judge(goal, epochs, model.params)
        last_min = verdict.last_min if verdict.last_min is not None else min(e["test_acc"] for e in epochs)
        score = last_min if space["objective"] == "accuracy" else (
            -model.params if last_min >= goal.accuracy else -space["budget"] - 100 * (goal.accuracy - last_min))
        return {"score": score, "epoch": epochs[-1]["epoch"], "epochs": recipe.epochs, "params": model.params,
                "layers": text, "run": run.name, "last_min": round(last_min, 4), "final": epochs[-1]["test_acc"],
                "verdict": verdict.text(), "state": "finished"}

    def progress(record):
        if record["kind"] == "epoch":
            epochs.append(record)
            if record["epoch"] < recipe.epochs and not stop_file.exists():
                tune.report(result())

    try:
        train_run(run, load_mnist(), progress=progress, should_stop=stop_file.exists)
    except SystemExit:  # Tune ends a trial its scheduler stops by raising SystemExit at a report
        run.set_status("stopped", reason="stopped early by the sweep's scheduler (ASHA): it could not catch up")
        write_card(run)
        raise
    if run.status.get("status") == "stopped" and stop_file.exists():
        run.set_status("stopped", reason="the sweep was stopped")
        write_card(run)
    if epochs:
        tune.report(result())
    else:
        tune.report({"score": PENALTY, "state": "stopped", "epoch": 0, "run": run.name, "params": model.params,
                     "layers": text, "reason": "the sweep was stopped before its first epoch ended"})

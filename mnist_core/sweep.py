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

Sharing the machine: a sweep holds the runs folder's training lock (jobs.hold) for as long as it
runs, so the app's Start and a sweep never train at once; its trials share the cores among
themselves, one thread each, as many at once as `concurrent` (default: the cores).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import time
from dataclasses import fields, replace
from itertools import product
from pathlib import Path

import torch

from mnist_core import jobs
from mnist_core.config import ConfigError, ModelConfig, TrainConfig, get_preset
from mnist_core.data import load_mnist
from mnist_core.files import atomic_write_json, read_json
from mnist_core.goal import Goal, judge
from mnist_core.runner import train_run, write_card
from mnist_core.runs import NAME_RE, Run, check_run_name

SWEEPS = ".sweeps"
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
    """status.json, a sweep whose process is gone reading as interrupted."""
    d = read_json(Path(folder) / "status.json")
    d = d if isinstance(d, dict) else {}
    if d.get("status") == "running" and not jobs.pid_alive(d.get("pid")):
        d = {**d, "status": "interrupted", "reason": "the sweep's process ended before it finished"}
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


def run_sweep(space: dict, runs_dir: Path, name: str | None = None, address: str | None = None, log=print) -> Path:
    """Run the sweep to its end; returns its folder. Holds the training lock of runs_dir throughout."""
    runs_dir = Path(runs_dir)
    name = check_run_name(name) if name else "sweep-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = sweep_dir(runs_dir, name)
    if folder.exists():
        raise SweepError(f"a sweep named {name!r} exists already in {runs_dir / SWEEPS}")
    with jobs.hold(runs_dir, name):
        ray = _connect(address)
        folder.mkdir(parents=True)
        atomic_write_json(folder / "spec.json", space)
        state = {"status": "running", "pid": os.getpid(), "started": _now(), "address": address or "local",
                 "trials": space["trials"]}
        atomic_write_json(folder / "status.json", state)
        try:
            _fit(space, runs_dir, name, folder, log)
        except BaseException as e:
            atomic_write_json(folder / "status.json", {**state, "status": "failed" if not isinstance(
                e, KeyboardInterrupt) else "interrupted", "reason": str(e).splitlines()[0][:300] if str(e) else
                type(e).__name__, "ended": _now()})
            raise
        finally:
            ray.shutdown()
        atomic_write_json(folder / "status.json", {**state, "status": "finished", "ended": _now()})
    return folder


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


def _connect(address: str | None):
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and not reachable(address):
        raise SweepError(f"cannot reach the Ray cluster at {address}: nothing answers there (start it with "
                         "`ray start --head`, or leave out --address and RAY_ADDRESS for a local Ray)")
    import ray  # heavy: only a sweep needs Ray, and only once it has somewhere to run

    try:
        if address:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        else:
            ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SweepError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    return ray


def _fit(space: dict, runs_dir: Path, name: str, folder: Path, log) -> None:
    from ray import tune  # heavy, as above
    from ray.tune.search import ConcurrencyLimiter  # as above
    from ray.tune.search.optuna import OptunaSearch  # as above

    epochs = base_recipe(space["recipe"]).epochs
    goal = Goal(accuracy=float(space["goal"]), last=min(3, epochs), max_epochs=max(15, epochs),
                max_params=space["budget"])
    total = space["trials"]
    done: list[dict] = []

    class Reporter(tune.Callback):
        """One line per finished trial, and the trial table on disk as it grows."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._record(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._record(trial, error=True)

        def _record(self, trial, error=False):
            last = dict(trial.last_result or {})
            row = {k: last.get(k) for k in ("run", "params", "layers", "last_min", "final", "verdict", "reason")}
            row.update(trial=trial.trial_id, seconds=round(time.time() - started[trial.trial_id], 1)
                       if trial.trial_id in started else 0.0)
            if error:
                row["status"], row["reason"] = "failed", _error_line(trial)
            else:
                row["status"] = last.get("state", "finished")
            if row["status"] == "finished" and last.get("epoch", 0) < last.get("epochs", 0):
                row["status"], row["reason"] = "stopped", "stopped early by ASHA: it could not catch up"
            _mark_run(runs_dir, row)
            if row.get("run") and (ran := Run(Path(runs_dir) / row["run"])).path.is_dir():
                state = ran.status  # what the run itself says: stopped by the scheduler, failed, finished
                if state.get("status") in ("stopped", "failed"):
                    row["status"], row["reason"] = state["status"], state.get("reason") or row.get("reason")
            done.append(row)
            with open(folder / "trials.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            log(trial_line(row, len(done), total, goal.last))

        def on_trial_start(self, iteration, trials, trial, **info):
            started[trial.trial_id] = time.time()

    started: dict[str, float] = {}
    trainable = tune.with_parameters(_trial, space=space, runs_dir=str(runs_dir), sweep=name, goal=goal)
    searcher = ConcurrencyLimiter(OptunaSearch(seed=1), max_concurrent=space["concurrent"])
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=search_space(space),
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=total, search_alg=searcher,
                                    scheduler=scheduler(space["early_stop"], epochs)),
        run_config=tune.RunConfig(name=name, storage_path=str(folder / "ray"), verbose=0, callbacks=[Reporter()],
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
    )
    tuner.fit()
    log("")
    log(table(done))
    front = pareto(done)
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
    """The last line of a failed trial's error (an exception's message, "out of memory", ...)."""
    try:
        lines = Path(trial.error_file).read_text(errors="replace").strip().splitlines()
    except (OSError, TypeError):
        return "the trial failed"
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


def _trial(config: dict, space: dict, runs_dir: str, sweep: str, goal: Goal) -> None:
    """One trial, in a Ray worker: the model over budget or invalid is reported and not trained;
    otherwise an ordinary run whose epochs are reported to Tune, which may stop it early. The last
    epoch is reported after the run has written its checkpoints and card."""
    from ray import tune  # heavy: in the worker process

    torch.set_num_threads(1)  # trials share the cores: one thread each
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
            if record["epoch"] < recipe.epochs:
                tune.report(result())

    try:
        train_run(run, load_mnist(), progress=progress)
    except SystemExit:  # Tune ends a trial its scheduler stops by raising SystemExit at a report
        run.set_status("stopped", reason="stopped early by the sweep's scheduler (ASHA): it could not catch up")
        write_card(run)
        raise
    if epochs:
        tune.report(result())

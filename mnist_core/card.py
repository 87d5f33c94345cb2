"""A run's card in the reference experiment's TARGET / RESULTS / ANALYSIS form.

RESULTS lead with what holds: the final test accuracy, the minimum over the last epochs the goal
looks at, and the verdict against the goal, then the best epoch and which split chose it. The
analysis is derived from the numbers alone: the goal, underfitting, the train-test gap and
overfitting, whether the curve was still rising, and, once it levels off, stability.
"""

from __future__ import annotations

import statistics

from mnist_core.config import ConfigError, ModelConfig, train_config_from_dict
from mnist_core.goal import Goal, analysis as goal_analysis, judge, run_facts

OVERFIT_GAP = 0.3  # points of train-over-test accuracy that we call overfitting
UNDERFIT_TRAIN = 95.0  # below this train accuracy the model has not yet fit the data: a gap is not overfitting


def plural(n, word: str) -> str:
    """'1 epoch', '2 epochs', '? epochs'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def target_text(cfg: dict, goal: Goal | None = None) -> str:
    train = cfg.get("train", {})
    try:
        model = ModelConfig.from_dict(cfg.get("model"))
        t = model.template_settings()
        architecture = f"model {model.describe()}"
        if t:
            drop = f", dropout {t[2]:g}" if t[2] else ""
            architecture = f"widths {'-'.join(map(str, t[0]))} {'with' if t[1] else 'without'} BatchNorm{drop}"
    except ConfigError:
        architecture = "an unreadable model"
    try:
        recipe = train_config_from_dict(train).recipe()
        words = f"{recipe.pop('optimizer').replace('sgd', 'SGD').replace('adamw', 'AdamW').replace('adam', 'Adam')}" \
                f" lr {recipe.pop('lr'):g}"
        if "momentum" in recipe:
            words += f" momentum {recipe.pop('momentum'):g}"
        words += f", {recipe.pop('schedule')}, augmentation: {recipe.pop('augmentation')}"
        words += "".join(f", {k} {v:g}" for k, v in recipe.items())
    except (ConfigError, TypeError):
        words = "an unreadable recipe"
    subset = f", {train['limit_train']} training images" if train.get("limit_train") else ""
    words += {"bf16": ", bf16 autocast", "auto": ", bf16 autocast where the hardware is fast at it"}.get(
        train.get("precision"), "")
    words += ", channels-last memory" if train.get("channels_last") is True else ""
    lines = []
    if cfg.get("target"):
        lines.append(cfg["target"])
    lines.append(
        f"Train {architecture} ({cfg.get('params', '?')} params) for {plural(train.get('epochs'), 'epoch')}, "
        f"batch {train.get('batch_size')}, {words}{subset}."
    )
    if train.get("val_split"):
        lines.append(f"Hold out {train['val_split']:,} training images for validation: best.pt is chosen on them.")
    lines.append(f"Goal: {(goal or Goal()).text()}.")
    return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))


def analysis(epochs: list[dict], status: str, planned: int | None, cfg_train: dict | None = None,
             model_dropout: float = 0.0, goal: Goal | None = None, params: int | None = None) -> list[str]:
    if not epochs:
        return [f"No epoch finished (run {status})."]
    goal = goal or Goal()
    train = cfg_train or {}
    before = train.get("start_epoch") or 0
    out = [goal_analysis(goal, epochs, judge(goal, epochs, params, before))]
    best = max(epochs, key=lambda e: e["test_acc"])
    last = epochs[-1]
    n = len(epochs)
    span = f"of {n}" if not before else f"of epochs {before + 1}-{before + n}"  # never "epoch 5 of 1"
    out.append(f"Best test accuracy {best['test_acc']:.2f}% at epoch {best['epoch']} {span}.")

    gap = last["train_acc"] - last["test_acc"]
    if last["train_acc"] < UNDERFIT_TRAIN:
        out.append(f"Model underfits: final train accuracy is only {last['train_acc']:.2f}%; more epochs, "
                   "a higher learning rate or wider layers would let it fit the data.")
    elif gap > OVERFIT_GAP:
        out.append(f"Model overfits: final train accuracy is {gap:.2f} points above test accuracy.")
    elif gap < 0:
        why = (
            "augmentation or dropout makes training harder than the test"
            if any(train.get(k) for k in ("augment", "rotate", "translate", "scale", "shear", "erase")) or model_dropout
            else "train accuracy is averaged over an epoch in which the model was still improving"
        )
        out.append(f"No overfitting: test accuracy is {-gap:.2f} points above train accuracy ({why}).")
    else:
        out.append(f"Train-test gap is small ({gap:.2f} points): no clear overfitting.")

    if n >= 3:
        tail = [e["test_acc"] for e in epochs[-3:]]
        spread = max(tail) - min(tail)
        rising = epochs[-1]["test_acc"] > epochs[-3]["test_acc"] + 0.05 and best["epoch"] >= before + n - 1
        if rising:
            out.append("Test accuracy was still rising at the end: more epochs may help.")
        elif best["epoch"] < before + n - 2 and best["test_acc"] - last["test_acc"] > 0.1:
            out.append(
                f"Test accuracy fell {best['test_acc'] - last['test_acc']:.2f} points after epoch {best['epoch']}: "
                "a decaying learning rate or regularisation would hold it."
            )
        if not rising:  # a rising curve spreads by design; stability says something only once it levels off
            out.append(f"Last 3 epochs vary by {spread:.2f} points ({'stable' if spread < 0.15 else 'unstable'}).")
    if status == "stopped":
        out.append(f"Run was stopped after {n} of {plural(planned, 'epoch')}.")
    elif status in ("failed", "interrupted"):
        out.append(f"Run {status} after {n} of {plural(planned, 'epoch')}.")
    secs = [e["seconds"] for e in epochs]
    out.append(f"An epoch took {statistics.median(secs):.1f} s (median), {sum(secs) / 60:.1f} min in all.")
    return out


def _dropout(cfg: dict) -> float:
    """The largest dropout probability in the run's model (0 when it has none or cannot be read)."""
    try:
        layers = ModelConfig.from_dict(cfg.get("model")).layers
    except ConfigError:
        return 0.0
    return max((lay.p for lay in layers if lay.type == "dropout"), default=0.0)


def render(cfg: dict, epochs: list[dict], status: str, layer_table: str = "", goal: Goal | None = None,
           notes: dict | None = None) -> str:
    goal = goal or Goal()
    train = cfg.get("train", {})
    planned = train.get("epochs")
    params, before = run_facts(cfg)
    verdict = judge(goal, epochs, params, before)

    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"

    results = [f"*#params:* {params if params is not None else '?'}  "]
    if epochs:
        last = epochs[-1]
        chosen = max(epochs, key=lambda e: e.get("val_acc", e["test_acc"]) if train.get("val_split") else e["test_acc"])
        by = (f"chosen on validation ({train['val_split']:,} held-out training images, {chosen['val_acc']:.2f}%)"
              if train.get("val_split") and "val_acc" in chosen else "chosen on the test set")
        tested = last.get("test_total")
        results += [
            f"*final test acc:*  {fmt(last['test_acc'])} (epoch {last['epoch']})  ",
            f"*last {goal.last} min:*  {fmt(verdict.last_min)}  ",
            f"*goal:* **{verdict.word}**: {verdict.reason}  ",
            f"*best epoch (best.pt):* {chosen['epoch']}, test {fmt(chosen['test_acc'])}, {by}  ",
            f"*best train acc:*  {fmt(max(e['train_acc'] for e in epochs))}  ",
        ]
        if isinstance(tested, int) and tested < 10000:
            results.append(f"*test images:* {tested:,} of 10,000 (a subset: the accuracies are on it)  ")
    else:
        results.append(f"*goal:* **{verdict.word}**: {verdict.reason}  ")
    if before:
        parent = f" in `{cfg['parent']}`" if cfg.get("parent") else " before"
        results.append(f"*epochs:* {before + len(epochs)}: {before}{parent} + {len(epochs)} here  ")
    results.append(f"*status:* {status}, {len(epochs)} of {plural(planned, 'epoch')} here")
    if cfg.get("group"):
        results[-1] += "  "
        results.append(f"*group:* {cfg['group']} (seed {train.get('seed', '?')})")

    parts = [
        f"# {cfg.get('name', 'run')}",
        "",
        "**TARGET:**  ",
        target_text(cfg, goal),
        "",
        "**RESULTS:**  ",
        *results,
        "",
        "**ANALYSIS:**  ",
        *(f"{i}. {line}" for i, line in enumerate(
            analysis(epochs, status, planned, train, _dropout(cfg), goal, params), 1)),
    ]
    notes = notes or {}
    if notes.get("tags") or notes.get("notes"):
        parts += ["", "**NOTES:**  "]
        if notes.get("tags"):
            parts.append("*tags:* " + ", ".join(f"`{t}`" for t in notes["tags"]) + "  ")
        if notes.get("notes"):
            parts.append(notes["notes"])
    if layer_table:
        parts += ["", "```", layer_table.rstrip(), "```"]
    return "\n".join(parts) + "\n"

"""Every action the pages and the command line take on runs, in one place.

The pages hold widgets and charts; what a button does is a call here: start a training, an A/B
pair, continue a run, fine-tune it on handwriting, stop, delete, export. Each builds its settings
from the run's own (one TrainConfig, validated once) and goes through jobs, so the one-training
rule, the checks before anything is written and the messages are the same wherever it starts.
Errors a user can cause are ConfigError, RunError or jobs.Busy, each one line.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from mnist_core import export, jobs, spec
from mnist_core.card import plural
from mnist_core.config import PRESETS, ConfigError, ModelConfig, Preset, TrainConfig, asdict, train_config_from_dict
from mnist_core.files import atomic_write_json, describe_os_error, read_json
from mnist_core.runner import card_markdown
from mnist_core.runs import NAME_RE, Run, RunError, list_runs, new_run_name

DEFAULT_RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"
DEFAULT_PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def runs_dir() -> Path:
    """The runs folder: MNIST_LAB_RUNS, else runs/ in the project; read at each call."""
    return Path(os.environ.get("MNIST_LAB_RUNS") or DEFAULT_RUNS_DIR)


def presets_dir() -> Path:
    """Your own presets: MNIST_LAB_PRESETS, else presets/ in the project; read at each call."""
    return Path(os.environ.get("MNIST_LAB_PRESETS") or DEFAULT_PRESETS_DIR)


def user_presets() -> dict[str, Preset]:
    """The saved presets, by name; a file that is not a readable preset is skipped."""
    folder = presets_dir()
    out = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        d = read_json(path)
        if not isinstance(d, dict) or d.get("name") != path.stem or path.stem in PRESETS:
            continue
        try:
            out[path.stem] = Preset(path.stem, str(d.get("about", "")), ModelConfig.from_dict(d.get("model")),
                                    train_config_from_dict(d.get("train")))
        except ConfigError:
            continue
    return out


def presets() -> dict[str, Preset]:
    """The built-in presets, then your own."""
    return {**PRESETS, **user_presets()}


def preset(name: str) -> Preset:
    found = presets().get(name)
    if found is None:
        raise ConfigError(f"preset {name!r} is unknown: choose one of {', '.join(presets())}")
    return found


def save_preset(name: str, model: ModelConfig, recipe: TrainConfig, about: str = "") -> Path:
    """Keep model + recipe under `name` as presets/<name>.json; a built-in name is refused."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise ConfigError(f"preset name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    if name in PRESETS:
        raise ConfigError(f"{name!r} is a built-in preset: choose another name")
    recipe = replace(recipe, init_checkpoint=None, start_epoch=0, handwriting=None)  # a recipe, not a run's state
    path = presets_dir() / f"{name}.json"
    try:
        presets_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"name": name, "about": about.strip()[:300], "model": model.to_dict(),
                                 "train": asdict(recipe)})
    except OSError as e:
        raise RunError(f"cannot save preset {name!r}: {describe_os_error(e)}") from None
    return path


def delete_preset(name: str) -> None:
    if name not in user_presets():
        raise ConfigError(f"{name!r} is not one of your saved presets")
    try:
        (presets_dir() / f"{name}.json").unlink()
    except OSError as e:
        raise RunError(f"cannot delete preset {name!r}: {describe_os_error(e)}") from None


def all_runs() -> list[Run]:
    """Every run, newest first."""
    return list_runs(runs_dir())


def status(run: Run) -> dict:
    """The run's status, a run whose process is gone read as failed or interrupted (jobs.status)."""
    return jobs.status(run)


def summary(run: Run) -> dict:
    """The run's row for the runs table, with its status as jobs.status reads it."""
    return run.summary(jobs.status(run))


def card_text(run: Run) -> str | None:
    """The run's card; for a run whose process died without its final status, the card is made
    afresh with the status it reads as (the card.md on disk still says running)."""
    text = run.card_text()
    current = jobs.status(run)
    if text is None or current.get("status") == run.status.get("status"):
        return text
    return card_markdown(run, current.get("status"))


def active() -> str | None:
    """The run now training, if any."""
    return jobs.active(runs_dir())


def start(model: ModelConfig, recipe: TrainConfig, name: str | None = None, target: str | None = None) -> Run:
    return jobs.start(runs_dir(), model, recipe, name=name or None, target=target or None)


def start_ab_batchnorm(model: ModelConfig, recipe: TrainConfig) -> list[Run]:
    """Two runs, BatchNorm on then off, all else equal (the same seed and data order), trained one
    after the other. For the template the pair is its BN and no-BN forms; for any other list,
    the list as it is and the list without its BatchNorm layers."""
    settings = model.template_settings()
    if settings is not None:
        widths, _, dropout = settings
        pair = [ModelConfig.template(widths, bn, dropout) for bn in (True, False)]
    elif any(lay.type == "bn" for lay in model.layers):
        pair = [model, ModelConfig(tuple(spec.without(model.layers, "bn")))]
    else:
        raise RunError("A/B of BatchNorm: this model has no BatchNorm layer to take out; add bn after its "
                       "convolutions first")
    stamp = new_run_name(runs_dir(), "ab")
    specs = [dict(model_cfg=cfg, train_cfg=recipe, name=f"{stamp}-{'bn' if bn else 'nobn'}",
                  target=f"A/B: BatchNorm {'on' if bn else 'off'}, all else equal")
             for cfg, bn in zip(pair, (True, False))]
    return jobs.start_queue(runs_dir(), specs)


def continue_run(run: Run, epochs: int) -> Run:
    """A new run that trains `run`'s last checkpoint for `epochs` more, its epochs numbered on."""
    last = run.path / "last.pt"
    if not last.exists():
        raise RunError(f"run {run.name!r} has no last.pt to continue from")
    model, base = settings_of(run)
    recipe = replace(for_epochs(base, int(epochs)), init_checkpoint=str(last), start_epoch=len(run.epochs()))
    return jobs.start(runs_dir(), model, recipe, parent=run.name,
                      target=f"Continue {run.name} for {plural(int(epochs), 'epoch')}")


def fine_tune(run: Run, handwriting: Path, epochs: int, limit_train: int) -> Run:
    """A new run that trains `run`'s last checkpoint on MNIST plus the user's drawings, gently
    (SGD 0.01, no schedule), keeping the run's augmentation, seed and device."""
    model, base = settings_of(run)
    recipe = TrainConfig(
        epochs=int(epochs), batch_size=min(base.batch_size, 128), lr=0.01, momentum=base.momentum,
        scheduler="none", augment=base.augment, seed=base.seed, device=base.device, limit_train=int(limit_train),
        init_checkpoint=str(run.path / "last.pt"), start_epoch=len(run.epochs()),
        handwriting=str(handwriting), handwriting_repeat=20,
    )
    return jobs.start(runs_dir(), model, recipe, parent=run.name,
                      target="Fine-tune on MNIST plus my handwriting")


def for_epochs(recipe: TrainConfig, epochs: int) -> TrainConfig:
    """The recipe over `epochs` epochs: its schedule starts again over them, keeping the multistep
    milestones and cosine warm-up epochs that still fit (none left: a constant rate)."""
    if recipe.scheduler == "multistep":
        kept = tuple(m for m in recipe.milestones if m < epochs)
        return replace(recipe, epochs=epochs, milestones=kept, scheduler="multistep" if kept else "none")
    return replace(recipe, epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, epochs - 1))


def settings_of(run: Run) -> tuple[ModelConfig, TrainConfig]:
    """The run's model and recipe from its config.json; RunError when they cannot be read."""
    try:
        return run.model_config(), run.train_config()
    except KeyError as e:
        raise RunError(f"run {run.name!r}: its config.json has no {e.args[0]!r} section") from None


def stop(run: Run) -> None:
    jobs.stop(run)


def delete(run: Run) -> None:
    jobs.delete(run)


def archive(run: Run, checkpoint: Path) -> bytes:
    return export.archive_bytes(run, checkpoint)


def torchscript(model) -> bytes:
    return export.torchscript_bytes(model)


def runs_with_checkpoints() -> list[Run]:
    """Runs that can be continued or fine-tuned: a last.pt, and not training now."""
    return [r for r in list_runs(runs_dir()) if (r.path / "last.pt").exists() and jobs.state(r) != "running"]

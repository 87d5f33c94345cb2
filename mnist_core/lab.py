"""Every action the pages and the command line take on runs, in one place.

The pages hold widgets and charts; what a button does is a call here: start a training, an A/B
pair, continue a run, fine-tune it on handwriting, stop, delete, export. Each builds its settings
from the run's own (one TrainConfig, validated once) and goes through jobs, so the one-training
rule, the checks before anything is written and the messages are the same wherever it starts.
Errors a user can cause are ConfigError, RunError or jobs.Busy, each one line.
"""

from __future__ import annotations

import glob
import os
from dataclasses import replace
from pathlib import Path

from mnist_core import export, jobs, spec, sweep
from mnist_core import goal as goalmod
from mnist_core.card import plural
from mnist_core.config import PRESETS, ConfigError, ModelConfig, Preset, TrainConfig, asdict, train_config_from_dict
from mnist_core.files import atomic_write_json, atomic_write_text, describe_os_error, read_json
from mnist_core.goal import Goal, GroupVerdict, Verdict, judge_group, judge_run
from mnist_core.runner import card_markdown
from mnist_core.runs import NAME_RE, Run, RunError, check_run_name, list_runs, new_run_name

DEFAULT_RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"
DEFAULT_PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
MAX_SEEDS = 20


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


def summary(run: Run, judged_by: Goal | None = None) -> dict:
    """The run's row for the runs table, with its status as jobs.status reads it and its verdict
    against the goal (the saved one unless given)."""
    return run.summary(jobs.status(run), judged_by or goal())


def card_text(run: Run) -> str | None:
    """The run's card, made afresh from its files: the status as jobs.status reads it (a run whose
    process died reads as failed, though card.md still says running), the goal as it is now, the
    notes as they are now. None for a directory without a config."""
    if not run.config:
        return run.card_text()
    return card_markdown(run, jobs.status(run).get("status"))


# -- the goal, groups of seeds, notes ------------------------------------------------------------


def goal() -> Goal:
    """The goal runs are judged by: the one saved in the runs folder, else the assignment's."""
    return goalmod.load(runs_dir())


def set_goal(new: Goal) -> None:
    goalmod.save(runs_dir(), new)


def verdict(run: Run, judged_by: Goal | None = None) -> Verdict:
    return judge_run(judged_by or goal(), run.config, run.epochs())


def parse_seeds(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]; ConfigError for anything but distinct whole numbers from 0, 2 to 20 of them."""
    try:
        seeds = [int(p) for p in str(text).replace(" ", "").split(",") if p != ""]
    except ValueError:
        raise ConfigError(f"seeds must be whole numbers separated by commas, e.g. 1,2,3; got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and not negative, got {text!r}")
    if not 1 <= len(seeds) <= MAX_SEEDS:
        raise ConfigError(f"give 1 to {MAX_SEEDS} seeds, got {len(seeds)}")
    return seeds


def seed_runs(model: ModelConfig, recipe: TrainConfig, seeds: list[int], group: str | None = None,
              target: str | None = None) -> list[dict]:
    """jobs.start_queue's specs for a group: one run per seed, all else equal, named <group>-seed<N>."""
    group = check_run_name(group) if group else new_run_name(runs_dir(), "seeds")
    if any(r.config.get("group") == group for r in all_runs()):
        raise RunError(f"group {group!r} already exists: choose another name")
    about = f"seeds {','.join(map(str, seeds))}, all else equal"
    return [dict(model_cfg=model, train_cfg=replace(recipe, seed=s), name=check_run_name(f"{group}-seed{s}"),
                 group=group, target=f"{target}; {about}" if target else f"Group {group}: {about}")
            for s in seeds]


def start_seeds(model: ModelConfig, recipe: TrainConfig, seeds: list[int], group: str | None = None,
                target: str | None = None) -> list[Run]:
    """A group of runs of one model and recipe that differ only in the seed, trained one after the other."""
    return jobs.start_queue(runs_dir(), seed_runs(model, recipe, seeds, group, target))


def groups() -> dict[str, list[Run]]:
    """Every group of seeds, newest first, each with its runs in seed order."""
    out: dict[str, list[Run]] = {}
    for run in all_runs():
        if isinstance(name := run.config.get("group"), str) and name:
            out.setdefault(name, []).append(run)
    return {g: sorted(rs, key=_seed_order) for g, rs in out.items()}


def group_runs(group: str) -> list[Run]:
    """The runs of one group, in seed order: only the folders named <group>-seed*, so a live page
    that polls it does not read every run's config."""
    found = [Run(p) for p in runs_dir().glob(f"{glob.escape(group)}-seed*") if p.is_dir()]
    found = [r for r in found if r.config.get("group") == group]
    return sorted(found, key=_seed_order)


def _seed_order(run: Run) -> tuple[str, str]:
    """A group's runs in seed order (then by name)."""
    return str(run.config.get("train", {}).get("seed")), run.name


def group_verdict(runs: list[Run], judged_by: Goal | None = None) -> GroupVerdict:
    g = judged_by or goal()
    return judge_group([verdict(r, g) for r in runs])


def group_card(name: str, runs: list[Run], judged_by: Goal | None = None) -> str:
    """The group's card: what it trained, the verdict over its seeds, then each seed's line."""
    g = judged_by or goal()
    rows = [(r, verdict(r, g), jobs.status(r).get("status", "?")) for r in runs]
    overall = judge_group([v for _, v, _ in rows])
    first = runs[0].config if runs else {}
    lines = [f"# Group {name}", "", "**TARGET:**  ",
             f"{first.get('target') or ''}  ",
             f"Model {first.get('params', '?')} params; goal: {g.text()}.", "",
             "**RESULTS:**  ", f"*verdict:* **{overall.text(g)}**  "]
    done = [r for r, _, state in rows if state not in ("running", "queued")]
    if len(done) < len(rows):
        lines.append(f"*still training:* {len(rows) - len(done)} of {len(rows)} seeds  ")
    lines += ["", f"| seed | run | final test % | last {g.last} min | verdict | why |", "|---|---|---:|---:|---|---|"]

    def fmt(x):
        return "–" if x is None else f"{x:.2f}"

    for r, v, state in rows:
        verdict_word = "…" if state in ("running", "queued") else v.word
        lines.append(f"| {r.config.get('train', {}).get('seed', '?')} | {r.name} | {fmt(v.final)} | "
                     f"{fmt(v.last_min)} | {verdict_word} | {v.reason} |")
    return "\n".join(lines) + "\n"


def set_notes(run: Run, notes: str, tags: str | list[str]) -> None:
    """Keep the run's notes and tags (comma-separated, or a list) in notes.json; the card shows them."""
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",")]
    tags = list(dict.fromkeys(t for t in tags if t))
    for t in tags:
        if len(t) > 40 or any(c in t for c in "`|\n"):
            raise ConfigError(f"tag {t[:40]!r} is not allowed: at most 40 characters, no backquote or bar")
    if len(notes) > 5000:
        raise ConfigError(f"notes are {len(notes):,} characters: keep them under 5,000")
    try:
        atomic_write_json(run.path / "notes.json", {"notes": notes.strip(), "tags": tags})
        if jobs.state(run) != "running":  # a training rewrites its card each epoch, notes included
            atomic_write_text(run.path / "card.md", card_markdown(run, jobs.status(run).get("status")))
    except OSError as e:
        raise RunError(f"cannot save the notes of {run.name!r}: {describe_os_error(e)}") from None


def rename(run: Run, new_name: str) -> Run:
    """Give a run a new name: its folder and its config; runs that continue it follow. Refused
    while it trains or waits in a queue."""
    check_run_name(new_name)
    if new_name == run.name:
        return run
    if jobs.state(run) in ("running", "queued"):
        raise RunError(f"run {run.name!r} is training: rename it once it has finished or been stopped")
    target = run.path.parent / new_name
    if target.exists():
        raise RunError(f"a run named {new_name!r} already exists")
    try:
        os.rename(run.path, target)
    except OSError as e:
        raise RunError(f"cannot rename {run.name!r}: {describe_os_error(e)}") from None
    renamed = Run(target)
    if isinstance(d := read_json(target / "config.json"), dict):
        atomic_write_json(target / "config.json", {**d, "name": new_name})
    for other in all_runs():  # runs continued from it name it as their parent
        d = read_json(other.path / "config.json")
        if isinstance(d, dict) and d.get("parent") == run.name:
            atomic_write_json(other.path / "config.json", {**d, "parent": new_name})
    try:
        atomic_write_text(target / "card.md", card_markdown(renamed, jobs.status(renamed).get("status")))
    except OSError:
        pass  # the card is made afresh when it is shown
    return renamed


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


CONTINUE_SCHEDULES = {  # how a continued run's rate goes: said on the page and in its card
    "constant": "the parent's last rate, held",
    "cosine": "a cosine tail from the parent's last rate down to 0",
    "restart": "the parent's schedule again from its start (a OneCycle climbs back to its peak)",
}


def epochs_seen(run: Run) -> int:
    """Epochs the run's last weights have seen, its parents' included."""
    epochs = run.epochs()
    if epochs:
        return int(epochs[-1]["epoch"])
    before = run.config.get("train", {}).get("start_epoch")
    return before if isinstance(before, int) else 0


def continue_run(run: Run, epochs: int, schedule: str = "constant") -> Run:
    """A new run that trains `run`'s last checkpoint for `epochs` more, its epochs numbered on, with
    its rate as `schedule` says (CONTINUE_SCHEDULES): by default the parent's last rate, so that a
    finished OneCycle or cosine run is not thrown back to its peak."""
    if schedule not in CONTINUE_SCHEDULES:
        raise ConfigError(f"schedule {schedule!r} for a continued run is unknown: choose one of "
                          f"{', '.join(CONTINUE_SCHEDULES)}")
    last = run.path / "last.pt"
    if not last.exists():
        raise RunError(f"run {run.name!r} has no last.pt to continue from")
    model, base = settings_of(run)
    done = run.epochs()
    rate = float(done[-1]["lr"]) if done and isinstance(done[-1].get("lr"), (int, float)) else base.lr
    if schedule == "restart":
        recipe, says = for_epochs(base, int(epochs)), f"{base.scheduler} again from lr {base.lr:g}"
    else:
        recipe = replace(base, epochs=int(epochs), lr=rate, scheduler="none" if schedule == "constant" else "cosine",
                         milestones=(), warmup_epochs=0)
        says = f"{'constant' if schedule == 'constant' else 'cosine to 0'} from lr {rate:.3g}, the parent's last"
    recipe = replace(recipe, init_checkpoint=str(last), start_epoch=epochs_seen(run))
    return jobs.start(runs_dir(), model, recipe, parent=run.name,
                      target=f"Continue {run.name} for {plural(int(epochs), 'epoch')}; schedule: {says}")


def fine_tune(run: Run, handwriting: Path, epochs: int, limit_train: int) -> Run:
    """A new run that trains `run`'s last checkpoint on MNIST plus the user's drawings, gently
    (SGD 0.01, no schedule), keeping the run's augmentation, seed and device."""
    model, base = settings_of(run)
    recipe = TrainConfig(
        epochs=int(epochs), batch_size=min(base.batch_size, 128), lr=0.01, momentum=base.momentum,
        scheduler="none", augment=base.augment, seed=base.seed, device=base.device, limit_train=int(limit_train),
        init_checkpoint=str(run.path / "last.pt"), start_epoch=epochs_seen(run),
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


def export_as(run: Run, fmt: str, checkpoint: Path | None = None) -> bytes:
    """The run as a script, a notebook, ONNX, TorchScript or an archive (export.FORMATS)."""
    return export.export_bytes(run, fmt, checkpoint)


def runs_with_checkpoints() -> list[Run]:
    """Runs that can be continued or fine-tuned: a last.pt, and not training now."""
    return [r for r in list_runs(runs_dir()) if (r.path / "last.pt").exists() and jobs.state(r) != "running"]


# -- sweeps (sweep.py): one at a time, sharing the training lock --------------------------------


def sweeps() -> list[Path]:
    """The sweeps' folders, newest first."""
    return sweep.list_sweeps(runs_dir())


def sweep_folder(name: str) -> Path:
    return sweep.sweep_dir(runs_dir(), name)


def active_sweep() -> Path | None:
    """The folder of the sweep that holds the machine, or None."""
    return sweep.active(runs_dir())


def start_sweep(space: dict, name: str | None = None, address: str | None = None) -> Path:
    """Start a checked space as a sweep in a process of its own; jobs.Busy when the machine is taken."""
    return sweep.start(runs_dir(), space, name, address)


def resume_sweep(folder: Path) -> None:
    sweep.resume(folder)


def stop_sweep(folder: Path) -> None:
    sweep.request_stop(folder)

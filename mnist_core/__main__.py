"""Command line: python -m mnist_core {summary,train,predict,bench} ...

Every error a user can cause ends with one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mnist_core.bench import (QUICK_EPOCHS, QUICK_TEST, QUICK_TRAIN, RACE_PRESET, RACE_TARGET, accuracy_bench,
                               race_bench, run_bench)
from mnist_core.checkpoint import BUNDLED_CHECKPOINT, CheckpointError, load_checkpoint
from mnist_core.data import DataError, load_mnist, normalize
from mnist_core.draw import describe, ImageError, load_image, predict
from mnist_core.files import UnreadableFile, atomic_write_bytes, describe_os_error, read_bytes, read_json
from mnist_core.model import summary_text
from mnist_core.runner import train_run
from mnist_core.goal import GoalError
from mnist_core import sweep
from mnist_core.jobs import Busy, announce
from mnist_core.sweep import SweepError
from mnist_core.lab import goal, group_verdict, parse_seeds, preset as lab_preset, runs_dir, seed_runs, verdict
from mnist_core.lrfind import check_range, range_test
from mnist_core.export import FORMATS, export_bytes, loadable_checkpoint, onnx_difference
from mnist_core.runs import check_run_name, get_run, Run, RunError
from mnist_core.train import check_can_train
from mnist_core.config import OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULERS, ConfigError, ModelConfig

EXIT_USAGE = 2
KEEP = object()  # an option left out: keep the preset's value
PROJECT = Path(__file__).resolve().parent.parent  # the checkout: app.py, data/, models/


class UserError(Exception):
    """Anything the user can fix: printed as one `error:` line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UserError(message)


def cli_seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_widths(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be 6 whole numbers separated by commas, got {text!r}") from None


def parse_milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones must be whole numbers separated by commas, got {text!r}") from None


# train's options that set a TrainConfig field of the same name
RECIPE_OPTIONS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay", "scheduler",
                  "step_size", "gamma", "milestones", "warmup_pct", "final_div", "warmup_epochs", "patience",
                  "label_smoothing", "clip_grad", "rotate", "translate", "scale", "shear", "erase", "augment", "seed",
                  "device", "precision", "channels_last", "ema", "val_split")


def parse_limit(text: str) -> int | None:
    if text.lower() in ("all", "none", "0"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'all', got {text!r}") from None


MAX_ARCH_BYTES = 64 * 1024  # a design of 40 layers is about 2 KB as JSON


def read_arch(value: str) -> ModelConfig:
    """--arch: a file holding a design (JSON {"layers": [...]} or the one-line text), or the text itself."""
    path = Path(value)
    looks_like_a_path = value.strip()[:1] not in "{[" and (path.suffix in (".json", ".txt") or "/" in value)
    if not (looks_like_a_path or path.is_file()):
        return ModelConfig.parse(value)
    try:
        text = read_bytes(path, MAX_ARCH_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{value}: not a text file") from None
    except (OSError, UnreadableFile) as e:
        raise ConfigError(str(e) if isinstance(e, UnreadableFile) else describe_os_error(e)) from None
    try:
        return ModelConfig.parse(text)
    except ConfigError as e:
        raise ConfigError(f"{value}: {e}") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", metavar="FILE_OR_TEXT",
                   help="the model as a layer list: a JSON file ({\"layers\": [...]}) or text such as "
                        "'conv8 bn relu maxpool conv16 bn relu gap conv10k1'")
    p.add_argument("--no-bn", action="store_true", help="Conv-ReLU blocks without BatchNorm")
    p.add_argument("--widths", type=parse_widths, help="six channel widths W1,W2,W3,W4,W5,W6 (default 12,16,10,12,16,30)")
    p.add_argument("--dropout", type=float, help="Dropout2d after every ReLU (0 = off)")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The model and recipe options of train and lr-find: a preset, then what changes it."""
    p.add_argument("--preset", default="reference", help=f"starting settings: {', '.join(PRESETS)} or one of "
                   "your saved presets (default reference)")
    add_model_args(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (peak rate for onecycle)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (default), adam or adamw")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--nesterov", action="store_true", default=None, help="SGD with Nesterov momentum")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--scheduler", choices=SCHEDULERS)
    p.add_argument("--step-size", type=int, help="step: epochs between decays")
    p.add_argument("--gamma", type=float, help="step, multistep, plateau: the factor of each decay")
    p.add_argument("--milestones", type=parse_milestones, help="multistep: epochs after which the rate decays, e.g. 5,10")
    p.add_argument("--warmup-pct", type=float, help="onecycle: share of the steps that warm up (default 0.25)")
    p.add_argument("--final-div", type=float, help="onecycle: the last rate is the first divided by this (default 100)")
    p.add_argument("--warmup-epochs", type=int, help="cosine: epochs of linear warm-up")
    p.add_argument("--patience", type=int, help="plateau: epochs without a better test loss before a decay")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradients' total norm (0 = off)")
    p.add_argument("--rotate", type=float, metavar="DEG", help="augmentation: random rotation up to +- DEG")
    p.add_argument("--translate", type=float, metavar="PX", help="augmentation: random shift up to +- PX pixels")
    p.add_argument("--scale", type=float, metavar="S", help="augmentation: random zoom within 1 +- S")
    p.add_argument("--shear", type=float, metavar="DEG", help="augmentation: random shear up to +- DEG")
    p.add_argument("--erase", type=float, metavar="P", help="augmentation: erase a random patch in this share of images")
    p.add_argument("--augment", type=float, help="shorthand: rotation DEG, shift DEG/4 px, scale DEG/100 (0 = off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32; bf16 autocast (faster on CPUs with AMX/AVX-512 "
                   "BF16 and recent GPUs, slower elsewhere); auto: bf16 where it is fast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="keep images and activations channels-last (NHWC): faster max-pooling on a CPU")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="test and save a moving average of the weights with this decay per step (0 = off)")
    p.add_argument("--limit-train", type=parse_limit, default=KEEP, help="train on the first N images only ('all': every one)")
    p.add_argument("--limit-test", type=parse_limit, default=KEEP, help="test on the first N images only ('all': every one)")
    p.add_argument("--val-split", type=int, metavar="N", help="hold out N training images (a fixed choice) and "
                   "choose best.pt on them, not on the test set (0 = off)")


def build_parser() -> Parser:
    parser = Parser(prog="python -m mnist_core", description="Design, train and try tiny CNNs on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("app", help="start the app (streamlit run app.py, from the project's folder)")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help="passed on to streamlit, e.g. --server.port 8600")

    p = sub.add_parser("summary", help="print the torchinfo layer table of a model")
    add_model_args(p)

    p = sub.add_parser("train", help="train a model into a run directory")
    add_recipe_args(p)
    p.add_argument("--run-dir", type=Path, help="directory for this run (default runs/<name>)")
    p.add_argument("--name", help="run name under the runs folder (ignored with --run-dir)")
    p.add_argument("--target", help="the TARGET line of the run's card")
    p.add_argument("--from-run", action="store_true", help="train the config already written in --run-dir")
    p.add_argument("--then", type=Path, action="append", default=[], metavar="DIR",
                   help="with --from-run: another prepared run directory to train afterwards (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--seeds", type=cli_seeds, metavar="S1,S2,...",
                   help="train a group: one run per seed, all else equal, one after the other; prints the group's "
                        "verdict against the goal")
    p.add_argument("--group", help="with --seeds: the group's name (default seeds-<date>-<time>); its runs are "
                                   "<group>-seed<S>")

    p = sub.add_parser("lr-find", help="the learning-rate range test: a short training at rising rates, "
                                       "the loss against the rate, a suggested peak rate; writes no run")
    add_recipe_args(p)
    p.add_argument("--start", type=float, default=1e-5, help="the first rate (default 1e-5)")
    p.add_argument("--end", type=float, default=10.0, help="the last rate (default 10; the test stops early once "
                   "the loss has blown up)")
    p.add_argument("--steps", type=int, default=200, help="batches, the rate rising by the same factor each (default 200)")

    p = sub.add_parser("export", help="a run as a PyTorch script, a notebook, ONNX, TorchScript or an archive")
    p.add_argument("run", help="a run's name (in the runs folder) or its directory")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in FORMATS.items()))
    p.add_argument("--out", type=Path, help="the file to write (default <run><ending> in this directory)")

    p = sub.add_parser("sweep", help="search a space of models and recipes on Ray Tune (Optuna's TPE, ASHA): "
                                     "every trial is a run; prints each finished trial, the table and the Pareto front")
    p.add_argument("--space", type=Path, help="the space file (JSON), e.g. examples/sweeps/tiny.json")
    p.add_argument("--trials", type=int, help="trials to run (default: the space's)")
    p.add_argument("--concurrent", type=int, help="trials at once, one thread each (default: the space's, else the cores)")
    p.add_argument("--budget", type=int, help="parameters: a model at or over it is rejected before training")
    p.add_argument("--goal", type=float, help="test accuracy in %% the last epochs must hold (default 99.4)")
    p.add_argument("--objective", choices=["accuracy", "params"], help="accuracy: the best last-epochs minimum "
                   "under the budget; params: the fewest parameters that reach the goal")
    p.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--name", help="the sweep's name (default sweep-<date>-<time>)")
    p.add_argument("--status", type=Path, metavar="DIR", help="read a sweep again: its folder or its name")
    p.add_argument("--resume", type=Path, metavar="DIR", help="go on with an interrupted or stopped sweep (its folder "
                   "or its name): the trials still to run, the search starting from every recorded result")
    p.add_argument("--from-dir", type=Path, help=argparse.SUPPRESS)  # the app's sweep process: a prepared folder

    p = sub.add_parser("predict", help="read digits from image files")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: the bundled model)")
    p.add_argument("images", nargs="+", type=Path)

    p = sub.add_parser("bench", help="images/s of the reference pipeline vs the core's, and UI latencies; "
                                     "or, with --accuracy, a preset's accuracy and time to a goal over seeds")
    p.add_argument("--quick", action="store_true", help="fewer batches (under 30 seconds); with --race or --accuracy, "
                   "a small subset and 2 epochs (under a minute; not the targets' figures)")
    p.add_argument("--race", nargs="?", const=RACE_PRESET, metavar="PRESET",
                   help=f"the notebook (its 15 epochs) against PRESET (default {RACE_PRESET}) through the core, taking "
                        f"turns for each of --seeds: each one's time from the start to {RACE_TARGET}%% test accuracy, "
                        "and their medians")
    p.add_argument("--batches", type=int, help="timed batches per pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument("--accuracy", metavar="PRESET",
                   help=f"train PRESET ({', '.join(PRESETS)}) once per seed and report its last three epochs' "
                        "test accuracy and its time to --goal")
    p.add_argument("--arch", metavar="FILE_OR_TEXT", help="with --accuracy: train this layer list on the preset's recipe")
    p.add_argument("--seeds", type=cli_seeds, help="with --accuracy or --race: comma-separated (default 1,2,3; "
                   "with --race --quick, 1)")
    p.add_argument("--goal", type=float, default=99.4, help="with --accuracy: test accuracy in %% (default 99.4)")
    return parser


def model_config(args, base: ModelConfig) -> ModelConfig:
    """--arch in place of the base model when given, then --widths / --no-bn / --dropout applied
    (they edit the template family)."""
    if getattr(args, "arch", None) is not None:
        base = read_arch(args.arch)
    if not (args.no_bn or args.widths is not None or args.dropout is not None):
        return base
    settings = base.template_settings()
    if settings is None:
        raise ConfigError("--widths, --no-bn and --dropout edit the reference skeleton; this model is another shape")
    widths, batchnorm, dropout = settings
    return ModelConfig.template(args.widths if args.widths is not None else widths,
                                False if args.no_bn else batchnorm,
                                args.dropout if args.dropout is not None else dropout)


def cmd_summary(args) -> int:

    print(summary_text(model_config(args, ModelConfig())))
    return 0


def cmd_train(args) -> int:
    if args.from_run:
        return train_prepared(args)
    if args.then:
        raise UserError("--then needs --from-run")
    if args.seeds is not None:
        return train_seeds(args)
    if args.group is not None:
        raise UserError("--group names a group of --seeds")
    run, data = new_run(args)
    train_one(run, data, args.quiet)
    print(run.path)
    return 0


def train_seeds(args) -> int:
    """A group: one run per seed, trained one after the other in this process, then the verdict."""
    if args.run_dir is not None or args.name is not None or args.seed is not None:
        raise UserError("--seeds makes its own runs, <group>-seed<S>: it does not go with --run-dir, --name or --seed")
    preset, model_cfg, train_cfg = settings_from_args(args)
    check_can_train(train_cfg)
    specs = seed_runs(model_cfg, train_cfg, args.seeds, args.group, args.target)  # names checked: nothing written yet
    data = load_mnist()
    runs = [Run.create(runs_dir(), s["model_cfg"], s["train_cfg"], name=s["name"], preset=args.preset,
                       target=s["target"], group=s["group"]) for s in specs]
    group = specs[0]["group"]
    print(f"group {group}: {len(runs)} runs, seeds {','.join(map(str, args.seeds))}", flush=True)
    for i, run in enumerate(runs):
        result = train_one(run, data, args.quiet)
        if result.stopped:
            for later in runs[i + 1 :]:
                later.set_status("stopped", reason=f"not started: {run.name}, the run before it, was stopped")
            break
    judged_by = goal()
    print(f"\ngroup {group}, goal: {judged_by.text()}")
    for run in runs:
        v = verdict(run, judged_by)
        last = "–" if v.last_min is None else f"{v.last_min:.2f}"
        print(f"  seed {run.train_config().seed}: {run.name}  last {judged_by.last} min {last}  {v.text()}")
    print(group_verdict(runs, judged_by).text(judged_by), flush=True)
    return 0


def new_run(args):
    """(run, data) for `train` from a preset and options; nothing is written on bad input."""

    preset, model_cfg, train_cfg = settings_from_args(args)
    check_can_train(train_cfg)  # before anything is written
    if args.name and args.run_dir is None:
        check_run_name(args.name)
    data = load_mnist()  # verified before the run directory exists: bad data leaves nothing behind
    if args.run_dir is not None:
        run = Run.at(args.run_dir, model_cfg, train_cfg, preset=args.preset, target=args.target)
    else:
        run = Run.create(runs_dir(), model_cfg, train_cfg, name=args.name, preset=args.preset, target=args.target)
    return run, data


def settings_from_args(args):
    """(preset, model, recipe): the preset with the command line's changes; ConfigError on bad input."""
    preset = lab_preset(args.preset)
    model_cfg = model_config(args, preset.model)
    changes = {
        k: getattr(args, k)
        for k in RECIPE_OPTIONS
        if getattr(args, k) is not None
    }
    changes.update({k: getattr(args, k) for k in ("limit_train", "limit_test") if getattr(args, k) is not KEEP})
    return preset, model_cfg, replace(preset.train, **changes)


def train_prepared(args) -> int:
    """Train run directories the app prepared (config.json written), one after the other.

    A stop of one run cancels the runs queued after it.
    """

    if args.run_dir is None:
        raise UserError("--from-run needs --run-dir")
    runs = [Run(p) for p in [args.run_dir, *args.then]]
    for run in runs:
        if read_json(run.path / "config.json") is None:
            raise UserError(f"{run.path}: no readable config.json to train")
    try:  # the app started these runs and waits for their status: a failure here must land in them
        for run in runs:
            run.model_config(), run.train_config()
        data = load_mnist()
    except Exception as e:
        for run in runs:
            _mark_failed(run, e)
        raise
    for i, run in enumerate(runs):
        announce(run.name)
        result = train_one(run, data, args.quiet)
        if result.stopped:
            for later in runs[i + 1 :]:
                later.set_status("stopped", reason=f"not started: {run.name}, the run before it, was stopped")
            break
    print(runs[-1].path)
    return 0


def train_one(run, data, quiet: bool):
    """Train one run with the reference notebook's output; SIGTERM/SIGINT stop it cleanly."""

    stop = {"requested": False}

    def on_signal(signum, frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    printer = Progress(quiet=quiet)
    print(f"run: {run.path}", flush=True)
    result = train_run(run, data, progress=printer, should_stop=lambda: stop["requested"])
    printer.close()
    state = "stopped" if result.stopped else "finished"
    print(f"{state}: best test accuracy {result.best_test_acc:.2f}% (epoch {result.best_epoch})", flush=True)
    print(f"goal ({goal().text()}): {verdict(run).text()}", flush=True)
    return result


def _mark_failed(run, e: Exception) -> None:
    """Record why a run the app started could not begin training (its status still says running)."""
    try:
        run.set_status("failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:300])
    except OSError:
        pass  # the disk is the problem; the app still sees the process end and marks the run


class Progress:
    """The reference notebook's output: a tqdm bar per epoch, then the test-set line."""

    def __init__(self, quiet=False):
        self.quiet, self.bar = quiet, None

    def __call__(self, r):
        if r["kind"] == "batch":
            if self.bar is None and not self.quiet:
                print(f"EPOCH: {r['epoch']}", flush=True)
                self.bar = tqdm(total=r["batches"], file=sys.stdout, mininterval=0.5)
            if self.bar is not None:
                self.bar.set_description(
                    f"Loss={r['loss']} Batch_id={r['batch'] - 1} Accuracy={r['acc']:.2f}", refresh=False
                )
                self.bar.update(1)
        elif r["kind"] == "epoch":
            self.close()
            print(
                f"\nTest set: Average loss: {r['test_loss']:.4f}, "
                f"Accuracy: {r['test_correct']}/{r['test_total']} ({r['test_acc']:.2f}%)\n",
                flush=True,
            )
        elif r["kind"] == "stopped":
            self.close()
            print(f"\nstopped at epoch {r['epoch']}, batch {r['batch']}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_predict(args) -> int:

    model, _ = load_checkpoint(args.checkpoint or BUNDLED_CHECKPOINT)
    failed = 0
    for path in args.images:  # every readable file is answered; each bad one gets its own error line
        try:
            _, p, _ = predict(model, load_image(path))
        except ImageError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr, flush=True)
        except ValueError as e:  # EmptyDrawing, TooSmall: what the picture holds
            failed += 1
            print(f"error: {path}: {e}", file=sys.stderr, flush=True)
        else:
            print(f"{path}: {describe(p)}", flush=True)
    return EXIT_USAGE if failed else 0


def cmd_app(args) -> int:
    """The Streamlit app, started from the project's folder (its .streamlit/config.toml applies)."""
    app = PROJECT / "app.py"
    if not app.is_file():
        raise UserError(f"{app} is missing: the app runs from a checkout of mnist-lab (pip install -e .)")
    return subprocess.call([sys.executable, "-m", "streamlit", "run", str(app), *args.streamlit_args], cwd=PROJECT)


def sweep_folder(given: Path) -> Path:
    """A sweep's folder from its path or its name; UserError when it is not one."""
    folder = given if given.is_dir() else sweep.sweep_dir(runs_dir(), str(given))
    if not (folder / "spec.json").is_file():
        raise UserError(f"{given}: not a sweep (no spec.json); the sweeps are in {runs_dir() / sweep.SWEEPS}")
    return folder


def cmd_sweep(args) -> int:
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.from_dir is not None or args.resume is not None:
        sweep.run(sweep_folder(args.from_dir or args.resume), resume=args.resume is not None, log=log)
        return 0
    if args.status is not None:
        folder = sweep_folder(args.status)
        state = sweep.status(folder)
        trials = sweep.trial_table(folder)
        ended = sum(t.get("status") in sweep.DONE for t in trials)
        print(f"sweep {folder.name}: {state.get('status', 'unknown')}, {ended} of {state.get('trials', '?')} "
              f"trials ended" + (f" ({state['reason']})" if state.get("reason") else ""))
        print(sweep.table(trials))
        print("\nPareto front:")
        for t in sweep.pareto(trials):
            print(f"  {t['params']:>7,} params  {t['last_min']:.2f}%  {t['run']}  {t.get('layers', '')}")
        return 0
    if args.space is None:
        raise UserError("sweep needs --space FILE (or --status DIR to read one again)")
    space = sweep.load_space(args.space)
    changes = {k: getattr(args, k) for k in ("trials", "concurrent", "budget", "goal", "objective")
               if getattr(args, k) is not None}
    space = sweep.check_space({**space, **changes})
    print(f"sweep: {space['trials']} trials, {space['concurrent']} at once, budget {space['budget']:,} parameters, "
          f"objective {space['objective']}, goal {space['goal']:g}%, {sweep.early_stop_text(space)}", flush=True)
    folder = sweep.run_sweep(space, runs_dir(), args.name, args.address, log=log)
    print(folder)
    return 0


def cmd_export(args) -> int:
    run = find_run(args.run)
    out = args.out or Path(f"{run.name}{FORMATS[args.format][0]}")
    if out.is_dir():
        raise UserError(f"{out}: is a directory; --out names the file to write")
    if not out.resolve().parent.is_dir():
        raise UserError(f"{out.parent}: no such directory")
    data = export_bytes(run, args.format)
    if args.format == "onnx":  # checked before it is written: ONNX Runtime agrees with torch
        model, _ = load_checkpoint(loadable_checkpoint(run), follow_links=False)
        x = normalize(load_mnist().test_x[:1000])
        gap = onnx_difference(data, model, x)
        if gap > 1e-4:
            raise RunError(f"the ONNX model differs from torch's by {gap:.2g} on 1,000 test images; not written")
        print(f"ONNX Runtime agrees with torch on 1,000 test images (largest difference {gap:.1g})")
    atomic_write_bytes(out, data)
    print(out)
    return 0


def find_run(text: str) -> Run:
    """A run by name in the runs folder, or by its directory."""
    path = Path(text)
    if path.is_dir() and (path / "config.json").exists():
        return Run(path)
    try:
        return get_run(runs_dir(), text)
    except RunError:
        raise RunError(f"no run {text!r}: give a run's name in {runs_dir()} or its directory") from None


def cmd_lr_find(args) -> int:
    _, model_cfg, cfg = settings_from_args(args)
    check_can_train(cfg)
    check_range(args.start, args.end, args.steps)  # before MNIST is loaded
    print(f"LR range test: {model_cfg.describe()} ({model_cfg.params:,} parameters), {cfg.optimizer}, batch "
          f"{cfg.batch_size}, rates {args.start:g} to {args.end:g} over {args.steps} steps")
    result = range_test(model_cfg, cfg, load_mnist(), args.start, args.end, args.steps)
    for i in np.unique(np.linspace(0, len(result.lrs) - 1, min(12, len(result.lrs))).astype(int)):
        print(f"  lr {result.lrs[i]:10.3g}   loss {result.smoothed[i]:.3f}")
    if result.suggestion is None:
        print(f"no suggestion: {result.why}")
    else:
        print(f"suggested peak rate: {result.suggestion:.3g} ({result.why})")
    return 0


BENCH_SEEDS = [1, 2, 3]  # bench --accuracy and --race: the targets are medians over these


def cmd_bench(args) -> int:

    if args.arch is not None and args.accuracy is None:
        raise UserError("--arch goes with --accuracy PRESET (whose recipe trains it)")
    if args.race is not None:
        if args.accuracy is not None or args.batches is not None:
            raise UserError("--race goes alone (with --quick for a small subset)")
        preset = lab_preset(args.race)
        if args.device != "auto":
            preset = replace(preset, train=replace(preset.train, device=args.device))
        check_can_train(preset.train)
        try:
            race_bench(preset, quick=args.quick, seeds=args.seeds or ([1] if args.quick else BENCH_SEEDS))
        except ValueError as e:
            raise UserError(str(e)) from None
        return 0
    if args.accuracy is not None:
        if args.batches is not None:
            raise UserError("--batches times the pipelines; it does not go with --accuracy")
        if not 0 < args.goal <= 100:
            raise UserError(f"--goal is {args.goal:g}: it must be a test accuracy above 0 and at most 100 (%)")
        preset = lab_preset(args.accuracy)
        if args.arch is not None:
            preset = replace(preset, name=f"{preset.name} recipe, --arch", model=read_arch(args.arch))
        if args.device != "auto":
            preset = replace(preset, train=replace(preset.train, device=args.device))
        if args.quick:
            preset = replace(preset, train=replace(preset.train, limit_train=QUICK_TRAIN, limit_test=QUICK_TEST,
                                                   epochs=min(preset.train.epochs, QUICK_EPOCHS)))
            print(f"--quick: {QUICK_TRAIN:,} training and {QUICK_TEST:,} test images, at most {QUICK_EPOCHS} epochs: "
                  "these figures are not the target's")
        check_can_train(preset.train)
        accuracy_bench(preset, args.seeds or BENCH_SEEDS, args.goal)
        return 0
    if args.batches is not None and args.batches < 1:
        raise UserError(f"--batches is {args.batches}: it must be at least 1")
    run_bench(quick=args.quick, batches=args.batches, device=args.device)
    return 0


def main(argv=None) -> int:

    try:
        args = build_parser().parse_args(argv)
        commands = {"summary": cmd_summary, "train": cmd_train, "lr-find": cmd_lr_find, "predict": cmd_predict,
                    "bench": cmd_bench, "export": cmd_export, "app": cmd_app, "sweep": cmd_sweep}
        return commands[args.command](args)
    except (UserError, ConfigError, DataError, CheckpointError, RunError, ImageError, GoalError, SweepError,
            Busy) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # disk full, permissions, ...: still one line
        print(f"error: {str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug or a failed training: one line here, the run's status keeps the reason
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1


def cli() -> None:
    """The `mnist-lab` command (pip install -e .): every verb of `python -m mnist_core`, from any folder."""
    sys.exit(main())


if __name__ == "__main__":
    cli()

"""Command line: python -m mnist_core {summary,train,predict,bench} ...

Every error a user can cause ends with one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from mnist_core.bench import accuracy_bench, run_bench
from mnist_core.checkpoint import BUNDLED_CHECKPOINT, CheckpointError, load_checkpoint
from mnist_core.data import DataError, load_mnist
from mnist_core.draw import describe, ImageError, load_image, predict
from mnist_core.files import UnreadableFile, describe_os_error, read_bytes, read_json
from mnist_core.jobs import announce
from mnist_core.model import summary_text
from mnist_core.runner import train_run
from mnist_core.lab import runs_dir
from mnist_core.runs import check_run_name, Run, RunError
from mnist_core.train import check_can_train
from mnist_core.config import PRECISIONS, PRESETS, SCHEDULERS, ConfigError, ModelConfig, get_preset

EXIT_USAGE = 2
KEEP = object()  # an option left out: keep the preset's value


class UserError(Exception):
    """Anything the user can fix: printed as one `error:` line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UserError(message)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be whole numbers separated by commas, got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and not negative, got {text!r}")
    return seeds


def parse_widths(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be 6 whole numbers separated by commas, got {text!r}") from None


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


def build_parser() -> Parser:
    parser = Parser(prog="python -m mnist_core", description="Design, train and try tiny CNNs on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("summary", help="print the torchinfo layer table of a model")
    add_model_args(p)

    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--preset", default="reference", help=f"starting settings: {', '.join(PRESETS)} (default reference)")
    add_model_args(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (peak rate for onecycle)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--scheduler", choices=SCHEDULERS)
    p.add_argument("--augment", type=float, help="random rotation in degrees, with small shift/scale (0 = off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32, or bf16 autocast (faster on CPUs with AMX/AVX-512 BF16)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="test and save a moving average of the weights with this decay per step (0 = off)")
    p.add_argument("--limit-train", type=parse_limit, default=KEEP, help="train on the first N images only ('all': every one)")
    p.add_argument("--limit-test", type=parse_limit, default=KEEP, help="test on the first N images only ('all': every one)")
    p.add_argument("--run-dir", type=Path, help="directory for this run (default runs/<name>)")
    p.add_argument("--name", help="run name under the runs folder (ignored with --run-dir)")
    p.add_argument("--target", help="the TARGET line of the run's card")
    p.add_argument("--from-run", action="store_true", help="train the config already written in --run-dir")
    p.add_argument("--then", type=Path, action="append", default=[], metavar="DIR",
                   help="with --from-run: another prepared run directory to train afterwards (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="read digits from image files")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: the bundled model)")
    p.add_argument("images", nargs="+", type=Path)

    p = sub.add_parser("bench", help="images/s of the reference pipeline vs the core's, and UI latencies; "
                                     "or, with --accuracy, a preset's accuracy and time to a goal over seeds")
    p.add_argument("--quick", action="store_true", help="fewer batches: under 30 seconds")
    p.add_argument("--batches", type=int, help="timed batches per pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument("--accuracy", metavar="PRESET",
                   help=f"train PRESET ({', '.join(PRESETS)}) once per seed and report its last three epochs' "
                        "test accuracy and its time to --goal")
    p.add_argument("--arch", metavar="FILE_OR_TEXT", help="with --accuracy: train this layer list on the preset's recipe")
    p.add_argument("--seeds", type=parse_seeds, default=[1, 2, 3], help="with --accuracy: comma-separated (default 1,2,3)")
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
    run, data = new_run(args)
    train_one(run, data, args.quiet)
    print(run.path)
    return 0


def new_run(args):
    """(run, data) for `train` from a preset and options; nothing is written on bad input."""

    preset = get_preset(args.preset)
    model_cfg = model_config(args, preset.model)
    changes = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "scheduler", "augment", "seed", "device",
                  "precision", "ema")
        if getattr(args, k) is not None
    }
    changes.update({k: getattr(args, k) for k in ("limit_train", "limit_test") if getattr(args, k) is not KEEP})
    train_cfg = replace(preset.train, **changes)
    check_can_train(train_cfg)  # before anything is written
    if args.name and args.run_dir is None:
        check_run_name(args.name)
    data = load_mnist()  # verified before the run directory exists: bad data leaves nothing behind
    if args.run_dir is not None:
        run = Run.at(args.run_dir, model_cfg, train_cfg, preset=args.preset, target=args.target)
    else:
        run = Run.create(runs_dir(), model_cfg, train_cfg, name=args.name, preset=args.preset, target=args.target)
    return run, data


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


def cmd_bench(args) -> int:

    if args.arch is not None and args.accuracy is None:
        raise UserError("--arch goes with --accuracy PRESET (whose recipe trains it)")
    if args.accuracy is not None:
        if args.quick or args.batches is not None:
            raise UserError("--quick and --batches time the pipelines; they do not go with --accuracy")
        if not 0 < args.goal <= 100:
            raise UserError(f"--goal is {args.goal:g}: it must be a test accuracy above 0 and at most 100 (%)")
        preset = get_preset(args.accuracy)
        if args.arch is not None:
            preset = replace(preset, name=f"{preset.name} recipe, --arch", model=read_arch(args.arch))
        if args.device != "auto":
            preset = replace(preset, train=replace(preset.train, device=args.device))
        check_can_train(preset.train)
        accuracy_bench(preset, args.seeds, args.goal)
        return 0
    if args.batches is not None and args.batches < 1:
        raise UserError(f"--batches is {args.batches}: it must be at least 1")
    run_bench(quick=args.quick, batches=args.batches, device=args.device)
    return 0


def main(argv=None) -> int:

    try:
        args = build_parser().parse_args(argv)
        return {"summary": cmd_summary, "train": cmd_train, "predict": cmd_predict, "bench": cmd_bench}[args.command](args)
    except (UserError, ConfigError, DataError, CheckpointError, RunError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # disk full, permissions, ...: still one line
        print(f"error: {str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug or a failed training: one line here, the run's status keeps the reason
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

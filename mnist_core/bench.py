"""Benchmarks: throughput of the reference notebook's pipeline against the core's, and a preset's
accuracy and time to a goal accuracy over several seeds.

Throughput (run_bench), same model, same batch:

Reference pipeline: torchvision MNIST with ToTensor + Normalize per image, through a DataLoader
(batch 64, shuffled, no workers, as the notebook ran on a CPU), SGD 0.01/0.9, and the notebook's
loop body (per-batch accuracy, loss list, tqdm description).
Core pipeline: mnist_core.train.train on the in-memory uint8 tensors, same model and batch, in
fp32 and with bf16 autocast.
Both train the reference model for a fixed number of batches after a warm-up; images/s is timed
over the batches after the warm-up only. Then the model's convolutions alone, forward and
backward, in the core's faster precision: the ceiling that these kernels put on any pipeline.
Also timed: building a model + counting its parameters (what the Architecture page does per
change) and one canvas prediction, preprocessing included.

The race (race_bench): the notebook as it ran (that pipeline, its recipe, its 15 epochs) against a
preset through the core, taking turns for each seed, each timed from the start (data loading
included) to its first epoch at the reference's best test accuracy; the medians over the seeds.

Accuracy (accuracy_bench): a preset trained once per seed, in this process, one after the other;
for each seed the test accuracy of the last three epochs and the wall time from the start (data
loading included) to the end of the first epoch whose test accuracy reaches the goal.
"""

from __future__ import annotations

import io
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mnist_core.config import PRESETS, ModelConfig, Preset, TrainConfig, replace
from mnist_core.data import DATA_DIR, load_mnist, verify
from mnist_core.model import build_model, count_params
from mnist_core.train import resolve_device, train
from mnist_core.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
from mnist_core.draw import predict

TIMED_PRECISIONS = ("fp32", "bf16")

BATCH = 64


def reference_pipeline(device: torch.device, warmup: int, batches: int) -> float:
    """images/s of the notebook's loop: per-image transforms through a DataLoader."""
    loader = notebook_loader(notebook_dataset(train=True), device)
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    t0 = None
    tally = {"correct": 0, "processed": 0, "losses": []}
    bar = tqdm(loader, file=io.StringIO(), mininterval=0)  # the notebook's bar, drawn into a buffer
    for i, (x, y) in enumerate(bar):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        if i == warmup + batches:
            break
        notebook_step(model, opt, x.to(device), y.to(device), i, tally, bar)
    _sync(device)
    return batches * BATCH / (time.perf_counter() - t0)


def notebook_dataset(train: bool, limit: int | None = None):
    """torchvision's MNIST with the notebook's per-image ToTensor + Normalize, the first `limit` images."""
    from torchvision import datasets, transforms  # heavy, and only the notebook's pipeline needs it

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    dataset = datasets.MNIST(str(verify(DATA_DIR)), train=train, download=False, transform=tf)
    return torch.utils.data.Subset(dataset, range(limit)) if limit else dataset


def notebook_loader(dataset, device: torch.device) -> torch.utils.data.DataLoader:
    """The notebook's DataLoader: batch 64, shuffled; on CUDA one worker and pinned memory, as it ran
    on a GPU (no workers on a CPU)."""
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, **kwargs)


def notebook_step(model, opt, x, y, i: int, tally: dict, bar) -> None:
    """The notebook's training loop body, line for line: a step, the per-batch accuracy and loss
    list, the tqdm description."""
    opt.zero_grad()
    y_pred = F.log_softmax(model(x), dim=1)
    loss = F.nll_loss(y_pred, y)
    tally["losses"].append(loss.item())
    loss.backward()
    opt.step()
    pred = y_pred.argmax(dim=1, keepdim=True)
    tally["correct"] += pred.eq(y.view_as(pred)).sum().item()
    tally["processed"] += len(x)
    bar.set_description(desc=f"Loss={loss.item()} Batch_id={i} "
                             f"Accuracy={100 * tally['correct'] / tally['processed']:0.2f}")


def core_pipeline(device: torch.device, warmup: int, batches: int, data, precision: str = "fp32") -> float:
    """images/s of mnist_core.train.train on the same model and batch size."""
    times = []
    cfg = TrainConfig(epochs=1, batch_size=BATCH, limit_train=(warmup + batches + 1) * BATCH, device=device.type,
                      precision=precision)

    def on_record(r):
        if r["kind"] == "batch":
            times.append(time.perf_counter())  # the callback runs after the batch's .item() sync

    train(ModelConfig(), cfg, data, callback=on_record, should_stop=lambda: len(times) >= warmup + batches + 1)
    # times[k] = end of batch k+1; timed span covers batches warmup+1 .. warmup+batches
    return batches * BATCH / (times[warmup + batches] - times[warmup])


def convolution_ms(device: torch.device, precision: str, repeat: int) -> float:
    """ms per batch spent in the reference model's convolution kernels alone, forward and backward.

    Each convolution runs on an input of the shape it sees in training, with input and weights
    already in `precision` (no casts), and computes the gradients training needs (the first layer
    needs none for its input). Nothing else of a training step is timed, so BATCH / this time
    bounds the images/s that any training loop built on these kernels can reach.
    """
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    inputs = []
    hooks = [c.register_forward_hook(lambda mod, args, out: inputs.append(args[0])) for c in convs]
    with torch.no_grad():
        model(torch.randn(BATCH, 1, 28, 28, device=device))
    for h in hooks:
        h.remove()
    layers = []
    for i, (c, x) in enumerate(zip(convs, inputs)):
        x = x.to(dtype).requires_grad_(i > 0)
        w = c.weight.detach().to(dtype).requires_grad_()
        g = torch.randn_like(F.conv2d(x, w))
        layers.append((x, w, g))

    def convolutions():
        for x, w, g in layers:
            torch.autograd.grad(F.conv2d(x, w), [x, w] if x.requires_grad else [w], g)
        _sync(device)

    for _ in range(5):  # kernel selection and first-touch memory happen in the first calls
        convolutions()
    return _median_ms(convolutions, repeat)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def synthetic_drawing(size: int = 280) -> np.ndarray:
    """An RGBA canvas with a thick '7' drawn on a transparent background, like the Draw page sends."""
    img = np.zeros((size, size, 4), np.uint8)
    s = size / 280
    for t in np.linspace(0, 1, 200):
        for cy, cx in ((60 + 0 * t, 70 + 140 * t), (60 + 170 * t, 210 - 90 * t)):
            y, x = int(cy * s), int(cx * s)
            r = int(9 * s)
            img[max(0, y - r) : y + r, max(0, x - r) : x + r] = (255, 255, 255, 255)
    return img


# 40 layers, at full resolution for half of them: the deepest list the interactivity target covers
DEEP_LIST = " ".join(["conv16p1 bn relu"] * 6 + ["maxpool"] + ["conv16p1 bn relu"] * 6 + ["drop0.05", "gap", "conv10k1"])


def latency(repeat: int = 20) -> dict[str, float]:
    def build_and_count():
        cfg = ModelConfig.template((10, 14, 10, 14, 16, 20))
        build_model(cfg)
        count_params(cfg)

    def count_and_table():  # what the Architecture page computes per edit: parse, count, the layer table
        cfg = ModelConfig.parse(DEEP_LIST)
        return cfg.params, cfg.rows

    out = {"model build + param count": _median_ms(build_and_count, repeat)}
    deep = ModelConfig.parse(DEEP_LIST)
    out[f"{len(deep.layers)}-layer list: parse + param count + layer table"] = _median_ms(count_and_table, repeat)
    try:
        model, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    except Exception:
        model = build_model(ModelConfig()).eval()  # timing is the same for untrained weights
    drawing = synthetic_drawing()
    out["canvas prediction (preprocess + forward)"] = _median_ms(lambda: predict(model, drawing), repeat)
    deep_model = build_model(deep).eval()
    out[f"{len(deep.layers)}-layer list: canvas prediction"] = _median_ms(lambda: predict(deep_model, drawing), repeat)
    return out


def run_bench(quick: bool = False, batches: int | None = None, device: str = "auto", print_fn=print) -> dict:
    warmup = 5 if quick else 20
    batches = batches or (30 if quick else 200)
    repeats = 1 if quick else 3
    devices = [torch.device("cpu")]
    if device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print_fn(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; reference model, batch {BATCH}")
    print_fn(f"{warmup} warm-up + {batches} timed batches per pipeline, median of {repeats}")
    data = load_mnist()
    results = {}
    for dev in devices:
        name = dev.type if dev.type == "cpu" else f"cuda ({torch.cuda.get_device_name(dev)})"
        ref, core, conv = [], {p: [] for p in TIMED_PRECISIONS}, {p: [] for p in TIMED_PRECISIONS}
        for _ in range(repeats):  # interleaved, so a noisy moment hits every measurement
            ref.append(reference_pipeline(dev, warmup, batches))
            for p in TIMED_PRECISIONS:
                core[p].append(core_pipeline(dev, warmup, batches, data, p))
                conv[p].append(convolution_ms(dev, p, 5 if quick else 30))
        r = statistics.median(ref)
        print_fn(f"[{name}] reference pipeline:    {r:,.0f} images/s")
        best = None
        for p in TIMED_PRECISIONS:
            c = statistics.median(core[p])
            print_fn(f"[{name}] core pipeline, {p}: {c:,.0f} images/s ({c / r:.1f}x)")
            if best is None or c > best[1]:
                best = (p, c)
        conv_ms = statistics.median(conv[best[0]])
        print_fn(f"[{name}] convolutions alone, {best[0]}: {conv_ms:.2f} ms per batch, "
                 f"so at most {BATCH / conv_ms * 1000:,.0f} images/s ({BATCH / conv_ms * 1000 / r:.1f}x)")
        print_fn(f"[{name}] speedup: {best[1] / r:.1f}x (core {best[0]})")
        results[dev.type] = {"reference": r, **{f"core {p}": statistics.median(core[p]) for p in TIMED_PRECISIONS},
                             "speedup": best[1] / r, "best": best[0], "convolutions ms": conv_ms}
    for label, ms in latency(5 if quick else 50).items():
        print_fn(f"{label}: {ms:.2f} ms")
        results[label] = ms
    print_fn(f"speedup: {results['cpu']['speedup']:.1f}x")  # cpu, the core's faster precision
    return results


def accuracy_bench(preset: Preset, seeds: list[int], goal: float = 99.4, print_fn=print) -> dict:
    """Train `preset` once per seed; report the last three epochs' test accuracy and the time to `goal`."""
    m, t = preset.model, preset.train
    device = resolve_device(t.device)
    print_fn(f"{preset.name}: {count_params(m):,} parameters ({m.describe()}); {t.epochs} epochs, batch {t.batch_size}; "
             f"{t.recipe_text()}; precision {t.precision}; goal {goal:.2f}% test accuracy")
    print_fn(f"torch {torch.__version__}, {device.type}, {torch.get_num_threads()} CPU threads; seeds {', '.join(map(str, seeds))}")
    per_seed = {}
    for seed in seeds:
        start = time.perf_counter()
        accs, reached = [], None

        def on_record(r):
            nonlocal reached
            if r["kind"] != "epoch":
                return
            accs.append(r["test_acc"])
            print_fn(f"  seed {seed} epoch {r['epoch']}/{r['epochs']}: test {r['test_acc']:.2f}% "
                     f"({time.perf_counter() - start:.0f} s)")
            if reached is None and r["test_acc"] >= goal:
                reached = (r["epoch"], time.perf_counter() - start)

        train(m, replace(t, seed=seed), load_mnist(), callback=on_record)
        last3 = accs[-3:]
        best = max(accs)
        when = (f"epoch {reached[0]}, {reached[1]:.0f} s" if reached
                else f"never (best {best:.2f} at epoch {accs.index(best) + 1})")
        print_fn(f"seed {seed}: last 3 epochs {' '.join(f'{a:.2f}' for a in last3)} (min {min(last3):.2f}); "
                 f"first at goal: {when}; {time.perf_counter() - start:.0f} s in all")
        per_seed[seed] = {"test_acc": accs, "last3": last3, "epoch_at_goal": reached and reached[0],
                          "seconds_to_goal": reached and reached[1]}
    last = [a for s in per_seed.values() for a in s["last3"]]
    held = sum(min(s["last3"]) >= goal for s in per_seed.values())
    times = [s["seconds_to_goal"] if s["seconds_to_goal"] is not None else math.inf for s in per_seed.values()]
    median_time = statistics.median(times)
    print_fn(f"last 3 epochs over {len(seeds)} seeds: mean {statistics.mean(last):.2f}, min {min(last):.2f}; "
             f"goal held in each of them on {held}/{len(seeds)} seeds")
    print_fn(f"time to goal, median of {len(seeds)} seeds: "
             + (f"{median_time:.0f} s" if median_time != math.inf else "not reached"))
    return {"seeds": per_seed, "mean": statistics.mean(last), "min": min(last), "held": held,
            "median_seconds_to_goal": median_time}


# -- the race: time from the start to the reference's accuracy ----------------------------------

RACE_TARGET = 99.32  # the reference experiment's best test accuracy
RACE_PRESET = "fast" if "fast" in PRESETS else "lean"  # the core's fastest preset to it
NOTEBOOK_EPOCHS = 15
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS = 6000, 2000, 2


def notebook_race(target: float, epochs: int, limit_train: int | None, limit_test: int | None, seed: int = 1,
                  device: torch.device = torch.device("cpu"), print_fn=print) -> dict:
    """The notebook as it ran: torchvision MNIST with per-image ToTensor + Normalize through
    DataLoaders (batch 64, shuffled; on CUDA one worker and pinned memory, as it ran on a GPU), the
    reference model, SGD 0.01/0.9 with no schedule, its train loop body with the tqdm bar, and its
    test loop after every epoch. Times from before the data is opened to the end of each epoch's
    test; ends at the first epoch at `target`."""
    start = time.perf_counter()
    train_set, test_set = notebook_dataset(True, limit_train), notebook_dataset(False, limit_test)
    torch.manual_seed(seed)  # the weights and the loaders' shuffling
    train_loader, test_loader = notebook_loader(train_set, device), notebook_loader(test_set, device)
    model = build_model(ModelConfig()).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    reached = None
    for epoch in range(1, epochs + 1):
        model.train()
        bar = tqdm(train_loader, file=io.StringIO(), mininterval=0)
        tally = {"correct": 0, "processed": 0, "losses": []}
        for i, (x, y) in enumerate(bar):
            notebook_step(model, opt, x.to(device), y.to(device), i, tally, bar)
        model.eval()
        test_loss = right = 0
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device), y.to(device)
                output = F.log_softmax(model(x), dim=1)
                test_loss += F.nll_loss(output, y, reduction="sum").item()
                pred = output.argmax(dim=1, keepdim=True)
                right += pred.eq(y.view_as(pred)).sum().item()
        acc = 100 * right / len(test_set)
        seconds = time.perf_counter() - start
        print_fn(f"  notebook epoch {epoch}/{epochs}: test {acc:.2f}% ({seconds:.1f} s)")
        if acc >= target:
            reached = {"epoch": epoch, "seconds": seconds}
            break  # the race is run: the epochs after it would time nothing
    return {"reached": reached, "seconds": time.perf_counter() - start, "epochs": epochs}


def core_race(preset: Preset, target: float, print_fn=print) -> dict:
    """The preset through the core, from before the data is loaded to the end of each epoch; ends at
    the first epoch at `target` (the next epoch's first batch is where training stops)."""
    start = time.perf_counter()
    reached = None

    def on_record(r):
        nonlocal reached
        if r["kind"] != "epoch":
            return
        seconds = time.perf_counter() - start
        print_fn(f"  core epoch {r['epoch']}/{r['epochs']}: test {r['test_acc']:.2f}% ({seconds:.1f} s)")
        if reached is None and r["test_acc"] >= target:
            reached = {"epoch": r["epoch"], "seconds": seconds}

    train(preset.model, preset.train, load_mnist(), callback=on_record, should_stop=lambda: reached is not None)
    return {"reached": reached, "seconds": time.perf_counter() - start, "epochs": preset.train.epochs}


def race_time(result: dict) -> float:
    """A racer's time: to its first epoch at the target, or its whole run when it never got there."""
    return result["reached"]["seconds"] if result["reached"] else result["seconds"]


def race_line(notebook: list[dict], core: list[dict]) -> str:
    """Each racer's time to the target (the median over seeds when there are several; a run that
    never got there counts with its whole run's time, and the line says so) and the notebook's time
    over the core's."""

    def text(who: str, results: list[dict]) -> tuple[float, str]:
        seconds = statistics.median(race_time(r) for r in results)
        missed = sum(r["reached"] is None for r in results)
        if not missed:
            return seconds, f"{who} {seconds:.1f} s"
        if len(results) == 1:
            return seconds, f"{who} {seconds:.1f} s (never reached it: its whole {results[0]['epochs']}-epoch run)"
        return seconds, f"{who} {seconds:.1f} s (never reached it on {missed} of {len(results)} seeds: " \
                        "their whole runs stand in)"

    (n, n_text), (c, c_text) = text("notebook", notebook), text("core", core)
    medians = f" (medians of {len(core)} seeds)" if len(core) > 1 else ""
    return f"{n_text}, {c_text}, speedup: {n / c:.1f}x{medians}"


def race_bench(preset: Preset, quick: bool = False, target: float = RACE_TARGET,
               seeds: tuple[int, ...] | list[int] = (1,), print_fn=print) -> dict:
    """The notebook (its own 15 epochs) against `preset` through the core, in this process on the same
    data: each one's wall time to its first epoch at `target` test accuracy. With several seeds the
    two take turns, notebook then core for each seed, so that a machine which speeds up or slows down
    over the minutes weighs on both; the last line gives the medians."""
    if count_params(preset.model) > count_params(ModelConfig()):
        raise ValueError(f"{preset.name} has {count_params(preset.model):,} parameters, more than the reference's "
                         f"{count_params(ModelConfig()):,}: the race is for models no larger")
    limits = (QUICK_TRAIN, QUICK_TEST) if quick else (None, None)
    epochs = QUICK_EPOCHS if quick else NOTEBOOK_EPOCHS
    if quick:
        preset = replace(preset, train=replace(preset.train, limit_train=QUICK_TRAIN, limit_test=QUICK_TEST,
                                               epochs=min(preset.train.epochs, QUICK_EPOCHS)))
    device = resolve_device(preset.train.device)
    print_fn(f"race to {target:.2f}% test accuracy on {device.type}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads"
             + (f"; --quick: {QUICK_TRAIN:,} training and {QUICK_TEST:,} test images, {epochs} epochs: these "
                "figures are not the target's" if quick else ""))
    m, t = preset.model, preset.train
    print_fn(f"notebook: reference model (9,596 parameters), DataLoader, batch {BATCH}, SGD 0.01/0.9, {epochs} epochs")
    print_fn(f"core: preset {preset.name}, {count_params(m):,} parameters ({m.describe()}); {t.epochs} epochs, "
             f"batch {t.batch_size}; {t.recipe_text()}")
    notebook, core = [], []
    for seed in seeds:
        print_fn(f"seed {seed}")
        notebook.append(notebook_race(target, epochs, *limits, seed=seed, device=device, print_fn=print_fn))
        core.append(core_race(replace(preset, train=replace(preset.train, seed=seed)), target, print_fn))
        if len(seeds) > 1:
            print_fn(f"  seed {seed}: {race_line(notebook[-1:], core[-1:])}")
    print_fn(f"time to {target:.2f}%: {race_line(notebook, core)}")
    n, c = statistics.median(map(race_time, notebook)), statistics.median(map(race_time, core))
    return {"notebook": notebook, "core": core, "speedup": n / c, "preset": preset.name, "quick": quick,
            "seeds": list(seeds)}

"""A run as code that needs no mnist-lab: a standalone script and a Jupyter notebook.

Both import only torch, torchvision and the standard library. They hold the run's model as a
readable nn.Module (layers in order, each with its output shape in a comment; the module's
parameter names are the checkpoint's, so the run's best.pt loads into it), MNIST read by
torchvision, the run's optimizer, schedule and augmentation (batched on tensors), the reference
notebook's log lines and a final layer table. The notebook carries the run's own log and curves as
its cells' outputs: a record of what happened, and what running it again should reproduce.

One set of sections makes both: the script adds a command line, the notebook a first cell of settings.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import textwrap

from mnist_core.config import ModelConfig, TrainConfig
from mnist_core.data import MEAN, STD, VAL_SEED, affine_grid, augment
from mnist_core.model import summary_text
from mnist_core.runs import Run
from mnist_core.spec import Row

POOLS = {"maxpool": "nn.MaxPool2d", "avgpool": "nn.AvgPool2d"}


def _shape(row: Row) -> str:
    return "x".join(map(str, row.shape))


def _module_code(row: Row) -> str:
    """The constructor of one layer, as model.py builds it (same class, same arguments)."""
    lay, t = row.layer, row.layer.type
    if t == "conv":
        args = [str(row.in_channels), str(lay.out), f"kernel_size={lay.kernel}"]
        args += [f"{k}={v}" for k, v, default in (("stride", lay.stride, 1), ("padding", lay.padding, 0),
                                                   ("dilation", lay.dilation, 1)) if v != default]
        if lay.depthwise:
            args.append(f"groups={row.in_channels}")
        args.append(f"bias={lay.bias}")
        return f"nn.Conv2d({', '.join(args)})"
    if t == "bn":
        return f"nn.BatchNorm{'1' if row.flat else '2'}d({row.out_channels})"
    if t == "relu":
        return "nn.ReLU()"
    if t == "dropout":
        return f"nn.Dropout{'' if row.flat else '2d'}({lay.p:g})"
    if t in ("maxpool", "avgpool"):
        return f"{POOLS[t]}({lay.kernel}, stride={lay.stride})"
    if t == "gap":
        return f"nn.AvgPool2d({row.in_size})"
    if t == "linear":
        return f"FlatLinear({row.in_channels * row.in_size**2}, {lay.out}, bias={lay.bias})"
    if t == "add":
        return f"Add(skip={lay.skip})"
    raise ValueError(f"unknown layer type {t}")


def _about(row: Row) -> str:
    what = {"gap": "global average pool", "add": f"adds layer {row.layer.skip}'s output",
            "linear": "flattens, then fully connected"}.get(row.layer.type, "")
    return f"# {row.index:>2}: {_shape(row):>9}  RF {row.receptive_field}" + (f"  {what}" if what else "")


def model_code(cfg: ModelConfig) -> str:
    """The model as a class Net(nn.Sequential): the module names (0, 1, ...) are the checkpoint's."""
    rows = cfg.rows
    types = {r.layer.type for r in rows}
    width = max(len(_module_code(r)) for r in rows) + 1
    body = "\n".join(f"            {(_module_code(r) + ','):<{width}}  {_about(r)}" for r in rows)
    helpers = []
    if "linear" in types:
        helpers.append('''class FlatLinear(nn.Linear):
    """nn.Linear that flattens its input first: (B, C, H, W) -> (B, C*H*W) -> (B, out)."""

    def forward(self, x):
        return super().forward(x.flatten(1))
''')
    if "add" in types:
        helpers.append('''class Add(nn.Module):
    """A residual connection: this point's tensor plus the output of layer `skip` (0: the input)."""

    def __init__(self, skip):
        super().__init__()
        self.skip = skip

    def forward(self, x, earlier):
        return x + earlier
''')
        kept = sorted({r.layer.skip for r in rows if r.layer.type == "add"})
        forward = f'''    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10) logits
        kept = {{0: x}}  # the outputs a later Add takes: layers {", ".join(map(str, kept))}
        for i, layer in enumerate(self, 1):
            x = layer(x, kept[layer.skip]) if isinstance(layer, Add) else layer(x)
            if i in {set(kept)!r}:
                kept[i] = x
        return x.flatten(1)
'''
    else:
        forward = '''    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10) logits
        for layer in self:
            x = layer(x)
        return x.flatten(1)
'''
    return "\n\n".join(helpers + [f'''class Net(nn.Sequential):
    """{cfg.describe()}: {cfg.params:,} parameters. The layers in order, each with its output per
    image (channels x height x width) and its receptive field."""

    def __init__(self):
        super().__init__(
{body}
        )

{forward}'''])


def recipe_code(t: TrainConfig) -> str:
    """make_optimizer(model) and make_schedule(optimizer, steps_per_epoch): the run's own, spelled out."""
    if t.optimizer == "sgd":
        opt = (f"torch.optim.SGD(model.parameters(), lr={t.lr:g}, momentum={t.momentum:g}, nesterov={t.nesterov}, "
               f"weight_decay={t.weight_decay:g})")
    else:
        name = {"adam": "Adam", "adamw": "AdamW"}[t.optimizer]
        opt = f"torch.optim.{name}(model.parameters(), lr={t.lr:g}, weight_decay={t.weight_decay:g})"
    S = "torch.optim.lr_scheduler"
    per_batch = t.scheduler in ("onecycle", "cosine")
    if t.scheduler == "step":
        sched = f"{S}.StepLR(optimizer, step_size={t.step_size}, gamma={t.gamma:g})"
    elif t.scheduler == "multistep":
        sched = f"{S}.MultiStepLR(optimizer, milestones={list(t.milestones)}, gamma={t.gamma:g})"
    elif t.scheduler == "onecycle":
        sched = (f"{S}.OneCycleLR(optimizer, max_lr={t.lr:g}, total_steps=epochs * steps_per_epoch, "
                 f"pct_start={t.warmup_pct:g}, div_factor=10, final_div_factor={t.final_div:g})")
    elif t.scheduler == "cosine" and t.warmup_epochs:
        sched = (f"{S}.SequentialLR(optimizer, [{S}.LinearLR(optimizer, start_factor=0.1, total_iters=warm), "
                 f"{S}.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch - warm)], milestones=[warm])")
    elif t.scheduler == "cosine":
        sched = f"{S}.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)"
    elif t.scheduler == "plateau":
        sched = f"{S}.ReduceLROnPlateau(optimizer, mode='min', factor={t.gamma:g}, patience={t.patience})"
    else:
        sched = "None"  # a constant rate
    warm = f"    warm = {t.warmup_epochs} * steps_per_epoch\n" if t.scheduler == "cosine" and t.warmup_epochs else ""
    return f'''def make_optimizer(model):
    return {opt}


def make_schedule(optimizer, epochs, steps_per_epoch):
    """The rate's schedule, and when it steps: 'batch', 'epoch' or 'loss' (after each epoch, on its loss)."""
{warm}    return {sched}, {"'batch'" if per_batch else "'loss'" if t.scheduler == "plateau" else "'epoch'"}
'''


DATA_CODE = f'''MEAN, STD = {MEAN}, {STD}  # the training set's pixel statistics


def load_mnist(data=None):
    """MNIST's four tensors, read by torchvision: train images (60000, 28, 28) uint8, train labels,
    test images, test labels. `data` is torchvision's root (a folder holding MNIST/raw/ with the
    IDX files); None downloads MNIST into ./data."""
    root = data or "./data"
    splits = [datasets.MNIST(root, train=t, download=data is None) for t in (True, False)]
    return splits[0].data, splits[0].targets, splits[1].data, splits[1].targets


def normalize(x):
    """(B, 1, 28, 28) in [0, 1] -> normalised as the model was trained."""
    return (x - MEAN) / STD
'''

HOLD_OUT_CODE = f'''def hold_out(x, y, n):
    """The fixed, seeded choice of n training images held out for validation (as in the run)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed({VAL_SEED}))
    keep, held = perm[n:].sort().values, perm[:n].sort().values
    return x[keep], y[keep], x[held], y[held]
'''

TRAIN_CODE = '''def evaluate(model, x, y, batch_size=EVAL_BATCH):
    """(mean loss, correct, accuracy %) on uint8 images x (N, 28, 28) and labels y."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = normalize(x[i:i + batch_size].unsqueeze(1).float() / 255)
            logits = model(xb)
            loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    return loss / len(x), correct, 100.0 * correct / len(x)


def train(model, data, epochs, log=print):
    """The run's recipe on data = (train x, train y, test x, test y[, val x, val y]); logs as the
    reference notebook does. Returns the model that is tested and saved (the weight average with EMA)."""
    train_x, train_y, test_x, test_y = data[:4]
    gen = torch.Generator().manual_seed(SEED)  # shuffling and augmentation (the weights were seeded before Net())
    optimizer = make_optimizer(model)
    steps = math.ceil(len(train_x) / BATCH_SIZE)
    schedule, when = make_schedule(optimizer, epochs, steps)
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(EMA), use_buffers=True) if EMA else None
    tested = average.module if average is not None else model
    for epoch in range(1, epochs + 1):
        log(f"EPOCH: {epoch}")
        model.train()
        perm = torch.randperm(len(train_x), generator=gen)
        seen, correct = 0, 0
        for b in range(steps):
            idx = perm[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            x = train_x[idx].unsqueeze(1).float() / 255
            x = normalize(augment(x, **AUGMENTATION, generator=gen) if any(AUGMENTATION.values()) else x)
            y = train_y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if CLIP_GRAD:
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD)
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            if schedule is not None and when == "batch":
                schedule.step()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
        log(f"Loss={loss.item()} Batch_id={steps - 1} Accuracy={100.0 * correct / seen:.2f}")
        test_loss, test_correct, test_acc = evaluate(tested, test_x, test_y)
        if schedule is not None and when != "batch":
            schedule.step(test_loss) if when == "loss" else schedule.step()
        log(f"\\nTest set: Average loss: {test_loss:.4f}, Accuracy: {test_correct}/{len(test_x)} ({test_acc:.2f}%)\\n")
    return tested


def layer_table(model):
    """torchinfo's table when it is installed, else the parameter count."""
    try:
        import torchinfo
    except ImportError:
        return f"Total params: {sum(p.numel() for p in model.parameters()):,}"
    return str(torchinfo.summary(model, input_size=(1, 1, 28, 28), col_names=("output_size", "num_params"),
                                 depth=1, verbose=0, device="cpu"))


def load_run_checkpoint(model, path):
    """The run's best.pt or last.pt (an mnist-lab checkpoint) into model."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    return model.eval()
'''



def _sections(run: Run) -> dict[str, str]:
    cfg, t = run.model_config(), run.train_config()
    imports = textwrap.dedent('''\
        import math

        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        from torchvision import datasets
        ''')
    augment_code = inspect.getsource(affine_grid) + "\n\n" + inspect.getsource(augment)
    return {
        "imports": imports,
        "model": model_code(cfg),
        "data": DATA_CODE + ("\n\n" + HOLD_OUT_CODE if t.val_split else ""),
        "recipe": recipe_code(t),
        "augment": augment_code,
        "train": TRAIN_CODE,
    }


def _constants(run: Run) -> str:
    """The recipe's fixed settings as constants (epochs and the data's limits are the command line's
    or the notebook's first cell's)."""
    t = run.train_config()
    constants = {"VAL_SPLIT": t.val_split, "BATCH_SIZE": t.batch_size, "SEED": t.seed,
                 "LABEL_SMOOTHING": t.label_smoothing, "CLIP_GRAD": t.clip_grad, "EMA": t.ema,
                 "AUGMENTATION": t.augmentation(), "EVAL_BATCH": t.eval_batch_size}
    return "# the run's recipe\n" + "\n".join(f"{k} = {v!r}" for k, v in constants.items()) + "\n"


def _prepare_code(indent: str = "") -> str:
    return textwrap.indent(textwrap.dedent('''\
        train_x, train_y, test_x, test_y = load_mnist(DATA)
        train_x, train_y = train_x[:LIMIT_TRAIN], train_y[:LIMIT_TRAIN]
        test_x, test_y = test_x[:LIMIT_TEST], test_y[:LIMIT_TEST]
        data = (train_x, train_y, test_x, test_y)
        if VAL_SPLIT:
            train_x, train_y, val_x, val_y = hold_out(train_x, train_y, VAL_SPLIT)
            data = (train_x, train_y, test_x, test_y)
        '''), indent)


def _header(run: Run) -> str:
    cfg, t = run.model_config(), run.train_config()
    return (f"{run.name}: {cfg.describe()} ({cfg.params:,} parameters), exported by mnist-lab.\n\n"
            f"Recipe: {t.recipe_text()}.\n"
            f"Batch {t.batch_size}, {t.epochs} epochs, seed {t.seed}"
            + (f", {t.limit_train:,} training images" if t.limit_train else "")
            + (f", {t.limit_test:,} test images" if t.limit_test else "")
            + (f", {t.val_split:,} held out for validation" if t.val_split else "") + "."
            + (" The run trained in bfloat16 autocast; this code trains in float32." if t.precision != "fp32" else ""))


def script_text(run: Run) -> str:
    """The run as one Python file: `python FILE [--data DIR] [--epochs N] [--limit-train N]
    [--checkpoint PATH]`."""
    t = run.train_config()
    s = _sections(run)
    doc = _header(run) + textwrap.dedent(f'''

        Usage:
            python {run.name}.py --data DIR   # DIR: torchvision's MNIST root (holds MNIST/raw/); none: download
            python {run.name}.py --epochs 1 --limit-train 2000   # a short try
            python {run.name}.py --checkpoint best.pt   # the run's weights: test them, no training

        Needs torch and torchvision (torchinfo, if installed, prints the layer table).
        ''')
    main = textwrap.dedent(f'''\
        def main():
            parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
            parser.add_argument("--data", help="torchvision's MNIST root, holding MNIST/raw/ (default: download to ./data)")
            parser.add_argument("--epochs", type=int, default={t.epochs})
            parser.add_argument("--limit-train", type=int, default={t.limit_train!r}, help="train on the first N images")
            parser.add_argument("--limit-test", type=int, default={t.limit_test!r}, help="test on the first N images")
            parser.add_argument("--checkpoint", help="an mnist-lab checkpoint of this model: test it instead of training")
            args = parser.parse_args()
            global DATA, LIMIT_TRAIN, LIMIT_TEST
            DATA, LIMIT_TRAIN, LIMIT_TEST = args.data, args.limit_train, args.limit_test
        ''') + _prepare_code("    ") + textwrap.dedent('''\
            torch.manual_seed(SEED)  # the weights' initial values, as in the run
            model = Net()
            if args.checkpoint:
                load_run_checkpoint(model, args.checkpoint)
                test_loss, test_correct, test_acc = evaluate(model, test_x, test_y)
                print(f"Test set: Average loss: {test_loss:.4f}, Accuracy: {test_correct}/{len(test_y)} ({test_acc:.2f}%)")
            else:
                model = train(model, data, args.epochs)
            print(layer_table(model))


        if __name__ == "__main__":
            main()
        ''')
    parts = [f'"""{doc}"""\n', "import argparse\n" + s["imports"], _constants(run), "DATA, LIMIT_TRAIN, LIMIT_TEST = None, None, None  # set by main()\n",
             s["model"], s["data"], s["augment"], s["recipe"], s["train"], main]
    return "\n\n".join(p.rstrip("\n") + "\n" for p in parts)


def _log_lines(run: Run) -> str:
    """The run's own log, as the reference notebook printed it, from its metrics."""
    out = []
    for e in run.epochs():
        out.append(f"EPOCH: {e['epoch']}")
        out.append(f"Loss={e['train_loss']} Batch_id=? Accuracy={e['train_acc']:.2f}")
        total = e.get("test_total", "?")
        out.append(f"\nTest set: Average loss: {e['test_loss']:.4f}, Accuracy: {e.get('test_correct', '?')}/{total} "
                   f"({e['test_acc']:.2f}%)\n")
    return "\n".join(out) + "\n"


CURVES_CODE = '''def plot_curves(history):
    """Loss and accuracy per epoch: a matplotlib figure (if matplotlib is installed; else a table)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        for h in history:
            print(h)
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [h["epoch"] for h in history]
    for split, style in (("train", "--"), ("test", "-")):
        a.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
        b.plot(epochs, [h[f"{split}_acc"] for h in history], style, label=split)
    a.set(title="Loss per epoch", xlabel="epoch")
    b.set(title="Accuracy per epoch (%)", xlabel="epoch")
    a.legend(), b.legend()
    return fig
'''


def _curves_png(history: list[dict]) -> bytes | None:
    """The run's own curves as a PNG, for the notebook's recorded output: the notebook's plot_curves
    itself, run here on a headless backend."""
    if not history:
        return None
    import matplotlib  # heavy, and needed only for this picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the headless backend is chosen

    space: dict = {}
    exec(CURVES_CODE, space)
    fig = space["plot_curves"](history)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def notebook_json(run: Run) -> str:
    """The run as a Jupyter notebook (nbformat 4): settings first, then the code in cells, with the
    run's own log and curves as the recorded outputs of the cells that made them."""
    import nbformat  # only a notebook export needs it
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # as above

    t = run.train_config()
    s = _sections(run)
    card = run.card_text() or ""
    settings = textwrap.dedent(f'''\
        # Settings: change them here, then run all cells.
        DATA = None  # torchvision's MNIST root (a folder holding MNIST/raw/); None downloads MNIST to ./data
        EPOCHS = {t.epochs}
        LIMIT_TRAIN = {t.limit_train!r}  # train on the first N images (None: all 60,000)
        LIMIT_TEST = {t.limit_test!r}  # test on the first N images (None: all 10,000)
        ''')
    history = [{k: e[k] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")} for e in run.epochs()]
    train_cell = new_code_cell(_prepare_code() + "torch.manual_seed(SEED)  # the weights' initial values, as in the run\n"
                               "model = train(Net(), data, EPOCHS, log=print)\n")
    train_cell.outputs = [new_output("stream", name="stdout", text=_log_lines(run))]
    curves_cell = new_code_cell(f"history = {json.dumps(history)}  # the run's epochs, as recorded\n"
                                "plot_curves(history)\n")
    png = _curves_png(history)
    if png:
        curves_cell.outputs = [new_output("display_data", data={"image/png": base64.b64encode(png).decode(),
                                                                 "text/plain": "<Figure: loss and accuracy>"})]
    table_cell = new_code_cell("print(layer_table(model))\n")
    table_cell.outputs = [new_output("stream", name="stdout", text=summary_text(run.model_config()) + "\n")]
    cells = [
        new_markdown_cell(f"# {run.name}\n\n{_header(run)}\n\nExported by mnist-lab with the run's own log and "
                          "curves as the outputs below; run all cells to train it again."),
        new_code_cell(settings),
        new_code_cell(s["imports"] + "\n" + _constants(run)),
        new_markdown_cell("## The model\nThe layers in order, each with its output per image and its receptive field."),
        new_code_cell(s["model"]),
        new_markdown_cell("## Data and augmentation"),
        new_code_cell(s["data"] + "\n\n" + s["augment"]),
        new_markdown_cell("## The recipe and the training loop"),
        new_code_cell(s["recipe"] + "\n\n" + s["train"]),
        new_markdown_cell("## Training"),
        train_cell,
        new_code_cell(CURVES_CODE),
        curves_cell,
        table_cell,
    ]
    if card:
        cells.append(new_markdown_cell("## The run's card\n\n" + card.split("```")[0]))
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.validate(nb)
    return nbformat.writes(nb)

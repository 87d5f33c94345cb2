"""A model config's layer list as a torch network; its torchinfo summary.

The layer list (mnist_core.spec) becomes one flat nn.Sequential, a module per entry in order, so
torchinfo prints a row per layer and the default config, the reference experiment's model, gives
the reference's table row for row:

    (B, 1, 28, 28)
    Conv3x3 -> BN -> ReLU                  (B, 12, 26, 26)
    Conv3x3 -> BN -> ReLU                  (B, 16, 24, 24)
    Conv1x1                                (B, 10, 24, 24)   transition: mixes channels, no ReLU
    MaxPool2x2                             (B, 10, 12, 12)
    Conv3x3 -> BN -> ReLU                  (B, 12, 10, 10)
    Conv3x3 -> BN -> ReLU                  (B, 16, 8, 8)
    Conv3x3 -> BN -> ReLU                  (B, 30, 6, 6)
    AvgPool6x6                             (B, 30, 1, 1)     global average pooling
    Conv1x1                                (B, 10, 1, 1)     head -> logits (B, 10)

No convolution has a bias by default (BatchNorm's shift plays that part), which is how the
reference arrives at 9,596 parameters. Shapes, parameters and receptive fields come from the
spec without torch; the tests hold torch to them.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_core.config import ModelConfig
from mnist_core.spec import INPUT_SIZE, Row


class Net(nn.Sequential):
    """The rows of cfg's plan as one flat Sequential; an `add` row adds an earlier row's output."""

    def __init__(self, cfg: ModelConfig):
        self.config = cfg
        super().__init__(*(_module(row) for row in cfg.rows))
        self.kept = {m.skip for m in self if isinstance(m, Add)}  # outputs a later add needs: 0 is the input

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28)
        for x in self.outputs(x):
            pass
        return x.flatten(1)  # (B, 10, 1, 1) or (B, 10) -> (B, 10) logits

    def outputs(self, x: torch.Tensor):
        """Each layer's output in turn, for the whole network's input x."""
        kept = {0: x} if 0 in self.kept else {}
        for i, module in enumerate(self, 1):
            x = module(x, kept[module.skip]) if isinstance(module, Add) else module(x)
            if i in self.kept:
                kept[i] = x
            yield x


class Add(nn.Module):
    """A residual connection: this point's tensor plus the output of layer `skip`."""

    def __init__(self, skip: int):
        super().__init__()
        self.skip = skip

    def forward(self, x: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
        return x + earlier

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


class Linear(nn.Linear):
    """nn.Linear that flattens its input first: (B, C, H, W) -> (B, C*H*W) -> (B, out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def _module(row: Row) -> nn.Module:
    lay, t = row.layer, row.layer.type
    if t == "conv":
        return nn.Conv2d(row.in_channels, lay.out, lay.kernel, stride=lay.stride, padding=lay.padding,
                         dilation=lay.dilation, groups=row.in_channels if lay.depthwise else 1, bias=lay.bias)
    if t == "bn":
        return nn.BatchNorm1d(row.out_channels) if row.flat else nn.BatchNorm2d(row.out_channels)
    if t == "relu":
        return nn.ReLU()
    if t == "dropout":
        return nn.Dropout(lay.p) if row.flat else nn.Dropout2d(lay.p)
    if t == "maxpool":
        return nn.MaxPool2d(lay.kernel, lay.stride)
    if t == "avgpool":
        return nn.AvgPool2d(lay.kernel, lay.stride)
    if t == "gap":
        return nn.AvgPool2d(row.in_size)  # the whole remaining map, as the reference's AvgPool2d(6)
    if t == "linear":
        return Linear(row.in_channels * row.in_size**2, lay.out, bias=lay.bias)  # in_size is 1 once flat
    if t == "add":
        return Add(lay.skip)
    raise ValueError(f"unknown layer type {t}")


def count_params(cfg: ModelConfig) -> int:
    """Trainable parameters of the network for cfg, without building it."""
    return cfg.params


def build_model(cfg: ModelConfig | None = None) -> Net:
    return Net(cfg or ModelConfig())


def summary(cfg: ModelConfig | None = None, verbose: int = 0):
    """torchinfo's summary of the network for one 28x28 image (a ModelStatistics object)."""
    import torchinfo  # heavy: imported only when a summary is asked for

    # A summary is a side look: the throwaway model's initial weights and torchinfo's forward pass must
    # not draw from the global generator a training in this process uses (its dropout masks, say).
    with torch.random.fork_rng(devices=[]):
        return torchinfo.summary(
            build_model(cfg),
            input_size=(1, 1, INPUT_SIZE, INPUT_SIZE),
            col_names=("output_size", "num_params", "mult_adds"),
            row_settings=("depth",),
            depth=1,
            col_width=16,  # wide enough for "[1, 128, 26, 26]"; the default 25 makes a 115-character table
            verbose=verbose,
            device="cpu",
        )


def summary_text(cfg: ModelConfig | None = None) -> str:
    """The summary as printed text. torchinfo 1.8 writes its unit as "(Units.MEGABYTES)" on Python
    3.11+ (its issue #350); the text says "(M)", as torchinfo means it to."""
    from torchinfo.enums import Units  # heavy, as above

    text = str(summary(cfg))
    for unit in Units:
        text = text.replace(f"({unit})", f"({unit.value})")
    return text


def summary_rows(cfg: ModelConfig | None = None) -> list[dict]:
    """The summary as table rows: layer, output shape, parameters, multiply-adds per image."""
    stats = summary(cfg)
    rows = []
    for info in stats.summary_list:
        if info.depth != 1:
            continue
        rows.append(
            {
                "layer": f"{info.class_name}-{len(rows) + 1}",
                "output shape": str([-1, *info.output_size[1:]]),
                "params": info.num_params,
                "mult-adds": info.macs,
            }
        )
    return rows

"""The network, built from a ModelConfig; its summary, parameter count and receptive field.

The default config is the reference experiment's model, layer for layer:

    (B, 1, 28, 28)
    Conv3x3 -> BN -> ReLU                  (B, w1, 26, 26)   block1
    Conv3x3 -> BN -> ReLU                  (B, w2, 24, 24)   block2
    Conv1x1                                (B, w3, 24, 24)   transition: mixes channels, no ReLU
    MaxPool2x2                             (B, w3, 12, 12)
    Conv3x3 -> BN -> ReLU                  (B, w4, 10, 10)   block3
    Conv3x3 -> BN -> ReLU                  (B, w5, 8, 8)     block4
    Conv3x3 -> BN -> ReLU                  (B, w6, 6, 6)     block5
    AvgPool6x6                             (B, w6, 1, 1)     global average pooling
    Conv1x1                                (B, 10, 1, 1)     head -> logits (B, 10)

No convolution has a bias (BatchNorm's shift plays that part), which is how the reference
arrives at 9,596 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # config.py calls layer_plan to validate; importing it here would be circular
    from mnist_core.config import ModelConfig

INPUT_SIZE = 28
NUM_CLASSES = 10


@dataclass(frozen=True)
class Layer:
    """One row of the layer table, computed without building the network."""

    name: str  # block1, transition, pool, head, ...
    kind: str  # conv | bn | relu | dropout | maxpool | avgpool
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    out_size: int  # spatial side of the output feature map
    params: int
    receptive_field: int  # side of the input patch one output pixel sees
    jump: int  # input pixels between neighbouring outputs


def layer_plan(cfg: ModelConfig) -> list[Layer]:
    """The rows of the network in order, with shapes, parameters and receptive fields.

    Pure Python: cheap enough to call on every slider move.
    """
    w1, w2, w3, w4, w5, w6 = cfg.widths
    rows: list[Layer] = []
    ch, size, rf, jump = 1, INPUT_SIZE, 1, 1

    def add(name, kind, out_ch, kernel=1, stride=1, params=0):
        nonlocal ch, size, rf, jump
        size_out = (size - kernel) // stride + 1 if kernel > 1 or stride > 1 else size
        rf = rf + (kernel - 1) * jump
        jump = jump * stride
        rows.append(Layer(name, kind, ch, out_ch, kernel, stride, size_out, params, rf, jump))
        ch, size = out_ch, size_out

    def block(name, out_ch):
        add(name, "conv", out_ch, kernel=3, params=9 * ch * out_ch)
        if cfg.batchnorm:
            add(name, "bn", out_ch, params=2 * out_ch)
        add(name, "relu", out_ch)
        if cfg.dropout:
            add(name, "dropout", out_ch)

    block("block1", w1)
    block("block2", w2)
    add("transition", "conv", w3, kernel=1, params=ch * w3)
    add("pool", "maxpool", w3, kernel=2, stride=2)
    block("block3", w4)
    block("block4", w5)
    block("block5", w6)
    add("gap", "avgpool", w6, kernel=max(size, 1))
    add("head", "conv", NUM_CLASSES, kernel=1, params=ch * NUM_CLASSES)
    return rows


def count_params(cfg: ModelConfig) -> int:
    """Trainable parameters of the network for cfg, without building it."""
    return sum(layer.params for layer in layer_plan(cfg))


def receptive_fields(cfg: ModelConfig) -> list[tuple[str, int]]:
    """(layer name, receptive field side in input pixels) for each conv and pooling layer."""
    return [(f"{l.name} {l.kind}", l.receptive_field) for l in layer_plan(cfg) if l.kind in ("conv", "maxpool", "avgpool")]


class Net(nn.Sequential):
    """The layers of layer_plan as one flat Sequential, so the summary reads like the reference table."""

    def __init__(self, cfg: ModelConfig):
        self.config = cfg
        super().__init__(*(_module(layer, cfg) for layer in layer_plan(cfg)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(1)  # (B, 10, 1, 1) -> (B, 10) logits


def _module(layer: Layer, cfg: ModelConfig) -> nn.Module:
    if layer.kind == "conv":
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, bias=False)
    if layer.kind == "bn":
        return nn.BatchNorm2d(layer.out_channels)
    if layer.kind == "relu":
        return nn.ReLU()
    if layer.kind == "dropout":
        return nn.Dropout2d(cfg.dropout)
    if layer.kind == "maxpool":
        return nn.MaxPool2d(layer.kernel, layer.stride)
    if layer.kind == "avgpool":
        return nn.AvgPool2d(layer.kernel)
    raise ValueError(f"unknown layer kind {layer.kind}")


def build_model(cfg: ModelConfig | None = None) -> Net:
    from mnist_core.config import ModelConfig

    return Net(cfg or ModelConfig())


def summary(cfg: ModelConfig | None = None, verbose: int = 0):
    """torchinfo's summary of the network for one 28x28 image (a ModelStatistics object)."""
    import torchinfo

    model = build_model(cfg)
    cfg = model.config
    return torchinfo.summary(
        model,
        input_size=(1, 1, INPUT_SIZE, INPUT_SIZE),
        col_names=("output_size", "num_params", "mult_adds"),
        row_settings=("depth",),
        depth=1,
        verbose=verbose,
        device="cpu",
    )


def summary_text(cfg: ModelConfig | None = None) -> str:
    """The summary as printed text. torchinfo 1.8 writes its unit as "(Units.MEGABYTES)" on Python
    3.11+ (its issue #350); the text says "(M)", as torchinfo means it to."""
    from torchinfo.enums import Units

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


class LayerNet(nn.Sequential):
    """A layer list (mnist_core.spec) as one flat Sequential: one module per entry, in order, so the
    torchinfo table has a row per layer and the reference's table comes out row for row."""

    def __init__(self, layers):
        from mnist_core import spec

        self.rows = spec.plan(layers)
        super().__init__(*(_layer_module(row) for row in self.rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(1)  # (B, 10, 1, 1) or (B, 10) -> (B, 10) logits


class Linear(nn.Linear):
    """nn.Linear that flattens its input first: (B, C, H, W) -> (B, C*H*W) -> (B, out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def _layer_module(row) -> nn.Module:
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
    raise ValueError(f"unknown layer type {t}")

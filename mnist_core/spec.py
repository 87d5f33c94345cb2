"""A model as an ordered list of layers, described without torch.

Validation, the output shape of every layer, parameters, receptive field and multiply-adds all
come from the list alone, cheap enough to recompute on every keystroke of the editor. The JSON
form is the command line's file format and is kept stable:

    {"layers": [{"type": "conv", "out": 12}, {"type": "bn"}, {"type": "relu"}, ...]}

    conv     out (required), kernel 3, stride 1, padding 0, dilation 1, depthwise false, bias false
             (depthwise: groups = input channels; out must be a multiple of them)
    bn, relu
    dropout  p 0.1
    maxpool  kernel 2, stride 2
    avgpool  kernel 2, stride 2
    gap      average over the whole remaining map
    linear   out (required), bias true; flattens what it gets
    add      skip (required): adds the output of layer `skip` (0: the input image), a residual
             connection; the two must have the same shape

The one-line text form says the same in tokens, e.g. the reference model:

    conv12 bn relu conv16 bn relu conv10k1 maxpool conv12 bn relu conv16 bn relu conv30 bn relu gap conv10k1

    conv16k5s2p2d1dw+b     -> kernel 5, stride 2, padding 2, dilation 1; depthwise; with bias
    maxpoolk3s2, avgpool   -> kernel 3 stride 2; the default 2/2
    drop0.1, gap, bn, relu
    linear10, linear10-b   -> with bias (the default), without
    add3                   -> adds layer 3's output to this point's: a residual connection

Log-softmax / cross-entropy stays outside the list: the network ends with 10 values per image.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, fields, replace

INPUT_SIZE = 28  # MNIST images are 1x28x28
INPUT_CHANNELS = 1
NUM_CLASSES = 10
MAX_LAYERS = 40
MAX_CHANNELS = 256
MAX_STRIDE = 4
MAX_DILATION = 4
MAX_DROPOUT = 0.9


class SpecError(ValueError):
    """A layer list that cannot be built; the message names the row (or token) and the reason."""


@dataclass(frozen=True)
class Layer:
    """One entry of the list, with every option spelled out (defaults filled in)."""

    type: str  # conv | bn | relu | dropout | maxpool | avgpool | gap | linear | add
    out: int = 0  # conv, linear: output channels / features
    kernel: int = 0  # conv (default 3), maxpool / avgpool (default 2)
    stride: int = 0  # conv (default 1), maxpool / avgpool (default 2)
    padding: int = 0  # conv: zeros added on each side
    dilation: int = 1  # conv: spacing between kernel taps
    depthwise: bool = False  # conv: one filter group per input channel
    bias: bool = False  # conv (default off: BatchNorm's shift does that job), linear (default on)
    p: float = 0.0  # dropout probability
    skip: int = 0  # add: the layer whose output is added (0: the input image)

    def to_dict(self) -> dict:
        """The JSON entry: `type` and whatever differs from that type's defaults."""
        d = {"type": self.type}
        for key, default in DEFAULTS[self.type].items():
            value = getattr(self, key)
            if key in REQUIRED.get(self.type, ()) or value != default:
                d[key] = value
        return d


# Each type's keys and their defaults; a key not listed for a type is refused.
DEFAULTS: dict[str, dict] = {
    "conv": {"out": None, "kernel": 3, "stride": 1, "padding": 0, "dilation": 1, "depthwise": False, "bias": False},
    "bn": {},
    "relu": {},
    "dropout": {"p": 0.1},
    "maxpool": {"kernel": 2, "stride": 2},
    "avgpool": {"kernel": 2, "stride": 2},
    "gap": {},
    "linear": {"out": None, "bias": True},
    "add": {"skip": None},
}
REQUIRED = {"conv": ("out",), "linear": ("out",), "add": ("skip",)}
LAYER_TYPES = tuple(DEFAULTS)
_FIELDS = {f.name for f in fields(Layer)}


def layer(type: str, **options) -> Layer:
    """A Layer with its type's defaults filled in; options are checked for type and key."""
    return layer_from_dict({"type": type, **options})


def layer_from_dict(d, where: str = "layer") -> Layer:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected an object such as {{\"type\": \"conv\", \"out\": 16}}, got {_short(d)}")
    kind = d.get("type")
    if kind not in DEFAULTS:
        raise SpecError(f"{where}: unknown layer type {_short(kind)}; choose one of {', '.join(LAYER_TYPES)}")
    where = f"{where} ({kind})"
    allowed = DEFAULTS[kind]
    unknown = sorted(set(d) - {"type"} - set(allowed))
    if unknown:
        keys = ", ".join(allowed) if allowed else "no options"
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; {kind} takes {keys}")
    values = {}
    for key, default in allowed.items():
        if key not in d:
            if default is None:
                raise SpecError(f"{where}: '{key}' is required")
            values[key] = default
            continue
        v = d[key]
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise SpecError(f"{where}: '{key}' must be true or false, got {_short(v)}")
        elif key == "p":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise SpecError(f"{where}: 'p' must be a number, got {_short(v)}")
            v = float(v)
        elif isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{where}: '{key}' must be a whole number, got {_short(v)}")
        values[key] = v
    return Layer(type=kind, **values)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------
# The plan: every layer's output shape, parameters, multiply-adds and receptive field.


@dataclass(frozen=True)
class Row:
    """One row of the layer table, computed from the list alone."""

    index: int  # 1-based position in the list
    layer: Layer
    in_channels: int
    in_size: int  # side of the input feature map; 1 once flattened
    out_channels: int
    out_size: int  # side of the output feature map; 1 once flattened
    flat: bool  # after a linear layer: (B, features), no map
    params: int
    macs: int  # multiply-adds per image
    receptive_field: int  # side of the input patch one output value sees
    jump: int  # input pixels between neighbouring outputs

    @property
    def name(self) -> str:
        return f"{self.index} {self.layer.type}"

    @property
    def shape(self) -> tuple[int, ...]:
        """Output shape per image: (C, H, W), or (features,) once flattened."""
        return (self.out_channels,) if self.flat else (self.out_channels, self.out_size, self.out_size)


def plan(layers) -> list[Row]:
    """The rows of the network in order; SpecError names the first row that cannot work."""
    layers = list(layers)
    if not layers:
        raise SpecError("the layer list is empty: a network needs at least one layer")
    if len(layers) > MAX_LAYERS:
        raise SpecError(f"{len(layers)} layers: at most {MAX_LAYERS}")
    rows: list[Row] = []
    ch, size, flat, rf, jump = INPUT_CHANNELS, INPUT_SIZE, False, 1, 1
    for i, lay in enumerate(layers, 1):
        where = f"layer {i} ({lay.type})"
        params = macs = 0
        out_ch, out_size = ch, size
        t = lay.type
        if flat and t in ("conv", "maxpool", "avgpool", "gap"):
            raise SpecError(f"{where}: comes after a linear layer, which flattened the map; "
                            f"put convolutions and pooling before it")
        if t in ("conv", "linear"):
            _check_range(where, "out", lay.out, 1, MAX_CHANNELS)
        if t == "conv":
            _check_range(where, "kernel", lay.kernel, 1, INPUT_SIZE)
            _check_range(where, "stride", lay.stride, 1, MAX_STRIDE)
            _check_range(where, "dilation", lay.dilation, 1, MAX_DILATION)
            span = lay.dilation * (lay.kernel - 1) + 1  # the kernel's extent on the map
            _check_range(where, "padding", lay.padding, 0, span // 2)
            groups = ch if lay.depthwise else 1
            if lay.depthwise and lay.out % ch:
                raise SpecError(f"{where}: a depthwise conv's out must be a multiple of its {ch} input channels, "
                                f"got {lay.out}")
            out_size = _slide(where, size + 2 * lay.padding, span, lay.stride, size)
            out_ch = lay.out
            params = (ch // groups) * lay.kernel**2 * out_ch + (out_ch if lay.bias else 0)
            macs = params * out_size**2  # every weight (and bias) once per output position, as torchinfo counts
            rf, jump = rf + (span - 1) * jump, jump * lay.stride
        elif t in ("maxpool", "avgpool"):
            _check_range(where, "kernel", lay.kernel, 1, INPUT_SIZE)
            _check_range(where, "stride", lay.stride, 1, MAX_STRIDE)
            if size == 1:
                raise SpecError(f"{where}: the map is 1x1, nothing left to pool")
            out_size = _slide(where, size, lay.kernel, lay.stride, size)
            rf, jump = rf + (lay.kernel - 1) * jump, jump * lay.stride
        elif t == "gap":
            out_size = 1
            rf, jump = rf + (size - 1) * jump, jump * size
        elif t == "linear":
            features = ch if flat else ch * size * size
            out_ch, out_size = lay.out, 1
            params = features * lay.out + (lay.out if lay.bias else 0)
            macs = params
            flat = True
        elif t == "bn":
            params = macs = 2 * ch  # torchinfo counts one multiply-add per BatchNorm parameter
        elif t == "add":
            _check_range(where, "skip", lay.skip, 0, i - 1)
            other = (INPUT_CHANNELS, INPUT_SIZE, False) if lay.skip == 0 else (
                rows[lay.skip - 1].out_channels, rows[lay.skip - 1].out_size, rows[lay.skip - 1].flat)
            if other != (ch, size, flat):
                source = "the input image" if lay.skip == 0 else f"the output of layer {lay.skip}"
                raise SpecError(f"{where}: adds {source} ({_describe_shape(*other)}) to {_describe_shape(ch, size, flat)}: "
                                f"a residual connection needs the same shape on both sides")
            # the sum sees what the longer path sees: this point's receptive field
        elif t == "dropout":
            if not 0.0 <= lay.p <= MAX_DROPOUT:
                raise SpecError(f"{where}: p is {lay.p:g}: it must be between 0 and {MAX_DROPOUT:g}")
        rows.append(Row(i, lay, ch, size, out_ch, out_size, flat, params, macs, rf, jump))
        ch, size = out_ch, out_size
    values = ch if flat else ch * size * size
    if values != NUM_CLASSES:
        shape = f"{ch}" if flat else f"{ch}x{size}x{size} = {values}"
        raise SpecError(f"the network ends with {shape} values per image; it must end with {NUM_CLASSES} "
                        f"(e.g. gap then conv10k1, or linear10)")
    return rows


def _describe_shape(ch: int, size: int, flat: bool) -> str:
    return f"{ch} values" if flat else f"a {ch}x{size}x{size} map"


def _check_range(where: str, key: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise SpecError(f"{where}: {key} is {value}: it must be between {lo} and {hi}")


def _slide(where: str, size: int, span: int, stride: int, before: int) -> int:
    """Output side of a window of `span` sliding with `stride` over a map of side `size`."""
    if span > size:
        raise SpecError(f"{where}: the kernel spans {span} pixels but the map is only {before}x{before}")
    return (size - span) // stride + 1


# ---------------------------------------------------------------------------------------------
# Text form: one token per layer, separated by spaces (or commas).

_TOKEN = {
    "conv": re.compile(r"conv(?P<out>\d+)(?P<opts>(?:[ksdp]\d+)*)(?P<dw>dw)?(?P<bias>[+-]b)?"),
    "maxpool": re.compile(r"maxpool(?P<opts>(?:[ks]\d+)*)"),
    "avgpool": re.compile(r"avgpool(?P<opts>(?:[ks]\d+)*)"),
    "dropout": re.compile(r"drop(?P<p>\d*\.?\d+)?"),
    "linear": re.compile(r"linear(?P<out>\d+)(?P<bias>[+-]b)?"),
    "bn": re.compile(r"bn"),
    "relu": re.compile(r"relu"),
    "gap": re.compile(r"gap"),
    "add": re.compile(r"add(?P<skip>\d+)"),
}
_LETTER = {"k": "kernel", "s": "stride", "p": "padding", "d": "dilation"}


def parse_text(text: str) -> list[Layer]:
    """The layers of a one-line text such as 'conv8 bn relu maxpool ... gap conv10k1'."""
    if not isinstance(text, str):
        raise SpecError(f"expected a line of layer tokens, got {_short(text)}")
    tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if not tokens:
        raise SpecError("the layer list is empty: a network needs at least one layer")
    if len(tokens) > MAX_LAYERS:
        raise SpecError(f"{len(tokens)} layers: at most {MAX_LAYERS}")
    layers = []
    for i, token in enumerate(tokens, 1):
        layers.append(layer_from_dict(_token_dict(token.lower(), f"token {i} {token!r}"), f"layer {i}"))
    return layers


def _token_dict(token: str, where: str) -> dict:
    for kind, rx in _TOKEN.items():
        m = rx.fullmatch(token)
        if not m:
            continue
        d: dict = {"type": kind}
        g = m.groupdict()
        if g.get("out"):
            d["out"] = int(g["out"])
        for letter, number in re.findall(r"([kspd])(\d+)", g.get("opts") or ""):
            key = _LETTER[letter]
            if key in d:
                raise SpecError(f"{where}: '{letter}' is given twice")
            d[key] = int(number)
        if g.get("dw"):
            d["depthwise"] = True
        if g.get("bias"):
            d["bias"] = g["bias"] == "+b"
        if g.get("p"):
            d["p"] = float(g["p"])
        if g.get("skip"):
            d["skip"] = int(g["skip"])
        return d
    raise SpecError(f"{where}: not a layer; tokens look like conv16, conv16k1, conv16s2p1, conv16dw, bn, relu, "
                    f"drop0.1, maxpool, avgpool, gap, linear10, add3")


def to_text(layers) -> str:
    """The one-line text of a layer list; parse_text(to_text(x)) == x."""
    return " ".join(_token(lay) for lay in layers)


def _token(lay: Layer) -> str:
    d = lay.to_dict()
    t = lay.type
    if t == "conv":
        opts = "".join(f"{letter}{d[key]}" for letter, key in (("k", "kernel"), ("s", "stride"), ("p", "padding"),
                                                                 ("d", "dilation")) if key in d)
        return f"conv{lay.out}{opts}{'dw' if lay.depthwise else ''}{'+b' if lay.bias else ''}"
    if t in ("maxpool", "avgpool"):
        opts = "".join(f"{letter}{d[key]}" for letter, key in (("k", "kernel"), ("s", "stride")) if key in d)
        return f"{t}{opts}"
    if t == "dropout":
        return f"drop{lay.p:g}"
    if t == "linear":
        return f"linear{lay.out}{'' if lay.bias else '-b'}"
    if t == "add":
        return f"add{lay.skip}"
    return t


# ---------------------------------------------------------------------------------------------
# Reading a design from the forms a user gives.


def layers_from_json(obj) -> list[Layer]:
    """{"layers": [...]} (or the bare list) -> layers; the first bad entry is named."""
    if isinstance(obj, dict):
        extra = sorted(set(obj) - {"layers"})
        if extra:
            raise SpecError(f"unknown key {extra[0]!r} in the file: it holds {{\"layers\": [...]}}")
        if "layers" not in obj:
            raise SpecError("the file has no \"layers\" list: it holds {\"layers\": [...]}")
        obj = obj["layers"]
    if not isinstance(obj, list):
        raise SpecError(f"\"layers\" must be a list of layer objects, got {type(obj).__name__}")
    if len(obj) > MAX_LAYERS:
        raise SpecError(f"{len(obj)} layers: at most {MAX_LAYERS}")
    return [layer_from_dict(d, f"layer {i}") for i, d in enumerate(obj, 1)]


def parse(text: str) -> list[Layer]:
    """A design as JSON ({"layers": [...]}) or as the one-line text form."""
    s = text.strip() if isinstance(text, str) else text
    if isinstance(s, str) and s[:1] and s[0] in "{[":
        try:
            obj = json.loads(s)
        except RecursionError:
            raise SpecError("malformed JSON: nested too deeply") from None
        except ValueError as e:
            raise SpecError(f"malformed JSON: {e}") from None
        return layers_from_json(obj)
    return parse_text(s)


def to_json(layers) -> dict:
    return {"layers": [lay.to_dict() for lay in layers]}


# ---------------------------------------------------------------------------------------------
# The reference family: six widths, BatchNorm on or off, optional dropout after every ReLU.

WIDTH_NAMES = ("block1", "block2", "transition", "block3", "block4", "block5")


def template(widths=(12, 16, 10, 12, 16, 30), batchnorm: bool = True, dropout: float = 0.0) -> list[Layer]:
    """The reference skeleton as a layer list:

        conv3 (BN) ReLU, conv3 (BN) ReLU, conv1 transition, maxpool 2, conv3 (BN) ReLU x3, GAP, conv1 head
    """
    w1, w2, w3, w4, w5, w6 = widths

    def block(out):
        return [layer("conv", out=out)] + ([layer("bn")] if batchnorm else []) + [layer("relu")] + (
            [layer("dropout", p=dropout)] if dropout else [])

    return [*block(w1), *block(w2), layer("conv", out=w3, kernel=1), layer("maxpool"),
            *block(w4), *block(w5), *block(w6), layer("gap"), layer("conv", out=NUM_CLASSES, kernel=1)]


def without(layers, kind: str) -> list[Layer]:
    """The list without its layers of type `kind` (say, every BatchNorm), each residual `add`
    renumbered; one that named a removed layer names the layer before it (the same shape, for
    the shape-keeping types: bn, relu, dropout)."""
    layers = list(layers)
    new_index, n = {0: 0}, 0
    for i, lay in enumerate(layers, 1):
        if lay.type != kind:
            n += 1
        new_index[i] = n
    return [replace(lay, skip=new_index[lay.skip]) if lay.type == "add" else lay
            for lay in layers if lay.type != kind]


def params(layers) -> int:
    return sum(r.params for r in plan(layers))



def diff(a, b) -> list[tuple[str, str, str]]:
    """Where layer list b differs from a: (where, a's tokens, b's tokens) per changed stretch, e.g.
    ('layer 2', 'bn', '-') for a BatchNorm only in a, ('layer 7', 'conv10k1', 'conv12k1')."""
    ta, tb = [_token(x) for x in a], [_token(x) for x in b]
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ta, b=tb, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        where = f"after layer {i1}" if i1 == i2 else f"layer {i1 + 1}" if i2 - i1 == 1 else f"layers {i1 + 1}-{i2}"
        out.append((where, " ".join(ta[i1:i2]) or "-", " ".join(tb[j1:j2]) or "-"))
    return out

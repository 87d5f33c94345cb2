"""The torch-free layer-list spec: torch is the oracle for shapes and parameter counts."""

import json
import random
import pytest

from mnist_core import spec
from mnist_core.spec import SpecError, layer, parse, parse_text, plan, template, to_json, to_text




def random_layers(rng: random.Random) -> list:
    """A random valid list: conv stacks with optional padding, strides, dilation, depthwise, bias,
    BN, dropout and pooling, ending in either GAP + 1x1 conv or a linear head."""
    layers, ch, size = [], 1, 28
    for _ in range(rng.randint(1, 6)):
        kernel = rng.choice([1, 3, 3, 5])
        dilation = rng.choice([1, 1, 2]) if kernel > 1 else 1
        span = dilation * (kernel - 1) + 1
        padding = rng.randint(0, span // 2)
        stride = rng.choice([1, 1, 2])
        if span > size + 2 * padding:
            break
        depthwise = ch > 1 and rng.random() < 0.25
        out = ch * rng.randint(1, 2) if depthwise else rng.randint(1, 24)
        layers.append(layer("conv", out=out, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                            depthwise=depthwise, bias=rng.random() < 0.3))
        ch, size = out, (size + 2 * padding - span) // stride + 1
        if rng.random() < 0.5:
            layers.append(layer("bn"))
        layers.append(layer("relu"))
        if rng.random() < 0.2:
            layers.append(layer("dropout", p=rng.choice([0.05, 0.1, 0.3])))
        if size >= 3 and rng.random() < 0.3:  # a residual block: a padded 3x3 that keeps the shape, added
            skip = len(layers)
            layers += [layer("conv", out=ch, padding=1)] + ([layer("bn")] if rng.random() < 0.5 else [])
            layers += [layer("add", skip=skip), layer("relu")]
        if size >= 4 and rng.random() < 0.3:
            pool = rng.choice(["maxpool", "avgpool"])
            layers.append(layer(pool))
            size = (size - 2) // 2 + 1
    if rng.random() < 0.5:
        layers += [layer("gap"), layer("conv", out=10, kernel=1)]
    else:
        if rng.random() < 0.5:
            layers += [layer("linear", out=rng.randint(4, 20)), layer("bn"), layer("relu"), layer("dropout")]
        layers.append(layer("linear", out=10, bias=rng.random() < 0.5))
    return layers


def test_reference_template_has_the_reference_counts():
    assert spec.params(template()) == 9596
    assert spec.params(template(batchnorm=False)) == 9424
    shapes = [r.shape for r in plan(template())]
    assert shapes[0] == (12, 26, 26) and shapes[7] == (10, 12, 12) and shapes[-1] == (10, 1, 1)


@pytest.mark.parametrize("seed", range(60))
def test_plan_matches_torch_for_random_lists(seed):
    torch = pytest.importorskip("torch")
    from mnist_core.config import ModelConfig
    from mnist_core.model import build_model

    layers = random_layers(random.Random(seed))
    rows = plan(layers)
    net = build_model(ModelConfig(tuple(layers)))
    assert sum(r.params for r in rows) == sum(p.numel() for p in net.parameters()), to_text(layers)
    for row, x in zip(rows, net.outputs(torch.zeros(2, 1, 28, 28)), strict=True):
        assert tuple(x.shape[1:]) == row.shape, (row.name, to_text(layers))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("seed", range(10))
def test_multiply_adds_match_torchinfo_row_for_row(seed):
    torchinfo = pytest.importorskip("torchinfo")
    from mnist_core.config import ModelConfig
    from mnist_core.model import build_model

    layers = random_layers(random.Random(100 + seed))
    stats = torchinfo.summary(build_model(ModelConfig(tuple(layers))), input_size=(1, 1, 28, 28), depth=1, verbose=0,
                              col_names=("output_size", "num_params", "mult_adds"))
    assert [i.macs for i in stats.summary_list if i.depth == 1] == [r.macs for r in plan(layers)], to_text(layers)


def test_receptive_fields_of_known_stacks():
    # three 3x3 convs: 3, 5, 7; a 2x2 pool doubles the step: the next 3x3 adds 4
    rows = plan(parse_text("conv8 conv8 conv8 maxpool conv8 gap conv10k1"))
    assert [r.receptive_field for r in rows] == [3, 5, 7, 8, 12, 12 + (9 - 1) * 2, 28]
    # a strided conv doubles the step as a pool does; a dilated 3x3 (dilation 2) spans 5
    rows = plan(parse_text("conv8s2 conv8d2 gap conv10k1"))
    assert [r.receptive_field for r in rows][:2] == [3, 3 + 4 * 2]
    # the reference: 3, 5, 5, 6, 10, 14, 18, then GAP sees everything
    convs = [r.receptive_field for r in plan(template()) if r.layer.type in ("conv", "maxpool", "gap")]
    assert convs == [3, 5, 5, 6, 10, 14, 18, 28, 28]


def test_a_residual_block_adds_no_parameters_and_keeps_the_receptive_field_of_the_longer_path():
    block = plan(parse_text("conv8p1 bn relu conv8p1 bn add3 relu gap conv10k1"))
    assert [r.shape for r in block][6] == (8, 28, 28) and block[6].params == 0
    assert block[6].receptive_field == block[5].receptive_field == 5
    assert to_json(parse_text("add0"))["layers"] == [{"type": "add", "skip": 0}]


def test_taking_out_a_layer_type_renumbers_the_residual_adds():
    layers = parse_text("conv8p1 bn relu conv8p1 bn add3 relu gap conv10k1")
    assert to_text(spec.without(layers, "bn")) == "conv8p1 relu conv8p1 add2 relu gap conv10k1"
    # an add that named a removed layer names the layer before it (the same shape)
    assert to_text(spec.without(parse_text("conv8p1 bn conv8p1 add2 gap conv10k1"), "bn")) == \
        "conv8p1 conv8p1 add1 gap conv10k1"


def test_text_and_json_round_trip():
    rng = random.Random(7)
    for _ in range(50):
        layers = random_layers(rng)
        assert parse_text(to_text(layers)) == layers
        assert parse(json.dumps(to_json(layers))) == layers
        assert spec.layers_from_json(json.loads(json.dumps(to_json(layers)))) == layers


def test_json_keeps_only_what_differs_from_the_defaults():
    assert to_json(parse_text("conv16 conv16k1s2p0 conv8dw+b maxpool gap linear10-b"))["layers"] == [
        {"type": "conv", "out": 16},
        {"type": "conv", "out": 16, "kernel": 1, "stride": 2},
        {"type": "conv", "out": 8, "depthwise": True, "bias": True},
        {"type": "maxpool"},
        {"type": "gap"},
        {"type": "linear", "out": 10, "bias": False},
    ]


@pytest.mark.parametrize(
    "design, message",
    [
        ('{"layers": [{"type": "conv3d", "out": 4}]}', "layer 1: unknown layer type 'conv3d'"),
        ('{"layers": [{"type": "conv", "out": 4, "size": 3}]}', "layer 1 (conv): unknown key 'size'"),
        ('{"layers": [{"type": "conv", "out": 4, "kernel": 3.5}]}', "layer 1 (conv): 'kernel' must be a whole number"),
        ("conv0 gap conv10k1", "layer 1 (conv): out is 0"),
        ("conv257 gap conv10k1", "layer 1 (conv): out is 257"),
        ("conv8k0 gap conv10k1", "layer 1 (conv): kernel is 0"),
        ("conv8 maxpool conv8 maxpool conv8 maxpool conv8k5 gap conv10k1", "layer 7 (conv): the kernel spans 5"),
        ("conv8s5 gap conv10k1", "layer 1 (conv): stride is 5"),
        ("conv8d9 gap conv10k1", "layer 1 (conv): dilation is 9"),
        ("conv8p2 gap conv10k1", "layer 1 (conv): padding is 2"),
        ("conv8 gap maxpool conv10k1", "layer 3 (maxpool): the map is 1x1, nothing left to pool"),
        ("conv6 conv10dw gap conv10k1", "layer 2 (conv): a depthwise conv's out must be a multiple of its 6"),
        (" ".join(["relu"] * 41), "41 layers: at most 40"),
        ("conv8 gap conv12k1", "ends with 12x1x1 = 12 values per image"),
        ("conv8 linear20", "ends with 20 values per image"),
        ("conv8 drop0.95 gap conv10k1", "layer 2 (dropout): p is 0.95"),
        ("conv8 linear16 conv10", "layer 3 (conv): comes after a linear layer"),
        ('{"layers": [', "malformed JSON"),
        ("[" * 100000, "malformed JSON"),
        ('{"layers": "conv8"}', '"layers" must be a list'),
        ('{"layer": []}', "unknown key 'layer'"),
        ("conv8 relu! gap", "token 2 'relu!': not a layer"),
        ("conv8k3k5 gap conv10k1", "token 1 'conv8k3k5': 'k' is given twice"),
        ("", "the layer list is empty"),
        ("conv8 relu add3 gap conv10k1", "layer 3 (add): skip is 3: it must be between 0 and 2"),
        ("conv8 relu add1 conv8 add0 gap conv10k1", "layer 5 (add): adds the input image (a 1x28x28 map) to a 8x24x24 map"),
        ("conv8p1 relu conv16p1 add2 gap conv10k1", "layer 4 (add): adds the output of layer 2 (a 8x28x28 map) to a 16x28x28 map"),
        ('{"layers": [{"type": "add"}]}', "layer 1 (add): 'skip' is required"),
    ],
)
def test_bad_designs_are_refused_naming_the_row_and_reason(design, message):
    with pytest.raises(SpecError) as e:
        plan(parse(design))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_plan_of_forty_layers_is_fast():
    import time

    layers = parse_text(" ".join(["conv8p1 bn relu"] * 12 + ["conv8 maxpool gap conv10k1"]))
    assert len(layers) == 40
    start = time.perf_counter()
    for _ in range(20):
        plan(parse(to_text(layers)))
    assert (time.perf_counter() - start) / 20 < 0.01  # the editor recomputes on every change

import math
import random
import time

import pytest
import torch

from mnist_core.config import ConfigError, ModelConfig, get_preset
from mnist_core.model import build_model, count_params, summary_rows

# The reference experiment's layer table (shared/seed/reference-experiment.md), row for row.
REFERENCE_TABLE = """
Conv2d-1 [-1, 12, 26, 26] 108
BatchNorm2d-2 [-1, 12, 26, 26] 24
ReLU-3 [-1, 12, 26, 26] 0
Conv2d-4 [-1, 16, 24, 24] 1,728
BatchNorm2d-5 [-1, 16, 24, 24] 32
ReLU-6 [-1, 16, 24, 24] 0
Conv2d-7 [-1, 10, 24, 24] 160
MaxPool2d-8 [-1, 10, 12, 12] 0
Conv2d-9 [-1, 12, 10, 10] 1,080
BatchNorm2d-10 [-1, 12, 10, 10] 24
ReLU-11 [-1, 12, 10, 10] 0
Conv2d-12 [-1, 16, 8, 8] 1,728
BatchNorm2d-13 [-1, 16, 8, 8] 32
ReLU-14 [-1, 16, 8, 8] 0
Conv2d-15 [-1, 30, 6, 6] 4,320
BatchNorm2d-16 [-1, 30, 6, 6] 60
ReLU-17 [-1, 30, 6, 6] 0
AvgPool2d-18 [-1, 30, 1, 1] 0
Conv2d-19 [-1, 10, 1, 1] 300
"""


def parse_reference():
    rows = []
    for line in REFERENCE_TABLE.strip().splitlines():
        name, rest = line.split(" ", 1)
        shape, params = rest.rsplit(" ", 1)
        rows.append((name, shape, int(params.replace(",", ""))))
    return rows


def test_summary_reproduces_reference_table_row_for_row():
    ours = [(r["layer"], r["output shape"], r["params"]) for r in summary_rows(ModelConfig())]
    assert ours == parse_reference()


def test_totals_with_and_without_batchnorm():
    assert count_params(ModelConfig()) == 9596
    assert count_params(ModelConfig.template(batchnorm=False)) == 9424
    assert sum(p.numel() for p in build_model(ModelConfig.template(batchnorm=False)).parameters()) == 9424


def test_summary_text_has_torchinfo_total_lines_with_readable_units():
    from mnist_core.model import summary_text

    text = summary_text(ModelConfig())
    assert "Total params: 9,596" in text
    assert "Total mult-adds (M): 1.54" in text and "Units." not in text


def test_count_params_matches_built_model_for_random_configs():
    rng = random.Random(0)
    for _ in range(25):
        cfg = ModelConfig.template(
            widths=tuple(rng.randint(1, 40) for _ in range(6)), batchnorm=rng.random() < 0.5,
            dropout=rng.choice([0.0, 0.1]),
        )
        model = build_model(cfg)
        assert count_params(cfg) == sum(p.numel() for p in model.parameters()), cfg
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_forward_shapes_follow_the_plan():
    cfg = ModelConfig()
    model = build_model(cfg)
    x = torch.zeros(3, 1, 28, 28)
    for row, module in zip(cfg.rows, model):
        x = module(x)
        assert x.shape == (3, *row.shape), row
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_receptive_field_grows_to_whole_image():
    rf = {row.name: row.receptive_field for row in ModelConfig().rows}
    assert rf["1 conv"] == 3  # block1
    assert rf["4 conv"] == 5  # block2
    assert rf["8 maxpool"] == 6
    assert rf["9 conv"] == 10  # block3: after the pool each 3x3 adds 2 * 2 input pixels
    assert rf["15 conv"] == 18  # block5
    assert rf["18 gap"] == 28


@pytest.mark.parametrize(
    "widths, match",
    [
        ((0, 16, 10, 12, 16, 30), "width of block1 is 0"),
        ((12, -3, 10, 12, 16, 30), "width of block2 is -3"),
        ((12, 16, 10, 12, 16, 100000), "width of block5 is 100000"),
        ((12, 16, 10), "expected 6 values"),
        ((12, 16, 10.5, 12, 16, 30), "transition must be a whole number"),
    ],
)
def test_impossible_widths_are_refused_with_the_value(widths, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig.template(widths=widths)


@pytest.mark.parametrize("p", [-0.1, 0.95, 3])
def test_bad_dropout_is_refused(p):
    with pytest.raises(ConfigError, match="dropout"):
        ModelConfig.template(dropout=p)


def test_dropout_adds_layers_but_no_parameters():
    cfg = ModelConfig.template(dropout=0.1)
    assert count_params(cfg) == 9596
    assert any(isinstance(m, torch.nn.Dropout2d) for m in build_model(cfg))


def test_the_small_presets_keep_their_budgets_and_fast_races_by_default():
    from mnist_core.bench import RACE_PRESET  # the benchmark module, only for its default

    assert count_params(get_preset("lean").model) < 8000
    assert count_params(get_preset("fast").model) < 8000
    assert count_params(get_preset("micro").model) < 5000
    assert count_params(get_preset("nano").model) < 4000
    assert RACE_PRESET == "fast"


def test_plan_and_count_are_fast():
    t = time.perf_counter()
    for _ in range(100):
        cfg = ModelConfig.template(widths=(8, 12, 10, 14, 16, 20))  # validates and plans the list
        assert cfg.params == count_params(cfg) and cfg.rows[-1].receptive_field == 28
    assert (time.perf_counter() - t) / 100 < 0.01  # the UI calls these on every slider move


def test_loss_at_init_is_near_ln10(mnist):
    torch.manual_seed(0)
    from mnist_core.data import normalize

    model = build_model(ModelConfig()).eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(normalize(mnist.test_x[:2000])), mnist.test_y[:2000])
    assert abs(loss.item() - math.log(10)) < 0.25


def test_a_residual_model_adds_the_earlier_output_and_survives_checkpoint_and_torchscript(tmp_path):
    import io

    import torch

    from mnist_core import export, insight
    from mnist_core.checkpoint import load_checkpoint, save_checkpoint
    from mnist_core.config import ModelConfig
    from mnist_core.model import build_model

    cfg = ModelConfig.parse("conv8p1 bn relu conv8p1 bn add3 relu maxpool gap conv10k1")
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    x = torch.randn(3, 1, 28, 28)
    outs = list(net.outputs(x))
    assert torch.equal(outs[5], outs[4] + outs[2])  # layer 6 (add3) = layer 5's output + layer 3's
    save_checkpoint(tmp_path / "res.pt", net)
    again, meta = load_checkpoint(tmp_path / "res.pt")
    assert meta["model_config"] == cfg and torch.allclose(again.eval()(x), net(x))
    scripted = torch.jit.load(io.BytesIO(export.torchscript_bytes(net)))
    assert torch.allclose(scripted(x), net(x), atol=1e-6)
    # the add belongs to its block: one map for conv 4's block, after the ReLU
    labels = [label for label, _ in insight.feature_maps(net, x[:1])]
    assert labels == ["layer 1 conv: 8 channels, 28x28", "layer 4 conv: 8 channels, 28x28",
                      "layer 8 maxpool: 8 channels, 14x14"]

"""The Architecture page's layer table: the editor's changes replayed on the model's rows."""

from __future__ import annotations

import pytest

from mnist_core import spec
from mnist_core.config import ConfigError, ModelConfig
from views import layer_editor

SMALL = ModelConfig.parse("conv8 bn relu maxpool conv16 bn relu gap conv10k1")


def test_the_rows_are_the_layers_with_their_options():
    df = layer_editor.frame(ModelConfig())
    assert len(df) == 19 and list(df["#"]) == list(range(1, 20))
    conv = df.iloc[0]
    assert conv["type"] == "conv" and conv["out"] == 12 and conv["kernel"] == 3 and conv["padding"] == 0
    assert not conv["bias"] and not conv["depthwise"]
    relu = df.iloc[2]
    assert relu["type"] == "relu" and relu.drop(["#", "type"]).isna().all()  # no options, blank cells
    # no change, the same model
    assert layer_editor.apply(ModelConfig(), {"edited_rows": {}, "added_rows": [], "deleted_rows": []}) == ModelConfig()


def test_change_add_delete_and_move():
    # a cell: the first conv gets padding 1 (sent as JSON numbers: 1.0)
    cfg = layer_editor.apply(SMALL, {"edited_rows": {0: {"padding": 1.0}}})
    assert cfg.text == "conv8p1 bn relu maxpool conv16 bn relu gap conv10k1"
    # delete the two BatchNorms
    cfg = layer_editor.apply(SMALL, {"deleted_rows": [1, 5]})
    assert cfg.text == "conv8 relu maxpool conv16 relu gap conv10k1"
    # a new row without a position goes last
    assert layer_editor.apply(SMALL, {"added_rows": [{"type": "relu"}]}).text.endswith("gap conv10k1 relu")
    with pytest.raises(ConfigError, match="ends with 8x1x1 = 8 values"):
        layer_editor.apply(SMALL, {"added_rows": [{"type": "conv", "out": 8, "kernel": 1}]})
    cfg = layer_editor.apply(SMALL, {"added_rows": [{"#": 3.5, "type": "dropout", "p": 0.05}]})
    assert cfg.text == "conv8 bn relu drop0.05 maxpool conv16 bn relu gap conv10k1"
    # move: the max-pool to the front of the second block's end
    cfg = layer_editor.apply(SMALL, {"edited_rows": {3: {"#": 7.5}}})
    assert cfg.text == "conv8 bn relu conv16 bn relu maxpool gap conv10k1"
    # a changed type takes the defaults of its own options; the cells it does not take are left out
    cfg = layer_editor.apply(SMALL, {"edited_rows": {3: {"type": "avgpool"}}})
    assert cfg.text == "conv8 bn relu avgpool conv16 bn relu gap conv10k1"
    cfg = layer_editor.apply(SMALL, {"edited_rows": {4: {"depthwise": True}}})  # 16 outputs from 8 channels
    assert cfg.text == "conv8 bn relu maxpool conv16dw bn relu gap conv10k1"
    assert cfg.params == SMALL.params - 8 * 9 * 16 + 9 * 16


@pytest.mark.parametrize("edits, message", [
    ({"added_rows": [{"#": 1.5}]}, "layer 2: choose its type"),
    ({"edited_rows": {4: {"out": None}}}, "layer 5 (conv): 'out' is required"),
    ({"edited_rows": {4: {"out": 300.0}}}, "layer 5 (conv): out is 300: it must be between 1 and 256"),
    ({"edited_rows": {0: {"kernel": 30.0}}}, "layer 1 (conv): kernel is 30: it must be between 1 and 28"),
    ({"edited_rows": {4: {"out": 12.0, "depthwise": True}}}, "depthwise conv's out must be a multiple of its 8"),
    ({"edited_rows": {4: {"out": 2.5}}}, "layer 5 (conv): 'out' must be a whole number, got 2.5"),
    ({"edited_rows": {8: {"out": 9.0}}}, "it must end with 10"),
    ({"deleted_rows": list(range(9))}, "the layer list is empty"),
])
def test_a_bad_row_is_named_with_its_reason(edits, message):
    with pytest.raises((ConfigError, spec.SpecError), match=message.replace("(", r"\(").replace(")", r"\)")):
        layer_editor.apply(SMALL, edits)

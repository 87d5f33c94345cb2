"""The Insight features at the page level, under Streamlit's AppTest.

Draw: a drawing handed to the page through a patched st_canvas (AppTest cannot draw), then the
four tabs below the prediction. Runs: the confusion matrix and its mistakes, A/B, continue.
Architecture: the cost metrics and the A/B training it starts.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from streamlit.testing.v1 import AppTest

from apptest_kit import chart_keys, finished_tiny_run, page, texts, wait_idle

from mnist_core import handwriting, insight, jobs
from mnist_core.bench import synthetic_drawing
from mnist_core.config import ModelConfig, get_preset, replace
from mnist_core.draw import predict, steps
from mnist_core.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
from mnist_core.runs import Run

@pytest.fixture
def hw_dir(tmp_path, monkeypatch):
    """The handwriting folder, away from the project's own (the module read the variable at import)."""
    d = tmp_path / "handwriting"
    monkeypatch.setenv("MNIST_LAB_HANDWRITING", str(d))
    monkeypatch.setattr(handwriting, "HANDWRITING_DIR", d)
    return d


def captions_of_images(node) -> list[str]:
    return [c for img in node.image for c in img.captions]


def tab(at: AppTest, label: str):
    found = [t for t in at.tabs if t.label == label]
    assert len(found) == 1, [t.label for t in at.tabs]
    return found[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist) -> Path:
    """A finished one-epoch run on 640 images, evaluated on the whole test set, trained once for the module."""
    return finished_tiny_run(tmp_path_factory.mktemp("trained"), mnist, limit_train=640, limit_test=None)


# -- Draw --------------------------------------------------------------------------------------


@pytest.fixture
def drawn(app, hw_dir):
    """The Draw page with a 7 on its canvas."""
    page(app, "views/draw.py")
    assert any("Draw a digit" in i for i in texts(app.info))  # nothing drawn yet
    canvas = sys.modules["streamlit_drawable_canvas"]
    with mock.patch.object(canvas, "st_canvas", return_value=SimpleNamespace(image_data=synthetic_drawing())):
        app.run()
        assert not app.exception, app.exception
        yield app


def test_draw_inside_the_model_and_preprocessing(drawn):
    at = drawn
    assert "Prediction: 7" in texts(at.subheader)
    assert [t.label for t in at.tabs] == ["Inside the model", "Preprocessing step by step", "Compare models",
                                          "Your handwriting"]
    model, _ = load_checkpoint(BUNDLED_CHECKPOINT)  # the page's default model
    _, _, pre = predict(model, synthetic_drawing())

    inside = tab(at, "Inside the model")
    assert {"saliency", "filters"} <= chart_keys(inside)
    maps = captions_of_images(inside)
    assert maps[0] == "layer 1 conv: 12 channels, 26x26"
    assert maps == [label for label, _ in insight.feature_maps(model, pre.tensor)]
    assert [m.split(":")[0] for m in maps] == ["layer 1 conv", "layer 4 conv", "layer 7 conv", "layer 8 maxpool",
                                              "layer 9 conv", "layer 12 conv", "layer 15 conv"]

    prep = tab(at, "Preprocessing step by step")
    stage_captions = [c for c, *_ in steps(pre)]
    assert [c for c in captions_of_images(prep) if c != "28x28 input"] == stage_captions
    readings = [m for m in texts(prep.markdown) if m.startswith("→ **")]
    assert len(readings) == 4, texts(prep.markdown)
    assert re.match(r"→ \*\*7\*\* \(\d+\.\d%\)$", readings[-1])  # the final stage is what the model reads


def test_draw_compares_the_bundled_model_with_a_finished_run(finished_run, drawn):
    at = drawn  # the run existed before the page was drawn, so it is a default choice
    compare = tab(at, "Compare models")
    many = at.multiselect(key="draw_many")
    assert len(many.value) == 2 and any(v.startswith("tiny (") for v in many.value), many.value
    df = compare.dataframe[0].value
    assert df["model"].tolist() == many.value
    assert df["prediction"].tolist()[0] == 7
    assert (df["params"] == 9596).all()
    assert "many_probs" in chart_keys(compare)

    many.unselect(many.value[1]).run()
    assert not at.exception
    df = tab(at, "Compare models").dataframe[0].value
    assert len(df) == 1 and df["model"].iloc[0].startswith("bundled model (")


def test_draw_saves_to_my_handwriting_and_scores_it(drawn, hw_dir):
    at = drawn
    mine = tab(at, "Your handwriting")
    assert any("No saved drawings yet" in i for i in texts(mine.info))
    assert at.selectbox(key="hw_label").value == 7  # the prediction is the proposed label
    at.button(key="hw_save").click().run()
    assert not at.exception, at.exception
    saved = list(hw_dir.rglob("*.png"))
    assert [p.parent.name for p in saved] == ["7"], saved
    x, y = handwriting.load(hw_dir)
    assert x.shape == (1, 28, 28) and y.tolist() == [7]

    mine = tab(at, "Your handwriting")
    assert any(m.startswith("**The chosen model on your 1 drawing: 100.0%**") for m in texts(mine.markdown))
    per = mine.dataframe[0].value.set_index("digit")
    assert per.loc[7, "drawings"] == 1 and per.loc[7, "accuracy %"] == "100.0"
    assert per.loc[3, "accuracy %"] == "–"  # no drawing of a 3 yet: a dash, not "None"
    assert per["drawings"].sum() == 1


def test_draw_save_to_handwriting_on_a_full_disk_says_so(drawn, hw_dir, monkeypatch):
    import errno
    import tempfile

    def mkstemp(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", kw.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    drawn.button(key="hw_save").click().run()
    assert not drawn.exception
    [error] = texts(drawn.error)
    assert error.startswith(f"Not saved: {hw_dir / '7'}/") and error.endswith(".png: No space left on device")
    assert list(hw_dir.rglob("*")) in ([], [hw_dir / "7"])


# -- Runs --------------------------------------------------------------------------------------


def test_runs_confusion_matrix_and_the_mistakes_of_one_cell(app, finished_run, mnist):
    ckpt = finished_run.path / "best.pt"
    (finished_run.path / "best.pt.eval").unlink(missing_ok=True)  # the page must make it
    page(app, "views/runs.py")
    assert any(m.startswith("Test accuracy of `best.pt`: **") for m in texts(app.markdown)), texts(app.markdown)
    assert (finished_run.path / "best.pt.eval").exists()
    # the chart can be clicked: a selectable (scatter) point on each of the 100 cells, as heatmaps cannot be
    chart = next(c for c in app.get("plotly_chart") if c.proto.id.endswith(f"-cm_{finished_run.name}"))
    assert list(chart.proto.selection_mode)  # on_select="rerun", selection_mode="points"
    traces = json.loads(chart.proto.spec)["data"]
    assert [t["type"] for t in traces] == ["heatmap", "scatter"]
    assert sorted(zip(map(int, traces[1]["y"]), map(int, traces[1]["x"]))) == [(i, j) for i in range(10) for j in range(10)]

    # the numbers are the checkpoint's on the test set
    model, _ = load_checkpoint(ckpt)
    ev = insight.Evaluation(insight.evaluate_probs(model, mnist.test_x), mnist.test_y.numpy())
    acc = next(m for m in texts(app.markdown) if m.startswith("Test accuracy of `best.pt`"))
    assert f"**{ev.accuracy:.2f}%**" in acc

    cell = app.selectbox(key=f"cell_{finished_run.name}")
    assert len(cell.options) >= 2
    option = cell.options[1]  # the second-worst cell, not the default
    i, j, n = map(int, re.match(r"true (\d) → predicted (\d) \((\d+)\)$", option).groups())
    assert n == len(ev.cell(i, j)) and i != j
    cell.select(option).run()
    assert not app.exception
    assert f"{n} test images of {i} read as {j}, most confident first" in texts(app.caption)
    shown = [c for c in captions_of_images(app) if c.startswith("#")]
    assert len(shown) == min(n, 32)
    assert shown[0].startswith(f"#{ev.cell(i, j)[0]}: {j} ")


def test_runs_ab_names_the_one_setting_that_differs(app, runs_dir, finished_run):
    cfg = finished_run.train_config()
    Run.create(runs_dir, ModelConfig.template(batchnorm=False), cfg, name="tiny-nobn")
    page(app, "views/runs.py")
    ab = tab(app, "A/B comparison")
    assert {app.selectbox(key="ab_a").value, app.selectbox(key="ab_b").value} == {"tiny", "tiny-nobn"}
    bns = ["model.layer 2", "model.layer 5", "model.layer 10", "model.layer 13", "model.layer 16"]
    assert "Differs: " + ", ".join(f"**{s}**" for s in bns) in texts(ab.markdown), texts(ab.markdown)
    table = ab.dataframe[0].value
    flagged = table[table.differs]
    assert [s for s in flagged.setting if "." in s] == bns
    assert set(flagged[flagged.setting.isin(bns)].B) == {"-"} and set(flagged[flagged.setting.isin(bns)].A) == {"bn"}


def test_runs_continue_starts_a_child_run(app, runs_dir, finished_run):
    page(app, "views/runs.py")
    app.selectbox(key="runs_one").select("tiny").run()
    app.number_input(key="more_tiny").set_value(1).run()
    app.button(key="resume_tiny").click().run()
    assert not app.exception and not app.error, texts(app.error)
    children = [r for r in runs_dir.iterdir() if r.is_dir() and r.name != "tiny"]
    assert len(children) == 1
    child = Run(children[0])
    try:
        assert child.config["parent"] == "tiny"
        assert child.config["train"]["start_epoch"] == len(finished_run.epochs()) == 1
        assert child.config["train"]["init_checkpoint"] == str(finished_run.path / "last.pt")
        assert child.config["train"]["epochs"] == 1
        assert any(s.startswith(f"Started {child.name}; its epochs continue from 1") for s in texts(app.success))
        assert child.name in app.selectbox(key="runs_one").options  # listed at once, no second visit needed
    finally:
        jobs.stop(child)
        wait_idle(runs_dir)
    assert jobs.state(child) in ("stopped", "finished")


def test_runs_export_uses_a_checkpoint_that_loads_and_says_why_not_the_other(app, finished_run):
    (finished_run.path / "best.pt").write_bytes(b"damaged")
    page(app, "views/runs.py")
    app.selectbox(key="runs_one").select("tiny").run()
    assert not app.exception
    assert any("best.pt: not a PyTorch checkpoint" in e for e in texts(app.error)), texts(app.error)
    assert "Exporting last.pt instead." in texts(app.caption)
    labels = [b.proto.label for b in app.get("download_button")]
    assert "Download run archive (.zip, last.pt)" in labels and "Download TorchScript model (last.pt)" in labels

    (finished_run.path / "last.pt").write_bytes(b"")
    app.run()
    assert not app.exception
    assert "Nothing to export: no checkpoint of this run loads." in texts(app.caption)
    assert not any("Download run archive" in b.proto.label for b in app.get("download_button"))


# -- Architecture ------------------------------------------------------------------------------


def test_architecture_cost_metrics(app):
    page(app, "views/architecture.py")
    [line] = [m for m in texts(app.markdown) if "multiply-adds per image" in m]
    m = re.fullmatch(r"\*\*(\d+\.\d\d) M\*\* multiply-adds per image · \*\*(\d+\.\d\d) ms\*\* to read one image on "
                     r"this CPU · receptive field \*\*28x28\*\*", line)
    assert m, line
    assert m[1] == f"{insight.macs(ModelConfig()) / 1e6:.2f}" and float(m[2]) > 0
    assert "Model **12-16-10-12-16-30, BN**" in texts(app.markdown)


def test_architecture_trains_ab_batchnorm_on_and_off(app, runs_dir):
    # the Train page's settings as last set in the session (a test subset of 1,000 keeps it quick)
    settings = replace(get_preset("reference").train, seed=7, batch_size=128, limit_test=1000)
    app.session_state["train_cfg"] = settings
    page(app, "views/architecture.py")
    app.number_input(key="ab_epochs").set_value(1)
    app.selectbox(key="ab_size").select(2000)
    submit = [b for b in app.button if b.label == "Train A/B"]
    assert len(submit) == 1
    submit[0].click().run()
    assert not app.exception and not app.error, texts(app.error)
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir())
    try:
        assert [p.name.rsplit("-", 1)[-1] for p in runs] == ["bn", "nobn"], runs
        bn, nobn = (json.loads((p / "config.json").read_text()) for p in runs)
        assert ModelConfig.from_dict(bn["model"]).template_settings()[1] is True
        assert ModelConfig.from_dict(nobn["model"]).template_settings()[1] is False
        assert [x for x in bn["model"]["layers"] if x["type"] != "bn"] == nobn["model"]["layers"]
        assert bn["train"] == nobn["train"]
        # seed 7, batch 128, ... (as JSON: the milestones a list)
        assert bn["train"] == json.loads(json.dumps({**asdict(settings), "epochs": 1, "limit_train": 2000}))
        wait_idle(runs_dir)
    finally:
        for p in runs:
            jobs.stop(Run(p))
        wait_idle(runs_dir)
    assert [jobs.state(Run(p)) for p in runs] == ["finished", "finished"]
    assert all(len(Run(p).epochs()) == 1 for p in runs)
    first, second = (Run(p).status for p in runs)  # one after the other
    assert first["started"] <= first["ended"] <= second["started"] <= second["ended"], (first, second)

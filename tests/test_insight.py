import io
import json
import zipfile

import numpy as np
import pytest
import torch

from mnist_core import handwriting, insight
from mnist_core.bench import synthetic_drawing
from mnist_core.config import ConfigError, ModelConfig, TrainConfig
from mnist_core.draw import preprocess, step_predictions
from mnist_core.export import archive_bytes, torchscript_bytes
from mnist_core.model import build_model
from mnist_core.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint, save_checkpoint
from mnist_core.runner import train_run
from mnist_core.runs import Run
from mnist_core.train import evaluate, train




def test_confusion_matrix_counts_and_cell_drilldown():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.zeros((6, 10), np.float32)
    for i, p in enumerate([0, 1, 1, 1, 2, 0]):
        probs[i, p] = 0.9
        probs[i, (p + 1) % 10] = 0.1
    probs[5, 0] = 0.6  # the less confident of the two "read as 0" mistakes
    ev = insight.Evaluation(probs, labels)
    m = ev.confusion()
    assert m.sum() == 6 and m[0, 0] == 1 and m[0, 1] == 1 and m[2, 0] == 1
    assert ev.accuracy == pytest.approx(100 * 4 / 6)
    assert list(ev.per_class_accuracy()[:3]) == [50.0, 100.0, 50.0]
    assert list(ev.cell(0, 1)) == [1]
    assert list(ev.cell(2, 0)) == [5]


def test_evaluation_is_cached_per_checkpoint(tmp_path, mnist, bundled):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(BUNDLED_CHECKPOINT.read_bytes())
    x, y = mnist.test_x[:500], mnist.test_y[:500]
    ev = insight.cached_evaluation(ckpt, bundled, x, y)
    assert (tmp_path / "best.pt.eval").exists()
    assert ev.accuracy > 97

    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("should have come from the cache")

    again = insight.cached_evaluation(ckpt, Exploding(), x, y)
    assert np.array_equal(again.probs, ev.probs)  # kept exactly, so the cached predictions are the same
    assert again.accuracy == ev.accuracy == evaluate(bundled, x, y).acc  # and agree with training's test
    # a different checkpoint at the same path invalidates the cache
    save_checkpoint(ckpt, build_model(ModelConfig()))
    with pytest.raises(AssertionError):
        insight.cached_evaluation(ckpt, Exploding(), x, y)


def test_feature_maps_filters_saliency(bundled):
    pre = preprocess(synthetic_drawing())
    maps = insight.feature_maps(bundled, pre.tensor)
    # one map per group of layers: each conv with its BN and ReLU, the transition, the max-pool
    assert [a.shape for _, a in maps] == [(12, 26, 26), (16, 24, 24), (10, 24, 24), (10, 12, 12), (12, 10, 10),
                                          (16, 8, 8), (30, 6, 6)]
    assert [label.split(":")[0] for label, _ in maps] == ["layer 1 conv", "layer 4 conv", "layer 7 conv",
                                                          "layer 8 maxpool", "layer 9 conv", "layer 12 conv",
                                                          "layer 15 conv"]
    assert insight.first_filters(bundled).shape == (12, 3, 3)
    sal, target = insight.saliency(bundled, pre.tensor)
    assert sal.shape == (28, 28) and target == 7 and sal.max() == pytest.approx(1.0)
    ink = pre.final > 0.3
    assert sal[ink].mean() > sal[~ink].mean()  # the gradient lives where the ink is
    grid = insight.tile(maps[0][1], cols=4)
    assert grid.shape == (3 * 27 - 1, 4 * 27 - 1)


def test_preprocessing_steps_show_why_they_matter(bundled):
    img = np.zeros((280, 280, 4), np.uint8)
    img[20:60, 200:215] = 255  # a small "1" in a corner
    stages = step_predictions(bundled, preprocess(img))
    assert [s[2].shape for s in stages] == [(28, 28)] * 4
    assert int(stages[-1][3].argmax()) == 1  # the full preprocessing reads it
    assert all(np.isclose(p.sum(), 1, atol=1e-4) for *_, p in stages)


def test_inference_time_and_macs():
    model = build_model(ModelConfig())
    import time

    def one_pass():
        t = time.perf_counter()
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28))
        return (time.perf_counter() - t) * 1000

    reported = insight.inference_ms(model, repeat=21)
    direct = min(one_pass() for _ in range(21))  # the same fastest pass, measured here
    assert direct / 3 < reported < direct * 3, (reported, direct)
    bigger = insight.inference_ms(build_model(ModelConfig.template((64, 64, 64, 64, 64, 64))), repeat=21)
    assert bigger > reported  # 40x the multiply-adds cost more time
    assert insight.macs(ModelConfig()) == 1_535_080


def test_handwriting_set_round_trip(tmp_path):
    pre = preprocess(synthetic_drawing())
    for label in (7, 7, 1):
        handwriting.save(pre.final, label, tmp_path)
    x, y = handwriting.load(tmp_path)
    assert x.shape == (3, 28, 28) and x.dtype == torch.uint8
    assert sorted(y.tolist()) == [1, 7, 7]
    assert handwriting.counts(tmp_path)[7] == 2
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "junk.png").write_bytes(b"not a png")
    assert len(handwriting.load(tmp_path)[0]) == 3
    with pytest.raises(ValueError):
        handwriting.save(pre.final, 12, tmp_path)


def test_fine_tune_with_handwriting_and_resume_numbering(tmp_path, mnist, runs_dir):
    pre = preprocess(synthetic_drawing())
    handwriting.save(pre.final, 7, tmp_path / "hw")
    parent = Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=2, limit_train=640, limit_test=200), name="p")
    train_run(parent, mnist)
    cfg = TrainConfig(epochs=1, limit_train=640, limit_test=200, init_checkpoint=str(parent.path / "last.pt"),
                      start_epoch=2, handwriting=str(tmp_path / "hw"), handwriting_repeat=5)
    child = Run.create(runs_dir, ModelConfig(), cfg, name="c", parent="p")
    seen = []
    train_run(child, mnist, progress=seen.append)
    assert [e["epoch"] for e in child.epochs()] == [3]  # continues the parent's numbering
    batches = [r for r in seen if r["kind"] == "batch"]
    assert batches[0]["step"] == 2 * batches[0]["batches"] + 1
    assert batches[-1]["batches"] == -(-(640 + 5) // 64)  # MNIST plus the repeated drawing
    assert child.config["parent"] == "p"


def test_init_checkpoint_must_match_architecture(tmp_path, mnist):
    ckpt = tmp_path / "other.pt"
    save_checkpoint(ckpt, build_model(ModelConfig.template(widths=(8, 8, 8, 8, 8, 8))))
    with pytest.raises(ConfigError, match="differs"):
        train(ModelConfig(), TrainConfig(epochs=1, limit_train=64, init_checkpoint=str(ckpt)), mnist)


def test_resumed_weights_are_the_parents(tmp_path, mnist, bundled):
    ckpt = tmp_path / "b.pt"
    ckpt.write_bytes(BUNDLED_CHECKPOINT.read_bytes())
    cfg = TrainConfig(epochs=1, limit_train=64, limit_test=2000, lr=1e-9, momentum=0.0, init_checkpoint=str(ckpt))
    records = []
    train(ModelConfig(), cfg, mnist, callback=records.append)
    assert [r for r in records if r["kind"] == "epoch"][0]["test_acc"] > 98  # not a fresh model


def test_exports_give_the_same_predictions(tmp_path, mnist, runs_dir, bundled):
    x = (mnist.test_x[:64].float().unsqueeze(1) / 255 - 0.1307) / 0.3081
    scripted = torch.jit.load(io.BytesIO(torchscript_bytes(bundled)))
    with torch.no_grad():
        assert torch.allclose(scripted(x), bundled(x), atol=1e-5)

    run = Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=1, limit_train=320, limit_test=100, seed=5), name="e")
    train_run(run, mnist)
    z = zipfile.ZipFile(io.BytesIO(archive_bytes(run)))
    names = set(z.namelist())
    for part in ("config.json", "seed.txt", "best.pt", "model.torchscript.pt", "summary.txt", "metrics.jsonl", "card.md"):
        assert f"e/{part}" in names
    assert json.loads(z.read("e/config.json"))["train"]["seed"] == 5
    assert "Total params: 9,596" in z.read("e/summary.txt").decode()
    model, _ = load_checkpoint(run.path / "best.pt")
    exported = torch.jit.load(io.BytesIO(z.read("e/model.torchscript.pt")))
    with torch.no_grad():
        assert torch.equal(exported(x).argmax(1), model(x).argmax(1))

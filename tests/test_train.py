import math

import pytest
import torch

from mnist_core.config import ConfigError, ModelConfig, TrainConfig, get_preset
from mnist_core.data import MNIST, augment, training_batch
from mnist_core.model import build_model
from mnist_core.train import resolve_device, train


def test_overfits_a_single_batch(mnist):
    torch.manual_seed(0)
    x, y = mnist.train_x[:64], mnist.train_y[:64]
    model = build_model(ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(training_batch(x, 0)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(training_batch(x, 0)).argmax(1) == y).float().mean().item()
    assert loss.item() < 0.05
    assert acc == 1.0


def test_short_real_training_beats_90_percent(mnist):
    records = []
    result = train(get_preset("quick").model, get_preset("quick").train, mnist, callback=records.append)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[-1]["test_acc"] > 90.0
    assert result.best_test_acc == max(e["test_acc"] for e in epochs)
    batches = [r for r in records if r["kind"] == "batch"]
    assert len(batches) == 2 * math.ceil(6000 / 64)
    assert all(r["images_per_s"] > 0 and 0 <= r["acc"] <= 100 for r in batches)
    assert set(epochs[0]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}


def small(seed=3, **kw):
    base = dict(epochs=1, batch_size=32, limit_train=320, limit_test=200, seed=seed, augment=5.0, lr=0.05)
    return TrainConfig(**{**base, **kw})


def losses(mnist, cfg):
    records = []
    train(ModelConfig(), cfg, mnist, callback=records.append)
    return [r["loss"] for r in records if r["kind"] == "batch"]


def test_same_seed_same_run(mnist):
    assert losses(mnist, small(3)) == losses(mnist, small(3))
    assert losses(mnist, small(3)) != losses(mnist, small(4))


@pytest.mark.parametrize("scheduler", ["none", "step", "onecycle"])
def test_schedulers_run_and_report_lr(mnist, scheduler):
    records = []
    train(ModelConfig(), small(scheduler=scheduler, epochs=2, step_size=1), mnist, callback=records.append)
    lrs = [r["lr"] for r in records if r["kind"] == "epoch"]
    assert len(lrs) == 2 and all(lr > 0 for lr in lrs)
    if scheduler == "step":
        assert lrs[1] == pytest.approx(lrs[0] * 0.1)


def test_stop_is_honoured_within_one_batch_and_checkpoints(mnist):
    seen, saved = [], []
    result = train(
        ModelConfig(), small(epochs=3), mnist, callback=seen.append,
        should_stop=lambda: sum(r["kind"] == "batch" for r in seen) >= 3,
        checkpoint=lambda model, record, best: saved.append(record),
    )
    assert result.stopped
    assert sum(r["kind"] == "batch" for r in seen) == 3
    assert seen[-1]["kind"] == "stopped"
    assert saved and saved[-1]["kind"] == "stopped"


def test_batch_larger_than_dataset_is_refused(mnist):
    with pytest.raises(ConfigError, match="larger than the training set"):
        train(ModelConfig(), TrainConfig(batch_size=500, limit_train=100), mnist)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"lr": 0}, "lr is 0"), ({"lr": -1}, "lr is -1"), ({"epochs": 0}, "epochs is 0"),
        ({"batch_size": 0}, "batch-size is 0"), ({"scheduler": "cosine"}, "scheduler 'cosine'"),
        ({"device": "tpu"}, "device 'tpu'"), ({"augment": 90}, "augment is 90"),
        ({"ema": 1.0}, "ema is 1: it must be at least 0 and below 1"), ({"ema": -0.5}, "ema is -0.5"),
    ],
)
def test_bad_training_settings_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)


def test_cuda_without_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_augment_keeps_shape_and_changes_pixels():
    x = torch.rand(16, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    out = augment(x, 10.0, g)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    assert torch.equal(augment(x, 0.0, g), x)


def test_reference_preset_matches_the_notebook():
    p = get_preset("reference")
    assert p.model == ModelConfig()
    assert (p.train.batch_size, p.train.epochs, p.train.lr, p.train.momentum) == (64, 15, 0.01, 0.9)
    assert p.train.augment == 0


def test_limit_keeps_the_first_images(mnist):
    small_set = mnist.limit(100, 50)
    assert isinstance(small_set, MNIST)
    assert len(small_set.train_x) == 100 and len(small_set.test_y) == 50


def test_ema_tests_and_saves_the_averaged_weights_of_the_same_training(mnist):
    from mnist_core.card import target_text

    def run(cfg):
        records, saved = [], []
        result = train(ModelConfig(), cfg, mnist, callback=records.append,
                       checkpoint=lambda model, record, best: saved.append(model))
        return records, saved, result

    plain, plain_saved, plain_result = run(small(epochs=2))
    ema, ema_saved, ema_result = run(small(epochs=2, ema=0.9))
    # the optimizer steps the same live weights: the same batch losses
    assert [r["loss"] for r in plain if r["kind"] == "batch"] == [r["loss"] for r in ema if r["kind"] == "batch"]
    # but what is tested, saved and returned is the average, BatchNorm statistics included
    assert [r["test_loss"] for r in plain if r["kind"] == "epoch"] != [r["test_loss"] for r in ema if r["kind"] == "epoch"]
    assert ema_saved[-1] is ema_result.model and plain_saved[-1] is plain_result.model
    live, averaged = plain_result.model.state_dict(), ema_result.model.state_dict()
    assert live.keys() == averaged.keys()
    assert not torch.equal(live["0.weight"], averaged["0.weight"])
    assert not torch.equal(live["1.running_mean"], averaged["1.running_mean"])
    assert ema_result.model.config == ModelConfig()
    assert "weights averaged (EMA 0.998)" in target_text({"model": {"widths": [1] * 6}, "train": {"ema": 0.998}})

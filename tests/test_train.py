import math

import pytest
import torch

from mnist_core.config import ConfigError, ModelConfig, TrainConfig, get_preset, replace
from mnist_core.data import MNIST, affine_grid, augment, training_batch
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


def test_channels_last_trains_the_same_model_in_another_memory_layout(mnist):
    """Channels-last changes where the numbers sit, not what is computed: the same losses to float
    rounding, and the weights handed back are channels-last."""
    cfg = small(3, augment=0.0)
    plain = losses(mnist, cfg)
    records = []
    result = train(ModelConfig(), replace(cfg, channels_last=True), mnist, callback=records.append)
    laid_out = [r["loss"] for r in records if r["kind"] == "batch"]
    assert laid_out == pytest.approx(plain, rel=1e-3, abs=1e-3)
    conv = next(m for m in result.model if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def lr_curve(cfg: TrainConfig, steps_per_epoch: int, losses=None) -> list[float]:
    """The rate of every step of a recipe as the training loop's Schedule drives it."""
    from mnist_core.train import Schedule, make_optimizer

    opt = make_optimizer(build_model(ModelConfig.parse("linear10")), cfg)
    schedule, out = Schedule(opt, cfg, steps_per_epoch), []
    for epoch in range(cfg.epochs):
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.after_batch()
        schedule.after_epoch(losses[epoch] if losses else 1.0)
    return out


def torch_curve(make, epochs: int, steps: int, per_batch: bool, lr: float, losses=None) -> list[float]:
    """The same from torch's own scheduler, built here from its documented arguments."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
    sched, out = make(opt), []
    for epoch in range(epochs):
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_batch:
                sched.step()
        if not per_batch:
            sched.step(losses[epoch]) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
    return out


@pytest.mark.parametrize("name", ["none", "step", "multistep", "onecycle", "cosine", "cosine-warm", "plateau"])
def test_each_schedule_follows_torchs_own_scheduler(name):
    S = torch.optim.lr_scheduler
    steps, epochs, lr = 7, 9, 0.1
    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.9, 0.95]  # plateau: no better loss after epochs 2 and 6
    cases = {
        "none": ({}, lambda o: S.LambdaLR(o, lambda i: 1.0), False),
        "step": ({"scheduler": "step", "step_size": 2, "gamma": 0.5}, lambda o: S.StepLR(o, 2, 0.5), False),
        "multistep": ({"scheduler": "multistep", "milestones": (3, 7), "gamma": 0.2},
                      lambda o: S.MultiStepLR(o, [3, 7], 0.2), False),
        "onecycle": ({"scheduler": "onecycle", "warmup_pct": 0.3, "final_div": 50.0},
                     lambda o: S.OneCycleLR(o, max_lr=lr, epochs=epochs, steps_per_epoch=steps, pct_start=0.3,
                                            div_factor=10, final_div_factor=50.0), True),
        "cosine": ({"scheduler": "cosine"}, lambda o: S.CosineAnnealingLR(o, T_max=epochs * steps), True),
        "cosine-warm": ({"scheduler": "cosine", "warmup_epochs": 2},
                        lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, 2 * steps),
                                                     S.CosineAnnealingLR(o, T_max=(epochs - 2) * steps)], [2 * steps]),
                        True),
        "plateau": ({"scheduler": "plateau", "patience": 1, "gamma": 0.5},
                    lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1), False),
    }
    settings, make, per_batch = cases[name]
    cfg = TrainConfig(epochs=epochs, lr=lr, **settings)
    ours = lr_curve(cfg, steps, losses)
    assert ours == pytest.approx(torch_curve(make, epochs, steps, per_batch, lr, losses), rel=1e-9)
    if name != "none":
        assert len(set(ours)) > 1  # the rate does move


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_train_and_clipping_bounds_the_step(mnist, optimizer, monkeypatch):
    import mnist_core.train as loop

    norms, make = [], loop.make_optimizer

    def spied(model, cfg):  # every step sees the gradients as clipped
        opt = make(model, cfg)
        opt.register_step_pre_hook(lambda o, args, kwargs: norms.append(float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for g in o.param_groups for p in g["params"]
                         if p.grad is not None])))))
        return opt

    monkeypatch.setattr(loop, "make_optimizer", spied)
    records = []
    cfg = small(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01, epochs=1, clip_grad=0.5,
                label_smoothing=0.1, nesterov=optimizer == "sgd", limit_train=1280, augment=0.0)
    train(ModelConfig(), cfg, mnist, callback=records.append)
    batch = [r["loss"] for r in records if r["kind"] == "batch"]
    assert sum(batch[-8:]) / 8 < 0.8 * sum(batch[:8]) / 8  # the loss falls over 40 steps
    assert len(norms) == 40 and max(norms) <= 0.5 + 1e-4 and min(norms) > 0
    from mnist_core.train import make_optimizer

    assert type(make_optimizer(build_model(ModelConfig()), cfg)).__name__ == {"sgd": "SGD", "adam": "Adam",
                                                                              "adamw": "AdamW"}[optimizer]


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
        ({"batch_size": 0}, "batch-size is 0"), ({"scheduler": "cyclic"}, "scheduler 'cyclic'"),
        ({"device": "tpu"}, "device 'tpu'"), ({"augment": 90}, "augment is 90"),
        ({"ema": 1.0}, "ema is 1: it must be at least 0 and below 1"), ({"ema": -0.5}, "ema is -0.5"),
        ({"optimizer": "lion"}, "optimizer 'lion' is unknown"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov needs the SGD optimizer with momentum above 0"),
        ({"nesterov": True, "optimizer": "adam"}, "nesterov needs the SGD optimizer"),
        ({"scheduler": "multistep"}, "the multistep schedule needs milestones"),
        ({"scheduler": "multistep", "milestones": (5, 20), "epochs": 15}, "milestone 20 is not before the last epoch"),
        ({"scheduler": "multistep", "milestones": (10, 5)}, "milestones must go up"),
        ({"milestones": (5,)}, "milestones go with the multistep schedule, not none"),
        ({"scheduler": "cosine", "warmup_epochs": 15, "epochs": 15}, "warmup-epochs is 15: it must be between 0 and 14"),
        ({"scheduler": "onecycle", "warmup_epochs": 2}, "warmup-epochs goes with the cosine schedule"),
        ({"warmup_pct": 1.0}, "warmup-pct is 1"), ({"final_div": 0.5}, "final-div is 0.5"),
        ({"clip_grad": -1.0}, "clip-grad is -1"), ({"rotate": 200}, "rotate is 200"),
        ({"translate": -1}, "translate is -1"), ({"scale": 1.5}, "scale is 1.5"), ({"shear": 90}, "shear is 90"),
        ({"erase": 1.5}, "erase is 1.5"), ({"milestones": "5,10"}, "milestones must be a list"),
        ({"channels_last": "yes"}, "channels-last must be true or false"),
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
    out = augment(x, rotate=10.0, generator=g)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    assert torch.equal(augment(x, generator=g), x)


@pytest.mark.parametrize("h, w", [(28, 28), (20, 12)])
def test_the_sampling_grid_is_torchs_affine_grid(h, w):
    theta = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(3))
    expected = torch.nn.functional.affine_grid(theta, [8, 1, h, w], align_corners=False)
    assert torch.allclose(affine_grid(theta, h, w), expected, atol=1e-6)


def centre_and_mass(x):
    """Per image: ink mass and its centre (row, column) in pixels."""
    mass = x.sum((1, 2, 3))
    rows = torch.arange(28.0).view(1, 1, 28, 1)
    cols = torch.arange(28.0).view(1, 1, 1, 28)
    return mass, (x * rows).sum((1, 2, 3)) / mass, (x * cols).sum((1, 2, 3)) / mass


def test_each_augmentation_control_changes_only_what_it_names(mnist):
    x = mnist.test_x[:64].unsqueeze(1).float() / 255
    mass, r0, c0 = centre_and_mass(x)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    # translation alone moves the ink and keeps its mass (MNIST digits sit 4 px from the border)
    moved = augment(x, translate=3.0, generator=g())
    m, r, c = centre_and_mass(moved)
    assert abs(m.sum() / mass.sum() - 1) < 0.01 and (m / mass - 1).abs().median() < 0.01
    shift = torch.stack([r - r0, c - c0], 1)
    assert shift.abs().max() <= 3.05 and shift.abs().max() > 1.5
    # rotation alone keeps the ink's centre where it was (about the image's centre: nearly so)
    turned = augment(x, rotate=20.0, generator=g())
    _, r, c = centre_and_mass(turned)
    centred = ((r0 - 13.5) ** 2 + (c0 - 13.5) ** 2).sqrt() < 1.0  # digits whose ink is centred
    assert ((r - r0).abs()[centred] < 0.6).all() and ((c - c0).abs()[centred] < 0.6).all()
    assert not torch.allclose(turned, x)
    # scale alone changes the ink's mass (area) with the zoom, shear alone keeps the mass
    m, _, _ = centre_and_mass(augment(x, scale=0.3, generator=g()))
    assert (m / mass - 1).abs().max() > 0.1
    m, _, _ = centre_and_mass(augment(x, shear=20.0, generator=g()))
    assert abs(m.sum() / mass.sum() - 1) < 0.01 and (m / mass - 1).abs().median() < 0.01
    # erasing: about that share of the images lose ink, the others are untouched
    erased = augment(x, erase=0.5, generator=g())
    touched = (erased != x).flatten(1).any(1)
    assert 16 <= int(touched.sum()) <= 48 and torch.equal(erased[~touched], x[~touched])
    assert (erased <= x).all()


def test_the_augment_shorthand_repeats_the_separate_controls_exactly():
    x = torch.rand(8, 1, 28, 28)
    old = TrainConfig(augment=8.0).augmentation()
    assert old == {"rotate": 8.0, "translate": 2.0, "scale": 0.08, "shear": 0.0, "erase": 0.0}
    a = augment(x, **old, generator=torch.Generator().manual_seed(1))
    b = augment(x, rotate=8.0, translate=2.0, scale=0.08, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


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
    assert "weight average (EMA) 0.998" in target_text({"model": {"widths": [1] * 6}, "train": {"ema": 0.998}})


def test_validation_chooses_the_best_epoch_where_test_peaks_elsewhere(mnist, monkeypatch):
    """With a validation split, best.pt follows the validation accuracy: here the test accuracy
    peaks at epoch 2 and the validation accuracy at epoch 3 (scores scripted per split)."""
    import mnist_core.train as train_module

    class Scripted(train_module.Scores):
        scripted_acc = 0.0

        @property
        def acc(self) -> float:
            return self.scripted_acc

    script = {"test": iter([90.0, 95.0, 93.0]), "val": iter([80.0, 82.0, 88.0])}
    real = train_module.evaluate

    def scripted(model, x, y=None, batch_size=2000):
        scores = Scripted(real(model, x, y, batch_size).logits, y)
        scores.scripted_acc = next(script["val" if len(x) == 300 else "test"])
        return scores

    monkeypatch.setattr(train_module, "evaluate", scripted)
    seen, best = [], []
    result = train(ModelConfig.parse("conv4 relu maxpool conv8 relu gap conv10k1"),
                   small(epochs=3, limit_train=900, limit_test=200, val_split=300), mnist, callback=seen.append,
                   checkpoint=lambda model, record, is_best: best.append(record["epoch"]) if is_best else None)
    epochs = [r for r in seen if r["kind"] == "epoch"]
    assert [r["test_acc"] for r in epochs] == [90.0, 95.0, 93.0] and [r["val_acc"] for r in epochs] == [80.0, 82.0, 88.0]
    assert best == [1, 2, 3]  # each beat the validation best before it
    assert result.best_epoch == 3 and result.best_test_acc == 93.0
    assert all(r["val_total"] == 300 for r in epochs)


def test_the_validation_split_is_a_fixed_choice_left_out_of_training(mnist):
    small_set = mnist.limit(2000, 100)
    rest, vx, vy = small_set.hold_out(500)
    again, vx2, _ = small_set.hold_out(500)
    assert len(rest.train_x) == 1500 and len(vx) == 500 and torch.equal(vx, vx2)
    flat = {bytes(x.flatten().tolist()) for x in rest.train_x}
    assert not any(bytes(x.flatten().tolist()) in flat for x in vx[:50])

"""The one door the pages and the command line go through: what each action asks jobs to start."""

from __future__ import annotations

import os

import pytest
from apptest_kit import epoch_record

from mnist_core import jobs, lab
from mnist_core.checkpoint import save_checkpoint
from dataclasses import replace

from mnist_core.config import PRESETS, ConfigError, ModelConfig, TrainConfig
from mnist_core.model import build_model
from mnist_core.runs import Run, RunError


@pytest.fixture
def started(monkeypatch, tmp_path):
    """jobs.start / start_queue record what they are given instead of starting processes."""
    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path / "runs"))
    calls = []
    monkeypatch.setattr(jobs, "start", lambda d, m, t, **kw: calls.append((d, m, t, kw)) or "run")
    monkeypatch.setattr(jobs, "start_queue", lambda d, specs: calls.extend((d, s["model_cfg"], s["train_cfg"], s)
                                                                           for s in specs) or ["a", "b"])
    return calls


def parent_run(tmp_path, **recipe) -> Run:
    run = Run.create(tmp_path / "runs", ModelConfig(), TrainConfig(**recipe), name="parent")
    save_checkpoint(run.path / "last.pt", build_model(ModelConfig()))
    return run


def test_runs_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_LAB_RUNS", raising=False)
    assert lab.runs_dir() == lab.DEFAULT_RUNS_DIR
    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path))
    assert lab.runs_dir() == tmp_path


def finished_epochs(run: Run, n: int, lr: float, start: int = 0) -> None:
    """n epoch records in run's metrics, the last at rate lr."""
    with run.open_metrics() as f:
        for i in range(start + 1, start + n + 1):
            f.write(epoch_record(i, lr=lr if i == start + n else 0.1))


def test_continue_keeps_the_recipe_holds_the_last_rate_and_numbers_on(started, tmp_path):
    run = parent_run(tmp_path, epochs=3, lr=0.05, seed=7, scheduler="onecycle")
    finished_epochs(run, 3, lr=0.0004)
    lab.continue_run(run, 1)
    [(d, model, recipe, kw)] = started
    assert d == tmp_path / "runs" and model == ModelConfig()
    # not the OneCycle again from its peak: the rate the parent ended at, held
    assert (recipe.epochs, recipe.lr, recipe.scheduler, recipe.seed, recipe.start_epoch) == (1, 0.0004, "none", 7, 3)
    assert recipe.init_checkpoint == str(run.path / "last.pt")
    assert kw == {"parent": "parent",
                  "target": "Continue parent for 1 epoch; schedule: constant from lr 0.0004, the parent's last"}
    started.clear()
    lab.continue_run(run, 4, schedule="cosine")
    [(_, _, recipe, kw)] = started
    assert (recipe.lr, recipe.scheduler, recipe.epochs) == (0.0004, "cosine", 4)
    assert kw["target"].endswith("schedule: cosine to 0 from lr 0.0004, the parent's last")
    started.clear()
    lab.continue_run(run, 2, schedule="restart")
    [(_, _, recipe, kw)] = started
    assert (recipe.lr, recipe.scheduler) == (0.05, "onecycle")
    assert kw["target"].endswith("schedule: onecycle again from lr 0.05")
    with pytest.raises(ConfigError, match="unknown"):
        lab.continue_run(run, 2, schedule="warp")


def test_a_continued_continuation_counts_every_epoch_before_it(started, tmp_path):
    first = parent_run(tmp_path, epochs=15)
    second = Run.create(tmp_path / "runs", ModelConfig(), TrainConfig(epochs=2, start_epoch=15), name="second",
                        parent=first.name)
    save_checkpoint(second.path / "last.pt", build_model(ModelConfig()))
    finished_epochs(second, 2, lr=0.001, start=15)
    lab.continue_run(second, 1)
    [(_, _, recipe, _)] = started
    assert recipe.start_epoch == 17


def test_fine_tune_adds_the_drawings_gently(started, tmp_path):
    run = parent_run(tmp_path, batch_size=256, augment=6.0, seed=3)
    lab.fine_tune(run, tmp_path / "hw", epochs=2, limit_train=10000)
    [(_, _, recipe, kw)] = started
    assert (recipe.batch_size, recipe.lr, recipe.scheduler, recipe.augment, recipe.seed) == (128, 0.01, "none", 6.0, 3)
    assert recipe.handwriting == str(tmp_path / "hw") and recipe.limit_train == 10000 and kw["parent"] == "parent"


def test_ab_differs_only_in_batchnorm(started, tmp_path):
    recipe = TrainConfig(epochs=1, seed=5)
    lab.start_ab_batchnorm(ModelConfig.template((8, 8, 8, 8, 8, 8), dropout=0.1), recipe)
    (_, bn, t1, s1), (_, nobn, t2, s2) = started
    assert t1 == t2 == recipe
    assert bn.template_settings() == ((8, 8, 8, 8, 8, 8), True, 0.1)
    assert nobn.template_settings() == ((8, 8, 8, 8, 8, 8), False, 0.1)
    assert s1["name"].endswith("-bn") and s2["name"].endswith("-nobn")
    # any other shape: the list as it is, then without its BatchNorm layers
    started.clear()
    lab.start_ab_batchnorm(ModelConfig.parse("conv8p1 bn relu conv8s2 bn relu drop0.05 gap conv10k1"), recipe)
    (_, a, _, _), (_, b, _, _) = started
    assert a.text == "conv8p1 bn relu conv8s2 bn relu drop0.05 gap conv10k1"
    assert b.text == "conv8p1 relu conv8s2 relu drop0.05 gap conv10k1"
    started.clear()  # a residual block: its add is renumbered with the BatchNorms gone
    lab.start_ab_batchnorm(ModelConfig.parse("conv8p1 bn relu conv8p1 bn add3 relu gap conv10k1"), recipe)
    (_, a, _, _), (_, b, _, _) = started
    assert b.text == "conv8p1 relu conv8p1 add2 relu gap conv10k1" and b.params == a.params - 32
    started.clear()
    with pytest.raises(RunError, match="no BatchNorm layer"):
        lab.start_ab_batchnorm(ModelConfig.parse("conv8 relu gap conv10k1"), recipe)
    assert started == []


def test_a_run_without_settings_cannot_be_continued(started, tmp_path):
    run = parent_run(tmp_path)
    (run.path / "config.json").write_text("{}")
    with pytest.raises(RunError, match="no 'model' section"):
        lab.continue_run(run, 1)
    assert started == []


def test_reading_a_dead_runs_status_writes_nothing(monkeypatch, tmp_path):
    """A run left 'running' by a process that is gone reads as interrupted on every page (table,
    card, Train), while its files stay exactly as they are: only actions write."""
    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path / "runs"))
    run = Run.create(tmp_path / "runs", ModelConfig(), TrainConfig(epochs=3), name="orphan")
    run.set_status("running", pid="not a pid")
    from mnist_core.runner import write_card
    write_card(run)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.path.iterdir()}

    assert jobs.state(run) == "interrupted"
    assert "ended without a final status after 0 epochs" in lab.status(run)["reason"]
    assert lab.summary(run)["status"] == "interrupted"
    assert "*status:* interrupted" in lab.card_text(run) and "*status:* running" in run.card_text()
    assert [r.name for r in lab.runs_with_checkpoints()] == []  # no last.pt: nothing to continue

    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.path.iterdir()}
    assert after == before
    lab.delete(run)  # an action: a run that is not training can go
    assert not run.path.exists()


def test_your_own_presets_are_saved_listed_used_and_deleted(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_LAB_PRESETS", str(tmp_path / "mine"))
    model = ModelConfig.parse("conv8p1 bn relu conv8s2 bn relu gap conv10k1")
    recipe = TrainConfig(epochs=3, optimizer="adamw", lr=0.003, scheduler="cosine", warmup_epochs=1, rotate=8.0,
                         init_checkpoint="/somewhere/last.pt", start_epoch=4)
    path = lab.save_preset("my-try", model, recipe, about="strided, AdamW")
    assert path == tmp_path / "mine" / "my-try.json"
    mine = lab.preset("my-try")
    assert mine.model == model and mine.about == "strided, AdamW"
    assert mine.train == replace(recipe, init_checkpoint=None, start_epoch=0)  # a recipe, not a run's state
    assert list(lab.presets())[:len(PRESETS)] == list(PRESETS) and "my-try" in lab.presets()
    with pytest.raises(ConfigError, match="built-in preset"):
        lab.save_preset("lean", model, recipe)
    with pytest.raises(ConfigError, match="not allowed"):
        lab.save_preset("../evil", model, recipe)
    # a file that is not a preset is skipped, not fatal
    (tmp_path / "mine" / "broken.json").write_text("{not json")
    (tmp_path / "mine" / "other.json").write_text('{"name": "someone-else", "model": {}, "train": {}}')
    assert set(lab.user_presets()) == {"my-try"}
    lab.delete_preset("my-try")
    assert "my-try" not in lab.presets()
    with pytest.raises(ConfigError, match="not one of your saved presets"):
        lab.delete_preset("lean")


def test_continuing_fits_the_schedule_to_the_new_epochs(started, tmp_path):
    run = parent_run(tmp_path, epochs=12, scheduler="multistep", milestones=(4, 8))
    lab.continue_run(run, 6, schedule="restart")
    (_, _, t, _), = started
    assert (t.epochs, t.scheduler, t.milestones) == (6, "multistep", (4,))
    started.clear()
    lab.continue_run(run, 3, schedule="restart")
    (_, _, t, _), = started
    assert (t.epochs, t.scheduler, t.milestones) == (3, "none", ())


def test_seeds_make_a_group_of_runs_that_differ_only_in_the_seed(started, tmp_path):
    recipe = TrainConfig(epochs=2, lr=0.05, limit_train=640)
    lab.start_seeds(ModelConfig(), recipe, [1, 2, 3], group="trio")
    assert [s["name"] for *_, s in started] == ["trio-seed1", "trio-seed2", "trio-seed3"]
    assert [t for _, _, t, _ in started] == [replace(recipe, seed=s) for s in (1, 2, 3)]
    assert {s["group"] for *_, s in started} == {"trio"}
    with pytest.raises(ConfigError, match="distinct"):
        lab.parse_seeds("1,1")
    with pytest.raises(ConfigError, match="whole numbers"):
        lab.parse_seeds("1,two")
    with pytest.raises(ConfigError, match="1 to 20 seeds"):
        lab.parse_seeds("")
    assert lab.parse_seeds(" 3, 1 ,2") == [3, 1, 2]


def test_a_groups_verdict_and_card_count_the_seeds_that_hold_the_goal(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path / "runs"))
    model = ModelConfig.parse("conv8 bn relu maxpool conv16 bn relu gap conv10k1")
    for seed, tail in ((1, (99.5, 99.45, 99.42)), (2, (99.5, 99.38, 99.5)), (3, (99.41, 99.44, 99.46))):
        run = Run.create(tmp_path / "runs", model, TrainConfig(epochs=3, seed=seed), name=f"g-seed{seed}", group="g")
        with run.open_metrics() as f:
            for i, acc in enumerate(tail, 1):
                f.write(epoch_record(i, acc))
        run.set_status("finished")
    Run.create(tmp_path / "runs", model, TrainConfig(epochs=3), name="alone")
    groups = lab.groups()
    assert list(groups) == ["g"] and [r.name for r in groups["g"]] == ["g-seed1", "g-seed2", "g-seed3"]
    verdict = lab.group_verdict(groups["g"])
    assert verdict.text(lab.goal()) == "holds 99.4% in the last 3 epochs on 2 of 3 seeds (mean 99.40, min 99.38)"
    card = lab.group_card("g", groups["g"])
    assert "*verdict:* **holds 99.4% in the last 3 epochs on 2 of 3 seeds (mean 99.40, min 99.38)**" in card
    assert "| 2 | g-seed2 | 99.50 | 99.38 | misses | epoch 2 at 99.38% |" in card
    assert lab.summary(groups["g"][0])["group"] == "g"
    # a stricter goal, saved: every verdict follows it
    lab.set_goal(lab.Goal(accuracy=99.45))
    assert lab.group_verdict(groups["g"]).held == 0
    assert lab.summary(groups["g"][2])["why"] == "epoch 1 at 99.41%"


def test_notes_tags_and_a_new_name(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path / "runs"))
    run = parent_run(tmp_path)
    child = Run.create(tmp_path / "runs", ModelConfig(), TrainConfig(epochs=1), name="child", parent="parent")
    lab.set_notes(run, "  first try with padding  ", "padding, baseline, padding,")
    assert run.notes == {"notes": "first try with padding", "tags": ["padding", "baseline"]}
    assert "*tags:* `padding`, `baseline`" in lab.card_text(run)
    assert "first try with padding" in (run.path / "card.md").read_text()
    assert lab.summary(run)["tags"] == "padding, baseline"
    with pytest.raises(ConfigError, match="tag"):
        lab.set_notes(run, "", "a|b")

    renamed = lab.rename(run, "baseline-1")
    assert not run.path.exists() and renamed.name == "baseline-1"
    assert renamed.config["name"] == "baseline-1" and renamed.notes["tags"] == ["padding", "baseline"]
    assert child.config["parent"] == "baseline-1"
    with pytest.raises(RunError, match="already exists"):
        lab.rename(renamed, "child")
    with pytest.raises(RunError, match="not allowed"):
        lab.rename(renamed, "../out")
    renamed.set_status("running", pid=os.getpid())
    monkeypatch.setattr(jobs, "pid_alive", lambda pid: True)  # as if its training process were alive
    with pytest.raises(RunError, match="is training"):
        lab.rename(renamed, "other")

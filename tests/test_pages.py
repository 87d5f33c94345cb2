"""The six pages under Streamlit's AppTest: each script runs headless against a fresh runs folder."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from apptest_kit import button, chart_keys, made_run, page, texts, wait_idle

from mnist_core import jobs
from mnist_core.config import PRESETS, ConfigError, ModelConfig, TrainConfig
from mnist_core.model import count_params
from mnist_core.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
from mnist_core.runs import Run

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["views/home.py", "views/architecture.py", "views/train.py", "views/draw.py", "views/runs.py",
         "views/sweep.py"]


def total(at: AppTest) -> str:
    heads = [s for s in texts(at.subheader) if s.startswith("Total params: ")]
    assert len(heads) == 1, texts(at.subheader)
    return heads[0]




# -- every page ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_every_page_loads_without_runs(app, runs_dir, path):
    page(app, path)
    assert not app.error
    assert list(runs_dir.iterdir()) == []  # looking at a page writes nothing


def test_home_counts_runs(app, finished_run):
    assert any("No run yet" in c for c in texts(app.caption))
    page(app, "views/home.py")
    assert any(c.startswith("1 run in") for c in texts(app.caption))


# -- Architecture ------------------------------------------------------------------------------


def test_architecture_total_follows_batchnorm(app):
    page(app, "views/architecture.py")
    assert total(app) == "Total params: 9,596"
    app.checkbox(key="arch_bn").uncheck().run()
    assert total(app) == "Total params: 9,424"
    app.checkbox(key="arch_bn").check().run()
    assert total(app) == "Total params: 9,596"


def test_architecture_slider_and_text_agree_with_the_core(app):
    page(app, "views/architecture.py")
    app.slider(key="arch_w5").set_value(20).run()
    assert total(app) == f"Total params: {count_params(ModelConfig.template(widths=(12, 16, 10, 12, 16, 20))):,}"
    assert app.text_input(key="arch_widths").value == "12,16,10,12,16,20"

    app.text_input(key="arch_widths").input("8, 8,8,16,16,32").run()
    widths = (8, 8, 8, 16, 16, 32)
    assert total(app) == f"Total params: {count_params(ModelConfig.template(widths=widths)):,}"
    assert tuple(app.slider(key=f"arch_w{i}").value for i in range(6)) == widths
    assert not app.error

    # the Train page trains what Architecture chose
    page(app, "views/train.py")
    assert any(ModelConfig.template(widths=widths).describe() in c for c in texts(app.caption))


@pytest.mark.parametrize("text", ["12,16,0,12,16,30", "12,16,10,12,16", "12,16,10,12,16,999"])
def test_architecture_bad_widths_show_the_core_message_and_keep_the_last_model(app, text):
    page(app, "views/architecture.py")
    app.checkbox(key="arch_bn").uncheck().run()
    assert total(app) == "Total params: 9,424"
    with pytest.raises(ConfigError) as e:
        ModelConfig.template(widths=tuple(int(p) for p in text.split(",")), batchnorm=False)
    app.text_input(key="arch_widths").input(text).run()
    assert len(app.error) == 1
    assert str(e.value) in app.error[0].value
    assert total(app) == "Total params: 9,424"
    # a good value clears the error
    app.text_input(key="arch_widths").input("12,16,10,12,16,30").run()
    assert not app.error and total(app) == "Total params: 9,424"


def test_architecture_non_numbers_are_refused(app):
    page(app, "views/architecture.py")
    app.text_input(key="arch_widths").input("12,16,ten,12,16,30").run()
    assert len(app.error) == 1 and "6 whole numbers" in app.error[0].value
    assert total(app) == "Total params: 9,596"


def test_architecture_text_form_builds_any_list_and_names_the_bad_row(app):
    page(app, "views/architecture.py")
    assert app.text_input(key="arch_spec").value == ModelConfig().text
    shapes = "conv8p1 bn relu conv8s2 bn relu conv16dw bn relu conv12k1 bn relu gap conv10k1"
    app.text_input(key="arch_spec").input(shapes).run()
    assert not app.error and total(app) == f"Total params: {ModelConfig.parse(shapes).params:,}"
    assert f"Model **{shapes}**" in texts(app.markdown)
    assert any("another shape" in c for c in texts(app.caption))  # the template says it would replace it
    # a bad list: the row and the reason, and the last valid model stays
    app.text_input(key="arch_spec").input("conv8 maxpool maxpool maxpool maxpool maxpool gap conv10k1").run()
    assert len(app.error) == 1 and "layer 6 (maxpool): the map is 1x1, nothing left to pool" in app.error[0].value
    assert total(app) == f"Total params: {ModelConfig.parse(shapes).params:,}"
    # the JSON form is taken too, and the Train page trains what was chosen
    app.text_input(key="arch_spec").input('{"layers": [{"type": "conv", "out": 10, "kernel": 28}]}').run()
    assert not app.error and total(app) == "Total params: 7,840"
    page(app, "views/train.py")
    assert any("conv10k28" in c for c in texts(app.caption))


def test_architecture_preset_and_template_reset_the_text_form(app):
    page(app, "views/architecture.py")
    app.text_input(key="arch_spec").input("conv8 bn relu gap conv10k1").run()
    app.selectbox(key="arch_preset").select("lean").run()
    assert app.text_input(key="arch_spec").value == PRESETS["lean"].model.text
    assert app.slider(key="arch_w5").value == 18 and total(app) == "Total params: 7,724"
    app.text_input(key="arch_spec").input("conv8 bn relu gap conv10k1").run()
    app.slider(key="arch_w5").set_value(20).run()  # a slider replaces another shape with the template
    assert app.text_input(key="arch_spec").value == ModelConfig.template((12, 16, 10, 12, 16, 20)).text


# -- Train -------------------------------------------------------------------------------------


def test_train_page_refuses_a_second_concurrent_training(app, runs_dir, monkeypatch):
    page(app, "views/train.py")
    assert not button(app, "Start training").disabled and button(app, "Stop").disabled

    # a training started elsewhere (another tab, the command line) after this page was drawn
    run = jobs.start(runs_dir, ModelConfig(), TrainConfig(epochs=3, limit_test=200), name="first")
    try:
        assert jobs.active(runs_dir) == "first"
        with pytest.raises(jobs.Busy, match=r"a training \(first\) is running"):
            jobs.start(runs_dir, ModelConfig(), TrainConfig(epochs=1, limit_train=640, limit_test=200), name="second")

        # the stale page still offers Start; pressing it starts nothing and shows the active run
        button(app, "Start training").click().run()
        assert not app.exception and not app.error
        assert sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) == ["first"]
        assert "first: running" in texts(app.subheader)
        assert button(app, "Start training").disabled and not button(app, "Stop").disabled
        # the sidebar names it too (AppTest draws app.py's sidebar on a session's first run only)
        other = AppTest.from_file(APP, default_timeout=60).run()
        assert any("Training **first** in the background" in i for i in texts(other.sidebar.info))

        # the race: the page's check saw no training, the lock in jobs.start refuses, the page says why
        with monkeypatch.context() as m:
            m.setattr(jobs, "active", lambda runs_dir: None)
            app.run()
            assert not button(app, "Start training").disabled
            button(app, "Start training").click().run()
        assert not app.exception
        assert any("a training (" in e and "is running" in e for e in texts(app.error)), texts(app.error)
        assert sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) == ["first"]

        app.run()
        button(app, "Stop").click().run()
        wait_idle(runs_dir)
    finally:
        jobs.stop(run)
        wait_idle(runs_dir)
    assert jobs.state(run) == "stopped"
    app.run()
    assert "first: stopped" in texts(app.subheader)
    assert not button(app, "Start training").disabled and button(app, "Stop").disabled


@pytest.mark.parametrize("preset", list(PRESETS))
def test_train_page_starts_a_preset_exactly_as_it_is(app, runs_dir, monkeypatch, preset):
    """Every setting of the preset, subset sizes included, reaches the training it starts."""
    started = []

    def start(runs_dir, model_cfg, train_cfg, **kw):
        started.append(train_cfg)
        return Run(runs_dir / preset)

    monkeypatch.setattr(jobs, "start", start)
    page(app, "views/train.py")
    app.selectbox(key="tr_preset").select(preset).run()
    button(app, "Start training").click().run()
    assert not app.exception and not app.error
    assert started == [PRESETS[preset].train]


def test_train_page_start_turns_start_off_and_stop_on_at_once(app, runs_dir):
    page(app, "views/train.py")
    app.number_input(key="tr_epochs").set_value(50)
    app.selectbox(key="tr_size").set_value(1000)
    app.text_input(key="tr_name").set_value("mine")
    button(app, "Start training").click().run()
    try:
        assert not app.exception and not app.error
        assert jobs.active(runs_dir) == "mine"
        # the page drawn right after the click already offers Stop, not Start
        assert button(app, "Start training").disabled and not button(app, "Stop").disabled
        assert "Started mine" in texts(app.toast)
        assert "mine: running" in texts(app.subheader)
        button(app, "Stop").click().run()
        wait_idle(runs_dir)
    finally:
        jobs.stop(Run(runs_dir / "mine"))
        wait_idle(runs_dir)
    app.run()
    assert "mine: stopped" in texts(app.subheader)
    assert not button(app, "Start training").disabled and button(app, "Stop").disabled


def test_train_page_preset_carries_every_setting_to_the_training(app, runs_dir, monkeypatch):
    from mnist_core.config import get_preset

    started = []
    monkeypatch.setattr(jobs, "start", lambda runs_dir, model_cfg, cfg, **kw: started.append(cfg) or Run.create(
        runs_dir, model_cfg, cfg, name="captured"))
    page(app, "views/train.py")
    app.selectbox(key="tr_preset").set_value("lean").run()
    assert app.number_input(key="tr_ema").value == 0.998 and app.number_input(key="tr_lr").value == 0.2
    button(app, "Start training").click().run()
    assert not app.exception and not app.error
    assert started == [get_preset("lean").train]  # the whole recipe, weight average included


@pytest.mark.parametrize("preset", ["lean", "strided"])
def test_a_preset_chosen_on_architecture_trains_its_whole_recipe(app, runs_dir, monkeypatch, preset):
    """Architecture's preset box sets the model and, with a note, the recipe; Start on Train trains both."""
    started = []
    monkeypatch.setattr(jobs, "start", lambda runs_dir, model_cfg, cfg, **kw: started.append((model_cfg, cfg)) or
                        Run.create(runs_dir, model_cfg, cfg, name="captured"))
    page(app, "views/architecture.py")
    app.selectbox(key="arch_preset").select(preset).run()
    assert any(f"Train starts from **{preset}**'s recipe" in i for i in texts(app.info))
    page(app, "views/train.py")
    assert any(c.startswith(f"Start trains **{PRESETS[preset].model.describe()}**") and "OneCycle" in c
               for c in texts(app.caption))
    button(app, "Start training").click().run()
    assert not app.exception and not app.error
    assert started == [(PRESETS[preset].model, PRESETS[preset].train)]


def test_train_page_refuses_bad_settings_next_to_their_control(app):
    page(app, "views/train.py")
    app.selectbox(key="tr_scheduler").select("multistep").run()
    app.text_input(key="tr_milestones").input("5,20").run()
    assert texts(app.error) == ["milestone 20 is not before the last epoch: each must be between 1 and 14 for 15 epochs"]
    assert button(app, "Start training").disabled
    app.text_input(key="tr_milestones").input("5,10").run()
    assert not app.error and not button(app, "Start training").disabled
    app.checkbox(key="tr_nesterov").check().run()
    assert not app.error
    app.selectbox(key="tr_optimizer").select("adam").run()  # Nesterov is SGD's: Adam with it is refused
    assert texts(app.error) == ["nesterov needs the SGD optimizer with momentum above 0"]
    assert app.checkbox(key="tr_nesterov").disabled


def test_train_page_previews_the_augmentation_and_saves_a_preset(app, monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_LAB_PRESETS", str(tmp_path / "mine"))
    page(app, "views/train.py")
    before = app.get("image")[0].proto.imgs[0].url
    app.slider(key="tr_rotate").set_value(30.0).run()
    after = app.get("image")[0].proto.imgs[0].url
    assert before != after  # the preview is drawn again with the new setting
    app.text_input(key="tr_preset_name").input("rotated").run()
    button(app, "Save as preset").click().run()
    assert any("Saved rotated.json" in m for m in texts(app.success))
    assert "rotated" in app.selectbox(key="tr_preset").options
    page(app, "views/architecture.py")
    assert "rotated" in app.selectbox(key="arch_preset").options


def test_train_page_lr_range_test_plots_and_offers_its_suggestion(app):
    page(app, "views/train.py")
    app.selectbox(key="tr_size").set_value(2000).run()
    button(app, "Run the range test").click().run()
    assert not app.exception and not app.error, texts(app.error)
    assert "lrfind_chart" in chart_keys(app)
    found = app.session_state["tr_lrfind"]
    assert len(found["lrs"]) > 50 and found["lrs"][0] == pytest.approx(1e-5)
    if found["suggestion"] is None:  # the page says why instead
        assert any(w.startswith("No suggestion: ") for w in texts(app.warning))
        return
    assert any(m.startswith(f"Suggested peak rate: **{found['suggestion']:.3g}**") for m in texts(app.markdown))
    button(app, f"Use {found['suggestion']:.3g} as the learning rate").click().run()
    assert app.number_input(key="tr_lr").value == pytest.approx(float(f"{found['suggestion']:.3g}"))


def test_train_page_shows_a_finished_run_with_its_card(app, finished_run):
    page(app, "views/train.py")
    assert "tiny: finished" in texts(app.subheader)
    assert {"loss_curve", "acc_curve", "batch_curve"} <= chart_keys(app)
    assert any("**RESULTS:**" in m for m in texts(app.markdown))


# -- Draw --------------------------------------------------------------------------------------


def test_draw_lists_the_bundled_model_and_finished_runs(app, finished_run):
    _, meta = load_checkpoint(BUNDLED_CHECKPOINT)
    page(app, "views/draw.py")
    options = app.selectbox(key="draw_model").options
    assert options[0] == f"bundled model ({meta['model_config'].describe()}, {meta['test_acc']:.2f}%)"
    assert any(o.startswith("tiny (12-16-10-12-16-30, BN, ") and o.endswith(", finished)") for o in options), options
    assert any("Draw a digit" in i for i in texts(app.info))  # nothing drawn yet


# -- Runs --------------------------------------------------------------------------------------


def test_runs_lists_the_run_shows_its_card_and_deletes_after_confirmation(app, runs_dir, finished_run):
    page(app, "views/runs.py")
    df = app.dataframe[0].value
    assert df["name"].tolist() == ["tiny"]
    row = df.iloc[0]
    summary = Run(runs_dir / "tiny").summary()
    assert row["status"] == "finished" and row["epochs"] == 1 and row["params"] == 9596
    assert row["final test %"] == summary["final test acc"] and row["best test %"] == summary["best test acc"]
    assert row["goal"] == "misses" and row["why"] == "9,596 parameters (the budget is under 8,000)"
    assert row["last 3 min"] != row["last 3 min"]  # NaN: one epoch is too few to judge
    card = (finished_run.path / "card.md").read_text()
    assert card.strip() in [m.strip() for m in texts(app.markdown)]
    assert "**RESULTS:**" in card
    assert {"cmp_loss", "cmp_acc"} <= chart_keys(app)  # the comparison picks the run by default

    # asking, then cancelling, keeps the run
    app.button(key="del_ask").click().run()
    assert any("Delete **tiny**" in w for w in texts(app.warning))
    app.button(key="del_no").click().run()
    assert not any("Delete **tiny**" in w for w in texts(app.warning))
    assert finished_run.path.is_dir()

    # asking, then confirming, deletes it
    app.button(key="del_ask").click().run()
    app.button(key="del_yes").click().run()
    assert not app.exception
    assert not finished_run.path.exists()
    assert any("No run yet" in i for i in texts(app.info))


def test_runs_table_leaves_the_accuracies_empty_for_a_run_with_no_epoch(app, runs_dir):
    Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=3), name="waiting")
    page(app, "views/runs.py")
    df = app.dataframe[0].value
    row = df.iloc[0]
    assert row["name"] == "waiting" and row["goal"] == "misses"
    for col in ("final test %", "best test %", "last 3 min"):  # numbers, so a click on the header sorts them
        assert df[col].dtype.kind == "f" and row[col] != row[col]


# -- the goal ----------------------------------------------------------------------------------

SMALL = ModelConfig.parse("conv8 bn relu maxpool conv16 bn relu gap conv10k1")


def test_home_saves_the_goal_and_the_runs_page_judges_by_it(app, runs_dir):
    from apptest_kit import made_run

    from mnist_core import goal

    made_run(runs_dir, "steady", (99.1, 99.45, 99.42, 99.41), SMALL)
    made_run(runs_dir, "wobbly", (99.38, 99.5, 99.5, 99.5), SMALL)
    made_run(runs_dir, "big", (99.6, 99.6, 99.6))  # the reference: over the 8,000 budget
    page(app, "views/runs.py")
    table = app.dataframe[0].value.set_index("name")
    assert table.loc["steady", "goal"] == "meets" and table.loc["steady", "last 3 min"] == 99.41
    assert table.loc["wobbly", "goal"] == "meets"  # its 99.38 is not in the last 3
    assert (table.loc["big", "goal"], table.loc["big", "why"]) == ("misses", "9,596 parameters (the budget is under 8,000)")
    app.checkbox(key="runs_budget").check().run()
    assert set(app.dataframe[0].value["name"]) == {"steady", "wobbly"}

    page(app, "views/home.py")
    app.number_input[0].set_value(99.42)
    app.number_input[1].set_value(2)
    button(app, "Save the goal").click().run()
    assert not app.exception and goal.load(runs_dir) == goal.Goal(accuracy=99.42, last=2)
    assert any("99.42% in each of the last 2 epochs" in m for m in texts(app.markdown))

    page(app, "views/runs.py")
    table = app.dataframe[0].value.set_index("name")
    assert (table.loc["steady", "goal"], table.loc["steady", "why"]) == ("misses", "epoch 4 at 99.41%")
    assert table.loc["wobbly", "goal"] == "meets"
    app.checkbox(key="runs_meets").check().run()
    assert app.dataframe[0].value["name"].tolist() == ["wobbly"]

    page(app, "views/home.py")
    button(app, "Back to the assignment's (99.4%, last 3, 15 epochs, under 8,000)").click().run()
    assert goal.load(runs_dir) == goal.Goal()


def test_runs_lists_groups_with_their_verdict_chart_and_card(app, runs_dir):
    from apptest_kit import made_run

    for seed, accs in ((1, (99.2, 99.45, 99.42, 99.44)), (2, (99.3, 99.5, 99.36, 99.5)), (3, (99.1, 99.41, 99.43, 99.47))):
        made_run(runs_dir, f"trio-seed{seed}", accs, SMALL, seed=seed, group="trio")
    page(app, "views/runs.py")
    groups = app.dataframe[0].value
    assert groups["group"].tolist() == ["trio"]
    assert groups["verdict"][0] == "holds 99.4% in the last 3 epochs on 2 of 3 seeds (mean 99.40, min 99.36)"
    assert "group_chart" in chart_keys(app)
    card = next(m for m in texts(app.markdown) if m.startswith("# Group trio"))
    assert "| 2 | trio-seed2 | 99.50 | 99.36 | misses | epoch 3 at 99.36% |" in card
    runs_table = app.dataframe[1].value
    assert set(runs_table["group"]) == {"trio"} and len(runs_table) == 3


def test_notes_tags_and_rename_on_the_runs_page(app, runs_dir):
    from apptest_kit import made_run

    made_run(runs_dir, "first", (99.0, 99.2, 99.3), SMALL)
    page(app, "views/runs.py")
    app.text_area(key="notes_first").set_value("padding helped")
    app.text_input(key="tags_first").set_value("padded, try-1")
    app.button(key="notes_save_first").click().run()
    assert not app.exception
    assert app.dataframe[0].value["tags"].tolist() == ["padded, try-1"]
    assert any("padding helped" in m and "`padded`" in m for m in texts(app.markdown))  # in the card
    app.text_input(key="rename_first").set_value("padded-1").run()  # Enter: the button wakes up
    app.button(key="rename_go_first").click().run()
    assert not app.exception
    assert app.dataframe[0].value["name"].tolist() == ["padded-1"]
    assert app.selectbox(key="runs_one").value == "padded-1"
    assert any("Renamed first to padded-1." in s for s in texts(app.success))
    app.text_input(key="tags_padded-1").set_value("a|b")
    app.button(key="notes_save_padded-1").click().run()
    assert any("tag 'a|b' is not allowed" in e for e in texts(app.error))


# -- Sweeps ------------------------------------------------------------------------------------


def test_sweep_form_starts_from_the_tiny_example_and_refuses_a_budget_below_the_space(app):
    page(app, "views/sweep.py")
    assert app.text_area(key="sw_templates").value.startswith("conv{w1}p1 bn relu")
    assert any("3 trials, 2 at once" in c for c in texts(app.caption))
    assert not button(app, "Start sweep").disabled
    app.number_input(key="sw_budget").set_value(500).run()
    assert any("below the smallest model in the space" in e for e in texts(app.error))
    assert button(app, "Start sweep").disabled
    app.selectbox(key="sw_from").select("example: sub8k").run()
    assert app.text_area(key="sw_templates").value.count("\n") == 1  # its two templates
    assert app.number_input(key="sw_budget").value == 8000 and not app.error


def test_sweep_page_shows_a_recorded_sweep_its_best_trial_chart_and_table(app, runs_dir):
    from mnist_core import sweep
    from mnist_core.files import atomic_write_json

    spec = sweep.check_space(json.loads((Path(APP).parent / "examples/sweeps/tiny.json").read_text()))
    folder = runs_dir / sweep.SWEEPS / "done"
    folder.mkdir(parents=True)
    atomic_write_json(folder / "spec.json", spec)
    atomic_write_json(folder / "status.json", {"status": "finished", "trials": 3, "started": "2026-11-25T10:00:00",
                                               "ended": "2026-11-25T10:01:00"})
    rows = []
    for name, params, acc in (("done-a", 1104, 97.1), ("done-b", 1570, 98.2)):
        made_run(runs_dir, name, [acc], sweep="done")
        rows.append({"run": name, "status": "finished", "params": params, "last_min": acc, "epoch": 1,
                     "verdict": f"misses: epoch 1 at {acc:.2f}%", "layers": "conv4p1 bn relu gap conv10k1"})
    rows.append({"trial": "x", "status": "rejected", "params": 9000, "reason": "over the budget, not trained"})
    (folder / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page(app, "views/sweep.py")
    assert "done: finished" in texts(app.subheader)
    assert any("Best so far" in s and "done-b" in s for s in texts(app.success))
    assert "sw_chart" in chart_keys(app)
    table = app.dataframe[-1].value  # the first is the form's editor
    assert list(table["run"][:2]) == ["/runs?run=done-a", "/runs?run=done-b"] and table["run"].isna()[2]
    assert button(app, "Stop sweep").disabled and not [b for b in app.button if b.label == "Resume sweep"]

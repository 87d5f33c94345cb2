"""The goal's verdicts on hand-made epoch lists, the group verdict, and the card leading with them."""

import re

import pytest

from mnist_core import goal
from mnist_core.card import analysis, render
from mnist_core.goal import Goal, GoalError, judge, judge_group

pytestmark = pytest.mark.unit

GOAL = Goal()  # 99.4% in each of the last 3 epochs, at most 15 epochs, under 8,000 parameters


def epochs(*tests, start=0):
    return [{"epoch": start + i, "train_acc": 99.0, "test_acc": t, "seconds": 10.0} for i, t in enumerate(tests, 1)]


def test_exactly_at_the_goal_in_each_of_the_last_three_meets():
    v = judge(GOAL, epochs(98.0, 99.2, 99.4, 99.4, 99.4), 7999)
    assert v.meets and v.word == "meets"
    assert v.last_min == 99.4 and v.final == 99.4
    assert v.reason == "99.4% held in the last 3 epochs (min 99.40%)"


def test_just_under_on_one_of_the_last_three_misses_and_names_the_epoch():
    v = judge(GOAL, epochs(99.5, 99.5, 99.5, 99.38, 99.45), 5000)
    assert not v.meets
    assert v.reason == "epoch 4 at 99.38%"
    assert v.last_min == 99.38
    # an epoch before the last three does not count
    assert judge(GOAL, epochs(90.0, 99.4, 99.41, 99.42), 5000).meets


def test_over_budget_misses_however_accurate():
    v = judge(GOAL, epochs(99.6, 99.6, 99.6), 8212)
    assert not v.meets and v.reason == "8,212 parameters (the budget is under 8,000)"
    assert not judge(GOAL, epochs(99.6, 99.6, 99.6), 8000).meets  # under, not at
    assert not judge(GOAL, epochs(99.6, 99.6, 99.6), None).meets


def test_too_many_epochs_counts_the_parents_epochs_too():
    assert judge(GOAL, epochs(*[99.5] * 15), 5000).meets
    v = judge(GOAL, epochs(*[99.5] * 16), 5000)
    assert not v.meets and v.reason == "16 epochs, over the limit of 15"
    v = judge(GOAL, epochs(99.5, 99.5, 99.5, start=14), 5000, epochs_before=14)
    assert not v.meets and v.reason == "17 epochs (14 before + 3 here), over the limit of 15"


def test_too_few_epochs_to_judge_misses():
    v = judge(GOAL, epochs(99.5, 99.6), 5000)
    assert not v.meets and v.last_min is None and v.reason == "2 of the 3 epochs the goal looks at"


def test_another_goal_judges_by_its_own_numbers():
    g = Goal(accuracy=99.0, last=2, max_epochs=5, max_params=5000)
    assert judge(g, epochs(98.0, 99.0, 99.1), 4999).meets
    assert judge(g, epochs(99.1, 98.9), 4999).reason == "epoch 2 at 98.90%"
    assert g.text() == "99% in each of the last 2 epochs, at most 5 epochs, under 5,000 parameters"


@pytest.mark.parametrize("kw, says", [
    (dict(accuracy=0), "goal accuracy"), (dict(accuracy=100.5), "goal accuracy"), (dict(last=0), "goal last"),
    (dict(max_epochs=0), "goal max epochs"), (dict(max_params=-1), "goal max params"),
    (dict(last=4, max_epochs=3), "allows only 3"), (dict(accuracy="99"), "goal accuracy"),
])
def test_impossible_goals_are_refused(kw, says):
    with pytest.raises(GoalError, match=says):
        Goal(**kw)


def test_the_goal_is_saved_in_the_runs_folder_and_a_broken_file_falls_back(tmp_path):
    assert goal.load(tmp_path) == Goal()
    g = Goal(accuracy=99.3, last=2, max_epochs=20, max_params=5000)
    goal.save(tmp_path, g)
    assert goal.load(tmp_path) == g
    (tmp_path / goal.SETTINGS).write_text('{"goal": {"accuracy": "lots"}}')
    assert goal.load(tmp_path) == Goal()
    (tmp_path / goal.SETTINGS).write_text("not json")
    assert goal.load(tmp_path) == Goal()


def test_the_group_verdict_counts_the_seeds_that_hold_it():
    verdicts = [judge(GOAL, epochs(99.5, 99.45, 99.42), 5000), judge(GOAL, epochs(99.5, 99.5, 99.44), 5000),
                judge(GOAL, epochs(99.5, 99.38, 99.5), 5000)]
    g = judge_group(verdicts)
    assert (g.held, g.seeds) == (2, 3) and not g.meets
    assert g.text(GOAL) == "holds 99.4% in the last 3 epochs on 2 of 3 seeds (mean 99.41, min 99.38)"
    assert judge_group(verdicts[:2]).meets


def test_the_analysis_says_from_when_it_holds_or_by_how_much_it_misses():
    assert analysis(epochs(99.0, 99.1, 99.41, 99.45, 99.5), "finished", 5, params=5000)[0] == \
        "Holds 99.4% from epoch 3."
    assert analysis(epochs(99.5, 99.2, 99.41, 99.36, 99.45), "finished", 5, params=5000)[0] == \
        "Misses 99.4% by 0.04 on epoch 4."
    assert analysis(epochs(99.5, 99.5, 99.5), "finished", 3, params=9000)[0] == \
        "Holds 99.4% from epoch 1, but 9,000 parameters (the budget is under 8,000): it misses the goal."


def test_the_card_leads_with_the_final_accuracy_the_last_three_and_the_verdict():
    cfg = {"name": "r", "params": 7000, "train": {"epochs": 5, "batch_size": 64}}
    card = render(cfg, epochs(99.0, 99.3, 99.41, 99.38, 99.5), "finished")
    results = card[card.index("**RESULTS:**"):card.index("**ANALYSIS:**")]
    lines = [line.strip() for line in results.splitlines()[1:] if line.strip()]
    assert lines[1] == "*final test acc:*  99.50 (epoch 5)"
    assert lines[2] == "*last 3 min:*  99.38"
    assert lines[3] == "*goal:* **misses**: epoch 4 at 99.38%"
    assert lines[4].startswith("*best epoch (best.pt):* 5, test 99.50, chosen on the test set")
    assert "Goal: 99.4% in each of the last 3 epochs, at most 15 epochs, under 8,000 parameters." in card


def test_a_continued_run_tells_the_epochs_its_weights_saw():
    cfg = {"name": "more", "parent": "base", "params": 7000,
           "train": {"epochs": 2, "batch_size": 64, "start_epoch": 15}}
    card = render(cfg, epochs(99.4, 99.45, start=15), "finished")
    assert "*epochs:* 17: 15 in `base` + 2 here" in card
    assert not re.search(r"epoch \d+ of [12]\b", card)
    assert "Best test accuracy 99.45% at epoch 17 of epochs 16-17." in card
    assert "17 epochs (15 before + 2 here), over the limit of 15" in card


def test_a_validation_split_is_named_as_what_chose_best_pt():
    cfg = {"name": "v", "params": 7000, "train": {"epochs": 3, "batch_size": 64, "val_split": 5000}}
    recs = epochs(99.0, 99.5, 99.3)
    for rec, val in zip(recs, (99.1, 99.0, 99.6)):
        rec.update(val_acc=val, test_total=2000)
    card = render(cfg, recs, "finished")
    assert "*best epoch (best.pt):* 3, test 99.30, chosen on validation (5,000 held-out training images, 99.60%)" in card
    assert "*test images:* 2,000 of 10,000" in card

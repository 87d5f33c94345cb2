"""Sweeps: the space's refusals and the budget screen (fast), then real sweeps on a local Ray (slow:
Ray starts in about 7 s here; each sweep starts it once)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from apptest_kit import made_run
from mnist_core import jobs, sweep
from mnist_core.__main__ import main
from mnist_core.runs import Run

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "sweeps" / "tiny.json"


def space(**changes):
    base = json.loads(TINY.read_text())
    return {**base, **changes}


@pytest.mark.unit
def test_the_shipped_spaces_are_valid():
    for path in sorted((ROOT / "examples" / "sweeps").glob("*.json")):
        checked = sweep.load_space(path)
        assert sweep.smallest_model(checked) < checked["budget"], path.name


@pytest.mark.unit
@pytest.mark.parametrize("changes, says", [
    ({"params": {"w1": {"int": [8, 4]}, "w2": {"int": [8, 12]}, "w3": {"int": [8, 16]}}}, "inverted"),
    ({"params": {"w1": {"log": [0.1, 0.1]}, "w2": {"int": [8, 12]}, "w3": {"int": [8, 16]}}}, "empty"),
    ({"params": {"w1": {"choice": []}, "w2": {"int": [8, 12]}, "w3": {"int": [8, 16]}}}, "non-empty list"),
    ({"params": {"w1": {"int": [4, 8]}, "w2": {"int": [8, 12]}}}, "{w3}, which params do not define"),
    ({"params": {**space()["params"], "colour": {"choice": [1]}}}, "neither a placeholder"),
    ({"budget": 500}, "below the smallest model in the space"),
    ({"templates": ["conv{w1} maxpool maxpool maxpool maxpool maxpool conv{w2} conv{w3} gap conv10k1"]},
     "no model in this space is valid"),
    ({"objective": "speed"}, "objective 'speed' is unknown"),
    ({"trials": 0}, "trials must be"),
    ({"recipe": {"preset": "nope"}}, "recipe: preset 'nope' is unknown"),
    ({"params": {**space()["params"], "lr": {"log": [-1, 0.1]}}}, "above 0"),
    ({"params": {**space()["params"], "epochs": {"int": [0, 3]}}}, "epochs is 0"),
    ({"surprise": 1}, "unknown key"),
])
def test_a_space_that_cannot_be_searched_is_refused_in_one_line(changes, says):
    with pytest.raises(sweep.SweepError, match=says):
        sweep.check_space(space(**changes))


@pytest.mark.unit
def test_a_model_over_the_budget_is_rejected_without_training(tmp_path):
    checked = sweep.check_space(space(budget=2000))
    model, refusal = sweep.screen(checked, "conv8p1 bn relu conv12p1 bn relu maxpool conv16p1 bn relu gap conv10k1")
    assert model is None and refusal["state"] == "rejected" and refusal["score"] == sweep.PENALTY
    assert "over the budget of 2,000, not trained" in refusal["reason"]
    model, refusal = sweep.screen(checked, "conv4p1 bn relu conv8p1 bn relu maxpool conv8p1 bn relu gap conv10k1")
    assert refusal is None and model.params < 2000
    _, refusal = sweep.screen(checked, "conv4 maxpool maxpool maxpool maxpool maxpool conv8 gap conv10k1")
    assert refusal["state"] == "invalid"


@pytest.mark.unit
def test_the_pareto_front_keeps_what_nothing_beats():
    trials = [{"status": "finished", "params": p, "last_min": a, "run": f"t{p}"}
              for p, a in ((1000, 98.0), (2000, 97.5), (3000, 99.0), (3500, 99.0), (5000, 99.3))]
    trials.append({"status": "rejected", "params": 900, "last_min": None})
    assert [t["params"] for t in sweep.pareto(trials)] == [1000, 3000, 5000]


@pytest.mark.unit
def test_an_unreachable_cluster_is_one_line_and_quick(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path / "runs"))
    assert not sweep.reachable("127.0.0.1:9", timeout=1)
    assert main(["sweep", "--space", str(TINY), "--address", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Ray cluster at 127.0.0.1:9" in err[0]
    assert not (tmp_path / "runs" / sweep.SWEEPS).exists()  # nothing written


@pytest.mark.process  # Ray, three trainings
def test_the_tiny_sweep_writes_three_runs_and_a_pareto_table(capsys, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("MNIST_LAB_RUNS", str(runs_dir))
    assert main(["sweep", "--space", str(TINY), "--name", "tiny"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("trial ") >= 3 and "Pareto front" in out
    folder = runs_dir / sweep.SWEEPS / "tiny"
    trials = sweep.read_trials(folder)
    assert len(trials) == 3 and sweep.status(folder)["status"] == "finished"
    runs = [Run(runs_dir / t["run"]) for t in trials if t["status"] == "finished"]
    assert runs and all(r.config["sweep"] == "tiny" and (r.path / "best.pt").exists() and r.card_text()
                        for r in runs)
    assert all(r.status["status"] == "finished" for r in runs)
    assert main(["sweep", "--status", "tiny"]) == 0
    again = capsys.readouterr().out
    assert again.startswith("sweep tiny: finished, 3 of 3 trials ended") and "Pareto front" in again


@pytest.mark.process  # Ray, two trials that crash
def test_a_crashed_trial_is_marked_failed_and_the_sweep_finishes(capsys, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("MNIST_LAB_RUNS", str(runs_dir))
    crashing = space(trials=2, recipe={"preset": "quick", "epochs": 1, "limit_train": 100, "limit_test": 100},
                     params={**space()["params"], "batch_size": {"choice": [128]}})  # more than 100 images
    path = tmp_path / "crash.json"
    path.write_text(json.dumps(crashing))
    assert main(["sweep", "--space", str(path), "--name", "crash"]) == 0, capsys.readouterr().err
    trials = sweep.read_trials(runs_dir / sweep.SWEEPS / "crash")
    assert [t["status"] for t in trials] == ["failed", "failed"]
    assert all("larger than the training set" in t["reason"] for t in trials)
    assert sweep.status(runs_dir / sweep.SWEEPS / "crash")["status"] == "finished"


def wait_for(what, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not (found := what()):
        assert time.monotonic() < deadline, "waited too long"
        time.sleep(0.3)
    return found


@pytest.mark.process  # Ray three times, four short trainings
def test_a_sweep_is_stopped_then_killed_and_resumed_with_every_finished_trial_kept(capsys, tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("MNIST_LAB_RUNS", str(runs_dir))
    checked = sweep.check_space(space(trials=3, concurrent=1))
    folder = sweep.start(runs_dir, checked, "halted")  # in a process of its own, as the app starts it
    assert sweep.active(runs_dir) == folder
    with pytest.raises(jobs.Busy):  # one sweep or training at a time
        sweep.start(runs_dir, checked, "second")
    assert not (runs_dir / sweep.SWEEPS / "second").exists()

    # Stop while a trial trains: it ends after its batch, reads stopped, and is not counted as a result
    training = wait_for(lambda: next((r for r in sweep.sweep_runs(folder) if r.status.get("status") == "running"
                                      and any(m["kind"] == "batch" for m in r.metrics())), None))
    sweep.request_stop(folder)
    wait_for(lambda: sweep.status(folder)["status"] == "stopped")
    assert Run(training.path).status["status"] == "stopped"
    rows = {t["run"]: t for t in sweep.read_trials(folder)}
    assert rows[training.name]["status"] == "interrupted" and "stopped" in rows[training.name]["reason"]
    assert sweep.active(runs_dir) is None

    # Resume, then kill the sweep's process once a trial has finished: it reads interrupted
    sweep.resume(folder)
    wait_for(lambda: any(t["status"] == "finished" for t in sweep.read_trials(folder)))
    os.killpg(sweep.status(folder)["pid"], signal.SIGKILL)
    wait_for(lambda: sweep.status(folder)["status"] == "interrupted", 30)
    kept = [t["run"] for t in sweep.read_trials(folder) if t["status"] == "finished"]

    # Resume from the command line: it runs only what is left, and every finished trial stays
    assert main(["sweep", "--resume", "halted"]) == 0, capsys.readouterr().err
    trials = sweep.read_trials(folder)
    assert sum(t["status"] in sweep.DONE for t in trials) == 3 and sweep.status(folder)["status"] == "finished"
    assert set(kept) <= {t["run"] for t in trials if t["status"] == "finished"}
    assert all(Run(runs_dir / n).status["status"] == "finished" for n in kept)
    assert not any(r.status.get("status") == "running" for r in sweep.sweep_runs(folder))
    with pytest.raises(sweep.SweepError, match="has finished"):
        sweep.resume(folder)


@pytest.mark.process  # Ray, two short trainings
def test_a_trial_whose_process_is_killed_is_marked_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """What the system's OOM killer does to a trial: SIGKILL, no message."""
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("MNIST_LAB_RUNS", str(runs_dir))
    folder = sweep.start(runs_dir, sweep.check_space(space(trials=2, concurrent=1)), "oom")
    victim = wait_for(lambda: next((r for r in sweep.sweep_runs(folder) if r.status.get("status") == "running"
                                    and any(m["kind"] == "batch" for m in r.metrics())), None))
    os.kill(victim.status["pid"], signal.SIGKILL)
    wait_for(lambda: sweep.status(folder)["status"] == "finished", 180)
    rows = {t["run"]: t for t in sweep.read_trials(folder)}
    assert rows[victim.name]["status"] == "failed" and "its process died" in rows[victim.name]["reason"]
    assert Run(victim.path).status["status"] == "failed"
    assert [t["status"] for t in rows.values() if t["run"] != victim.name] == ["finished"]


@pytest.mark.unit
def test_a_sweep_whose_process_is_gone_reads_interrupted_and_its_running_trials_are_settled(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "pid_alive", lambda pid: pid == 4242)  # 4242: a live sweep; any other: gone
    runs_dir = tmp_path / "runs"
    folder = sweep.create(runs_dir, sweep.check_space(space()), "gone")
    with pytest.raises(sweep.SweepError, match="exists already"):
        sweep.create(runs_dir, sweep.check_space(space()), "gone")
    sweep._set_status(folder, status="running", pid=2**22 - 1)  # no such process
    assert sweep.status(folder)["status"] == "interrupted"
    sweep._set_status(folder, status="running", pid=4242)
    sweep.request_stop(folder)
    assert sweep.status(folder)["status"] == "stopping"
    with pytest.raises(sweep.SweepError, match="nothing to resume"):
        sweep.resume(folder)
    done = made_run(runs_dir, "gone-a", [97.0], sweep="gone")
    cut = made_run(runs_dir, "gone-b", [95.0, 96.0], sweep="gone")
    cut.set_status("running", pid=2**22 - 1)  # its worker died with the sweep
    (folder / "trials.jsonl").write_text(json.dumps({"run": done.name, "status": "finished", "params": 9596,
                                                     "last_min": 97.0}) + "\n")
    rows = sweep.trial_table(folder)
    assert [(r["run"], r["status"]) for r in rows] == [("gone-a", "finished"), ("gone-b", "interrupted")]
    sweep.settle_runs(folder, "interrupted", "the sweep's process ended")
    assert Run(cut.path).status["status"] == "interrupted" and (cut.path / "card.md").is_file()
    recorded = sweep.read_trials(folder)
    assert recorded[-1]["run"] == "gone-b" and recorded[-1]["status"] == "interrupted"
    assert sum(t["status"] in sweep.DONE for t in recorded) == 1  # an interrupted trial is run again on resume

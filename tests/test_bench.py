import re
from dataclasses import replace

import pytest

from mnist_core.__main__ import main
from mnist_core.bench import race_line


@pytest.mark.process  # loads MNIST
def test_bench_quick_runs_and_prints_its_figures(capsys):
    assert main(["bench", "--quick", "--batches", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(out)
    ref = re.search(r"\[cpu\] reference pipeline: +([\d,]+) images/s", text)
    core = re.search(r"\[cpu\] core pipeline, bf16: ([\d,]+) images/s", text)
    assert ref and core
    assert float(ref.group(1).replace(",", "")) > 0 and float(core.group(1).replace(",", "")) > 0
    ceiling = re.search(r"\[cpu\] convolutions alone, (fp32|bf16): ([\d.]+) ms per batch, so at most ([\d,]+) images/s", text)
    assert ceiling, text
    assert float(ceiling.group(3).replace(",", "")) == pytest.approx(64_000 / float(ceiling.group(2)), rel=0.02)
    assert re.search(r"model build \+ param count: [\d.]+ ms", text)
    assert re.search(r"canvas prediction \(preprocess \+ forward\): [\d.]+ ms", text)
    assert re.search(r"40-layer list: parse \+ param count \+ layer table: [\d.]+ ms", text)
    assert re.search(r"40-layer list: canvas prediction: [\d.]+ ms", text)
    assert re.fullmatch(r"speedup: \d+\.\dx", out[-1])


@pytest.fixture
def tiny_quick(monkeypatch):
    """The quick preset on 1,280 training and 500 test images: the same code path in seconds."""
    from mnist_core import config

    quick = config.PRESETS["quick"]
    monkeypatch.setitem(config.PRESETS, "quick",
                        replace(quick, train=replace(quick.train, limit_train=1280, limit_test=500)))


@pytest.mark.process  # loads MNIST
def test_bench_accuracy_trains_each_seed_and_reports_the_goal(capsys, tiny_quick):
    assert main(["bench", "--accuracy", "quick", "--seeds", "1,2", "--goal", "10"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    seeds = [line for line in out if line.startswith("seed ")]
    assert len(seeds) == 2
    for line in seeds:
        m = re.match(r"seed \d: last 3 epochs ([\d.]+) ([\d.]+) \(min ([\d.]+)\); first at goal: epoch (\d), (\d+) s", line)
        assert m, line  # the quick preset runs 2 epochs, so "last 3" holds both
        assert float(m.group(3)) == min(float(m.group(1)), float(m.group(2)))
    assert re.fullmatch(r"last 3 epochs over 2 seeds: mean [\d.]+, min [\d.]+; goal held in each of them on [0-2]/2 seeds", out[-2])
    assert re.fullmatch(r"time to goal, median of 2 seeds: \d+ s", out[-1])


@pytest.mark.process  # loads MNIST
def test_bench_accuracy_says_never_when_the_goal_is_not_reached(capsys, tiny_quick):
    assert main(["bench", "--accuracy", "quick", "--seeds", "3", "--goal", "100"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"first at goal: never \(best [\d.]+ at epoch \d\)", out)
    assert "goal held in each of them on 0/1 seeds" in out
    assert out.strip().endswith("time to goal, median of 1 seeds: not reached")


@pytest.mark.parametrize("argv, says", [
    (["--accuracy", "nope"], "preset 'nope' is unknown"),
    (["--accuracy", "quick", "--seeds", "1,x"], "seeds must be whole numbers"),
    (["--accuracy", "quick", "--seeds", "1,1"], "distinct"),
    (["--accuracy", "quick", "--goal", "120"], "--goal is 120"),
    (["--accuracy", "quick", "--batches", "3"], "does not go with --accuracy"),
    (["--race", "lean", "--accuracy", "quick"], "--race goes alone"),
    (["--race", "nope"], "preset 'nope' is unknown"),
])
def test_bench_accuracy_refuses_bad_arguments(capsys, argv, says):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1


@pytest.mark.process  # loads MNIST, trains the notebook and a preset on a subset
def test_bench_race_quick_times_both_to_the_reference_accuracy(capsys):
    assert main(["bench", "--race", "--quick"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "these figures are not the target's" in out[0]
    assert len([line for line in out if line.startswith("  notebook epoch ")]) == 2
    assert [line for line in out if line.startswith("  core epoch ")]
    assert re.match(r"core: preset \w+, [\d,]+ parameters", next(line for line in out if line.startswith("core: ")))
    last = re.fullmatch(r"time to 99\.32%: notebook ([\d.]+) s( \(never reached it: its whole 2-epoch run\))?, "
                        r"core ([\d.]+) s( \(never reached it: its whole \d+-epoch run\))?, speedup: ([\d.]+)x", out[-1])
    assert last, out[-1]
    assert float(last.group(5)) == pytest.approx(float(last.group(1)) / float(last.group(3)), rel=0.05)


def raced(seconds: float, epoch: int | None, epochs: int = 15) -> dict:
    """A racer's result as notebook_race and core_race give it."""
    return {"reached": {"epoch": epoch, "seconds": seconds} if epoch else None, "seconds": seconds, "epochs": epochs}


def test_the_race_line_gives_medians_over_seeds_and_says_who_never_got_there():
    notebook = [raced(150.0, 9), raced(120.0, 8), raced(200.0, None)]
    core = [raced(12.0, 3, 8), raced(10.0, 2, 8), raced(30.0, 3, 8)]
    assert race_line(notebook, core) == (
        "notebook 150.0 s (never reached it on 1 of 3 seeds: their whole runs stand in), "
        "core 12.0 s, speedup: 12.5x (medians of 3 seeds)")
    assert race_line(notebook[:1], core[:1]) == "notebook 150.0 s, core 12.0 s, speedup: 12.5x"
    assert race_line(notebook[2:], core[2:]) == (
        "notebook 200.0 s (never reached it: its whole 15-epoch run), core 30.0 s, speedup: 6.7x")


@pytest.mark.process  # loads MNIST
def test_bench_accuracy_quick_says_its_figures_are_not_the_targets(capsys):
    assert main(["bench", "--accuracy", "lean", "--quick", "--seeds", "1", "--goal", "50"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("--quick: 6,000 training and 2,000 test images, at most 2 epochs")
    assert re.fullmatch(r"time to goal, median of 1 seeds: (\d+ s|not reached)", out[-1])

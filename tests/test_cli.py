import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_core.__main__ import main
from mnist_core.config import ModelConfig
from mnist_core.checkpoint import BUNDLED_CHECKPOINT

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0]


def test_summary_prints_reference_total(capsys):
    code, out, _ = run_cli(capsys, "summary")
    assert code == 0 and "Total params: 9,596" in out
    code, out, _ = run_cli(capsys, "summary", "--no-bn")
    assert "Total params: 9,424" in out
    code, out, _ = run_cli(capsys, "summary", "--widths", "8,8,8,8,8,8", "--dropout", "0.1")
    assert code == 0 and "Dropout2d" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["summary", "--widths", "12,16,x,12,16,30"], "widths must be 6 whole numbers"),
        (["summary", "--widths", "12,16,10"], "expected 6 values"),
        (["summary", "--widths", "12,16,0,12,16,30"], "transition is 0"),
        (["summary", "--widths", "12,16,10,12,16,9999"], "block5 is 9999"),
        (["summary", "--dropout", "1.5"], "dropout is 1.5"),
        (["summary", "--dropout", "abc"], "invalid float value"),
        (["train", "--epochs", "0"], "epochs is 0"),
        (["train", "--epochs", "-4"], "epochs is -4"),
        (["train", "--lr", "0"], "lr is 0"),
        (["train", "--lr", "-0.1"], "lr is -0.1"),
        (["train", "--batch-size", "0"], "batch-size is 0"),
        (["train", "--batch-size", "600", "--limit-train", "500"], "larger than the training set"),
        (["train", "--device", "tpu"], "device 'tpu' is unknown"),
        (["train", "--scheduler", "cyclic"], "invalid choice"),
        (["train", "--preset", "huge"], "preset 'huge' is unknown"),
        (["train", "--limit-train", "ten"], "expected a whole number"),
        (["train", "--name", "../../etc"], "run name"),
        (["bogus"], "invalid choice"),
        ([], "required"),
        (["predict", "--checkpoint", "/nonexistent.pt", "x.png"], "cannot read checkpoint"),
        (["bench", "--batches", "0"], "--batches is 0"),
        (["train", "--scheduler", "multistep", "--milestones", "5,20"], "milestone 20 is not before the last epoch"),
        (["train", "--scheduler", "multistep"], "the multistep schedule needs milestones"),
        (["train", "--milestones", "5,x"], "milestones must be whole numbers"),
        (["train", "--nesterov", "--momentum", "0"], "nesterov needs the SGD optimizer with momentum above 0"),
        (["train", "--optimizer", "adam", "--nesterov"], "nesterov needs the SGD optimizer"),
        (["train", "--optimizer", "lion"], "invalid choice"),
        (["train", "--clip-grad", "-1"], "clip-grad is -1"),
        (["train", "--warmup-epochs", "2"], "warmup-epochs goes with the cosine schedule"),
        (["train", "--erase", "2"], "erase is 2"),
        (["train", "--rotate", "-5"], "rotate is -5"),
        (["lr-find", "--steps", "5"], "between 10 and 5000 steps"),
        (["lr-find", "--start", "1", "--end", "0.1"], "0 < start < end"),
        (["train", "--seeds", "1,1"], "seeds must be distinct"),
        (["train", "--seeds", "1,x"], "seeds must be whole numbers"),
        (["train", "--seeds", "1,2", "--seed", "3"], "does not go with --run-dir, --name or --seed"),
        (["train", "--seeds", "1,2", "--group", "../up"], "run name"),
        (["train", "--group", "g"], "--group names a group of --seeds"),
        (["train", "--val-split", "-1"], "val-split is -1"),
        (["train", "--val-split", "640", "--limit-train", "640"], "val-split 640 leaves no training images"),
        (["train", "--val-split", "600", "--limit-train", "640", "--batch-size", "64"], "larger than the training set"),
    ],
)
def test_every_error_path_is_one_line_exit_2(capsys, args, needle):
    code, _, err = run_cli(capsys, *args)
    assert_one_error_line(code, err, needle)


def test_cuda_without_gpu_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run_cli(capsys, "train", "--device", "cuda", "--epochs", "1")
    assert_one_error_line(code, err, "no CUDA GPU")


def test_predict_errors(capsys, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (60, 60), 255).save(blank)
    notimg = tmp_path / "notes.png"
    notimg.write_text("not an image")
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"")
    for args, needle in [
        (["predict", str(blank)], "empty"),
        (["predict", str(notimg)], "not a readable image"),
        (["predict", str(tmp_path / "missing.png")], "no such file"),
        (["predict", "--checkpoint", str(bad_ckpt), str(blank)], "empty"),
    ]:
        code, out, err = run_cli(capsys, *args)
        assert_one_error_line(code, err, needle)
        assert out == ""


def digit_image(mnist, index, path, size=120, dark_on_light=True, margin=40):
    """A test-set digit as a larger image file, on a bigger field, like a photo of a digit."""
    d = mnist.test_x[index].numpy()
    img = Image.fromarray(d).resize((size, size), Image.BILINEAR)
    field = Image.new("L", (size + 2 * margin, size + margin), 0)
    field.paste(img, (margin + 15, margin // 3))  # off-centre
    a = np.asarray(field)
    if dark_on_light:
        a = 255 - a
    Image.fromarray(a).save(path)
    return int(mnist.test_y[index])


def test_predict_reads_digit_files_with_bundled_model(capsys, tmp_path, mnist):
    paths, labels = [], []
    for i, dark in zip(range(8), [True, False] * 4):
        p = tmp_path / f"digit{i}.png"
        labels.append(digit_image(mnist, i, p, dark_on_light=dark))
        paths.append(str(p))
    code, out, err = run_cli(capsys, "predict", "--checkpoint", str(BUNDLED_CHECKPOINT), *paths)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 8
    correct = 0
    for line, path, label in zip(lines, paths, labels):
        assert line.startswith(f"{path}: ")
        head = line.split(": ", 1)[1]
        assert "%" in head and "; then " in head
        correct += int(head.split()[0]) == label
    assert correct >= 7


@pytest.mark.process
def test_train_cli_writes_run_and_prints_reference_lines(capsys, tmp_path):
    run_dir = tmp_path / "cli-run"
    code, out, err = run_cli(
        capsys, "train", "--epochs", "1", "--limit-train", "640", "--limit-test", "500", "--run-dir", str(run_dir),
        "--quiet",
    )
    assert code == 0, err
    assert "Test set: Average loss: " in out and "/500 (" in out
    assert out.strip().splitlines()[-1] == str(run_dir)
    assert (run_dir / "card.md").exists() and (run_dir / "best.pt").exists()
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--run-dir", str(run_dir))
    assert_one_error_line(code, err, "already holds a run")


@pytest.mark.process
def test_real_process_exit_code_and_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "mnist_core", "summary", "--widths", "1,2,3,4,5,-6"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == "error: width of block5 is -6: a layer needs at least 1 channel"
    assert "Traceback" not in p.stderr


SHAPES = "conv8p1 bn relu conv8s2 bn relu conv16dw bn relu conv12k1 bn relu gap conv10k1"  # padding, stride, depthwise


def test_summary_takes_a_layer_list_as_text_or_file(capsys, tmp_path):
    from mnist_core import spec

    cfg = ModelConfig.parse(SHAPES)
    code, out, err = run_cli(capsys, "summary", "--arch", SHAPES)
    assert code == 0, err
    assert f"Total params: {cfg.params:,}" in out and out.count("Conv2d") == 5
    design = tmp_path / "design.json"
    design.write_text(__import__("json").dumps(spec.to_json(cfg.layers)))
    code, out_file, _ = run_cli(capsys, "summary", "--arch", str(design))
    assert code == 0 and out_file == out
    # the template's options still edit a template given as a list
    code, out, _ = run_cli(capsys, "summary", "--arch", ModelConfig().text, "--no-bn")
    assert code == 0 and "Total params: 9,424" in out


@pytest.mark.parametrize("arch, needle", [
    ("conv8 bn relu gap conv10k1 softmax", "token 6 'softmax': not a layer"),
    ('{"layers": [{"type": "conv", "out": 8, "groups": 2}]}', "layer 1 (conv): unknown key 'groups'"),
    ("conv0 gap conv10k1", "layer 1 (conv): out is 0: it must be between 1 and 256"),
    ("conv300 gap conv10k1", "layer 1 (conv): out is 300"),
    ("conv8k0 gap conv10k1", "layer 1 (conv): kernel is 0"),
    ("conv8k29 gap conv10k1", "layer 1 (conv): kernel is 29"),
    ("conv8s9 gap conv10k1", "layer 1 (conv): stride is 9"),
    ("conv8d9 gap conv10k1", "layer 1 (conv): dilation is 9"),
    ("conv8p5 gap conv10k1", "layer 1 (conv): padding is 5"),
    ("conv8 maxpool maxpool maxpool maxpool maxpool gap conv10k1", "layer 6 (maxpool): the map is 1x1"),
    ("conv8 conv12dw gap conv10k1", "layer 2 (conv): a depthwise conv's out must be a multiple of its 8"),
    (" ".join(["relu"] * 41), "41 layers: at most 40"),
    ("conv8 gap conv12k1", "it must end with 10"),
    ("conv8 drop0.95 gap conv10k1", "layer 2 (dropout): p is 0.95"),
    ('{"layers": [', "malformed JSON"),
    ("", "the layer list is empty"),
])
def test_every_bad_design_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, arch, needle):
    code, _, err = run_cli(capsys, "summary", "--arch", arch)
    assert_one_error_line(code, err, needle)
    design = tmp_path / "bad.json"
    design.write_text(arch)
    code, _, err = run_cli(capsys, "train", "--arch", str(design), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert_one_error_line(code, err, f"{design}: ", needle)
    assert not (tmp_path / "run").exists()


def test_arch_files_that_are_not_designs_are_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "summary", "--arch", str(tmp_path / "missing.json"))
    assert_one_error_line(code, err, "missing.json: No such file or directory")
    code, _, err = run_cli(capsys, "summary", "--arch", str(tmp_path))
    assert_one_error_line(code, err, "is a directory")
    big = tmp_path / "big.json"
    big.write_text(" " * (100 * 1024))
    code, _, err = run_cli(capsys, "summary", "--arch", str(big))
    assert_one_error_line(code, err, "more than")
    binary = tmp_path / "model.txt"
    binary.write_bytes(b"\xff\xfe\x00conv")
    code, _, err = run_cli(capsys, "summary", "--arch", str(binary))
    assert_one_error_line(code, err, "not a text file")
    code, _, err = run_cli(capsys, "bench", "--arch", SHAPES)
    assert_one_error_line(code, err, "--arch goes with --accuracy")


@pytest.mark.process  # loads MNIST
def test_train_takes_a_layer_list_and_its_checkpoint_rebuilds_it(capsys, tmp_path):
    from mnist_core.checkpoint import load_checkpoint
    from mnist_core.runs import Run

    run_dir = tmp_path / "shapes"
    code, out, err = run_cli(capsys, "train", "--arch", SHAPES, "--epochs", "1", "--limit-train", "640",
                             "--limit-test", "500", "--run-dir", str(run_dir), "--quiet")
    assert code == 0, err
    run = Run(run_dir)
    assert run.model_config() == ModelConfig.parse(SHAPES) and run.config["params"] == ModelConfig.parse(SHAPES).params
    model, meta = load_checkpoint(run_dir / "best.pt")
    assert meta["model_config"].text == SHAPES
    assert SHAPES in run.card_text()


@pytest.mark.process  # loads MNIST
def test_train_takes_every_recipe_setting(capsys, tmp_path):
    import json

    run_dir = tmp_path / "recipe"
    code, _, err = run_cli(capsys, "train", "--epochs", "2", "--limit-train", "640", "--limit-test", "200",
                           "--optimizer", "sgd", "--nesterov", "--scheduler", "multistep", "--milestones", "1",
                           "--gamma", "0.5", "--label-smoothing", "0.1", "--clip-grad", "1", "--rotate", "10",
                           "--translate", "2", "--scale", "0.1", "--shear", "5", "--erase", "0.2",
                           "--run-dir", str(run_dir), "--quiet")
    assert code == 0, err
    train = json.loads((run_dir / "config.json").read_text())["train"]
    assert {k: train[k] for k in ("nesterov", "scheduler", "milestones", "gamma", "label_smoothing", "clip_grad",
                                  "rotate", "translate", "scale", "shear", "erase")} == {
        "nesterov": True, "scheduler": "multistep", "milestones": [1], "gamma": 0.5, "label_smoothing": 0.1,
        "clip_grad": 1.0, "rotate": 10.0, "translate": 2.0, "scale": 0.1, "shear": 5.0, "erase": 0.2}
    lrs = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
           if '"kind": "epoch"' in line]
    assert lrs == [0.01, 0.005]  # the rate each epoch used: halved after epoch 1
    card = (run_dir / "card.md").read_text()
    assert "x0.5 after epochs 1" in card and "erasing 0.2" in card and "Nesterov" in card


@pytest.mark.process  # loads MNIST
def test_lr_find_prints_a_suggestion_and_writes_no_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path / "runs"))
    code, out, err = run_cli(capsys, "lr-find", "--arch", "conv8 bn relu maxpool conv16 bn relu gap conv10k1",
                             "--limit-train", "4096", "--steps", "120", "--start", "1e-4")
    assert code == 0, err
    assert "suggested peak rate: " in out and "falls fastest" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.process  # loads MNIST
def test_seeds_train_a_group_and_print_its_verdict(capsys, tmp_path, monkeypatch):
    """A group of 3 seeds on a tiny subset: 3 runs that differ only in the seed, and the verdict
    line over them; a goal the tiny runs can hold makes it count them."""
    import json

    from mnist_core import goal, lab

    monkeypatch.setenv("MNIST_LAB_RUNS", str(tmp_path / "runs"))
    goal.save(tmp_path / "runs", goal.Goal(accuracy=10.0, last=1, max_epochs=15, max_params=10_000))
    code, out, err = run_cli(capsys, "train", "--preset", "quick", "--seeds", "1,2,3", "--group", "tiny", "--epochs",
                             "1", "--limit-train", "640", "--limit-test", "200", "--quiet")
    assert code == 0, err
    configs = [json.loads((tmp_path / "runs" / f"tiny-seed{s}" / "config.json").read_text()) for s in (1, 2, 3)]
    assert [c["train"]["seed"] for c in configs] == [1, 2, 3] and {c["group"] for c in configs} == {"tiny"}
    assert all({**c["train"], "seed": 0} == {**configs[0]["train"], "seed": 0} for c in configs)
    assert all(c["model"] == configs[0]["model"] for c in configs)
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"holds 10% in the last 1 epochs on [0-3] of 3 seeds \(mean \d+\.\d\d, min \d+\.\d\d\)", last)
    held = int(last.split(" on ")[1].split()[0])
    assert held == sum(lab.verdict(r).meets for r in lab.groups()["tiny"])
    assert f"on {held} of 3 seeds" in lab.group_card("tiny", lab.groups()["tiny"])


@pytest.mark.process  # loads MNIST
def test_a_validation_split_chooses_best_pt_on_validation(capsys, tmp_path, monkeypatch):
    """best.pt is the epoch of the best validation accuracy, wherever the test accuracy peaks; every
    epoch still reports its test accuracy."""
    import json

    from mnist_core.checkpoint import load_checkpoint

    run_dir = tmp_path / "val"
    code, _, err = run_cli(capsys, "train", "--preset", "quick", "--epochs", "4", "--limit-train", "1500",
                           "--limit-test", "300", "--val-split", "500", "--lr", "0.3", "--run-dir", str(run_dir),
                           "--quiet")
    assert code == 0, err
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    assert all(e["val_total"] == 500 and "test_acc" in e for e in epochs)
    by_val = max(epochs, key=lambda e: e["val_acc"])  # the first of equals, as training keeps it
    _, meta = load_checkpoint(run_dir / "best.pt")
    assert meta["epoch"] == by_val["epoch"]
    assert "chosen on validation (500 held-out training images" in (run_dir / "card.md").read_text()

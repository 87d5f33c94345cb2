"""A run as code (a script, a notebook), as ONNX, and the `mnist-lab` command from anywhere."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_core import codegen, export
from mnist_core.__main__ import main
from mnist_core.checkpoint import load_checkpoint, save_checkpoint
from mnist_core.config import ModelConfig, TrainConfig
from mnist_core.data import DATA_DIR, normalize, verify
from mnist_core.model import build_model
from mnist_core.runs import Run

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [
    ModelConfig(),
    ModelConfig.parse("conv8p1 bn relu conv8p1 bn add3 relu maxpool conv16s2p1 bn relu drop0.05 conv16dw bn relu "
                      "gap linear10"),
    ModelConfig.parse("conv8 relu conv16+b relu maxpool avgpool conv10 bn relu linear32+b bn relu drop0.1 linear10"),
]


def exported_module(run: Run):
    """The script's namespace (its code run, not its main) and a fresh Net from it."""
    space = {"__name__": "exported"}
    exec(compile(codegen.script_text(run), f"{run.name}.py", "exec"), space)
    return space, space["Net"]()


@pytest.mark.unit
@pytest.mark.parametrize("cfg", SHAPES, ids=["reference", "residual", "linear-head"])
def test_the_exported_module_is_the_apps_model_to_1e_5(tmp_path, cfg):
    """Residual adds, depthwise and strided convs, a linear head, BatchNorm after it: the exported
    nn.Module takes the app's weights by name and gives the same logits."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():  # BatchNorm statistics that are not the defaults
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    run = Run.create(tmp_path / "runs", cfg, TrainConfig(epochs=1), name="shape")
    save_checkpoint(run.path / "best.pt", model)
    space, net = exported_module(run)
    space["load_run_checkpoint"](net, str(run.path / "best.pt"))
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
    assert sum(p.numel() for p in net.parameters()) == cfg.params
    assert f"{cfg.params:,} parameters" in codegen.script_text(run)


@pytest.mark.unit
def test_the_script_imports_only_torch_torchvision_and_the_standard_library(tmp_path):
    run = Run.create(tmp_path / "runs", SHAPES[1], TrainConfig(epochs=2, rotate=10.0, erase=0.2, scheduler="onecycle",
                                                              lr=0.05, val_split=1000), name="try")
    text = codegen.script_text(run)
    imported = {line.split()[1].split(".")[0] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert imported <= {"argparse", "math", "torch", "torchvision"}, imported
    assert "mnist_core" not in text
    assert "OneCycleLR(optimizer, max_lr=0.05" in text and "'rotate': 10.0" in text and "VAL_SPLIT = 1000" in text
    assert "nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, bias=False)," in text
    assert "#  1:   8x28x28  RF 3" in text  # each layer's output shape and receptive field
    nb = json.loads(codegen.notebook_json(run))
    assert "".join(nb["cells"][1]["source"]).startswith("# Settings")


@pytest.mark.process  # trains
def test_the_script_reproduces_the_run_and_prints_the_reference_lines(runs_dir, mnist, tmp_path):
    """A run (a residual list, OneCycle, rotation and erasing) trained by the app, then its exported
    script run on the same data on this device: the same test results, epoch for epoch."""
    from mnist_core.runner import train_run

    recipe = TrainConfig(epochs=2, limit_train=2000, limit_test=500, lr=0.05, scheduler="onecycle", rotate=8.0,
                         erase=0.2, seed=3)
    run = Run.create(runs_dir, SHAPES[1], recipe, name="repro")
    train_run(run, mnist)
    script = tmp_path / "repro.py"
    script.write_text(codegen.script_text(run))
    out = subprocess.run([sys.executable, str(script), "--data", str(verify(DATA_DIR))], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "EPOCH: 1" in out.stdout and "Batch_id=31 Accuracy=" in out.stdout
    theirs = [line for line in out.stdout.splitlines() if line.startswith("Test set: ")]
    ours = [f"Test set: Average loss: {e['test_loss']:.4f}, Accuracy: {e['test_correct']}/500 ({e['test_acc']:.2f}%)"
            for e in run.epochs()]
    assert theirs == ours
    assert f"Total params: {SHAPES[1].params:,}" in out.stdout


@pytest.mark.process  # loads MNIST
def test_script_onnx_and_app_predict_alike_on_1000_test_images(finished_run, mnist):
    ckpt = finished_run.path / "best.pt"
    model, _ = load_checkpoint(ckpt)
    x = normalize(mnist.test_x[:1000])
    space, net = exported_module(finished_run)
    space["load_run_checkpoint"](net, str(ckpt))
    with torch.no_grad():
        assert torch.allclose(net(x), model.eval()(x), atol=1e-5)
    onnx = export.export_bytes(finished_run, "onnx")
    assert export.onnx_difference(onnx, model, x) < 1e-4


@pytest.mark.process  # runs the notebook's code
def test_the_notebook_carries_the_runs_log_and_curves_and_its_cells_run(finished_run, tmp_path):
    nb = json.loads(codegen.notebook_json(finished_run))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    logs = "".join(o["text"] if isinstance(o["text"], str) else "".join(o["text"])
                   for o in outputs if o["output_type"] == "stream")
    epoch = finished_run.epochs()[0]
    assert f"Accuracy: {epoch['test_correct']}/{epoch['test_total']} ({epoch['test_acc']:.2f}%)" in logs
    assert any("image/png" in o.get("data", {}) for o in outputs)
    # every code cell in order, the settings cell set to a short run on the carried data
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    cells[0] = f"DATA = {str(verify(DATA_DIR))!r}\nEPOCHS = 1\nLIMIT_TRAIN = 1000\nLIMIT_TEST = 500\n"
    program = tmp_path / "notebook.py"
    program.write_text("\n\n".join(cells))
    out = subprocess.run([sys.executable, str(program)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr
    assert "EPOCH: 1" in out.stdout and "Accuracy: " in out.stdout and "/500 (" in out.stdout


@pytest.mark.process  # loads MNIST for the ONNX check
def test_export_writes_each_format_atomically_and_refuses_bad_input(finished_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for fmt, ending in (("script", ".py"), ("notebook", ".ipynb"), ("onnx", ".onnx"), ("archive", ".zip")):
        assert main(["export", finished_run.name, "--format", fmt]) == 0, capsys.readouterr().err
        assert (tmp_path / f"tiny{ending}").stat().st_size > 1000
    assert "ONNX Runtime agrees with torch on 1,000 test images" in capsys.readouterr().out
    assert main(["export", str(finished_run.path), "--format", "script", "--out", "by-dir.py"]) == 0

    def refused(args, says):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written

    refused(["export", "nope", "--format", "onnx"], "no run 'nope'")
    refused(["export", "tiny", "--format", "pdf"], "invalid choice")
    refused(["export", "tiny", "--format", "script", "--out", str(tmp_path / "missing" / "x.py")], "no such directory")
    broken = Path(shutil.copytree(finished_run.path, finished_run.path.parent / "broken"))
    for name in ("best.pt", "last.pt"):
        (broken / name).write_bytes(b"not a checkpoint")
    refused(["export", "broken", "--format", "onnx"], "has no checkpoint that loads")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    if not os.access(tmp_path / "ro", os.W_OK):  # root writes anywhere
        refused(["export", "tiny", "--format", "script", "--out", str(tmp_path / "ro" / "x.py")], "ro")


@pytest.mark.process  # a subprocess
def test_the_mnist_lab_command_works_from_outside_the_checkout(tmp_path):
    command = Path(sys.executable).parent / "mnist-lab"
    if not command.exists():
        pytest.fail("mnist-lab is not installed in this environment: ./run.sh installs it (pip install -e .)")
    out = subprocess.run([str(command), "summary"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert "Total params: 9,596" in out.stdout
    out = subprocess.run([str(command), "predict", str(ROOT / "tests" / "nonexistent.png")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error:")


# -- a design as a link -------------------------------------------------------------------------


@pytest.mark.unit
def test_a_recipe_round_trips_through_its_link_and_a_bad_one_is_named():
    from mnist_core.config import PRESETS, ConfigError, recipe_from_link, recipe_link

    for preset in PRESETS.values():
        assert recipe_from_link(recipe_link(preset.train)) == preset.train
    odd = TrainConfig(epochs=7, lr=0.0123456789, scheduler="multistep", milestones=(2, 5), nesterov=True,
                      limit_train=2000, val_split=500, optimizer="sgd", erase=0.25)
    assert recipe_from_link(recipe_link(odd)) == odd
    assert recipe_link(TrainConfig(init_checkpoint="/x/last.pt", start_epoch=3)) == ""  # a run's state stays out
    for text, says in (("lr=abc", "not a value"), ("colour=red", "not a setting"), ("init_checkpoint=/etc/passwd",
                       "not a setting"), ("epochs=0", "epochs is 0"), ("x" * 3000, "more than"),
                       ("nesterov=yes", "not a value"), ("scheduler=warp", "unknown")):
        with pytest.raises(ConfigError, match=says):
            recipe_from_link(text)


def link_app(**params):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.switch_page("views/architecture.py").run()
    assert not at.exception, at.exception
    return at


@pytest.mark.process  # the Train page loads MNIST for its augmentation preview
def test_a_design_survives_a_link_into_a_fresh_session(runs_dir):
    """Design on one session; its URL opened by a fresh one gives the same layer list and recipe."""
    at = link_app()
    text = "conv8p1 bn relu conv12s2p1 bn relu conv12dw bn relu conv16k1 gap conv10k1"
    at.text_input(key="arch_spec").set_value(text).run()
    at.switch_page("views/train.py").run()
    at.number_input(key="tr_lr").set_value(0.07).run()
    params = {k: at.query_params[k] for k in ("arch", "recipe")}
    assert params["arch"] == [text] or params["arch"] == text
    assert "lr=0.07" in str(params["recipe"])

    fresh = link_app(**{k: v[0] if isinstance(v, list) else v for k, v in params.items()})
    assert any(s.endswith(f"{ModelConfig.parse(text).params:,}") for s in (h.value for h in fresh.subheader))
    assert fresh.text_input(key="arch_spec").value == text
    fresh.switch_page("views/train.py").run()
    assert fresh.number_input(key="tr_lr").value == 0.07


@pytest.mark.process  # AppTest runs of the whole app
def test_a_broken_or_hostile_link_says_why_and_opens_the_default(runs_dir):
    for params, says in (({"arch": "conv999 gap"}, "layer list cannot be used"),
                         ({"arch": "{\"layers\": " * 50}, "layer list cannot be used"),
                         ({"arch": "a" * 5000}, "more than"),
                         ({"recipe": "lr=-1;epochs=abc"}, "recipe cannot be used"),
                         ({"recipe": "handwriting=/etc"}, "not a setting")):
        at = link_app(**params)
        assert any(says in w for w in (x.value for x in at.warning)), (params, [x.value for x in at.warning])
        assert any(h.value == "Total params: 9,596" for h in at.subheader)  # the reference, the default
        assert not at.exception

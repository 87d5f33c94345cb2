"""Digits on paper: white, grey, unevenly lit, noisy, JPEG, either polarity; paper with no digit;
images that are too big, not images, or not files. The Draw page reads photos the same way."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paper import CONDITIONS, blank_paper, on_paper
from test_run_files import big_png_header

from mnist_core.draw import EmptyDrawing, ImageError, load_image, predict

ROOT = Path(__file__).resolve().parent.parent




@pytest.mark.parametrize("condition", CONDITIONS)
def test_digits_on_any_paper_read_right(bundled, mnist, condition):
    """20 test digits per condition; before the paper's level was estimated, grey paper read as 8."""
    right = 0
    for i in range(20):
        digit, p, _ = predict(bundled, on_paper(mnist.test_x[i].numpy(), condition, seed=i))
        right += digit == int(mnist.test_y[i])
    assert right >= 19, f"{condition}: {right}/20"


@pytest.mark.parametrize("kind", ["plain", "noise", "gradient"])
def test_paper_with_no_digit_says_so(bundled, kind):
    with pytest.raises(EmptyDrawing, match="no digit stands out"):
        predict(bundled, blank_paper(kind))


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.timeout(120)
def test_predict_answers_every_readable_file_and_names_each_bad_one(tmp_path, mnist):
    paths = []
    for i in range(10):
        p = tmp_path / f"d{i}.png"
        p.write_bytes(png(on_paper(mnist.test_x[i].numpy(), CONDITIONS[i % len(CONDITIONS)], seed=i)))
        paths.append(p)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    blank = tmp_path / "blank.png"
    blank.write_bytes(png(blank_paper("plain")))
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(big_png_header(30000, 30000))
    large = tmp_path / "large.png"
    large.write_bytes(big_png_header(12000, 12000))
    files = [*paths[:5], broken, *paths[5:], blank, pipe, bomb, large]
    p = subprocess.run([sys.executable, "-m", "mnist_core", "predict", *map(str, files)], cwd=ROOT,
                       capture_output=True, text=True, timeout=100)
    assert p.returncode == 2
    answers = p.stdout.strip().splitlines()
    assert [a.split(": ", 1)[0] for a in answers] == [str(f) for f in paths]
    assert sum(int(a.split(": ", 1)[1].split()[0]) == int(mnist.test_y[i]) for i, a in enumerate(answers)) >= 9
    errors = p.stderr.strip().splitlines()
    assert len(errors) == 5, p.stderr  # one line each, no warnings, no traceback
    says = {broken: "not a readable image", blank: "no digit stands out", pipe: "is a named pipe, not a file",
            bomb: "refusing it", large: "12000x12000 pixels is more than"}
    for line, (f, text) in zip(errors, says.items()):
        assert line.startswith(f"error: {f}: ") and text in line, line


def test_load_image_refuses_huge_headers_without_decoding():
    with pytest.raises(ImageError, match="30000x30000|more pixels"):
        load_image(big_png_header(30000, 30000), "bomb.png")
    with pytest.raises(ImageError, match="12000x12000 pixels"):
        load_image(big_png_header(12000, 12000), "large.png")


def test_handwriting_folder_skips_pipes_bombs_and_links(tmp_path):
    from mnist_core import handwriting

    d = tmp_path / "3"
    d.mkdir()
    handwriting.save(np.ones((28, 28), np.float32) * 0.5, 3, tmp_path)
    os.mkfifo(d / "pipe.png")
    (d / "bomb.png").write_bytes(big_png_header(30000, 30000))
    (d / "link.png").symlink_to(next(d.glob("2*.png")))
    x, y = handwriting.load(tmp_path)
    assert x.shape == (1, 28, 28) and y.tolist() == [3]


def test_draw_page_reads_an_uploaded_photo(app, mnist):
    """A photo of a 4 on grey paper, uploaded beside the canvas: the same steps and answer; a photo
    of empty paper and a file that is no image each say what is wrong."""
    from apptest_kit import page, texts

    page(app, "views/draw.py")
    assert int(mnist.test_y[4]) == 4
    photo = png(on_paper(mnist.test_x[4].numpy(), "grey 200", seed=4))
    app.file_uploader(key="draw_photo").set_value(("four.png", photo, "image/png")).run()
    assert not app.exception, app.exception
    assert "Prediction: 4" in texts(app.subheader)
    assert any("Reading the photo **four.png**" in c for c in texts(app.caption))
    assert [t.label for t in app.tabs][:2] == ["Inside the model", "Preprocessing step by step"]
    app.file_uploader(key="draw_photo").set_value(("paper.png", png(blank_paper("noise")), "image/png")).run()
    assert not app.exception and any("No digit in paper.png" in i for i in texts(app.info)), texts(app.info)
    app.file_uploader(key="draw_photo").set_value(("notes.png", b"not an image", "image/png")).run()
    assert not app.exception and texts(app.error) == ["notes.png: not a readable image (UnidentifiedImageError)"]


def test_a_16_bit_scan_and_a_rotated_phone_photo_read_right(bundled, mnist):
    """A 16-bit scan keeps its levels (converting to 8 bits clipped them all to white), and a
    photo whose camera stored it sideways is read upright, as its EXIF orientation says."""
    paper = on_paper(mnist.test_x[0].numpy(), "grey 200", seed=0)  # a 7
    assert int(mnist.test_y[0]) == 7
    buf = io.BytesIO()
    Image.fromarray(paper.astype(np.uint16) * 257).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    assert predict(bundled, load_image(buf.getvalue(), "scan.png"))[0] == 7
    sideways = Image.fromarray(paper).transpose(Image.Transpose.ROTATE_90)  # as the sensor stored it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    buf = io.BytesIO()
    sideways.save(buf, format="JPEG", exif=exif, quality=95)
    assert predict(bundled, load_image(buf.getvalue(), "phone.jpg"))[0] == 7


@pytest.mark.parametrize("design", [
    "conv8p1 bn relu conv8s2 bn relu drop0.1 conv16dw bn relu conv12k1 bn relu gap conv10k1",
    "conv8 relu maxpool conv16 relu avgpool linear32 bn relu drop0.2 linear10-b",
    "linear10",
])
def test_draw_page_reads_with_a_model_of_any_shape(app, mnist, runs_dir, design):
    """A run of any valid list is on the Draw page: its reading, feature maps per group of layers,
    first-layer filters (or a word that there are none) and saliency, without an error."""
    from apptest_kit import page, texts

    from mnist_core.checkpoint import save_checkpoint
    from mnist_core.config import ModelConfig, TrainConfig
    from mnist_core.model import build_model
    from mnist_core.runs import Run

    cfg = ModelConfig.parse(design)
    run = Run.create(runs_dir, cfg, TrainConfig(epochs=1), name="shape")
    save_checkpoint(run.path / "best.pt", build_model(cfg), {"run": "shape", "epoch": 1, "test_acc": 10.0})
    page(app, "views/draw.py")
    [label] = [o for o in app.selectbox(key="draw_model").options if o.startswith("shape (")]
    assert design in label
    app.selectbox(key="draw_model").select(label).run()
    app.file_uploader(key="draw_photo").set_value(("four.png", png(on_paper(mnist.test_x[4].numpy(), "white")),
                                                    "image/png")).run()
    assert not app.exception and not app.error, (app.exception, texts(app.error))
    assert any(s.startswith("Prediction: ") for s in texts(app.subheader))
    from apptest_kit import chart_keys
    from mnist_core import insight

    groups = insight.feature_maps(build_model(cfg), torch.zeros(1, 1, 28, 28))
    captions = [img.caption for element in app.get("image") for img in element.proto.imgs]
    assert [c for c in captions if c.startswith("layer ")] == [label for label, _ in groups]
    if design == "linear10":
        assert not groups and "filters" not in chart_keys(app)
        assert "This model has no convolution: no filters to show." in texts(app.info)
    else:
        assert groups and "filters" in chart_keys(app)

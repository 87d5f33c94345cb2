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
from PIL import Image

from paper import CONDITIONS, blank_paper, on_paper
from test_run_files import big_png_header

from mnist_core.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
from mnist_core.draw import EmptyDrawing, ImageError, load_image, predict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundled():
    return load_checkpoint(BUNDLED_CHECKPOINT)[0]


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

"""End to end: the real app served by `streamlit run`, driven in headless Chromium.

One server and one browser for the module; the tests run in file order (Home, Architecture,
Draw, Train and Runs, then the insight views: a confusion-matrix cell's mistakes, the feature
maps of a drawing). Each of the first five takes a screenshot of its page at 1400x900: into
docs/screenshots/ when MNIST_LAB_SCREENSHOTS=1 (the README's images), else into a temporary folder.

Without Chromium or Playwright the tests skip with the reason; under CI=true they fail instead,
so CI cannot pass by skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from apptest_kit import free_port
from mnist_core import jobs
from mnist_core.config import ModelConfig
from mnist_core.model import count_params
from mnist_core.runs import Run

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MNIST_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
WAIT = 60_000  # ms; Streamlit renders asynchronously and this may be a busy 2-core machine
TRAIN_WAIT = 180_000


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e") / "runs"


@contextlib.contextmanager
def serve(runs_dir: Path, log_dir: Path, script: str = "app.py"):
    """`streamlit run <script>` from the project's root (so with its .streamlit/config.toml) on a free
    port, with its own runs folder, in its own process group; yields the base URL once it answers."""
    port = free_port()
    log_path = log_dir / "streamlit.log"
    env = {**os.environ, "MNIST_LAB_RUNS": str(runs_dir), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
           "--server.headless", "true", "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer on {url} in 90 s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(runs_dir, tmp_path_factory):
    """The app on a free port, with its own runs folder; yields the base URL."""
    try:
        with serve(runs_dir, tmp_path_factory.mktemp("server")) as url:
            yield url
    finally:
        stop_training(runs_dir)


def stop_training(runs_dir: Path) -> None:
    """A training the app started lives in its own session; stop it if a test left one running."""
    name = jobs.active(runs_dir)
    if not name or not (runs_dir / name).is_dir():
        return
    run = Run(runs_dir / name)
    jobs.stop(run)
    deadline = time.monotonic() + 60
    while jobs.active(runs_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = run.status.get("pid")
    if jobs.active(runs_dir) and pid:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -r requirements-dev.txt)")
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT)
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as e:
        pw.stop()
        unavailable(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def app_url(browser, server):
    """The served app, first opened through a deep link, as a reload after a restart does.

    The page scripts live in views/, not pages/: Streamlit treats a folder named pages/ beside
    app.py as old-style pages, and a fresh server's first visit to /architecture would then run
    the bare page script without app.py's navigation and sidebar. The check below guards that.
    """
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server + "/architecture")
    page.get_by_text("Total params: 9,596").first.wait_for(timeout=WAIT)
    page.get_by_text("Design a tiny CNN, train it on MNIST").first.wait_for(timeout=WAIT)  # app.py's sidebar ran
    context.close()
    return server


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    p = context.new_page()
    p.set_default_timeout(WAIT)
    yield p
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("MNIST_LAB_SCREENSHOTS") == "1":
        d = ROOT / "docs" / "screenshots"
        d.mkdir(parents=True, exist_ok=True)
        return d
    return tmp_path_factory.mktemp("screenshots")


# -- helpers -----------------------------------------------------------------------------------


def settle(page) -> None:
    """Wait until the script run is over: no 'Running...' status and no stale elements."""
    page.wait_for_function(
        """() => {
            const w = document.querySelector('[data-testid="stStatusWidget"]');
            if (w && /Running/.test(w.innerText)) return false;
            return !document.querySelector('[data-stale="true"]');
        }""",
        timeout=WAIT,
    )


def open_page(page, url: str, path: str, title: str) -> None:
    from playwright.sync_api import expect

    page.goto(url + path)
    expect(page.get_by_role("heading", name=title, exact=True).first).to_be_visible(timeout=WAIT)
    # the shared sidebar is there: app.py ran, not the bare page script
    expect(page.get_by_test_id("stSidebar").get_by_text("mnist-lab", exact=True)).to_be_visible()
    settle(page)


def charts_drawn(page, *keys: str) -> None:
    """The st.plotly_chart elements with these keys are drawn (plotly has made its SVG)."""
    from playwright.sync_api import expect

    for key in keys:
        expect(page.locator(f".st-key-{key} .main-svg").first).to_be_visible(timeout=WAIT)


def choose(page, label: str, option: str) -> None:
    """Pick an option of the st.selectbox with this label.

    A click can miss the list: it may land while charts above the box are still being drawn and
    move it, or while the list is closing. The box is clicked until the option shows (3 tries).
    """
    from playwright.sync_api import expect

    box = page.get_by_role("combobox", name=label, exact=True)
    item = page.get_by_role("option", name=option, exact=True)
    for attempt in range(3):
        box.click()
        try:
            expect(item).to_be_visible(timeout=5_000 if attempt < 2 else WAIT)
            break
        except AssertionError:
            if attempt == 2:
                raise
    item.click()
    expect(box).to_have_value(option)


def fill(page, label: str, text: str) -> None:
    """Type into the text or number box with this label, press Enter and wait for the rerun."""
    box = page.get_by_label(label, exact=True)
    box.fill(text)
    box.press("Enter")
    settle(page)


def total_heading(page):
    return page.get_by_role("heading", name=re.compile(r"^Total params: "))


# -- Home --------------------------------------------------------------------------------------


def test_home(page, app_url, shots):
    from playwright.sync_api import expect

    open_page(page, app_url, "/", "mnist-lab")
    for name in ("Architecture", "Train", "Draw", "Runs"):
        expect(page.get_by_test_id("stPageLink").filter(has_text=name)).to_be_visible()
    expect(page.get_by_text("No run yet; runs are stored in")).to_be_visible()
    page.screenshot(path=str(shots / "home.png"))


# -- Architecture ------------------------------------------------------------------------------


def test_architecture_count_follows_every_control(page, app_url, shots):
    from playwright.sync_api import expect

    open_page(page, app_url, "/architecture", "Architecture")
    total = total_heading(page)
    expect(total).to_have_text("Total params: 9,596")
    expect(page.get_by_role("tabpanel", name="Layer table").get_by_test_id("stDataFrame")).to_be_visible()
    page.screenshot(path=str(shots / "architecture.png"))

    # BatchNorm off and on
    bn = page.get_by_role("checkbox", name="BatchNorm")
    page.get_by_test_id("stCheckbox").filter(has_text="BatchNorm").get_by_text("BatchNorm").click()
    expect(total).to_have_text("Total params: 9,424")
    expect(bn).not_to_be_checked()
    page.get_by_test_id("stCheckbox").filter(has_text="BatchNorm").get_by_text("BatchNorm").click()
    expect(total).to_have_text("Total params: 9,596")
    expect(bn).to_be_checked()

    # widths typed exactly
    text = page.get_by_label("Widths (type them exactly)", exact=True)
    text.fill("8,8,8,16,16,32")
    text.press("Enter")
    widths = (8, 8, 8, 16, 16, 32)
    expect(total).to_have_text(f"Total params: {count_params(ModelConfig.template(widths=widths)):,}")
    expect(page.locator('input[type="range"][aria-label="Block 1 (3x3 conv)"]')).to_have_attribute("aria-valuetext", "8")

    # a slider moved with the keyboard
    slider = page.locator('input[type="range"][aria-label="Block 5 (3x3 conv)"]')
    for value in (33, 34, 35, 36):  # one step at a time, each seen by the app before the next
        slider.focus()
        slider.press("ArrowRight")
        expect(slider).to_have_attribute("aria-valuetext", str(value))
        expect(text).to_have_value(f"8,8,8,16,16,{value}")
        settle(page)
    shown = tuple(
        int(page.locator(f'input[type="range"][aria-label="{label}"]').get_attribute("aria-valuetext"))
        for label in ("Block 1 (3x3 conv)", "Block 2 (3x3 conv)", "Transition (1x1 conv)",
                      "Block 3 (3x3 conv, after pool)", "Block 4 (3x3 conv)", "Block 5 (3x3 conv)")
    )
    assert shown == (8, 8, 8, 16, 16, 36)
    n = count_params(ModelConfig.template(widths=shown))
    expect(total).to_have_text(f"Total params: {n:,}")
    assert n != count_params(ModelConfig.template(widths=widths))

    # an impossible width: the core's reason, and the last valid model stays
    text.fill("12,16,0,12,16,30")
    text.press("Enter")
    expect(page.get_by_test_id("stAlertContentError")).to_contain_text("width of transition is 0")
    expect(total).to_have_text(f"Total params: {n:,}")


def test_layer_editor_adds_a_layer_and_the_total_follows(page, app_url):
    """A row added in the editor's table (glide-data-grid: a canvas, so the cell is found by its
    place) and given a type: the list has one layer more and the total counts it."""
    from playwright.sync_api import expect

    open_page(page, app_url, "/architecture", "Architecture")
    total = total_heading(page)
    expect(total).to_have_text("Total params: 9,596")
    page.get_by_role("tab", name="Edit the layers").click()
    page.get_by_role("button", name="Add row").click()
    grid = page.get_by_test_id("stDataFrame").filter(has=page.locator("#glide-cell-2-19"))  # row 20: the new one
    expect(grid).to_have_count(1)
    settle(page)
    grid.evaluate("e => e.scrollIntoView({block: 'end'})")
    editor = page.locator("#portal input").first  # the cell's editor, over the grid
    for attempt in range(3):  # a double click during a re-layout can miss; the editor shows when it took
        box = grid.bounding_box()
        # the type cell of row 20: past the row marker (32) and # (44); under the header and 19 rows of 35
        page.mouse.dblclick(box["x"] + 32 + 44 + 39, box["y"] + 36 + 35 * 19 + 17)
        try:
            expect(editor).to_be_visible(timeout=5_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    page.keyboard.type("bn")
    page.keyboard.press("Enter")
    expect(total).to_have_text("Total params: 9,616")  # a BatchNorm on the head's 10 values: 20 more
    expect(page.get_by_label("Layers as text", exact=True)).to_have_value(ModelConfig().text + " bn")
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)


def test_text_edits_rerun_the_model_panel_and_the_template_follows(page, app_url):
    """The text form and the table rerun only the model's panel (a fragment). The template column
    outside must still follow: a list of the template's family moves its sliders, a list of another
    shape changes its caption, and a later whole-page rerun keeps the typed model."""
    from playwright.sync_api import expect

    open_page(page, app_url, "/architecture", "Architecture")
    total = total_heading(page)
    text = page.get_by_label("Layers as text", exact=True)
    block1 = page.locator('input[type="range"][aria-label="Block 1 (3x3 conv)"]')

    family = ModelConfig.template(widths=(10, 16, 10, 12, 16, 30))
    fill(page, "Layers as text", family.text)
    expect(total).to_have_text(f"Total params: {family.params:,}")
    expect(block1).to_have_attribute("aria-valuetext", "10")
    expect(page.get_by_label("Widths (type them exactly)", exact=True)).to_have_value("10,16,10,12,16,30")

    deep = ModelConfig.parse(" ".join(["conv12p1 bn relu"] * 12) + " maxpool conv8 gap conv10k1")
    assert len(deep.layers) == 40
    fill(page, "Layers as text", deep.text)
    expect(total).to_have_text(f"Total params: {deep.params:,}")
    expect(page.get_by_text("The model is of another shape now")).to_be_visible()
    fill(page, "Parameter budget", "20000")  # a whole-page rerun: the typed model stays
    expect(total).to_have_text(f"Total params: {deep.params:,}")
    expect(text).to_have_value(deep.text)


def test_a_reload_keeps_the_design_and_its_link_opens_it_in_a_new_tab(page, app_url, browser):
    from playwright.sync_api import expect

    open_page(page, app_url, "/architecture", "Architecture")
    design = ModelConfig.parse("conv8p1 bn relu conv12s2p1 bn relu conv12dw bn relu conv16k1 gap conv10k1")
    fill(page, "Layers as text", design.text)
    expect(total_heading(page)).to_have_text(f"Total params: {design.params:,}")
    page.wait_for_function("() => location.search.includes('arch=')")
    link = page.url
    page.reload()
    expect(total_heading(page)).to_have_text(f"Total params: {design.params:,}", timeout=WAIT)
    other = browser.new_page(viewport=VIEWPORT)  # a fresh session, as someone the link was sent to
    try:
        other.goto(link)
        expect(total_heading(other)).to_have_text(f"Total params: {design.params:,}", timeout=WAIT)
        expect(other.get_by_label("Layers as text", exact=True)).to_have_value(design.text)
    finally:
        other.close()


def test_enter_in_the_ab_form_starts_nothing(page, app_url, runs_dir):
    """Two full trainings start from the Train A/B button only, not from Enter in its Epochs box."""
    from playwright.sync_api import expect

    open_page(page, app_url, "/architecture", "Architecture")
    page.get_by_text("Train A/B: BatchNorm on vs off").click()
    epochs = page.get_by_label("Epochs", exact=True)
    expect(epochs).to_be_visible()
    epochs.fill("1")
    try:
        epochs.press("Enter")
        settle(page)
        page.wait_for_timeout(2000)
        assert not list(runs_dir.glob("ab-*"))
    finally:
        stop_training(runs_dir)  # if Enter did start the pair: the first, and with it the queued second
    expect(page.get_by_role("button", name="Train A/B")).to_be_enabled()


# -- Draw --------------------------------------------------------------------------------------


def draw(page, points: list[tuple[float, float]]) -> None:
    """One mouse stroke through points given as fractions of the canvas, seen by the canvas.

    fabric.js listens on its upper canvas. Under load the canvas can still be mounting or moving
    when the mouse goes down; the canvas's own Undo button tells whether it took the stroke, and
    a stroke it did not take is drawn once more.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    canvas = page.locator("canvas.upper-canvas")
    undo = page.get_by_role("button", name="Undo", exact=True)
    for attempt in range(2):
        settle(page)
        expect(canvas).to_be_visible()
        box = canvas.bounding_box()
        assert box and box["width"] >= 200 and box["height"] >= 200, box
        xy = [(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy) for fx, fy in points]
        page.mouse.move(*xy[0])
        page.mouse.down()
        for (xa, ya), (xb, yb) in zip(xy, xy[1:]):
            for i in range(1, 13):
                page.mouse.move(xa + (xb - xa) * i / 12, ya + (yb - ya) * i / 12)
        page.mouse.up()
        try:
            expect(undo).to_be_enabled(timeout=10_000)
            return
        except (AssertionError, PlaywrightTimeout):
            if attempt:
                raise
            print("the canvas did not take the stroke; drawing it again")


def test_draw_reads_a_one_and_a_seven(page, app_url, shots):
    from playwright.sync_api import expect

    open_page(page, app_url, "/draw", "Draw")
    hint = page.get_by_text("Draw a digit on the black square.")
    expect(hint).to_be_visible()
    expect(page.get_by_role("combobox", name="Model", exact=True)).to_have_value(re.compile(r"^bundled model \("))
    prediction = page.get_by_role("heading", name=re.compile(r"^Prediction: "))
    expect(prediction).to_have_count(0)

    draw(page, [(0.5, 0.15), (0.5, 0.85)])  # a thick vertical bar: 1
    expect(prediction).to_have_text("Prediction: 1")
    expect(hint).to_have_count(0)

    page.get_by_role("button", name="Clear", exact=True).click()
    expect(hint).to_be_visible()
    expect(prediction).to_have_count(0)
    expect(page.get_by_role("button", name="Undo", exact=True)).to_be_disabled()  # a fresh canvas

    draw(page, [(0.5, 0.5), (0.505, 0.5)])  # one click of the pen: a dot is not read as a digit
    expect(page.get_by_text("That is too small to read as a digit")).to_be_visible()
    expect(prediction).to_have_count(0)
    page.get_by_role("button", name="Clear", exact=True).click()
    expect(hint).to_be_visible()

    draw(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])  # a top bar and a diagonal: 7
    expect(prediction).to_have_text("Prediction: 7")
    settle(page)
    charts_drawn(page, "probs")
    expect(page.get_by_test_id("stImage").locator("img").first).to_be_visible()  # what the model sees
    page.screenshot(path=str(shots / "draw.png"))


# -- Train, then Runs --------------------------------------------------------------------------


def test_train_a_tiny_model_then_find_it_on_runs(page, app_url, runs_dir, shots):
    from playwright.sync_api import expect

    open_page(page, app_url, "/train", "Train")
    expect(page.get_by_text("No run yet: choose settings")).to_be_visible()

    fill(page, "Epochs", "2")
    choose(page, "Batch size", "32")
    settle(page)
    choose(page, "Training images", "1,000")
    settle(page)
    fill(page, "Run name (optional)", "e2e-quick")
    target = page.get_by_label("Target (the card's first TARGET line, optional)", exact=True)
    target.fill("A quick try on 1,000 images")
    target.press("Enter")
    settle(page)

    start = page.get_by_role("button", name="Start training")
    stop = page.get_by_role("button", name="Stop", exact=True)
    expect(start).to_be_enabled()
    expect(stop).to_be_disabled()
    start.click()

    expect(page.get_by_role("heading", name="e2e-quick: finished")).to_be_visible(timeout=TRAIN_WAIT)
    charts_drawn(page, "loss_curve", "acc_curve", "batch_curve")
    expect(page.get_by_text("RESULTS:", exact=True)).to_be_visible()
    expect(page.get_by_text("Epoch 2: train")).to_be_visible()
    expect(start).to_be_enabled(timeout=WAIT)
    expect(stop).to_be_disabled()

    # what ran is what the page asked for
    run_dir = runs_dir / "e2e-quick"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["batch_size"] == 32
    assert config["train"]["limit_train"] == 1000 and config["target"] == "A quick try on 1,000 images"
    assert ModelConfig.from_dict(config["model"]) == ModelConfig()  # the reference, as a layer list
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"

    # the settings folded away, the curves and the card in view
    page.get_by_text("Settings", exact=True).click()
    settle(page)
    page.get_by_test_id("stPlotlyChart").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "train.png"))

    open_page(page, app_url, "/runs", "Runs")
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    expect(page.get_by_role("heading", name="e2e-quick", exact=True)).to_be_visible()
    expect(page.get_by_text("RESULTS:", exact=True)).to_be_visible()
    charts_drawn(page, "cmp_loss", "cmp_acc")  # the comparison, with this run picked
    page.screenshot(path=str(shots / "runs.png"))

    # two downloads one right after the other both arrive: the card's does not rerun the page
    page.get_by_role("tab", name="Continue and export").click()
    archive = page.get_by_role("button", name="Download run archive (.zip, best.pt)")
    expect(archive).to_be_visible()
    downloads = []
    page.on("download", lambda download: downloads.append(download))
    page.get_by_role("button", name="⬇ card.md", exact=True).click()
    archive.click()
    deadline = time.monotonic() + WAIT / 1000
    while len(downloads) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert sorted(d.suggested_filename for d in downloads) == ["e2e-quick-card.md", "e2e-quick.zip"]
    zipped = next(d for d in downloads if d.suggested_filename.endswith(".zip"))
    assert Path(zipped.path()).read_bytes()[:2] == b"PK"


def test_a_two_seed_group_trains_and_shows_its_verdict(page, app_url, runs_dir, shots):
    """Repeat with seeds 1,2 on a subset: two runs one after the other, then the group's verdict on
    Train, and the group with its chart and card on Runs."""
    from playwright.sync_api import expect

    open_page(page, app_url, "/train", "Train")
    fill(page, "Epochs", "1")
    choose(page, "Training images", "1,000")
    settle(page)
    choose(page, "Test images", "1,000")
    settle(page)
    fill(page, "Repeat with seeds", "1,2")
    expect(page.get_by_text("Start trains a group of 2 runs (seeds 1,2) of")).to_be_visible()
    fill(page, "Run name (optional)", "e2e-pair")
    page.get_by_role("button", name="Start training").click()

    verdict = page.get_by_text(re.compile(r"Group e2e-pair holds 99\.4% in the last 3 epochs on 0 of 2 seeds"))
    expect(verdict).to_be_visible(timeout=2 * TRAIN_WAIT)
    seeds = [json.loads((runs_dir / f"e2e-pair-seed{s}" / "config.json").read_text()) for s in (1, 2)]
    assert [c["train"]["seed"] for c in seeds] == [1, 2] and {c["group"] for c in seeds} == {"e2e-pair"}

    open_page(page, app_url, "/runs", "Runs")
    expect(page.get_by_role("heading", name="Groups of seeds")).to_be_visible()
    expect(page.get_by_role("heading", name="Group e2e-pair")).to_be_visible()
    expect(page.get_by_text("holds 99.4% in the last 3 epochs on 0 of 2 seeds").first).to_be_visible()
    charts_drawn(page, "group_chart")
    page.get_by_test_id("stPlotlyChart").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "runs-group.png"), full_page=True)


def test_a_list_with_padding_stride_and_depthwise_trains_and_shows_on_runs_and_draw(page, app_url, runs_dir):
    """A model of another shape, typed on Architecture, trained from the Train page for one epoch on
    1,000 images, then found on Runs (its card names its layers) and read with on Draw."""
    from playwright.sync_api import expect

    shapes = "conv8p1 bn relu conv8s2 bn relu conv16dw bn relu conv12k1 bn relu gap conv10k1"
    cfg = ModelConfig.parse(shapes)
    open_page(page, app_url, "/architecture", "Architecture")
    text = page.get_by_label("Layers as text", exact=True)
    text.fill(shapes)
    text.press("Enter")
    expect(total_heading(page)).to_have_text(f"Total params: {cfg.params:,}")

    # the same session (the sidebar, not a new page load) keeps the chosen model
    page.get_by_test_id("stSidebar").get_by_role("link", name="Train").click()
    expect(page.get_by_role("heading", name="Train", exact=True).first).to_be_visible()
    settle(page)
    expect(page.get_by_text(shapes).first).to_be_visible()
    fill(page, "Epochs", "1")
    choose(page, "Training images", "1,000")
    settle(page)
    fill(page, "Run name (optional)", "e2e-shapes")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("heading", name="e2e-shapes: finished")).to_be_visible(timeout=TRAIN_WAIT)
    config = json.loads((runs_dir / "e2e-shapes" / "config.json").read_text())
    assert ModelConfig.from_dict(config["model"]) == cfg and config["train"]["limit_train"] == 1000

    page.get_by_test_id("stSidebar").get_by_role("link", name="Runs").click()
    expect(page.get_by_role("heading", name="Runs", exact=True).first).to_be_visible()
    settle(page)
    if page.get_by_role("combobox", name="Run", exact=True).input_value() != "e2e-shapes":
        choose(page, "Run", "e2e-shapes")  # the newest run is shown already
    expect(page.get_by_role("heading", name="e2e-shapes", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Train model {shapes} ({cfg.params} params)").first).to_be_visible()

    page.get_by_test_id("stSidebar").get_by_role("link", name="Draw").click()
    expect(page.get_by_role("heading", name="Draw", exact=True).first).to_be_visible()
    settle(page)
    model = page.get_by_role("combobox", name="Model", exact=True)
    model.click()
    page.get_by_role("option", name=re.compile(r"^e2e-shapes \(")).click()
    expect(model).to_have_value(re.compile(r"^e2e-shapes \(" + re.escape(shapes)))
    settle(page)
    draw(page, [(0.5, 0.15), (0.5, 0.85)])
    expect(page.get_by_role("heading", name=re.compile(r"^Prediction: \d$"))).to_be_visible()
    settle(page)
    page.get_by_role("tab", name="Inside the model").click()
    charts_drawn(page, "saliency", "filters")
    for caption in ("layer 1 conv: 8 channels, 28x28", "layer 4 conv: 8 channels, 13x13",
                    "layer 7 conv: 16 channels, 11x11", "layer 10 conv: 12 channels, 11x11"):
        expect(page.get_by_test_id("stImage").filter(has=page.get_by_text(caption, exact=True))).to_have_count(1)


# -- Insight: the confusion matrix's mistakes, the model's feature maps ------------------------


def test_runs_confusion_matrix_cell_click_shows_its_mistakes(page, app_url, runs_dir, mnist):
    """A click on a cell of the confusion matrix shows the test images of that cell."""
    from playwright.sync_api import expect

    from mnist_core.config import TrainConfig
    from mnist_core.insight import Evaluation, cached_evaluation
    from mnist_core.checkpoint import load_checkpoint
    from mnist_core.runner import train_run

    run = Run.create(runs_dir, ModelConfig(), TrainConfig(epochs=1, limit_train=640, lr=0.05), name="e2e-cm")
    train_run(run, mnist)  # the whole test set: the mistakes are cached with the run, as the app's are
    assert run.status["status"] == "finished" and (run.path / "best.pt.eval").exists()
    model, _ = load_checkpoint(run.path / "best.pt")
    ev: Evaluation = cached_evaluation(run.path / "best.pt", model, mnist.test_x, mnist.test_y)
    off = ev.confusion()
    off[range(10), range(10)] = 0
    worst = sorted(((int(off[i, j]), i, j) for i in range(10) for j in range(10) if off[i, j]), reverse=True)
    assert len(worst) >= 3, worst
    n, i, j = worst[1]  # not the cell the page shows first

    open_page(page, app_url, "/runs", "Runs")
    choose(page, "Run", "e2e-cm")
    settle(page)
    page.get_by_role("tab", name="Confusion matrix and mistakes").click()
    expect(page.get_by_text(f"Test accuracy of best.pt: {ev.accuracy:.2f}%")).to_be_visible()
    charts_drawn(page, "cm_e2e-cm")
    cell = page.get_by_role("combobox", name="Mistakes of one cell", exact=True)
    expect(cell).to_have_value(f"true {worst[0][1]} → predicted {worst[0][2]} ({worst[0][0]})")

    # rows are the true digit (0 at the top), columns the predicted one
    area = page.locator(".st-key-cm_e2e-cm .nsewdrag").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    page.mouse.click(box["x"] + box["width"] * (j + 0.5) / 10, box["y"] + box["height"] * (i + 0.5) / 10)
    caption = f"{n} test images of {i} read as {j}, most confident first"
    expect(page.get_by_text(caption, exact=True)).to_be_visible()
    expect(cell).to_have_value(f"true {i} → predicted {j} ({n})")
    settle(page)
    grid = page.get_by_test_id("stImage")
    expect(grid).to_have_count(min(n, 32))
    expect(grid.first.locator("img")).to_be_visible()

    # the selectbox still chooses after a click on the chart (the click is not applied again)
    m, a, b = worst[2]
    choose(page, "Mistakes of one cell", f"true {a} → predicted {b} ({m})")
    settle(page)
    expect(page.get_by_text(f"{m} test images of {a} read as {b}, most confident first", exact=True)).to_be_visible()
    expect(cell).to_have_value(f"true {a} → predicted {b} ({m})")


def test_draw_shows_the_feature_maps_of_a_drawing(page, app_url):
    from playwright.sync_api import expect

    open_page(page, app_url, "/draw", "Draw")
    model = page.get_by_role("combobox", name="Model", exact=True)
    expect(model).to_have_value(re.compile(r"^bundled model \(12-16-10-12-16-30, BN, "))  # the captions below are its
    draw(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])  # a 7
    expect(page.get_by_role("heading", name=re.compile(r"^Prediction: "))).to_have_text("Prediction: 7")
    settle(page)
    page.get_by_role("tab", name="Inside the model").click()
    charts_drawn(page, "saliency", "filters")
    for caption in ("layer 1 conv: 12 channels, 26x26", "layer 4 conv: 16 channels, 24x24",
                    "layer 7 conv: 10 channels, 24x24", "layer 8 maxpool: 10 channels, 12x12",
                    "layer 9 conv: 12 channels, 10x10", "layer 12 conv: 16 channels, 8x8",
                    "layer 15 conv: 30 channels, 6x6"):
        shown = page.get_by_test_id("stImage").filter(has=page.get_by_text(caption, exact=True))
        expect(shown).to_have_count(1)
        expect(shown.locator("img")).to_be_visible()

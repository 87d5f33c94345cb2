"""End to end: a tiny sweep started from the Sweeps page in headless Chromium, watched to its end
(a local Ray, started once in the sweep's own process), then one of its trials opened on Runs."""

from __future__ import annotations

import pytest

from mnist_core import sweep
from test_e2e import (TRAIN_WAIT, VIEWPORT, WAIT, browser, charts_drawn, fill, open_page,  # noqa: F401 (fixtures)
                      serve, settle)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def app_url(browser, runs_dir, tmp_path_factory):  # noqa: F811 (browser is a fixture)
    with serve(runs_dir, tmp_path_factory.mktemp("server")) as url:
        yield url
    if (folder := sweep.active(runs_dir)) is not None:  # a test that failed half-way: stop its sweep
        sweep.request_stop(folder)


def test_a_tiny_sweep_from_the_page_draws_its_chart_and_links_its_runs(browser, app_url, runs_dir,  # noqa: F811
                                                                        tmp_path_factory):
    from playwright.sync_api import expect

    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(WAIT)
    open_page(page, app_url, "/sweep", "Sweeps")
    expect(page.get_by_label("Layer-list templates, one per line", exact=True)).to_have_value(
        "conv{w1}p1 bn relu conv{w2}p1 bn relu maxpool conv{w3}p1 bn relu gap conv10k1")  # the tiny example
    fill(page, "Trials", "2")
    fill(page, "Sweep name (optional)", "page-tiny")
    # a budget below the smallest model is refused in one line, and Start with it
    fill(page, "Parameter budget", "500")
    expect(page.get_by_text("is below the smallest model in the space")).to_be_visible()
    expect(page.get_by_role("button", name="Start sweep")).to_be_disabled()
    fill(page, "Parameter budget", "8000")
    page.get_by_role("button", name="Start sweep").click()

    expect(page.get_by_role("heading", name="page-tiny: running")).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_text("Sweep page-tiny is running")).to_be_visible()
    expect(page.get_by_role("heading", name="page-tiny: finished")).to_be_visible(timeout=TRAIN_WAIT)
    settle(page)
    charts_drawn(page, "sw_chart")
    expect(page.get_by_text("Best so far (best accuracy)")).to_be_visible()
    trials = sweep.read_trials(runs_dir / sweep.SWEEPS / "page-tiny")
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials), trials
    page.screenshot(path=str(tmp_path_factory.mktemp("shots") / "sweep.png"), full_page=True)

    # a reload shows the same sweep, read from its folder
    page.reload()
    expect(page.get_by_role("heading", name="page-tiny: finished")).to_be_visible()
    settle(page)
    charts_drawn(page, "sw_chart")
    # a click on a point of the chart opens its run on Runs
    runs_heading = page.get_by_role("heading", name="Runs", exact=True)
    for attempt in range(3):  # a click while plotly is still drawing its layers can miss: try again
        box = page.locator(".st-key-sw_chart .scatterlayer .point").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        try:
            expect(runs_heading).to_be_visible(timeout=10_000 if attempt < 2 else WAIT)
            break
        except AssertionError:
            if attempt == 2:
                raise
    clicked = page.get_by_role("combobox", name="Run", exact=True).input_value()
    assert clicked in {t["run"] for t in trials}
    expect(page.get_by_text(f"Run {clicked} is shown under One run below")).to_be_visible()
    # the table's links are /runs?run=<name>: such a link opens that run
    first = trials[0]["run"]
    page.goto(f"{app_url}/runs?run={first}")
    expect(page.get_by_text(f"Run {first} is shown under One run below")).to_be_visible()
    expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(first)
    page.context.close()

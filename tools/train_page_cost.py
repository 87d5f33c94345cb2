"""How much an open Train page slows the training it watches, tried as a new user would.

    .venv/bin/python tools/train_page_cost.py [--rounds 3] [--epochs 4] [--images 10000]

Each round trains the reference model (its recipe, on the first --images training images, tested
on all 10,000) twice through the app's own start (a training process of its own): once with no
page open, once started from the Train page in headless Chromium and watched there to its end (the
live view polling). Rounds alternate the two, so a noisy moment hits both. The figure is the
training's images/s of every epoch after the first (the first warms up), median per kind; the
ratio is "with the page" over "no page". Needs Chromium, found as the browser tests find it.
"""

import argparse
import statistics
import sys
import tempfile
import time
import urllib.parse
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from playwright.sync_api import sync_playwright  # noqa: E402

from mnist_core import jobs  # noqa: E402
from mnist_core.config import get_preset, recipe_link  # noqa: E402
from mnist_core.runs import Run  # noqa: E402
from test_e2e import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402


def wait_done(run: Run, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while jobs.state(run) in ("running", "queued"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.name} did not finish in {timeout:.0f} s")
        time.sleep(0.5)
    while jobs.active(run.path.parent):  # the process exits after its final status
        time.sleep(0.2)


def speeds(run: Run) -> list[float]:
    """images/s of every epoch after the first."""
    return [r["images_per_s"] for r in run.metrics() if r["kind"] == "epoch"][1:]


def alone(runs_dir: Path, model, recipe, name: str) -> list[float]:
    run = jobs.start(runs_dir, model, recipe, name=name)
    wait_done(run)
    return speeds(run)


def with_page(browser, url: str, runs_dir: Path, model, recipe, name: str) -> list[float]:
    query = urllib.parse.urlencode({"arch": model.text, "recipe": recipe_link(recipe)})
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/train?{query}")
    page.get_by_label("Run name (optional)", exact=True).fill(name)
    page.get_by_label("Run name (optional)", exact=True).press("Enter")
    page.wait_for_timeout(2_000)
    page.get_by_role("button", name="Start training").click()
    page.get_by_role("heading", name=f"{name}: running").wait_for(timeout=60_000)
    run = Run(runs_dir / name)
    wait_done(run)
    page.close()
    return speeds(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--images", type=int, default=10000)
    args = ap.parse_args()
    preset = get_preset("reference")
    recipe = replace(preset.train, epochs=args.epochs, limit_train=args.images)
    results = {"no page": [], "Train page open": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        with serve(runs_dir, Path(tmp)) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for r in range(args.rounds):
                order = ("no page", "Train page open") if r % 2 == 0 else ("Train page open", "no page")
                for kind in order:
                    name = f"{'alone' if kind == 'no page' else 'page'}-{r}"
                    got = (alone(runs_dir, preset.model, recipe, name) if kind == "no page"
                           else with_page(browser, url, runs_dir, preset.model, recipe, name))
                    results[kind] += got
                    print(f"round {r + 1} {kind}: " + ", ".join(f"{s:,.0f}" for s in got) + " images/s", flush=True)
            browser.close()
    medians = {k: statistics.median(v) for k, v in results.items()}
    for kind, m in medians.items():
        print(f"{kind}: median {m:,.0f} images/s over {len(results[kind])} epochs")
    print(f"with the Train page open: {medians['Train page open'] / medians['no page']:.1%} of the speed with no page")


if __name__ == "__main__":
    main()

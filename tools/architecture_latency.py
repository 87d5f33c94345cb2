"""How long the Architecture page takes, as a user sees it, to show the new total after Enter in
"Layers as text" with a 40-layer list; and the same for a five-line Streamlit app (a text box and a
heading), the floor that Streamlit's round trip sets on this machine.

    .venv/bin/python tools/architecture_latency.py [--edits 20]

Needs Chromium, found as the browser tests find it. Times are taken in the page itself:
from the Enter key's keydown to the heading's text changing (a MutationObserver).
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from playwright.sync_api import sync_playwright  # noqa: E402

from mnist_core.config import ModelConfig  # noqa: E402
from test_e2e import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

FLOOR_APP = '''import streamlit as st
from mnist_core.config import ModelConfig
st.text_input("Layers as text", key="arch_spec")
st.subheader(f"Total params: {ModelConfig.parse(st.session_state.arch_spec or 'conv10 gap').params:,}")
'''
OBSERVE = """() => {
  window.lat = {};
  document.addEventListener('keydown', e => { if (e.key === 'Enter') window.lat.enter = performance.now(); }, true);
  new MutationObserver(() => {
    const h = [...document.querySelectorAll('h3')].find(h => h.innerText.startsWith('Total params'));
    if (h && h.innerText !== window.lat.text) { window.lat.text = h.innerText; window.lat.shown = performance.now(); }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def forty_layer_lists(n: int) -> list[ModelConfig]:
    """n lists of 40 layers, each with another total than the one before."""
    return [ModelConfig.parse(" ".join(f"conv{8 + i % 9 + j % 3}p1 bn relu" for j in range(12))
                              + " maxpool conv8 gap conv10k1") for i in range(n)]


def measure(browser, url: str, path: str, models: list[ModelConfig]) -> list[float]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url + path)
    box = page.get_by_label("Layers as text", exact=True)
    box.wait_for(timeout=60_000)
    page.wait_for_timeout(2_000)
    page.evaluate(OBSERVE)
    times = []
    for cfg in models:
        box.fill(cfg.text)
        box.press("Enter")
        page.wait_for_function(f"() => (window.lat.text || '').endsWith('{cfg.params:,}')", timeout=30_000)
        page.wait_for_timeout(1_000)  # the rest of the rerun (the timing of the model) is over
        times.append(page.evaluate("() => window.lat.shown - window.lat.enter"))
    page.close()
    return times[2:]  # the first edits warm caches and the grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    models = forty_layer_lists(args.edits + 2)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "floor.py").write_text(FLOOR_APP)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        results = {}
        with serve(tmp / "runs", tmp) as url:
            results["Architecture page"] = measure(browser, url, "/architecture", models)
        with serve(tmp / "runs", tmp, str(tmp / "floor.py")) as url:
            results["five-line Streamlit app"] = measure(browser, url, "/", models)
        browser.close()
    for name, times in results.items():
        print(f"{name:24} Enter -> new total: median {statistics.median(times):.0f} ms "
              f"(min {min(times):.0f}, max {max(times):.0f}, {len(times)} edits of a 40-layer list)")


if __name__ == "__main__":
    main()

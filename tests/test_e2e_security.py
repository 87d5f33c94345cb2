"""The shipped server config against a hostile web page: DNS rebinding, error details, first loads.

Each test starts its own `streamlit run` from the project's root, so .streamlit/config.toml is
the one a user gets.
"""

from __future__ import annotations

import base64
import os
import socket
import tomllib
from urllib.parse import urlparse

import pytest

from test_e2e import CHROMIUM, CHROMIUM_ARGS, ROOT, WAIT, serve

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("sec") / "runs"
    with serve(runs, tmp_path_factory.mktemp("server")) as url:
        yield url, runs


def websocket_handshake(url: str, host: str) -> int:
    """HTTP status of a WebSocket upgrade to the app's stream, sent with this Host header."""
    u = urlparse(url)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: streamlit\r\n\r\n")
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(request.encode())
        head = s.recv(4096).decode("latin-1")
    return int(head.split()[1])


def test_config_accepts_only_local_host_names_and_shows_no_error_details():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert sorted(cfg["server"]["allowedHosts"]) == ["127.0.0.1", "localhost"]
    assert cfg["client"]["showErrorDetails"] == "type"


def test_websocket_with_a_foreign_host_header_is_refused(app_server):
    url, _ = app_server
    port = urlparse(url).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert websocket_handshake(url, host) == 101, host
    for host in (f"rebind.test:{port}", "attacker.example", f"127.0.0.1.rebind.test:{port}", f"[::1]:{port}"):
        assert websocket_handshake(url, host) != 101, host


def test_a_browser_on_a_rebound_name_cannot_drive_the_app(app_server, tmp_path):
    """A page at http://rebind.test:PORT whose name now resolves to 127.0.0.1, as a DNS-rebinding
    attack arranges: the app's shell may load, but no script runs, so nothing is read or changed."""
    from playwright.sync_api import expect, sync_playwright

    url, runs = app_server
    port = urlparse(url).port
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM,
                               args=CHROMIUM_ARGS + ["--host-resolver-rules=MAP rebind.test 127.0.0.1"])
        try:
            page = b.new_page()
            page.goto(f"http://localhost:{port}/")  # the control: the same browser, the real name
            expect(page.get_by_test_id("stSidebar").get_by_text("mnist-lab", exact=True)).to_be_visible(timeout=WAIT)
            evil = b.new_page()
            evil.goto(f"http://rebind.test:{port}/runs")
            evil.wait_for_timeout(8000)  # long enough for a script run: the control page rendered sooner
            assert evil.get_by_test_id("stSidebar").count() == 0
            assert evil.get_by_text("mnist-lab", exact=True).count() == 0
        finally:
            b.close()


def test_an_uncaught_error_shows_no_traceback_or_paths(tmp_path):
    """A script that raises, served with the project's config: the browser gets the error's type
    and no stack, no file paths, no message text (which may hold paths)."""
    from playwright.sync_api import sync_playwright

    script = ROOT / ".e2e_raises.py"  # in the root, so streamlit reads the project's config for it
    script.write_text('raise RuntimeError("secret detail at /srv/private/path.py")\n')
    try:
        with serve(tmp_path / "runs", tmp_path, script=script.name) as url, sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = b.new_page()
                page.goto(url)
                box = page.get_by_test_id("stException")
                box.wait_for(timeout=WAIT)
                text = box.inner_text()
                assert "RuntimeError" in text
                assert "/srv/private" not in text and "secret detail" not in text
                assert "Traceback" not in text and ".py" not in text
            finally:
                b.close()
    finally:
        script.unlink(missing_ok=True)


def test_simultaneous_first_page_loads_all_render(tmp_path):
    """A fresh server opened in six tabs at once (a restored browser session): every page renders
    with no exception; heavy modules are imported once, before the pages run."""
    from playwright.sync_api import sync_playwright

    paths = ["/", "/runs", "/draw", "/train", "/architecture", "/runs"]
    with serve(tmp_path / "runs", tmp_path) as url, sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = [b.new_page() for _ in paths]
            for page, path in zip(pages, paths):
                page.goto(url + path, wait_until="commit")
            for page in pages:
                page.get_by_test_id("stSidebar").get_by_text("mnist-lab", exact=True).wait_for(timeout=2 * WAIT)
                page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
                                       " || !/Running/.test(document.querySelector('[data-testid=\"stStatusWidget\"]').innerText)",
                                       timeout=2 * WAIT)
            for page, path in zip(pages, paths):
                assert page.get_by_test_id("stException").count() == 0, (path, page.inner_text("body")[:500])
        finally:
            b.close()

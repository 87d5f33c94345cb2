import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def mnist():
    from mnist_core.data import load_mnist

    return load_mnist()


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A fresh runs folder, also the one the pages read (MNIST_LAB_RUNS)."""
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("MNIST_LAB_RUNS", str(d))
    return d


@pytest.fixture
def app(runs_dir):
    """The app under AppTest after its first run, on a fresh runs folder."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    return at


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist) -> Path:
    """A finished one-epoch run on 320 images, tested on 100, trained once per module (a module may
    define its own)."""
    from apptest_kit import finished_tiny_run

    return finished_tiny_run(tmp_path_factory.mktemp("trained"), mnist, limit_train=320, limit_test=100)


@pytest.fixture(scope="session")
def bundled():
    """The bundled model (models/bundled.pt), loaded once."""
    from mnist_core.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint

    return load_checkpoint(BUNDLED_CHECKPOINT)[0]


@pytest.fixture
def finished_run(runs_dir, trained):
    """A copy of the module's `trained` run in the fresh runs folder."""
    import shutil

    from mnist_core.runs import Run

    shutil.copytree(trained, runs_dir / trained.name)
    return Run(runs_dir / trained.name)


# Fixtures that load MNIST, train, run the app under AppTest or start processes: a test that uses
# one is not in the fast tier.
SLOW_FIXTURES = {"mnist", "trained", "finished_run", "app", "drawn", "hostile", "sleeper", "server", "browser",
                 "app_server", "page", "app_url"}


def pytest_collection_modifyitems(config, items):
    """Tiers: `unit` (in-process, no MNIST, no process, no browser; seconds) is every test that
    uses none of SLOW_FIXTURES and is not marked `process` or `e2e`. `pytest -m unit` runs it."""
    for item in items:
        if not ({"e2e", "process", "unit"} & set(item.keywords)) and not (SLOW_FIXTURES & set(item.fixturenames)):
            item.add_marker(pytest.mark.unit)
    # browser tests last: they are the slowest and need everything else to work
    items.sort(key=lambda item: "e2e" in item.keywords)




@pytest.fixture(autouse=True)
def _unit_tier_stays_fast(request, monkeypatch):
    """A test marked `unit` runs in-process on what it makes itself: loading MNIST or starting a
    process fails it, so the fast tier cannot slowly grow slow."""
    if request.node.get_closest_marker("unit") is None:
        return
    assert not SLOW_FIXTURES & set(request.fixturenames), "a unit test uses a slow fixture"

    def refused(*args, **kwargs):
        raise AssertionError("a unit test may not load MNIST or start a process: mark it otherwise")

    import subprocess

    import mnist_core.data

    monkeypatch.setattr(mnist_core.data, "load_mnist", refused)
    monkeypatch.setattr(mnist_core.data, "verify", refused)  # what load_mnist calls, however it was imported
    monkeypatch.setattr(subprocess, "Popen", refused)

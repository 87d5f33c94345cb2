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


@pytest.fixture
def finished_run(runs_dir, trained):
    """A copy of the module's `trained` run in the fresh runs folder."""
    import shutil

    from mnist_core.runs import Run

    shutil.copytree(trained, runs_dir / trained.name)
    return Run(runs_dir / trained.name)


def pytest_collection_modifyitems(config, items):
    # browser tests last: they are the slowest and need everything else to work
    items.sort(key=lambda item: "e2e" in item.keywords)



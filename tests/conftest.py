import os
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
    d = tmp_path / "runs"
    d.mkdir()
    return d


def pytest_collection_modifyitems(config, items):
    # browser tests last: they are the slowest and need everything else to work
    items.sort(key=lambda item: "e2e" in item.keywords)



"""The shape of the core: what imports what."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_model_description_imports_no_torch():
    code = ("import sys, mnist_core.spec as s; s.plan(s.template()); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)

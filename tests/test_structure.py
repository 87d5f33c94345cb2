"""The shape of the core: each module imports only modules below it; the model description
needs no torch; an import inside a function is for a heavy dependency and says so."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mnist_core"


def imports(path: Path) -> tuple[set[str], list[tuple[int, str, bool]]]:
    """(mnist_core modules imported, [(line, text, inside a function)] of every import)."""
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    inner = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn)}
    core, every = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mnist_core":
                core.update(a.name for a in node.names)
            elif node.module.startswith("mnist_core."):
                core.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            core.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mnist_core."))
        else:
            continue
        every.append((node.lineno, lines[node.lineno - 1], id(node) in inner))
    return core - {path.stem}, every


def graph() -> dict[str, set[str]]:
    return {f.stem: imports(f)[0] for f in CORE.glob("*.py")}


def test_no_import_cycles():
    g = graph()
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(g.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(g):
        visit(m)
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_layers_sit_in_order():
    """files, spec at the bottom; runs never trains; jobs and the pages' helpers above the runner."""
    g = graph()
    assert g["files"] == set() and g["spec"] == set()
    assert g["config"] == {"spec"}
    assert not {"train", "runner", "jobs", "insight"} & g["runs"]
    assert not {"runner", "jobs"} & g["train"]


def test_imports_inside_functions_are_heavy_dependencies_that_say_so():
    for f in sorted(CORE.glob("*.py")):
        for line, text, inside in imports(f)[1]:
            if inside:
                assert "mnist_core" not in text, f"{f.name}:{line}: {text.strip()}: import it at the top"
                assert "#" in text, f"{f.name}:{line}: {text.strip()}: say why it is imported here"


@pytest.mark.process
def test_the_model_description_imports_no_torch():
    code = ("import sys, mnist_core.config as c, mnist_core.spec as s; s.plan(s.template()); c.ModelConfig(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


HEAVY = ("torch", "torchinfo", "pandas", "pyarrow", "plotly.graph_objects", "PIL.Image", "streamlit.dataframe_util")


@pytest.mark.process
def test_no_page_imports_a_heavy_module_that_app_py_has_not(tmp_path):
    """Sessions starting together would import them in parallel threads, and Python's import locks
    can hand one a half-made module ("partially initialized module 'pandas'"): app.py imports them
    all first, so every page finds them loaded."""
    code = f"""
import os, sys
os.environ["MNIST_LAB_RUNS"] = {str(tmp_path)!r}
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(ROOT / "app.py")!r}, default_timeout=300).run()
loaded = set(sys.modules)
late = {{}}
for page in ("views/architecture.py", "views/train.py", "views/draw.py", "views/runs.py", "views/home.py"):
    at.switch_page(page).run()
    late[page] = sorted(m for m in {HEAVY!r} if m in sys.modules and m not in loaded)
print(late)
assert not any(late.values()), late
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]


KEY_PATTERNS = [
    r"""key=f?["']([A-Za-z_][\w]*)""",
    r"""session_state\[f?["']([A-Za-z_][\w]*)""",
    r"""session_state\.(?:get|pop|setdefault)\(f?["']([A-Za-z_][\w]*)""",
    r"""["']([A-Za-z_][\w]*)["'] (?:not )?in st\.session_state""",
    r"""session_state\.(?!get\b|pop\b|setdefault\b|update\b|keys\b|items\b|clear\b)([A-Za-z_]\w*)""",
    r"""session_state\.update\((\w+)=""",
    r"""f["']([a-z][a-z0-9_]*)\{""",  # a key made from a name: f"tr_{field}", f"arch_w{i}"
]


def page_keys() -> dict[str, str]:
    """Every session-state key written literally in the pages: key -> where."""
    import re

    found = {}
    for path in sorted([ROOT / "app.py", *(ROOT / "views").glob("*.py")]):
        if path.name == "keys.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern in KEY_PATTERNS:
                for key in re.findall(pattern, line):
                    found.setdefault(key, f"{path.name}:{n}")
    return found


def test_every_session_state_key_is_declared_in_one_place():
    from views import keys

    used = page_keys()
    undeclared = {k: where for k, where in used.items() if not keys.declared(k)}
    assert not undeclared, f"session-state keys missing from views/keys.py: {undeclared}"
    unused = [k for k in keys.KEYS if not any(u == k or (k.endswith("_") and u.startswith(k)) or
                                              u.rstrip("0123456789") == k for u in used)]
    assert not unused, f"views/keys.py lists keys no page uses: {unused}"

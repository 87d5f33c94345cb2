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

"""The package's imports: every module of ``sandbox`` imports alone (in a fresh interpreter, nothing
imported before it), and the module-level imports among ``sandbox.*`` modules have no cycle (an import
inside a function, or under ``if TYPE_CHECKING:``, is lazy and not counted). No engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sandbox"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # (runs the program: `python -m`)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_alone(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"import {module} alone:\n{proc.stderr[-2000:]}"


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(module: str, path: Path) -> set[str]:
    """The ``sandbox.*`` modules ``module`` imports when it is imported (its module-level statements,
    ``try``/``if`` bodies included, ``if TYPE_CHECKING:`` not)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[:len(up) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)  # (a submodule imported by name)
            elif isinstance(node, ast.If):
                if not _type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With,)):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    # importing a.b.c imports a and a.b first (their __init__) — but not for a module inside a.b: its own
    # packages are always imported before it, so an import of a sibling is no edge back to them
    found = set()
    for name in out:
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {m for m in found if m in MODULES and m != module and (m not in own or m in out)}


def test_no_import_cycle_among_top_level_imports() -> None:
    graph = {m: _top_level_imports(m, p) for m, p in MODULES.items()}
    graph = {m: {d for d in deps if d != "sandbox"} for m, deps in graph.items()}  # (the package's face: tiny)
    assert "sandbox.manager" in graph and graph["sandbox.manager"], "the graph reads the imports"
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not cycles, "import cycles at module level: " + "; ".join(" -> ".join(c) for c in cycles)

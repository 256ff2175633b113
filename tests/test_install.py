"""Reproducible installs: bounded ranges in pyproject.toml, exact pins of the whole tree in
constraints.txt, and scripts/venv.sh (called by scripts/setup.sh) installing with them and
reinstalling when they change. No network: the venv's python is a stand-in that records calls."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_pyproject_ranges_are_bounded_and_hold_the_pins() -> None:
    pins = _pins()
    for req in _project_requirements():
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops and "<" in ops, f"{req}: needs a lower and an upper bound"
        assert pins[canonicalize_name(req.name)] in req.specifier, f"constraints.txt pin outside {req}"


def test_constraints_pin_exactly_the_installed_tree() -> None:
    """Every distribution the project's requirements pull in (transitively, markers evaluated for this
    machine, extras followed: textual needs ``markdown-it-py[linkify]``) is pinned, and nothing else but pip."""
    env = default_environment()
    seen: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, "") for r in _project_requirements()]
    while todo:
        req, extra = todo.pop()  # ``extra``: the one the requiring distribution asked for (markers say ``extra == …``)
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        seen.add(name)
        if (name, frozenset(req.extras)) in visited:
            continue
        visited.add((name, frozenset(req.extras)))
        todo += [(Requirement(r), x) for r in md.requires(req.name) or [] for x in ("", *req.extras)]
    assert set(_pins()) == seen | {"pip"}


def _fake_project(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of what scripts/venv.sh reads, and a 'venv' whose python logs its argv."""
    proj = tmp_path / "proj"
    (proj / "scripts").mkdir(parents=True)
    for f in ("scripts/venv.sh", "constraints.txt", "pyproject.toml"):
        shutil.copy2(ROOT / f, proj / f)
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 0\n')
    (venv / "bin" / "python").chmod(0o755)
    return proj, venv, log


def test_venv_reinstalls_only_when_the_constraints_change(tmp_path: Path) -> None:
    proj, venv, log = _fake_project(tmp_path)

    def run() -> list[str]:
        log.write_text("")
        proc = subprocess.run([str(proj / "scripts" / "venv.sh"), str(venv)], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"]})
        assert proc.returncode == 0, proc.stderr
        return [line for line in log.read_text().splitlines() if line.startswith("-m pip install")]

    first = run()
    assert first and all("-c constraints.txt" in call for call in first), first
    assert any(call.endswith("-e .[test]") for call in first), first
    assert run() == []  # same constraints, imports fine: reused as it is
    with (proj / "constraints.txt").open("a") as f:
        f.write("# a pin moved\n")
    assert run() == first  # constraints changed: installed again with them
    assert run() == []


def test_setup_installs_through_venv_sh() -> None:
    assert re.search(r"^scripts/venv\.sh \.venv\b", (ROOT / "scripts" / "setup.sh").read_text(), re.M)


def test_every_third_party_import_is_declared() -> None:
    """What the package imports (anywhere, lazily too) is one of its declared dependencies: an import
    that works only because something else pulled it in breaks with the next release of that thing."""
    import ast
    import sys

    declared = {canonicalize_name(r.name) for r in _project_requirements()}
    providers = md.packages_distributions()
    missing = set()
    for path in (ROOT / "sandbox").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "sandbox":
                    continue
                dists = {canonicalize_name(d) for d in providers.get(top, [top])}
                if not dists & declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"

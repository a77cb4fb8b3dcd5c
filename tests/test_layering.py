"""The package layering, so that import cycles (even ones hidden by imports inside functions) cannot come back.

Every module under ``src/retentionrl`` is parsed (no import is executed); each ``import`` / ``from ... import``
anywhere in it — at module level or inside a function — is mapped to the package it names, except those under
``if TYPE_CHECKING:`` (annotations only). The packages and the edges each may use:

    errors, config, utils, data           the bottom: no project state
    spaces (Obs, StepOutput, flat vector), replay (ReplayBuffer)
    nets                                   networks shared by the simulator and the agents
    simulator -> agents -> evaluation -> training -> bench / serve -> cli

(``training`` is above ``evaluation`` because the loops evaluate the policy they train.)
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "retentionrl"

_BOTTOM = {"errors", "config", "utils", "__init__"}  # __init__: the top-level package (__version__)
#: package -> the packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "utils": {"errors"},
    "data": _BOTTOM,
    "spaces": _BOTTOM | {"data"},
    "replay": _BOTTOM | {"spaces"},
    "nets": _BOTTOM | {"data", "spaces"},
    "simulator": _BOTTOM | {"data", "spaces", "nets"},
    "agents": _BOTTOM | {"data", "spaces", "replay", "nets", "simulator"},
    "evaluation": _BOTTOM | {"data", "spaces", "simulator", "agents"},
    "training": _BOTTOM | {"data", "spaces", "replay", "nets", "simulator", "agents", "evaluation"},
    "bench": _BOTTOM | {"data", "spaces", "simulator", "agents", "evaluation", "training"},
    "serve": _BOTTOM | {"data", "spaces", "nets", "simulator", "agents", "evaluation", "training"},
    "cli": _BOTTOM | {"data", "spaces", "simulator", "agents", "evaluation", "training", "bench", "serve"},
    "__init__": {"errors"},  # the top-level package itself
}


def _package(module: str) -> str | None:
    """'retentionrl.simulator.env' -> 'simulator'; 'retentionrl' -> '__init__'; non-project -> None."""
    parts = module.split(".")
    if parts[0] != "retentionrl":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _is_submodule(name: str) -> bool:
    return (SRC / f"{name}.py").is_file() or (SRC / name / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(tree: ast.AST, module: str) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``tree`` outside ``if TYPE_CHECKING:`` bodies. ``module`` is the
    importing module's dotted name (resolves relative imports)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: -node.level]
                base = ".".join([*pkg, base] if base else pkg)
            # 'from retentionrl import errors' names the submodule, not the package's __init__
            found.extend((f"{base}.{a.name}" if base == "retentionrl" and _is_submodule(a.name) else base, node.lineno)
                         for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def package_edges(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> ['path:line', ...] for every cross-package import."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        here = _package(module)
        for name, line in imports_of(ast.parse(path.read_text(), str(path)), module if path.stem != "__init__" else f"{module}.__init__"):
            there = _package(name)
            if there is not None and there != here:
                edges.setdefault((here, there), []).append(f"{path.relative_to(src.parent)}:{line}")
    return edges


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (cycle := dfs(v)):
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (cycle := dfs(u)):
            return cycle
    return None


def test_allowed_layering_is_acyclic():
    assert _find_cycle(ALLOWED) is None
    assert set().union(*ALLOWED.values()) <= set(ALLOWED)


def test_every_package_is_classified():
    packages = {_package(".".join(p.relative_to(SRC.parent).with_suffix("").parts)) for p in SRC.glob("*.py")}
    packages |= {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages - set(ALLOWED) == set(), "a new package must be placed in ALLOWED"


def test_imports_follow_the_layering():
    edges = package_edges()
    bad = {f"{a} -> {b}": where for (a, b), where in edges.items() if b not in ALLOWED[a]}
    assert bad == {}, f"imports against the layering (see this module's docstring): {bad}"
    assert _find_cycle({a: {b for x, b in edges if x == a} for a, _ in edges}) is None


def test_the_checker_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "retentionrl"
    (pkg / "nets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets" / "__init__.py").write_text("")
    (pkg / "nets" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from retentionrl.agents.base import Agent\n"
        "def f():\n    from retentionrl.simulator.env import Obs\n"
        "    from ..training import buffer\n")
    assert set(package_edges(pkg)) == {("nets", "simulator"), ("nets", "training")}
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]

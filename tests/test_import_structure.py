"""The import picture, read from the source: the rooms' arrows, no cycles in `loop`, and function-level imports in
`loop` only where a heavy or optional dependency is deferred, each with its reason in a comment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("loop", "generator", "emulator", "oracle")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imported(node: ast.AST) -> list[str]:
    """Dotted names an import statement may load: the module and, for `from m import x`, also `m.x`."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return []


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports anywhere (top level or inside functions), with the
    parent packages an import of a submodule runs."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node):
                parts = target.split(".")
                deps.update(
                    ".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules
                )
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_loop_has_no_import_cycles():
    assert _cycles(_graph(_sources("loop"))) == []


@pytest.mark.parametrize("leaf", ["generator", "emulator", "oracle"])
def test_leaves_import_neither_each_other_nor_loop(leaf):
    others = {r for r in ROOMS if r != leaf}
    wrong = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {target}"
        for path in _sources(leaf).values()
        for node in ast.walk(ast.parse(path.read_text()))
        for target in _imported(node)
        if target.split(".")[0] in others
    ]
    assert wrong == []


def _function_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, has a reason) of each import inside a function. A run of consecutive imports shares the reason of
    its first: a comment at the end of that line or on the line above it."""
    lines = path.read_text().splitlines()
    out: dict[int, bool] = {}  # nested functions are walked twice
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for block in ast.walk(fn):
            for field in ("body", "orelse", "finalbody"):
                statements = getattr(block, field, None)
                if not isinstance(statements, list):  # a lambda's body is an expression
                    continue
                run_reason: bool | None = None
                for stmt in statements:
                    if not isinstance(stmt, ast.Import | ast.ImportFrom):
                        run_reason = None
                        continue
                    if run_reason is None:
                        line, above = lines[stmt.lineno - 1], lines[stmt.lineno - 2].strip()
                        run_reason = "#" in line or above.startswith("#")
                    out[stmt.lineno] = run_reason
    return sorted(out.items())


def test_function_level_imports_in_loop_each_say_why():
    unexplained = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _sources("loop").values()
        for line, explained in _function_imports(path)
        if not explained
    ]
    assert unexplained == []


def test_function_import_check_catches_an_unexplained_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    # torch: only here\n    import torch\n    import numpy\n\n"
        "def g():\n    x = 1\n    import json\n    return x\n"
    )
    assert _function_imports(module) == [(3, True), (4, True), (8, False)]


# -- the rooms of `loop` ----------------------------------------------------------------------------------------------
# Which room of `loop` may import which (loop/README.md explains each line). A room is a sub-package (`loop.science`)
# or a top-level module (`loop.config`); every room may import itself and the leaf rooms.
_BASE = {"errors", "validation"}
_SCIENCE = _BASE | {"science", "design"}
LOOP_ROOMS: dict[str, set[str]] = {
    "errors": set(),
    "validation": {"errors"},
    "science": _SCIENCE,  # the funnel applies the design section's composition rules (one implementation)
    "design": _SCIENCE,  # the window needs the hull
    "store": _BASE | {"science"},
    "runtime": _SCIENCE | {"store"},
    "config": _SCIENCE | {"runtime", "tracking"},  # the settings models of the rooms the config mirrors
    "views": _SCIENCE | {"store", "config", "runtime"},
    # The work of the stages takes the whole campaign config, so it sits above `config`, which `runtime` is below.
    "work": _SCIENCE | {"store", "config", "runtime", "views"},
    "stages": _SCIENCE | {"store", "config", "runtime", "views", "work", "tracking"},
    "tracking": _SCIENCE | {"store", "config", "runtime", "views", "report"},
    "report": _SCIENCE | {"store", "config", "runtime", "views", "stages"},
    "campaign": _SCIENCE | {"store", "config", "runtime", "views", "work", "stages", "tracking", "report"},
    "cli": _SCIENCE
    | {"store", "config", "runtime", "views", "work", "stages", "tracking", "report", "campaign"},
}
# Narrower than the room: the report reads the order of the stages, never a stage module; the config reads the
# tracking settings, never what a campaign logs.
ONLY: dict[tuple[str, str], set[str]] = {
    ("report", "stages"): {"loop.stages"},
    ("config", "tracking"): {"loop.tracking", "loop.tracking.runs"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "loop"


def _wrong_room_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, deps in sorted(graph.items()):
        here = _room(module)
        for dep in sorted(deps):
            there = _room(dep)
            if here == there or there == "loop" or here == "loop":
                continue
            allowed = there in LOOP_ROOMS.get(here, set())
            if allowed and (here, there) in ONLY:
                allowed = dep in ONLY[(here, there)]
            if not allowed:
                wrong.append(f"{module} -> {dep}")
    return wrong


def test_every_module_of_loop_is_in_a_known_room():
    assert sorted({_room(m) for m in _sources("loop")} - set(LOOP_ROOMS) - {"loop"}) == []


def test_loop_rooms_import_only_what_their_rules_allow():
    assert _wrong_room_imports(_graph(_sources("loop"))) == []


def test_room_rules_catch_a_wrong_import():
    graph = {
        "loop.science.hull": {"loop.store"},
        "loop.report.status": {"loop.stages.screen", "loop.stages"},
        "loop.stages.screen": {"loop.science.hull"},
    }
    assert _wrong_room_imports(graph) == [
        "loop.report.status -> loop.stages.screen",
        "loop.science.hull -> loop.store",
    ]

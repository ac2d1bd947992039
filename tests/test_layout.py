"""The house stays as DESIGN.md draws it: no import loops, layers that import only downward, small modules.

Walks every module of the package with the standard library's ``ast`` (nothing is imported):
every ``import``/``from ... import`` counts, at module level, inside functions and under
``TYPE_CHECKING`` alike, since each is a dependency a reader has to follow.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fmri2img"

#: folder → folders of fmri2img it must never import (DESIGN.md: math knows nothing of stores or schedulers;
#: stages stay thin; URLs and credentials live in storage/; the faces are on top)
FORBIDDEN = {
    "glm": ("storage", "cluster", "pipeline", "config", "cli", "demo", "report", "mininsd", "models", "metrics"),
    "ridge": ("storage", "cluster", "pipeline", "config", "cli", "demo", "report", "mininsd", "glm"),
    "models": ("storage", "cluster", "pipeline", "config", "cli", "demo", "report", "mininsd", "glm"),
    "metrics": ("storage", "cluster", "pipeline", "config", "cli", "demo", "report", "mininsd", "glm"),
    "storage": ("pipeline", "cluster", "config", "cli", "demo", "report", "mininsd", "models", "metrics"),
    "cluster": ("pipeline", "config", "cli", "demo", "report", "mininsd", "models", "metrics", "glm"),
    "config": ("pipeline", "cli", "demo", "report", "mininsd"),
    "mininsd": ("pipeline", "cluster", "config", "cli", "demo", "report"),
    "pipeline": ("cli", "demo", "report"),
    "report": ("cli", "demo"),
    "demo": ("cli",),
}
#: mini-NSD writes files in NSD's (and BIDS') layouts and knows nothing of the store: of storage/ it may use
#: only the readers' layout modules
MININSD_STORAGE = ("fmri2img.storage.nsd", "fmri2img.storage.bids")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60  # body lines, without the docstring


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _targets(name: str, node: ast.AST) -> list[str]:
    """The modules of fmri2img an import statement of module ``name`` names (the deepest that exist)."""
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    else:
        if node.level:
            base = name.split(".") if _is_package(name) else name.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        found = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
    out = []
    for target in found:
        while target not in MODULES and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in MODULES and target != name and target.startswith("fmri2img"):
            out.append(target)
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(_targets(name, node))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _folder(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_back_into_a_loop():
    cycles = _cycles(_graph())
    assert not cycles, "files that import each other in a loop (move the shared names to a module both stand on): " + \
        "; ".join(" <-> ".join(c) for c in cycles)


def test_every_import_follows_the_layers():
    bad = []
    for name, targets in _graph().items():
        folder = _folder(name)
        for target in targets:
            if _folder(target) in FORBIDDEN.get(folder, ()):
                bad.append(f"{name} imports {target}")
            elif folder == "mininsd" and _folder(target) == "storage" and not target.startswith(MININSD_STORAGE):
                bad.append(f"{name} imports {target} (mini-NSD knows nothing of the store)")
    assert not bad, "imports that break DESIGN.md's layers:\n" + "\n".join(sorted(bad))


def test_the_layer_check_catches_a_bad_import(tmp_path):
    """The checks above can fail: a models module that opens a URL through storage/ is caught."""
    graph = {"fmri2img.models.x": {"fmri2img.storage.urls"}, "fmri2img.storage.urls": set()}
    assert _folder("fmri2img.models.x") == "models" and "storage" in FORBIDDEN["models"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles(graph) == []


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    path = MODULES[name]
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most " \
                                      f"{MAX_MODULE_LINES}): split it by what its parts do"
    long = [f"{fn.name} ({_body_lines(fn)} lines, line {fn.lineno})" for fn in ast.walk(ast.parse(text))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(fn) > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(PACKAGE.parent)}: functions over {MAX_FUNCTION_LINES} lines: {long}"

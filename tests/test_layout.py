"""The service's import graph, read from the source as Python resolves it (api/, workflows/
and activities/ are polar_credits.api, .workflows and .activities: pyproject.toml's package-dir,
which path-based tools cannot follow): no module imports itself back through others, the
layers point one way, and nothing in the service imports the development tools."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import REPO_ROOT

# The checkout's folders and the package each one is installed as.
FOLDERS = {
    "polar_credits": "polar_credits",
    "api": "polar_credits.api",
    "workflows": "polar_credits.workflows",
    "activities": "polar_credits.activities",
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in (REPO_ROOT / folder).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """The service's modules that `name` imports anywhere in its file (at the top, inside a
    function or under TYPE_CHECKING alike: each is a tie a reader follows)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` ties to the module; `from module import name`
            # to the module that defines the name.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.count(".") >= 1:
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(path, name, known)) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_service_imports_itself_back() -> None:
    assert cycles(graph()) == []


def test_workflows_and_activities_never_import_the_http_layer() -> None:
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in graph().items()
        if name.startswith(("polar_credits.workflows", "polar_credits.activities"))
        for target in targets
        if target.startswith("polar_credits.api")
    )
    assert wrong == []


def test_nothing_in_the_service_imports_the_development_tools() -> None:
    wrong = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tools":
                wrong.append(name)
            if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "tools" for a in node.names
            ):
                wrong.append(name)
    assert wrong == []

"""The layout holds: no import cycles, the layer contracts kept, no module over 400 lines, no Guard privates."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import grimp
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "costguard"
MAX_LINES = 400


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every group of modules that import each other in a circle (strongly connected, two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(root: str) -> None:
        # Tarjan's algorithm, iterative (the graph is small, but recursion limits are no fun to debug).
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def graph_of(edges: Iterable[tuple[str, str]]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in edges:
        graph.add_import(importer=importer, imported=imported)
    return graph


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles(graph_of([("a", "b"), ("b", "c")])) == []
    assert cycles(graph_of([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])) == [["a", "b", "c"]]
    assert sorted(cycles(graph_of([("a", "b"), ("b", "a"), ("x", "y"), ("y", "x")]))) == [["a", "b"], ["x", "y"]]


def test_no_import_cycles_anywhere_in_src() -> None:
    # Imports inside functions and under TYPE_CHECKING count: a cycle there is still a circle to read.
    graph = grimp.build_graph("costguard", include_external_packages=False, exclude_type_checking_imports=False)
    assert cycles(graph) == []


def test_the_layer_contracts_are_kept() -> None:
    # pyproject.toml [tool.importlinter]: interfaces → decorator → Guard → parts → engine and stores → model.
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"],
        cwd=SRC.parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in run.stdout


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by what it does"


def test_the_guard_is_a_facade_of_at_most_300_lines() -> None:
    lines = len((SRC / "guard.py").read_text(encoding="utf-8").splitlines())
    assert lines <= 300, f"guard.py has {lines} lines: move the logic into its parts (docs/architecture.md)"


_PRIVATE_GUARD = re.compile(r"\b(?:guard|g|self\._guard|self\.guard)\._[a-z]\w*")


def test_nothing_outside_the_guard_reaches_into_its_privates() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "guard.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _PRIVATE_GUARD.search(line)
    ]
    assert offenders == []

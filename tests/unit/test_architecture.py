"""The layer rules of docs/architecture.md (*Layers*): import-linter contracts and more."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def test_registries_cover_every_configured_kind() -> None:
    from typing import get_args

    from tasks.connectors.destinations import DESTINATIONS, PLATFORMS
    from tasks.connectors.sources import SOURCE_READERS
    from tasks.core.config import Destination, Source

    source_kinds = {
        get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Source)[0])
    }
    assert source_kinds == set(SOURCE_READERS)
    destination_kinds = {
        get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Destination)[0])
    }
    assert destination_kinds == set(PLATFORMS)
    assert set(DESTINATIONS) <= set(PLATFORMS)


def _import_cycles(graph: object, modules: set[str]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.find_modules_directly_imported_by(module):  # type: ignore[attr-defined]
            if target not in modules:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    # A cycle makes import order matter (config and its section modules once had one).
    import grimp

    graph = grimp.build_graph("tasks", "flows")
    ours = {m for m in graph.modules if m.split(".")[0] in ("tasks", "flows")}
    assert _import_cycles(graph, ours) == []


def test_table_names_are_spelled_only_in_the_catalogue() -> None:
    pattern = re.compile(r"""["'](bronze|silver|gold|ops)/""")
    catalogue = ROOT / "tasks" / "core" / "tables.py"
    spelled = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("tasks", "flows")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != catalogue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and not _is_doc_example(line)
    ]
    assert spelled == []


def _is_doc_example(line: str) -> bool:
    """Docstring examples (doctest lines, ``e.g.`` text) may name a table."""
    stripped = line.strip()
    return stripped.startswith(">>>") or stripped.startswith("...") or "e.g." in stripped

"""What a run read from and wrote to the lake: a run-scoped collector the lake reports to.

A flow run opens :func:`collecting`; every lake operation inside it (in this process, in any
thread that inherits the context, as Prefect's task threads do) reports the Delta version it
read (:func:`note_read`) or committed (:func:`note_write`, with the commit's row counts). A
nested collector (a sub-flow) reports to its parents too, so a parent's record covers
everything done under it. Outside a collector the lake reports nothing and pays nothing.

Work shipped to another process (a distributed task runner) does not inherit the context; its
reads and writes are not collected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RunTables",
    "active",
    "collecting",
    "note_read",
    "note_write",
    "row_counts",
    "suspended",
]

# Delta operationMetrics -> the row counts kept per table (summed over a run's commits).
_METRICS = {
    "num_added_rows": "inserted",  # WRITE (append, overwrite, create)
    "num_target_rows_inserted": "inserted",  # MERGE
    "num_target_rows_updated": "updated",
    "num_target_rows_deleted": "deleted",
    "num_deleted_rows": "deleted",  # DELETE
}


@dataclass
class RunTables:
    """Per table: the versions read, the versions committed, and the rows those commits changed."""

    flow_run_id: str | None = None
    trigger: str | None = None
    root_run_id: str | None = None
    parent: RunTables | None = None
    reads: dict[str, set[int]] = field(default_factory=dict)
    writes: dict[str, list[int]] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, table: str, version: int) -> None:
        with self._lock:
            self.reads.setdefault(table, set()).add(version)

    def wrote(self, table: str, version: int, counts: Mapping[str, int]) -> None:
        with self._lock:
            versions = self.writes.setdefault(table, [])
            if version not in versions:
                versions.append(version)
            totals = self.rows.setdefault(table, {})
            for name, value in counts.items():
                totals[name] = totals.get(name, 0) + value

    def read_versions(self) -> dict[str, list[int]]:
        """``{table: sorted versions read}``."""
        with self._lock:
            return {t: sorted(v) for t, v in sorted(self.reads.items())}

    def written(self) -> dict[str, dict[str, Any]]:
        """``{table: {"versions": [...], "inserted": n, ...}}`` for every table committed to."""
        with self._lock:
            return {
                t: {"versions": sorted(v), **self.rows.get(t, {})}
                for t, v in sorted(self.writes.items())
            }


_current: ContextVar[RunTables | None] = ContextVar("audience_lake_run_tables", default=None)


def active() -> RunTables | None:
    """The innermost open collector, if any."""
    return _current.get()


@contextmanager
def collecting(
    flow_run_id: str | None = None, trigger: str | None = None, root_run_id: str | None = None
) -> Iterator[RunTables]:
    """Collect the lake reads and writes of the code inside, nested under any open collector."""
    tables = RunTables(
        flow_run_id=flow_run_id, trigger=trigger, root_run_id=root_run_id, parent=_current.get()
    )
    token = _current.set(tables)
    try:
        yield tables
    finally:
        _current.reset(token)


@contextmanager
def suspended() -> Iterator[None]:
    """Collect nothing inside (the run audit's own writes are not part of the run's work)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def note_read(table: str, version: int) -> None:
    """Report that ``table`` was read at ``version`` (to every open collector)."""
    tables = _current.get()
    while tables is not None:
        tables.read(table, version)
        tables = tables.parent


def note_write(table: str, version: int, counts: Mapping[str, int]) -> None:
    """Report that ``version`` of ``table`` was committed, changing ``counts`` rows."""
    tables = _current.get()
    while tables is not None:
        tables.wrote(table, version, counts)
        tables = tables.parent


def row_counts(operation_metrics: Mapping[str, Any] | None) -> dict[str, int]:
    """Rows inserted / updated / deleted according to a commit's Delta operation metrics."""
    counts: dict[str, int] = {}
    for key, name in _METRICS.items():
        value = (operation_metrics or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts[name] = counts.get(name, 0) + value
    return counts

"""The run audit ``ops/runs``: one row per flow run, so "who sent what to whom, when and why" is
a query.

A row is written when a run starts (outcome ``running``) and rewritten when it ends, both as a
MERGE on ``flow_run_id``: a retried attempt or a rerun of the same flow run rewrites its row,
never adds a second one, and a run that crashed before it could finish keeps the ``running``
row (with its start, trigger and parameters) rather than nothing. Parameters and error messages
are masked with :func:`tasks.connectors.redact.redact`, and a parameter whose name looks secret
never has its value stored.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from typing import Any, Literal

import polars as pl

from tasks.connectors.lake import Lake
from tasks.connectors.lake.audit import RunTables, suspended
from tasks.connectors.redact import MASK, is_secret_name, redact
from tasks.core.tables import RUNS, RUNS_SCHEMA, table
from tasks.errors import LakeError
from tasks.retries import PERMANENT

RunTrigger = Literal["schedule", "ui", "event", "cli", "subflow"]
RunOutcome = Literal["running", "completed", "failed", "held", "skipped"]

ERROR_CHARS = 400
WRITE_ATTEMPTS = 5  # a MERGE that loses its commit race to another run's row is retried
_RETRY_PAUSE_SECONDS = 0.2


@dataclass
class RunRecord:
    """One ``ops/runs`` row while its run is going on."""

    flow_run_id: str
    flow: str
    flow_run_name: str | None
    deployment: str | None
    parent_run_id: str | None
    root_run_id: str
    trigger: RunTrigger
    triggered_by: str | None
    parameters: dict[str, Any]
    attempt: int
    started_at: datetime
    outcome: RunOutcome = "running"
    ended_at: datetime | None = None
    reads: dict[str, list[int]] = field(default_factory=dict)
    writes: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    holds: list[str] = field(default_factory=list)
    error_class: str | None = None
    error: str | None = None

    def finish(
        self,
        tables: RunTables,
        *,
        outcome: RunOutcome,
        ended_at: datetime,
        result: Any = None,
        holds: list[str] | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Fill in what the run did and how it ended."""
        self.outcome = outcome
        self.ended_at = ended_at
        self.reads = tables.read_versions()
        self.writes = tables.written()
        self.counts = result_counts(result)
        self.holds = [one_line(h) for h in holds or []]
        if error is not None:
            self.error_class = type(error).__name__
            self.error = one_line(str(error))

    def row(self) -> dict[str, Any]:
        return {
            "flow_run_id": self.flow_run_id,
            "flow": self.flow,
            "flow_run_name": self.flow_run_name,
            "deployment": self.deployment,
            "parent_run_id": self.parent_run_id,
            "root_run_id": self.root_run_id,
            "trigger": self.trigger,
            "triggered_by": self.triggered_by,
            "parameters": json.dumps(redact_parameters(self.parameters), default=str),
            "reads": json.dumps(self.reads),
            "writes": json.dumps(self.writes),
            "counts": json.dumps(self.counts),
            "outcome": self.outcome,
            "holds": self.holds,
            "error_class": self.error_class,
            "error": self.error,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


def write_run(lake: Lake, record: RunRecord) -> None:
    """Upsert ``record``'s row into ``ops/runs`` (not counted as the run's own write).

    A lost commit race (another run's row committed first) is retried; a store refusing access,
    a corrupt log or a full disk is not.

    Raises:
        LakeError: when the row could not be written after :data:`WRITE_ATTEMPTS` tries.
    """
    frame = pl.DataFrame([record.row()], schema=RUNS_SCHEMA)
    entry = table(RUNS)
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with suspended():
                lake.merge(RUNS, frame, keys=list(entry.keys), only_if_changed=False)
            return
        except LakeError as exc:
            if attempt == WRITE_ATTEMPTS or isinstance(exc, PERMANENT):
                raise
            time.sleep(_RETRY_PAUSE_SECONDS * attempt)


def read_runs(
    lake: Lake, *, since: datetime | None = None, flow: str | None = None, limit: int = 50
) -> pl.DataFrame:
    """The newest runs first (only those started at or after ``since``, of ``flow``)."""
    if not lake.exists(RUNS):
        return pl.DataFrame(schema=RUNS_SCHEMA)
    with suspended():
        runs = lake.scan(RUNS)
    if since is not None:
        runs = runs.filter(pl.col("started_at") >= since)
    if flow:
        runs = runs.filter(pl.col("flow") == flow)
    return runs.sort("started_at", descending=True).head(limit).collect()


def redact_parameters(value: Any, name: str = "") -> Any:
    """``value`` with secrets masked: a secret-looking name masks its whole value; every string
    goes through :func:`redact` (registered secrets, URL user info, ``key=...`` parameters)."""
    if name and is_secret_name(name) and value not in (None, "", [], {}):
        return MASK
    if isinstance(value, dict):
        return {str(k): redact_parameters(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_parameters(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def one_line(text: str) -> str:
    """``text`` on one line, secrets masked, bounded."""
    flat = redact(" ".join(text.split()))
    return flat if len(flat) <= ERROR_CHARS else flat[: ERROR_CHARS - 1] + "…"


_COUNT_NAME = re.compile(r"[a-z][a-z0-9_]*")


def result_counts(result: Any) -> dict[str, int]:
    """Integer totals of a flow's result: the int fields of a report (or of each report in a
    list, summed); for a report of reports (the pipeline), ``<field>.<count>``."""
    counts: dict[str, int] = {}
    for prefix, report in _reports(result):
        for name, value in _int_fields(report).items():
            key = f"{prefix}{name}"
            counts[key] = counts.get(key, 0) + value
    return counts


def kept_back(result: Any) -> list[str]:
    """``destination/segment: why`` for each audience a result's publish reports held or
    skipped (the reports of a publish, or those of a pipeline's publish)."""
    return [
        f"{report.destination}/{report.segment}: {reason}"
        for _, report in _reports(result)
        if (reason := getattr(report, "held", None) or getattr(report, "skipped", None))
        and hasattr(report, "destination")
        and hasattr(report, "segment")
    ]


def _reports(result: Any) -> list[tuple[str, Any]]:
    items = result if isinstance(result, list) else [result]
    found: list[tuple[str, Any]] = []
    for item in items:
        if not is_dataclass(item) or isinstance(item, type):
            continue
        found.append(("", item))
        for f in fields(item):
            value = getattr(item, f.name)
            nested = value if isinstance(value, list) else [value]
            found.extend(
                (f"{f.name}.", n) for n in nested if is_dataclass(n) and not isinstance(n, type)
            )
    return found


def _int_fields(report: Any) -> dict[str, int]:
    return {
        f.name: getattr(report, f.name)
        for f in fields(report)
        if isinstance(getattr(report, f.name), int)
        and not isinstance(getattr(report, f.name), bool)
        and _COUNT_NAME.fullmatch(f.name)
    }

"""``ops/source_runs``: how each source's ingest ended, so publish can hold what a failed one feeds.

Sources are independent: the ingest flow reads every source even when one fails, and records
one row per source and run here (``landed`` or ``failed`` with its error). A source whose
latest ingest failed holds the publish of every audience it feeds, as an error-level volume
anomaly does, until an ingest of that source lands again: its audiences would otherwise go out
built on data that silently stopped updating.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.lake import Lake
from tasks.core.audience_lineage import source_audiences
from tasks.core.config import PipelineConfig
from tasks.core.tables import SOURCE_RUNS as SOURCE_RUNS
from tasks.core.tables import SOURCE_RUNS_SCHEMA as SOURCE_RUNS_SCHEMA
from tasks.resources import open_lake

SourceStatus = Literal["landed", "failed"]


REASON_ERROR_CHARS = 240  # of a failed source's error, in a hold reason
# An error may quote a record ("record without primary key: {...}"); this log is kept and never
# erased per person, so addresses are masked before it is written.
_EMAIL = re.compile(r"[^\s@'\"<>(){}\[\],;:]+@[^\s@'\"<>(){}\[\],;:]+\.[A-Za-z]{2,}")


def mask_emails(text: str) -> str:
    """``text`` with every email-like token replaced by ``<email>``."""
    return _EMAIL.sub("<email>", text)


@task(cache_policy=NO_CACHE)
def record_source_runs(errors: Mapping[str, str | None], *, run_id: str, now: datetime) -> int:
    """Append how each source of this ingest ended (``None`` = landed), once per attempt."""
    rows = [
        {
            "run_id": run_id,
            "source": source,
            "status": "landed" if error is None else "failed",
            "error": None if error is None else mask_emails(error),
            "finished_at": now,
        }
        for source, error in sorted(errors.items())
    ]
    frame = pl.DataFrame(rows, schema=SOURCE_RUNS_SCHEMA)
    open_lake().append_once(SOURCE_RUNS, frame, batch_id=source_runs_batch_id(errors, run_id, now))
    return frame.height


def source_runs_batch_id(sources: Iterable[str], run_id: str, now: datetime) -> str:
    """The ``append_once`` key of one ingest attempt's records.

    ``now`` is part of it: a flow run retried from the UI keeps its ``run_id`` but ingests again
    at a later ``now``, and its outcome must be recorded (a source that lands on the retry lifts
    its hold). A retry of this task alone gets the same arguments, so it stays a no-op.
    """
    names = hashlib.sha256(",".join(sorted(sources)).encode()).hexdigest()[:12]
    return f"source_runs:{run_id}:{names}:{now.isoformat()}"


def latest_failures(runs: pl.LazyFrame) -> pl.LazyFrame:
    """``source, run_id, error`` of each source whose latest recorded ingest failed."""
    return (
        runs.sort("finished_at")
        .group_by("source")
        .agg(pl.all().last())
        .filter(pl.col("status") == "failed")
        .select("source", "run_id", "error")
        .sort("source")
    )


def failed_source_holds(lake: Lake, config: PipelineConfig) -> list[tuple[str, str]]:
    """(segment, reason) for every segment fed by a source whose latest ingest failed."""
    if not lake.exists(SOURCE_RUNS):
        return []
    held = []
    for row in latest_failures(lake.scan(SOURCE_RUNS)).collect().iter_rows(named=True):
        error = str(row["error"] or "")
        if len(error) > REASON_ERROR_CHARS:
            error = error[: REASON_ERROR_CHARS - 1] + "…"
        name, run = row["source"], row["run_id"]
        reason = f"source {name} failed in its latest ingest (run {run}): {error}"
        held += [(segment, reason) for segment in source_audiences(config, name)]
    return held

"""``ops/volume_metrics``: row counts per run, table, source and segment.

Ingest records the rows each source landed in ``bronze/<source>``; transform records silver and
gold counts (per source where it can, and per segment for audiences). The volume-anomaly check
(:mod:`tasks.anomaly`) reads this history.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.tables import VOLUME_METRICS as VOLUME_METRICS
from tasks.core.tables import VOLUME_SCHEMA as VOLUME_SCHEMA
from tasks.resources import open_lake

Metric = dict[str, Any]


@task(cache_policy=NO_CACHE)
def record_volumes(metrics: Sequence[Metric], *, run_id: str, stage: str, now: datetime) -> int:
    """Append this run's row counts to ``ops/volume_metrics`` (once per run and stage)."""
    lake = open_lake()
    rows = [
        {"run_id": run_id, "measured_at": now, "source": None, "segment": None, **m}
        for m in metrics
    ]
    frame = pl.DataFrame(rows, schema=VOLUME_SCHEMA) if rows else pl.DataFrame(schema=VOLUME_SCHEMA)
    lake.append_once(VOLUME_METRICS, frame, batch_id=f"volume_metrics:{stage}:{run_id}")
    return frame.height

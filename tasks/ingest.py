"""Ingest tasks: one source -> ``bronze/<source>``, idempotently.

Entity sources are merged on their primary key; file and event sources are appended exactly
once per batch (a Delta transaction id committed with the rows). The watermark for incremental
pulls is read from what bronze holds, never from a side store.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.lake import Lake
from tasks.connectors.sources import SourceBatch, open_source
from tasks.core.config import Source
from tasks.core.normalise import UTC_MICROS
from tasks.errors import ConfigError
from tasks.reports import IngestReport
from tasks.resources import open_lake
from tasks.retries import retry_unless_permanent


def bronze_table(source_name: str) -> str:
    return f"bronze/{source_name}"


def committed_watermark(lake: Lake, table: str, cursor_field: str | None) -> str | None:
    """The largest cursor value committed in bronze (raw, as the source wrote it)."""
    if cursor_field is None or not lake.exists(table):
        return None
    lf = lake.scan(table)
    if cursor_field not in lf.collect_schema():
        return None
    value = lf.select(pl.col(cursor_field).cast(pl.String).max()).collect().item()
    return None if value is None else str(value)


def with_ingest_metadata(
    batch: SourceBatch, *, source: str, run_id: str, batch_id: str, ingested_at: datetime
) -> pl.DataFrame:
    return batch.frame.with_columns(
        pl.lit(ingested_at).cast(UTC_MICROS).alias("_ingested_at"),
        pl.lit(run_id).alias("_run_id"),
        pl.lit(batch_id).alias("_batch_id"),
        pl.lit(source).alias("_source"),
    )


@task(
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,
    task_run_name="ingest-{name}",
)
def ingest_source(
    name: str, source: Source, *, run_id: str, started_at: datetime, full_refresh: bool = False
) -> IngestReport:
    """Pull ``source`` (incrementally unless ``full_refresh``) into ``bronze/<name>``."""
    logger = get_run_logger()
    lake = open_lake()
    table = bronze_table(name)
    reader = open_source(name, source)
    since = None if full_refresh else committed_watermark(lake, table, reader.cursor_field)
    logger.info("ingest %s -> %s (since=%s)", name, table, since or "beginning")
    rows = batches = skipped = 0
    try:
        for number, batch in enumerate(
            reader.batches(since=since, is_committed=lambda b: lake.committed(table, b))
        ):
            batch_id = batch.batch_id or f"{run_id}:{number}"
            frame = with_ingest_metadata(
                batch, source=name, run_id=run_id, batch_id=batch_id, ingested_at=started_at
            )
            if reader.write_mode == "append_once":
                written = lake.append_once(table, frame, batch_id=batch_id)
                skipped += 0 if written else 1
            else:
                if reader.primary_key is None:
                    raise ConfigError(f"source {name!r}: a merged source needs a primary_key")
                lake.merge(table, frame, keys=[reader.primary_key])
                written = True
            if written:
                rows += frame.height
                batches += 1
            logger.info("%s: batch %d %s: %d rows", name, number + 1, batch.origin, frame.height)
    finally:
        reader.close()
    return IngestReport(
        source=name,
        table=table,
        rows=rows,
        batches=batches,
        skipped_batches=skipped,
        watermark=committed_watermark(lake, table, reader.cursor_field),
    )

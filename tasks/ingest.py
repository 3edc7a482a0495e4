"""Ingest tasks: one source -> ``bronze/<source>``, idempotently.

Entity sources are merged on their primary key; file and event sources are appended exactly
once per batch (a Delta transaction id committed with the rows). The watermark for incremental
pulls is read from what bronze holds, never from a side store.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.lake import CHANGE_FEED, Lake
from tasks.connectors.sources import SourceBatch, open_source
from tasks.core.config import Source
from tasks.core.drift import Rejection, rejection_records, split_drift
from tasks.core.masking import mask_emails, mask_quarantine
from tasks.core.normalise import UTC_MICROS
from tasks.core.tables import bronze_pii
from tasks.core.tables import bronze_table as bronze_table
from tasks.errors import ConfigError
from tasks.quarantine import (
    QUARANTINE,
    records_batch_id,
    rejected_batch_id,
    write_quarantine_records,
)
from tasks.reports import IngestReport
from tasks.resources import open_lake, pepper
from tasks.retries import retry_unless_permanent
from tasks.suppression import load_suppression
from tasks.token_stores import PREFECT_SECRET as _REGISTERS_PREFECT_TOKEN_STORE  # noqa: F401

BATCH_TEMPLATE = "%s: batch %d %s: %d rows"
"""The line each landed batch logs; the CLI's progress feed counts rows from it."""


def committed_watermark(lake: Lake, table: str, cursor_field: str | None) -> str | None:
    """The largest cursor value committed in bronze (raw, as the source wrote it)."""
    if cursor_field is None or not lake.exists(table):
        return None
    lf = lake.scan(table)
    if cursor_field not in lf.collect_schema():
        return None
    # Max in the column's own type, then text: a text max of numbers would be lexical.
    value = lf.select(pl.col(cursor_field).max().cast(pl.String)).collect().item()
    return None if value is None else str(value)


def record_changes(lake: Lake, table: str) -> None:
    """Make bronze ``table`` record its changes (Delta change data feed).

    A new table is created with the feed on (the writes below pass :data:`CHANGE_FEED`); a
    table created before the feed existed is upgraded once, here, before this run writes, so
    the run's own changes are recorded. The upgrade is a metadata commit that changes no row.
    """
    if lake.exists(table) and lake.enable_change_feed(table):
        get_run_logger().info(
            "%s: change data feed turned on (version %s)", table, lake.version(table)
        )


def with_ingest_metadata(
    batch: SourceBatch, *, source: str, run_id: str, batch_id: str, ingested_at: datetime
) -> pl.DataFrame:
    return batch.frame.with_columns(
        pl.lit(ingested_at).cast(UTC_MICROS).alias("_ingested_at"),
        pl.lit(run_id).alias("_run_id"),
        pl.lit(batch_id).alias("_batch_id"),
        pl.lit(source).alias("_source"),
    )


def bronze_schema(lake: Lake, table: str) -> pl.Schema | None:
    """Bronze's current schema (None before the table exists)."""
    return lake.scan(table).collect_schema() if lake.exists(table) else None


def screen_batch(
    lake: Lake,
    table: str,
    batch: SourceBatch,
    *,
    source: str,
    primary_key: str | None,
    run_id: str,
    now: datetime,
    pii: tuple[str, ...] = (),
) -> tuple[SourceBatch, int]:
    """The batch without the rows bronze cannot take, which go to ``ops/quarantine``.

    Rows whose key is missing or whose values conflict with bronze's column types are
    quarantined (:mod:`tasks.core.drift`), together with the raw records the reader could not
    parse; the rest is returned with its columns cast to bronze's types. The records' ``pii``
    columns (the source's identifier columns) are masked. Returns the cleaned batch and how
    many rows/records were quarantined.
    """
    split = split_drift(
        batch.frame.lazy(),
        target=bronze_schema(lake, table),
        primary_key=primary_key,
        table=table,
        source=source,
        run_id=run_id,
        now=now,
    )
    valid, records = pl.collect_all([split.valid, split.quarantine])
    if batch.rejections:
        more = rejection_records(
            batch.rejections, table=table, source=source, run_id=run_id, now=now
        )
        records = pl.concat([records, more], how="vertical")
    records = mask_quarantine(records, pii)
    if records.height:
        # Quarantine before the rows land: a crash in between re-reads the batch, and the
        # content-derived batch id makes the second quarantine write a no-op.
        write_quarantine_records(lake, records, batch_id=records_batch_id(table, records))
    bad = batch.frame.height - valid.height + len(batch.rejections)
    return replace(batch, frame=valid), bad


def reject_batch(
    lake: Lake,
    table: str,
    rejection: Rejection,
    *,
    source: str,
    batch_id: str,
    run_id: str,
    now: datetime,
    pii: tuple[str, ...] = (),
) -> None:
    """Quarantine a batch the reader could not read at all, recorded under its own batch id."""
    records = rejection_records([rejection], table=table, source=source, run_id=run_id, now=now)
    records = mask_quarantine(records, pii)
    write_quarantine_records(lake, records, batch_id=rejected_batch_id(table, batch_id))


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
    pii = bronze_pii(source)
    reader = open_source(name, source)
    since = None if full_refresh else committed_watermark(lake, table, reader.cursor_field)
    record_changes(lake, table)
    secret, key_version = pepper()
    suppression = load_suppression(lake, pepper=secret, version=key_version)
    email_column = source.column("email")
    logger.info("ingest %s -> %s (since=%s)", name, table, since or "beginning")
    rows = batches = skipped = quarantined = rejected = 0
    known_bad: list[str] = []

    def already_done(batch_id: str) -> bool:
        if lake.committed(table, batch_id):
            return True
        if lake.committed(QUARANTINE, rejected_batch_id(table, batch_id)):
            known_bad.append(batch_id)  # quarantined whole by an earlier run: report, not retry
            return True
        return False

    try:
        for number, batch in enumerate(reader.batches(since=since, is_committed=already_done)):
            batch_id = batch.batch_id or f"{run_id}:{number}"
            if batch.rejected is not None:
                reject_batch(
                    lake,
                    table,
                    batch.rejected,
                    source=name,
                    batch_id=batch_id,
                    run_id=run_id,
                    now=started_at,
                    pii=pii,
                )
                rejected += 1
                logger.warning(
                    "%s: quarantined whole: %s", name, mask_emails(batch.rejected.reason)
                )
                continue
            if suppression:  # erased people never land again (see tasks.suppression)
                kept = suppression.drop(batch.frame.lazy(), email_column).collect()
                batch = replace(batch, frame=kept)
            batch, bad = screen_batch(
                lake,
                table,
                batch,
                source=name,
                primary_key=reader.primary_key,
                run_id=run_id,
                now=started_at,
                pii=pii,
            )
            if bad:
                quarantined += bad
                logger.warning("%s: %s: %d row(s) quarantined", name, batch.origin, bad)
            if (
                reader.write_mode != "append_once"
                and batch.frame.height == 0
                and reader.primary_key not in batch.frame.columns
            ):
                continue  # every row lacked the key and was quarantined: nothing to merge
            frame = with_ingest_metadata(
                batch, source=name, run_id=run_id, batch_id=batch_id, ingested_at=started_at
            )
            if reader.write_mode == "append_once":
                written = lake.append_once(
                    table, frame, batch_id=batch_id, table_properties=CHANGE_FEED
                )
                skipped += 0 if written else 1
            elif reader.write_mode == "insert_new":
                # At-least-once deliveries: keys bronze already holds keep their first row.
                if reader.primary_key is None:
                    raise ConfigError(f"source {name!r}: deduped deliveries need a primary_key")
                inserted = lake.insert_new(
                    table,
                    frame,
                    keys=[reader.primary_key],
                    batch_id=batch_id,
                    also_record=batch.covers,
                    table_properties=CHANGE_FEED,
                )
                written = inserted is not None
                skipped += 0 if written else 1
            else:
                if reader.primary_key is None:
                    raise ConfigError(f"source {name!r}: a merged source needs a primary_key")
                lake.merge(table, frame, keys=[reader.primary_key], table_properties=CHANGE_FEED)
                written = True
            if written:
                rows += frame.height
                batches += 1
            logger.info(BATCH_TEMPLATE, name, number + 1, batch.origin, frame.height)
    finally:
        reader.close()
    if known_bad:
        logger.warning(
            "%s: %d batch(es) skipped: quarantined whole in an earlier run (fix the file and "
            "drop it again as a new version): %s",
            name,
            len(known_bad),
            ", ".join(known_bad[:20]),
        )
    return IngestReport(
        source=name,
        table=table,
        rows=rows,
        batches=batches,
        skipped_batches=skipped,
        watermark=committed_watermark(lake, table, reader.cursor_field),
        quarantined_rows=quarantined,
        rejected_batches=rejected,
        known_bad_batches=len(known_bad),
    )

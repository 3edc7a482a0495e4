"""Transform tasks: bronze -> silver (validated, deduped, resolved) -> gold (features, audiences).

Each task reads through the lake adapter, calls pure core functions, writes idempotently, and
returns a small report. Rows that break a contract go to ``ops/quarantine``; every run appends
row counts to ``ops/volume_metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandera.polars as pa
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.lake import Lake
from tasks.core.canonical import to_canonical
from tasks.core.config import PipelineConfig
from tasks.core.contracts import (
    AudienceMember,
    ContactCandidate,
    CustomerFeatures,
    EnrichmentCandidate,
    EventCandidate,
    OrderCandidate,
    SilverContact,
    SilverEvent,
    SilverOrder,
    split_valid,
    validate_or_raise,
)
from tasks.core.entities import resolve_contacts, silver_events, silver_orders
from tasks.core.features import AUDIENCE_SCHEMA, audience_members, customer_features
from tasks.core.normalise import UTC_MICROS
from tasks.ingest import bronze_table
from tasks.reports import TableReport
from tasks.resources import open_lake, pepper

CONTACTS = "silver/contacts"
ORDERS = "silver/orders"
EVENTS = "silver/events"
FEATURES = "gold/customer_features"
AUDIENCE = "gold/audience_members"
QUARANTINE = "ops/quarantine"
VOLUME_METRICS = "ops/volume_metrics"

VOLUME_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "measured_at": UTC_MICROS,
    "table": pl.String(),
    "source": pl.String(),
    "segment": pl.String(),
    "rows": pl.Int64(),
    "quarantined": pl.Int64(),
}

Metric = dict[str, Any]


def role_candidates(lake: Lake, config: PipelineConfig, role: str) -> pl.DataFrame | None:
    """Canonical rows of every ingested source with ``role`` (None if none is ingested)."""
    frames = [
        to_canonical(lake.scan(bronze_table(name)), source, source_name=name)
        for name, source in config.sources_with_role(role).items()
        if lake.exists(bronze_table(name))
    ]
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed").collect()


def write_quarantine(lake: Lake, quarantine: pl.DataFrame, *, table: str, run_id: str) -> None:
    """Add quarantine records not already present (same row + rule = same id)."""
    if lake.exists(QUARANTINE):
        known = lake.scan(QUARANTINE).select("quarantine_id")
        quarantine = quarantine.lazy().join(known, on="quarantine_id", how="anti").collect()
        if quarantine.is_empty():
            return
    lake.append_once(QUARANTINE, quarantine, batch_id=f"quarantine:{table}:{run_id}")


def checked(
    lake: Lake,
    frame: pl.DataFrame,
    model: type[pa.DataFrameModel],
    *,
    table: str,
    run_id: str,
    now: datetime,
) -> tuple[pl.DataFrame, list[Metric]]:
    """Valid rows of ``frame``; the rest quarantined; per-source metrics of both."""
    split = split_valid(frame, model, table=table, run_id=run_id, now=now)
    write_quarantine(lake, split.quarantine, table=table, run_id=run_id)
    bad = frame.height - split.valid.height
    if bad:
        get_run_logger().warning("%s: %d row(s) quarantined", table, bad)
    valid_by = split.valid.group_by("_source").len("rows")
    bad_by = (
        split.quarantine.group_by("source")
        .agg(pl.col("row").n_unique().alias("quarantined"))
        .rename({"source": "_source"})
    )
    metrics = (
        frame.select("_source")
        .unique()
        .join(valid_by, on="_source", how="left")
        .join(bad_by, on="_source", how="left")
        .fill_null(0)
        .sort("_source")
    )
    return split.valid, [
        {"table": table, "source": r["_source"], "rows": r["rows"], "quarantined": r["quarantined"]}
        for r in metrics.iter_rows(named=True)
    ]


def _empty_report(table: str) -> tuple[TableReport, list[Metric]]:
    return TableReport(table, 0, 0, 0, 0), []


@task(cache_policy=NO_CACHE)
def build_contacts(
    config: PipelineConfig, *, run_id: str, now: datetime
) -> tuple[TableReport, list[Metric]]:
    """bronze contact sources (+ enrichment) -> ``silver/contacts``."""
    lake = open_lake()
    candidates = role_candidates(lake, config, "contacts")
    if candidates is None:
        return _empty_report(CONTACTS)
    valid, metrics = checked(
        lake, candidates, ContactCandidate, table=CONTACTS, run_id=run_id, now=now
    )
    enrichment = role_candidates(lake, config, "enrichment")
    enrichment_valid = None
    if enrichment is not None:
        enrichment_valid, more = checked(
            lake, enrichment, EnrichmentCandidate, table=CONTACTS, run_id=run_id, now=now
        )
        metrics += more
    secret, version = pepper()
    contacts = resolve_contacts(
        valid.lazy(),
        None if enrichment_valid is None else enrichment_valid.lazy(),
        pepper=secret,
        key_version=version,
    ).collect()
    validate_or_raise(contacts, SilverContact, table=CONTACTS)
    lake.merge(CONTACTS, contacts, keys=["contact_key"])
    report = TableReport(
        CONTACTS,
        rows_in=candidates.height,
        rows_out=contacts.height,
        quarantined=candidates.height - valid.height,
        duplicates=valid.height - contacts.height,
    )
    metrics.append({"table": CONTACTS, "source": None, "rows": contacts.height, "quarantined": 0})
    return report, metrics


@task(cache_policy=NO_CACHE)
def build_orders(
    config: PipelineConfig, *, run_id: str, now: datetime
) -> tuple[TableReport, list[Metric]]:
    """bronze order sources -> ``silver/orders`` (latest version of each order)."""
    return _build_keyed(config, role="orders", table=ORDERS, key="order_id", run_id=run_id, now=now)


@task(cache_policy=NO_CACHE)
def build_events(
    config: PipelineConfig, *, run_id: str, now: datetime
) -> tuple[TableReport, list[Metric]]:
    """bronze event sources -> ``silver/events`` (one row per event id)."""
    return _build_keyed(config, role="events", table=EVENTS, key="event_id", run_id=run_id, now=now)


_KEYED = {
    "orders": (OrderCandidate, SilverOrder, silver_orders),
    "events": (EventCandidate, SilverEvent, silver_events),
}


def _build_keyed(
    config: PipelineConfig, *, role: str, table: str, key: str, run_id: str, now: datetime
) -> tuple[TableReport, list[Metric]]:
    lake = open_lake()
    candidates = role_candidates(lake, config, role)
    if candidates is None:
        return _empty_report(table)
    candidate_model, output_model, build = _KEYED[role]
    valid, metrics = checked(lake, candidates, candidate_model, table=table, run_id=run_id, now=now)
    secret, version = pepper()
    output = build(valid.lazy(), pepper=secret, key_version=version).collect()
    validate_or_raise(output, output_model, table=table)
    lake.merge(table, output, keys=[key])
    metrics.append({"table": table, "source": None, "rows": output.height, "quarantined": 0})
    report = TableReport(
        table,
        rows_in=candidates.height,
        rows_out=output.height,
        quarantined=candidates.height - valid.height,
        duplicates=valid.height - output.height,
    )
    return report, metrics


def _scan_or_empty(lake: Lake, table: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    return lake.scan(table) if lake.exists(table) else pl.LazyFrame(schema=schema)


@task(cache_policy=NO_CACHE)
def build_gold(
    config: PipelineConfig, *, as_of: datetime, run_id: str
) -> tuple[dict[str, int], list[Metric]]:
    """silver -> ``gold/customer_features`` and ``gold/audience_members`` (by segment)."""
    del run_id
    lake = open_lake()
    contacts = lake.scan(CONTACTS)
    orders = _scan_or_empty(
        lake,
        ORDERS,
        {
            "contact_key": pl.String(),
            "amount": pl.Float64(),
            "status": pl.String(),
            "created_at": UTC_MICROS,
        },
    )
    events = _scan_or_empty(lake, EVENTS, {"contact_key": pl.String(), "occurred_at": UTC_MICROS})
    features = customer_features(contacts, orders, events, as_of=as_of).collect()
    validate_or_raise(features, CustomerFeatures, table=FEATURES)
    lake.overwrite(FEATURES, features)
    members = audience_members(features.lazy(), contacts, config.segments).collect()
    validate_or_raise(members, AudienceMember, table=AUDIENCE)
    members = members.select(list(AUDIENCE_SCHEMA))
    if lake.exists(AUDIENCE):
        lake.overwrite_partitions(AUDIENCE, members, partition_by="segment", all_partitions=True)
    else:
        lake.overwrite(AUDIENCE, members, partition_by=["segment"])
    sizes = {s.name: 0 for s in config.segments}
    sizes.update(dict(members.group_by("segment").len().iter_rows()))
    metrics: list[Metric] = [
        {"table": FEATURES, "source": None, "rows": features.height, "quarantined": 0},
        *(
            {"table": AUDIENCE, "segment": name, "rows": size, "quarantined": 0}
            for name, size in sorted(sizes.items())
        ),
    ]
    return sizes, metrics


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

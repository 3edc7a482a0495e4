"""Transform tasks: bronze -> silver (validated, deduped, resolved) -> gold (features, audiences).

Each task reads through the lake adapter, calls pure core functions, writes idempotently, and
returns a small report. Every row that breaks a contract, on the way in (``*Candidate``) or out
(the silver and gold table models), goes to ``ops/quarantine``; the report carries the row
balance of each table, the quarantine counts per rule, and the source values normalisation could
not read. Row counts for ``ops/volume_metrics`` are returned for the flow to record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.lake import Lake
from tasks.core.canonical import (
    NormaliseOptions,
    canonical_schema,
    normalisation_losses,
    to_canonical,
)
from tasks.core.config import PipelineConfig
from tasks.core.contracts import (
    QUARANTINE_SCHEMA,
    AudienceMember,
    ContactCandidate,
    Contract,
    CustomerFeatures,
    EnrichmentCandidate,
    EventCandidate,
    SilverContact,
    SilverEvent,
    SilverOrder,
    Split,
    order_contract,
    rule_counts,
    split_valid,
)
from tasks.core.entities import (
    dedupe_enrichment,
    dedupe_events,
    dedupe_orders,
    resolve_contacts,
    silver_events,
    silver_orders,
)
from tasks.core.features import AUDIENCE_SCHEMA, audience_members, customer_features
from tasks.core.normalise import UTC_MICROS
from tasks.ingest import bronze_table
from tasks.quarantine import records_batch_id, write_quarantine_records
from tasks.reports import TableReport
from tasks.resources import open_lake, pepper

# Re-exported: the volume metrics live in tasks.volume (ingest records them too).
from tasks.volume import VOLUME_METRICS as VOLUME_METRICS
from tasks.volume import Metric
from tasks.volume import record_volumes as record_volumes

CONTACTS = "silver/contacts"
ORDERS = "silver/orders"
EVENTS = "silver/events"
FEATURES = "gold/customer_features"
AUDIENCE = "gold/audience_members"
QUARANTINE = "ops/quarantine"

ROLES = ("contacts", "enrichment", "orders", "events")

# A table whose stale keys (gone from the new result) exceed this share is rewritten whole
# instead of merged and pruned: one overwrite beats a delete predicate listing most keys.
REWRITE_SHARE = 0.1
REWRITE_MIN = 1_000


@dataclass(frozen=True)
class StageReport:
    """What one transform stage did: row balances, counts for volume metrics, data quality."""

    tables: list[TableReport]
    metrics: list[Metric]
    rule_counts: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)
    audience_sizes: dict[str, int] = field(default_factory=dict)


class Checker:
    """Checks frames against contracts for one stage; keeps the quarantine and metrics."""

    def __init__(self, *, run_id: str, now: datetime) -> None:
        self.run_id = run_id
        self.now = now
        self.quarantine: list[pl.DataFrame] = []
        self.metrics: list[Metric] = []

    def check(self, frame: pl.DataFrame, contract: Contract, *, table: str) -> Split:
        """Valid rows of ``frame``; quarantine records and per-source counts kept for later."""
        split = split_valid(frame, contract, table=table, run_id=self.run_id, now=self.now)
        self.quarantine.append(split.quarantine)
        if split.rejected:
            get_run_logger().warning(
                "%s: %d row(s) quarantined by %s", table, split.rejected, _name(contract)
            )
        if "_source" in frame.columns:
            self.metrics += _per_source(frame, split, table=table)
        return split

    def records(self) -> pl.DataFrame:
        if not self.quarantine:
            return pl.DataFrame(schema=QUARANTINE_SCHEMA)
        return pl.concat(self.quarantine).unique("quarantine_id", maintain_order=True)

    def write(self, lake: Lake, *, stage: str) -> list[dict[str, Any]]:
        """Write this stage's quarantine (idempotently) and return its counts per rule."""
        records = self.records()
        if records.height:
            write_quarantine_records(
                lake, records, batch_id=records_batch_id(f"transform-{stage}", records)
            )
        return rule_counts(records.lazy()).collect().to_dicts()


def _name(contract: Contract) -> str:
    return getattr(contract, "__name__", None) or str(getattr(contract, "name", "contract"))


def _per_source(frame: pl.DataFrame, split: Split, *, table: str) -> list[Metric]:
    valid = split.valid.group_by("_source").len("rows")
    bad = (
        split.quarantine.group_by("source")
        .agg(pl.col("row").n_unique().alias("quarantined"))
        .rename({"source": "_source"})
    )
    counts = (
        frame.select("_source")
        .unique()
        .join(valid, on="_source", how="left")
        .join(bad, on="_source", how="left")
        .fill_null(0)
        .sort("_source")
    )
    return [
        {"table": table, "source": r["_source"], "rows": r["rows"], "quarantined": r["quarantined"]}
        for r in counts.iter_rows(named=True)
    ]


def role_candidates(
    lake: Lake, config: PipelineConfig, role: str, options: NormaliseOptions | None = None
) -> pl.DataFrame:
    """Canonical rows of every ingested source with ``role`` (no rows if none is ingested)."""
    frames = [
        to_canonical(lake.scan(bronze_table(name)), source, source_name=name, options=options)
        for name, source in config.sources_with_role(role).items()
        if lake.exists(bronze_table(name))
    ]
    if not frames:
        return pl.DataFrame(schema=canonical_schema(role))
    return pl.concat(frames, how="diagonal_relaxed").collect()


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def replace_table(lake: Lake, table: str, df: pl.DataFrame, *, key: str) -> None:
    """Make ``table`` hold exactly ``df`` (one row per ``key``), touching as little as possible.

    Rows that did not change are not rewritten and an unchanged result commits nothing (merge
    with ``only_if_changed``); keys that disappeared (a person whose last record was corrected
    away, an order now quarantined) are deleted, so silver never keeps a stale row - a stale
    contact could carry a stale consent. A changed schema, or mostly-new keys, rewrites the table.
    """
    if not lake.exists(table):
        lake.overwrite(table, df)
        return
    current = lake.scan(table)
    if dict(current.collect_schema()) != dict(df.schema):
        lake.overwrite(table, df)
        return
    stale = current.select(key).join(df.lazy().select(key), on=key, how="anti").collect()
    if stale.height > max(REWRITE_MIN, REWRITE_SHARE * df.height):
        lake.overwrite(table, df)
        return
    lake.merge(table, df, keys=[key])
    if stale.height:
        keys = ", ".join(_sql_literal(k) for k in stale.get_column(key).to_list())
        lake.delete(table, f"{key} IN ({keys})")


ROLE_TABLES = {"contacts": CONTACTS, "enrichment": CONTACTS, "orders": ORDERS, "events": EVENTS}


@task(cache_policy=NO_CACHE)
def build_silver(config: PipelineConfig, *, run_id: str, now: datetime) -> StageReport:
    """bronze (every role) -> ``silver/orders``, ``silver/events``, ``silver/contacts``.

    One task because identity resolution needs the valid rows of every role at once: the
    customers behind orders and the users behind events become contacts too.
    """
    lake = open_lake()
    contact_sources = config.sources_with_role("contacts")
    if not any(lake.exists(bronze_table(name)) for name in contact_sources):
        get_run_logger().warning("no contact source ingested yet: silver not built")
        return StageReport(tables=[], metrics=[])
    settings = config.transform
    rates = settings.currency.to_reporting()
    secret, version = pepper()
    options = NormaliseOptions(default_phone_region=settings.default_phone_region)
    raw = {role: role_candidates(lake, config, role, options) for role in ROLES}
    contracts: dict[str, Contract] = {
        "contacts": ContactCandidate,
        "enrichment": EnrichmentCandidate,
        "orders": order_contract(rates),
        "events": EventCandidate,
    }
    checker = Checker(run_id=run_id, now=now)
    inputs = {
        role: checker.check(raw[role], contracts[role], table=ROLE_TABLES[role]) for role in ROLES
    }
    orders = dedupe_orders(inputs["orders"].valid.lazy()).collect()
    events = dedupe_events(inputs["events"].valid.lazy()).collect()
    enrichment = dedupe_enrichment(inputs["enrichment"].valid.lazy()).collect()

    built_orders = silver_orders(
        orders.lazy(), rates=rates, pepper=secret, key_version=version
    ).collect()
    out_orders = _write_checked(lake, checker, built_orders, SilverOrder, ORDERS, key="order_id")
    built_events = silver_events(events.lazy(), pepper=secret, key_version=version).collect()
    out_events = _write_checked(lake, checker, built_events, SilverEvent, EVENTS, key="event_id")
    contacts = resolve_contacts(
        inputs["contacts"].valid.lazy(),
        enrichment.lazy(),
        orders.lazy(),
        events.lazy(),
        identity=settings.identity,
        pepper=secret,
        key_version=version,
    ).collect()
    out_contacts = _write_checked(
        lake, checker, contacts, SilverContact, CONTACTS, key="contact_key"
    )

    # Balances. Duplicates are counted from the inputs, independently of what was built, so a
    # balance that holds proves the build kept one row per key and lost no identity record.
    def superseded(split: Split, key: str) -> int:
        return split.valid.height - split.valid.get_column(key).n_unique()

    merged_people = int(contacts.get_column("record_count").sum()) - contacts.height
    reports = [
        TableReport(
            CONTACTS,
            rows_in=raw["contacts"].height
            + raw["enrichment"].height
            + _distinct_people(orders)
            + _distinct_people(events),
            rows_out=out_contacts.valid.height,
            quarantined=inputs["contacts"].rejected
            + inputs["enrichment"].rejected
            + out_contacts.rejected,
            duplicates=superseded(inputs["enrichment"], "email") + merged_people,
        ),
        TableReport(
            ORDERS,
            rows_in=raw["orders"].height,
            rows_out=out_orders.valid.height,
            quarantined=inputs["orders"].rejected + out_orders.rejected,
            duplicates=superseded(inputs["orders"], "order_id"),
        ),
        TableReport(
            EVENTS,
            rows_in=raw["events"].height,
            rows_out=out_events.valid.height,
            quarantined=inputs["events"].rejected + out_events.rejected,
            duplicates=superseded(inputs["events"], "event_id"),
        ),
    ]
    losses = pl.concat(
        [normalisation_losses(raw[role].lazy()) for role in ("contacts", "enrichment")]
    ).collect()
    return StageReport(
        tables=reports,
        metrics=checker.metrics,
        rule_counts=checker.write(lake, stage="silver"),
        losses=losses.to_dicts(),
    )


def _distinct_people(frame: pl.DataFrame) -> int:
    """Distinct ``(source, email)`` with an email: the identity records a role contributes."""
    return frame.filter(pl.col("email").is_not_null()).select("_source", "email").n_unique()


def _write_checked(
    lake: Lake,
    checker: Checker,
    built: pl.DataFrame,
    contract: Contract,
    table: str,
    *,
    key: str,
) -> Split:
    """Check a built table against its contract, write the valid rows, count them."""
    out = checker.check(built, contract, table=table)
    replace_table(lake, table, out.valid, key=key)
    checker.metrics.append(
        {"table": table, "source": None, "rows": out.valid.height, "quarantined": out.rejected}
    )
    return out


_EMPTY_ORDERS: dict[str, pl.DataType] = {
    "contact_key": pl.String(),
    "amount_reporting": pl.Float64(),
    "category": pl.String(),
    "status": pl.String(),
    "created_at": UTC_MICROS,
}
_EMPTY_EVENTS: dict[str, pl.DataType] = {"contact_key": pl.String(), "occurred_at": UTC_MICROS}


def _scan_or_empty(lake: Lake, table: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    return lake.scan(table) if lake.exists(table) else pl.LazyFrame(schema=schema)


@task(cache_policy=NO_CACHE)
def build_gold(
    config: PipelineConfig, *, as_of: datetime, run_id: str, now: datetime | None = None
) -> StageReport:
    """silver -> ``gold/customer_features`` and ``gold/audience_members`` (by segment)."""
    lake = open_lake()
    if not lake.exists(CONTACTS):
        get_run_logger().warning("silver/contacts does not exist yet: gold not built")
        return StageReport(tables=[], metrics=[])
    checker = Checker(run_id=run_id, now=now or as_of)
    contacts = lake.scan(CONTACTS)
    features = customer_features(
        contacts,
        _scan_or_empty(lake, ORDERS, _EMPTY_ORDERS),
        _scan_or_empty(lake, EVENTS, _EMPTY_EVENTS),
        as_of=as_of,
        rfm_window_days=config.transform.features.rfm_window_days,
    ).collect()
    checked_features = checker.check(features, CustomerFeatures, table=FEATURES)
    replace_table(lake, FEATURES, checked_features.valid, key="contact_key")
    members = audience_members(checked_features.valid.lazy(), contacts, config.segments).collect()
    checked_members = checker.check(members, AudienceMember, table=AUDIENCE)
    valid_members = checked_members.valid.select(list(AUDIENCE_SCHEMA))
    if lake.exists(AUDIENCE):
        lake.overwrite_partitions(
            AUDIENCE, valid_members, partition_by="segment", all_partitions=True
        )
    else:
        lake.overwrite(AUDIENCE, valid_members, partition_by=["segment"])
    sizes = {s.name: 0 for s in config.segments}
    sizes.update(dict(valid_members.group_by("segment").len().iter_rows()))
    contact_rows = contacts.select(pl.len()).collect().item()
    tables = [
        TableReport(
            FEATURES,
            rows_in=contact_rows,
            rows_out=checked_features.valid.height,
            quarantined=checked_features.rejected,
            duplicates=0,
        ),
        TableReport(
            AUDIENCE,
            rows_in=members.height,
            rows_out=valid_members.height,
            quarantined=checked_members.rejected,
            duplicates=0,
        ),
    ]
    metrics: list[Metric] = [
        {
            "table": FEATURES,
            "source": None,
            "rows": checked_features.valid.height,
            "quarantined": checked_features.rejected,
        },
        *(
            {"table": AUDIENCE, "segment": name, "rows": size, "quarantined": 0}
            for name, size in sorted(sizes.items())
        ),
    ]
    return StageReport(
        tables=tables,
        metrics=metrics,
        rule_counts=checker.write(lake, stage="gold"),
        audience_sizes=sizes,
    )

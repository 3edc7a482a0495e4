"""Retention: which tables' rows expire, after how long, and by which timestamp.

The table catalogue (:mod:`tasks.core.tables`) holds the defaults - ``retention_days`` counted
on ``retention_column`` - and ``maintenance.retention`` in ``pipeline.yaml`` overrides them per
table (days, or ``never``). :func:`retention_rules` resolves both into one
:class:`RetentionRule` per table that has rows to expire; the ``maintain`` flow deletes the rows
each rule selects (:func:`expired`) before it compacts and vacuums.

What expires where:

- **bronze** ages per source role: events by when they happened (the source's ``occurred_at``
  column, read with the parser staging uses, so bronze and silver agree about an event's age;
  an unreadable time falls back to ``_ingested_at``), every other role by ``_ingested_at``.
  Events expire after 395 days by default; contacts, enrichment and orders are kept unless
  configured (:func:`role_warning` says what configuring them does).
- **silver and gold** have no retention of their own: the next transform sees the rows bronze
  lost and removes what they built (the event leaves ``silver/events``, its person's features
  are recomputed), exactly as a full rebuild from the remaining bronze would.
- **the staging logs** keep, per record, the history of its copy counts; a record bronze no
  longer holds, once a transform has built from its removal, carries nothing a later build
  reads, and maintenance removes its log rows (:func:`tasks.retention.prune_staging_logs`).
- **ops** tables age by the time their row was written; evidence and current state (the
  consent ledger, erasure tables, the sync ledger, publish leases, platform suppressions) never
  expire, and configuring them is refused at load.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from tasks.core.config_base import SourceBase
from tasks.core.normalise import parse_timestamp
from tasks.core.tables import (
    BRONZE_PREFIX,
    CONTACTS,
    INGESTED_AT,
    ORDERS,
    TABLES,
    bronze_retention,
    is_bronze,
)


@dataclass(frozen=True)
class RetentionRule:
    """Rows of ``table`` whose ``column`` is older than ``days`` are deleted.

    ``configured``: the days come from ``pipeline.yaml`` (else the catalogue's default);
    ``key``: the column a bronze row is identified by (deletes of rows whose age must be
    parsed from text go by key); ``role``: the source role of a bronze table.
    """

    table: str
    days: int
    column: str
    configured: bool
    key: str | None = None
    role: str | None = None

    def cutoff(self, now: datetime) -> datetime:
        """Rows older than this expire."""
        return now - timedelta(days=self.days)

    @property
    def warning(self) -> str | None:
        """What expiring this table does beyond itself, when that is more than dropping old
        log rows (a configured retention on people or purchases)."""
        return role_warning(self.table, self.role, self.days) if self.configured else None


def role_warning(table: str, role: str | None, days: int) -> str | None:
    """The consequence of expiring a bronze table of ``role`` after ``days`` (None: events,
    whose expiry only drops old events)."""
    if role == "contacts":
        return (
            f"{table}: people whose every record there is older than {days} days leave "
            f"{CONTACTS} and every audience at the next transform, and the next publish "
            "removes them from the lists they were in"
        )
    if role == "orders":
        return (
            f"{table}: orders older than {days} days leave {ORDERS} at the next "
            "transform: order counts, lifetime value and RFM scores fall, segments may change"
        )
    if role == "enrichment":
        return (
            f"{table}: enrichment rows older than {days} days leave silver at the next "
            "transform: the attributes they gave (company, job title, city) are lost"
        )
    return None


def retention_rules(
    tables: Iterable[str],
    configured: Mapping[str, int | None],
    sources: Mapping[str, SourceBase],
) -> list[RetentionRule]:
    """One rule per table among ``tables`` whose rows expire (defaults, then ``configured``).

    Bronze tables of sources not in ``sources`` (removed from the config) keep their rows: the
    transform still holds them as staged, and the bronze reader that knew their layout is gone.
    """
    rules: list[RetentionRule] = []
    for table in tables:
        rule = _rule(table, configured, sources)
        if rule is not None:
            rules.append(rule)
    return rules


def _rule(
    table: str, configured: Mapping[str, int | None], sources: Mapping[str, SourceBase]
) -> RetentionRule | None:
    entry = TABLES.get(table)
    key: str | None = None
    role: str | None = None
    if entry is not None:
        column, default = entry.retention_column, entry.retention_days
        if entry.kept_because:
            return None
    elif is_bronze(table) and table.removeprefix(BRONZE_PREFIX) in sources:
        source = sources[table.removeprefix(BRONZE_PREFIX)]
        column, default = bronze_retention(source)
        role = source.role
        key = source.column("event_id") if role == "events" else None
    else:
        return None
    days = configured.get(table, default) if table in configured else default
    if column is None or days is None:
        return None
    return RetentionRule(table, days, column, table in configured, key=key, role=role)


def row_time(column: str, schema: Mapping[str, pl.DataType]) -> pl.Expr:
    """A row's time for retention: ``column`` as a UTC timestamp (text read like staging reads
    it), falling back to :data:`INGESTED_AT` where it is missing or unreadable."""
    time = parse_timestamp(pl.col(column), schema[column])
    if column != INGESTED_AT and INGESTED_AT in schema:
        time = pl.coalesce(time, parse_timestamp(pl.col(INGESTED_AT), schema[INGESTED_AT]))
    return time


def expired(rule: RetentionRule, schema: Mapping[str, pl.DataType], now: datetime) -> pl.Expr:
    """True for the rows ``rule`` expires at ``now`` (never for a row without any time).

    Raises:
        KeyError: naming the table and the column when the table has no such column.
    """
    if rule.column not in schema:
        raise KeyError(f"{rule.table}: retention column {rule.column!r} is not in the table")
    return (row_time(rule.column, schema) < rule.cutoff(now)).fill_null(False)


def sql_predicate(rule: RetentionRule, schema: Mapping[str, pl.DataType], now: datetime) -> str:
    """:func:`expired` as a Delta delete predicate, for a ``column`` that is a timestamp
    already (text must be parsed: delete those rows by key instead)."""
    if rule.column not in schema:
        raise KeyError(f"{rule.table}: retention column {rule.column!r} is not in the table")
    cutoff = f"'{rule.cutoff(now).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'"
    predicate = f"`{rule.column}` < {cutoff}"
    if rule.column != INGESTED_AT and isinstance(schema.get(INGESTED_AT), pl.Datetime):
        predicate = f"({predicate} OR (`{rule.column}` IS NULL AND `{INGESTED_AT}` < {cutoff}))"
    return predicate


def is_timestamp(rule: RetentionRule, schema: Mapping[str, pl.DataType]) -> bool:
    """Whether the rule's column is stored as a timestamp (else it is text to parse)."""
    return isinstance(schema.get(rule.column), pl.Datetime)

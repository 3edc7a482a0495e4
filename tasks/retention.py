"""Retention: delete the rows that outlived their table's retention (run by ``maintain``).

Which rows expire is :mod:`tasks.core.retention` (defaults in the table catalogue, overrides in
``maintenance.retention``). This module deletes them:

* :func:`expire_table` deletes a table's expired rows in one commit: by a Delta predicate when
  the age column is a timestamp, otherwise (bronze events keep ``occurred_at`` as the source
  sent it) by the keys of the rows whose parsed time is expired. The files the delete replaced
  stay in storage until vacuum's retention has passed (``maintenance.retention_hours``), so time
  travel to a version before the delete still reads them until then.
* :func:`prune_staging_logs` removes from each staging log the records bronze no longer holds
  (their newest log row says 0 copies) once the transform has built from their removal: no
  later build reads them, incremental or full. Without it an expired event's staged copy (with
  its email) would stay in the log for good.

How the transform follows: the next run diffs bronze, finds the expired rows gone, appends
their removal to the staging log and rebuilds the people, orders and events they belonged to;
silver and gold end as a full rebuild from the remaining bronze would build them (see the
README, *Retention*).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from tasks.connectors.lake import Lake, LakeError
from tasks.connectors.lake.expire import delete_where
from tasks.connectors.lake.purge import DeleteStats, delete_matching
from tasks.core.incremental import COPIES, RECORD_HASH, SEQ, TransformState, latest_ops
from tasks.core.retention import RetentionRule, expired, is_timestamp, sql_predicate
from tasks.core.tables import BRONZE_PREFIX, EVENTS, FEATURES, ROLES, STAGED
from tasks.engine.delta import latest_state
from tasks.engine.state import staging_state

EXPIRY_METADATA = {"audience_lake.retention": "true"}


@dataclass(frozen=True)
class TableExpiry:
    """Rows one table lost to retention, and the data files the delete rewrote.

    ``cutoff``: rows older than this were deleted (None for a staging log, pruned of records
    bronze no longer holds); ``days``/``column``: the rule applied.
    """

    table: str
    rows: int
    files_removed: int
    files_added: int
    cutoff: datetime | None = None
    days: int | None = None
    column: str | None = None


def expire_table(lake: Lake, rule: RetentionRule, *, now: datetime) -> list[TableExpiry]:
    """Delete the rows of ``rule.table`` older than ``rule.days`` (see the module docstring);
    for an events source, its expired events in ``silver/events`` too (:func:`_expire_events`).

    Raises:
        LakeError: naming the table, if its age column is missing or text without a key to
            delete by.
    """
    schema = lake.scan(rule.table).collect_schema()
    try:
        if is_timestamp(rule, schema):
            stats = delete_where(
                lake, rule.table, sql_predicate(rule, schema, now), metadata=EXPIRY_METADATA
            )
        else:
            stats = _expire_by_key(lake, rule, schema, now)
    except KeyError as exc:
        raise LakeError(f"retention: {exc.args[0]}") from None
    cutoff = rule.cutoff(now)
    done = [TableExpiry(rule.table, *_counts(stats), cutoff, rule.days, rule.column)]
    if rule.role == "events" and stats.rows:
        done.extend(_expire_events(lake, rule, cutoff))
    return done


def _expire_events(lake: Lake, rule: RetentionRule, cutoff: datetime) -> list[TableExpiry]:
    """Delete the source's events older than ``cutoff`` from ``silver/events``.

    The incremental transform rebuilds the events the staging log names that bronze still
    holds; an event gone from bronze altogether is not among them, so it would stay in
    ``silver/events`` and in its person's features. Deleting it here makes the silver table
    differ from what the last build recorded, so the next transform rebuilds silver and gold in
    full from the remaining staged rows, exactly as ``full_refresh`` would (README,
    *Retention*). Silver's ``occurred_at`` is bronze's, parsed as the retention parsed it, so
    the same events go.
    """
    if not lake.exists(EVENTS):
        return []
    source = rule.table.removeprefix(BRONZE_PREFIX)
    stamp = cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    stats = delete_where(
        lake,
        EVENTS,
        f"`_source` = '{source}' AND `occurred_at` < '{stamp}'",
        metadata=EXPIRY_METADATA,
    )
    if not stats.rows:
        return []
    return [TableExpiry(EVENTS, *_counts(stats), cutoff, rule.days, "occurred_at")]


def _expire_by_key(
    lake: Lake, rule: RetentionRule, schema: pl.Schema, now: datetime
) -> DeleteStats:
    if rule.key is None or rule.key not in schema:
        raise LakeError(
            f"retention: {rule.table}: {rule.column!r} is text and the table has no key "
            f"column {rule.key!r} to delete expired rows by"
        )
    keys = (
        lake.scan(rule.table)
        .filter(expired(rule, schema, now) & pl.col(rule.key).is_not_null())
        .select(rule.key)
        .unique()
        .collect()
    )
    return delete_matching(lake, rule.table, keys, metadata=EXPIRY_METADATA)


def prune_staging_logs(lake: Lake, *, tables: Collection[str] | None = None) -> list[TableExpiry]:
    """Remove, per staging log (among ``tables``; None: all), the records bronze no longer
    holds whose removal the last recorded transform has built (nothing before a transform
    state exists, or for a log restaged since)."""
    state, _ = latest_state(lake, FEATURES, TransformState.from_commit)
    if state is None:
        return []
    pruned: list[TableExpiry] = []
    for role in ROLES:
        table, built = STAGED[role], state.seqs.get(role)
        if tables is not None and table not in tables:
            continue
        staged = staging_state(lake, role)
        if built is None or staged is None or staged.seq < built:
            continue
        gone = (
            latest_ops(lake.scan(table))
            .filter((pl.col(COPIES) == 0) & (pl.col(SEQ) <= built))
            .select(RECORD_HASH)
            .collect()
        )
        stats = delete_matching(lake, table, gone, metadata=EXPIRY_METADATA)
        if stats.rows:
            pruned.append(TableExpiry(table, *_counts(stats)))
    return pruned


def _counts(stats: DeleteStats) -> tuple[int, int, int]:
    return stats.rows, stats.files_removed, stats.files_added

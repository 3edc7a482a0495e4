"""Stage 2, staging -> silver: ``silver/orders``, ``silver/events``, ``silver/contacts``.

One stage because identity resolution needs every role at once: the customers behind orders
and the users behind events become contacts too. The log rows appended since the last build
name the affected people (emails, including the *old* email of a changed record), orders,
events and anonymous ids (:mod:`tasks.engine.scope`); each affected person, order and event is
rebuilt from its complete staged history by the same pure functions a full build uses
(:mod:`tasks.core.entities`), and only rows that changed are written (a MERGE that rewrites
only the files holding them; stale keys are deleted in the same commit, see
:func:`tasks.engine.delta.sync_table`).

The work is split so a part of the people can be built at a time, anywhere:
:func:`~tasks.engine.silver_rows.live_rows_of` reads the staged rows of a scope,
:func:`~tasks.engine.silver_rows.silver_rows` builds and checks them (frames in, frames out,
no lake), :func:`commit_silver` writes them. A full build with ``engine.buckets`` above 1 runs
one bucket of people at a time, each on the task runner it is given
(:mod:`tasks.engine.silver_buckets`).
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.config import PipelineConfig
from tasks.core.tables import CONTACTS, EVENTS, ORDERS, ROLES, STAGED, bronze_table
from tasks.engine.buckets import bucket_count
from tasks.engine.checks import Checker
from tasks.engine.consent import pending_external, record_and_decide, record_pending
from tasks.engine.delta import pinned, sync_table
from tasks.engine.reports import Logger, Metric, SilverReport, StagingReport
from tasks.engine.scope import Scope, change_scope
from tasks.engine.silver_buckets import RunBuckets, build_in_buckets
from tasks.engine.silver_rows import SilverRows, balances, live_rows_of, silver_rows
from tasks.engine.state import BuildPlan, build_plan, transform_fingerprint
from tasks.reports import TableReport
from tasks.resources import pepper

# An incremental build whose changed staging rows exceed this share of the live rows rebuilds
# everything instead: at that size, key lookups cost more than a full pass.
FULL_BUILD_SHARE = 0.3


def build_silver_tables(
    lake: Lake,
    config: PipelineConfig,
    *,
    staging: StagingReport,
    run_id: str,
    now: datetime,
    as_of: datetime,
    full_refresh: bool = False,
    logger: Logger,
    run_buckets: RunBuckets | None = None,
) -> SilverReport:
    """Bring silver up to date with staging: everything, or what changed since the last build.

    ``run_buckets`` computes the buckets of a full build in buckets (one after the other in
    this process if None; see :mod:`tasks.engine.silver_buckets`)."""
    contact_sources = config.sources_with_role("contacts")
    if not any(lake.exists(bronze_table(name)) for name in contact_sources):
        logger.warning("no contact source ingested yet: silver not built")
        return SilverReport(tables=[], metrics=[], mode="unchanged")
    secret, version = pepper()
    plan = build_plan(
        lake,
        config,
        as_of=as_of,
        full_refresh=full_refresh,
        fp=transform_fingerprint(config, secret, version),
    )
    logs = {role: pinned(lake, STAGED[role], plan.versions[role]) for role in ROLES}
    # Consent statements from platforms and erasures name people to rebuild as well.
    pending = pending_external(
        lake, full=plan.full, secret=secret, version=version, now=now, run_id=run_id
    )
    scope, mode = _scope_and_mode(
        lake, plan, logs, secret=secret, version=version, logger=logger, also=pending.emails
    )
    checker = Checker(run_id=run_id, now=now, logger=logger)
    buckets = 1 if scope is not None else bucket_count(config.engine.buckets, plan.live_rows)
    if mode == "unchanged":
        record_pending(lake, pending)
        tables = _unchanged_reports(staging)
    elif buckets > 1:
        logger.info("silver: full build in %d buckets of people", buckets)
        tables = build_in_buckets(
            lake, logs, config, buckets, staging, checker=checker, secret=secret, version=version,
            pending=pending, now=now, run_id=run_id,
            run_buckets=run_buckets,
        )  # fmt: skip
    else:
        rows = live_rows_of(logs, scope)
        consent = record_and_decide(
            lake,
            pending,
            rows["contacts"],
            None if scope is None else scope.emails,
            secret=secret,
            version=version,
            now=now,
            run_id=run_id,
        )
        built = silver_rows(
            rows, scope, config, checker=checker, secret=secret, version=version, consent=consent
        )
        commit_silver(lake, built, scope)
        tables = balances(rows, built, staging.rejected)
    metrics: list[Metric] = [
        {"table": table, "source": None, "rows": lake.count(table), "quarantined": 0}
        for table in (ORDERS, EVENTS, CONTACTS)
        if lake.exists(table)
    ]
    built_something = mode != "unchanged" or plan.gold_all
    keys: tuple[str, ...] | None = None
    if not plan.gold_all and scope is not None:
        keys = tuple(scope.contact_keys.to_list()) if mode == "incremental" else ()
    return SilverReport(
        tables=tables,
        metrics=metrics,
        rule_counts=checker.write(lake, stage="silver"),
        mode=mode,
        contact_keys=keys,
        state=plan.state(as_of).to_metadata() if built_something else None,
    )


def _scope_and_mode(
    lake: Lake,
    plan: BuildPlan,
    logs: dict[str, pl.LazyFrame],
    *,
    secret: bytes,
    version: int,
    logger: Logger,
    also: pl.Series,
) -> tuple[Scope | None, str]:
    """What to rebuild (None: everything) and the mode: full, incremental or unchanged.
    ``also``: emails of people to rebuild whatever staging says (new consent statements)."""
    if plan.full:
        logger.info("silver: full build (%s)", plan.reason)
        return None, "full"
    scope = change_scope(lake, logs, plan.since, secret=secret, version=version, also=also)
    if scope is None or scope.changed_rows > FULL_BUILD_SHARE * max(plan.live_rows, 1):
        logger.info("silver: the change is too large for an incremental build: full build")
        return None, "full"
    logger.info(
        "silver: %d changed staging row(s) -> %d people, %d orders, %d events rebuilt",
        scope.changed_rows,
        scope.emails.len(),
        scope.order_ids.len(),
        scope.event_ids.len(),
    )
    return scope, "incremental" if scope.changed_rows or scope.emails.len() else "unchanged"


def commit_silver(lake: Lake, built: SilverRows, scope: Scope | None) -> None:
    """Write the valid rows of ``built``: orders, events, then contacts, changed keys only."""
    sync_table(
        lake,
        ORDERS,
        built.orders.valid,
        keys=["order_id"],
        scope=None if scope is None else scope.order_ids,
    )
    sync_table(
        lake,
        EVENTS,
        built.events.valid,
        keys=["event_id"],
        scope=None if scope is None else scope.event_ids,
    )
    sync_table(
        lake,
        CONTACTS,
        built.contacts.valid,
        keys=["contact_key"],
        scope=None if scope is None else scope.contact_keys,
    )


def _unchanged_reports(staging: StagingReport) -> list[TableReport]:
    """Balances of a run that rebuilt nothing: only rows rejected by staging were processed."""
    rejected = staging.rejected
    return [
        TableReport(
            CONTACTS,
            rows_in=rejected["contacts"] + rejected["enrichment"],
            rows_out=0,
            quarantined=rejected["contacts"] + rejected["enrichment"],
            duplicates=0,
        ),
        TableReport(ORDERS, rejected["orders"], 0, rejected["orders"], 0),
        TableReport(EVENTS, rejected["events"], 0, rejected["events"], 0),
    ]

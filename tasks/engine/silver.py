"""Stage 2, staging -> silver: ``silver/orders``, ``silver/events``, ``silver/contacts``.

One stage because identity resolution needs every role at once: the customers behind orders
and the users behind events become contacts too. The log rows appended since the last build
name the affected people (emails, including the *old* email of a changed record), orders,
events and anonymous ids (:mod:`tasks.engine.scope`); each affected person, order and event is
rebuilt from its complete staged history by the same pure functions a full build uses
(:mod:`tasks.core.entities`), and only rows that changed are written (a MERGE that rewrites
only the files holding them; stale keys are deleted in the same commit, see
:func:`tasks.engine.delta.sync_table`).

The work is split so it can later run on a part of the people at a time: :func:`live_rows_of`
reads the staged rows of a scope, :func:`silver_rows` builds and checks them (frames in,
frames out, no lake), :func:`commit_silver` writes them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.config import PipelineConfig
from tasks.core.contracts import SilverContact, SilverEvent, SilverOrder, Split
from tasks.core.entities import (
    dedupe_enrichment,
    dedupe_events,
    dedupe_orders,
    resolve_contacts,
    silver_events,
    silver_orders,
)
from tasks.core.incremental import values_in
from tasks.core.tables import CONTACTS, EVENTS, ORDERS, ROLES, STAGED, bronze_table
from tasks.engine.buckets import (
    CrossLinks,
    add_reports,
    bucket_count,
    bucket_of,
    cross_bucket_links,
    drop_stale,
    sync_bucket,
)
from tasks.engine.checks import Checker
from tasks.engine.consent import (
    PendingConsent,
    pending_external,
    people_keys,
    record_and_decide,
    record_and_decide_bucket,
    record_pending,
    withdraw_unstated,
)
from tasks.engine.delta import pinned, sync_table
from tasks.engine.reports import Logger, Metric, SilverReport, StagingReport
from tasks.engine.scope import Scope, change_scope, live_where
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
) -> SilverReport:
    """Bring silver up to date with staging: everything, or what changed since the last build."""
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
        tables = _balances(rows, built, staging.rejected)
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


def build_in_buckets(
    lake: Lake,
    logs: dict[str, pl.LazyFrame],
    config: PipelineConfig,
    buckets: int,
    staging: StagingReport,
    *,
    checker: Checker,
    secret: bytes,
    version: int,
    pending: PendingConsent,
    now: datetime,
    run_id: str,
) -> list[TableReport]:
    """A full build one bucket of people at a time (:mod:`tasks.engine.buckets`): the same
    tables as one pass, holding one bucket's rows at a time. Returns the summed balances.

    The consent ledger keys a person's chains by their contact key, so each bucket records what
    its people's contact rows now say and decides their consent; the pending platform and
    erasure statements are recorded first, and the chains of people no bucket holds are
    withdrawn last (:func:`tasks.engine.consent.withdraw_unstated`), as one pass would.
    What grows with the lake stays on local disk: the anonymous-id links, the keys each bucket
    built and the people each bucket held.
    """
    reports: list[TableReport] = []
    no_rejects = dict.fromkeys(staging.rejected, 0)
    with tempfile.TemporaryDirectory(prefix="silver-buckets-") as tmp:
        spill = Path(tmp)
        cross = cross_bucket_links(logs, buckets, spill=spill)
        record_pending(lake, pending)
        consent = BucketConsent(
            secret=secret,
            version=version,
            now=now,
            run_id=run_id,
            suppressions_version=pending.suppressions_version,
            spill=spill,
        )
        for bucket in range(buckets):
            rejected = staging.rejected if bucket == 0 else no_rejects
            part = build_silver_bucket(
                lake,
                logs,
                config,
                cross,
                bucket,
                rejected=rejected,
                spill=spill,
                checker=checker,
                consent=consent,
            )
            reports = add_reports(reports, part)
        withdraw_unstated(
            lake,
            live_where(logs["contacts"], pl.lit(False)).collect(),
            pl.scan_parquet(spill / f"{PEOPLE_SPILL}-*.parquet"),
            slices=buckets,
            secret=secret,
            version=version,
            now=now,
            run_id=run_id,
            suppressions_version=pending.suppressions_version,
        )
        for table, key in ((ORDERS, "order_id"), (EVENTS, "event_id")):
            drop_stale(lake, table, key=key, spill=spill, buckets=buckets)
    return reports


PEOPLE_SPILL = "people"


@dataclass(frozen=True)
class BucketConsent:
    """What a bucket needs to record and decide its people's consent (see
    :func:`build_in_buckets`); ``spill``: where each bucket leaves its people's contact keys."""

    secret: bytes
    version: int
    now: datetime
    run_id: str
    suppressions_version: int | None
    spill: Path

    def decide(
        self, lake: Lake, rows: dict[str, pl.DataFrame], bucket: int, buckets: int
    ) -> pl.DataFrame:
        """Record and decide the consent of the bucket's people: every email its rows name
        that belongs to the bucket (moved orders and events may carry other buckets'
        emails in the versions that lost; those people are decided in their own bucket)."""
        emails = (
            pl.concat([rows[role].select("email") for role in ROLES])
            .filter(bucket_of("email", buckets) == bucket)
            .get_column("email")
            .drop_nulls()
            .unique()
            .sort()
        )
        keys = people_keys(emails, secret=self.secret, version=self.version)
        keys.select("contact_key").write_parquet(self.spill / f"{PEOPLE_SPILL}-{bucket}.parquet")
        return record_and_decide_bucket(
            lake,
            rows["contacts"],
            emails,
            secret=self.secret,
            version=self.version,
            now=self.now,
            run_id=self.run_id,
            suppressions_version=self.suppressions_version,
        )


def build_silver_bucket(
    lake: Lake,
    logs: dict[str, pl.LazyFrame],
    config: PipelineConfig,
    cross: CrossLinks,
    bucket: int,
    *,
    rejected: dict[str, int],
    spill: Path,
    checker: Checker,
    consent: BucketConsent,
) -> list[TableReport]:
    """One bucket of a full build: its staged rows read, its people's consent recorded and
    decided, its rows built, checked and committed; its balances (``rejected``: the staging
    rejects to count in them)."""
    wanted = cross.predicates(bucket)
    frames = pl.collect_all([live_where(logs[r], wanted[r]) for r in ROLES])
    rows = dict(zip(ROLES, frames, strict=True))
    decided = consent.decide(lake, rows, bucket, cross.buckets)
    built = silver_rows(
        rows, None, config, checker=checker, secret=consent.secret, version=consent.version,
        links=cross.links_of(bucket, rows["events"]), consent=decided,
    )  # fmt: skip
    sync_bucket(lake, ORDERS, built.orders.valid, key="order_id", where=None, spill=spill)
    sync_bucket(lake, EVENTS, built.events.valid, key="event_id", where=None, spill=spill)
    sync_bucket(
        lake,
        CONTACTS,
        built.contacts.valid,
        key="contact_key",
        where=bucket_of("email", cross.buckets) == bucket,
        spill=spill,
    )
    return _balances(rows, built, rejected)


def live_rows_of(logs: dict[str, pl.LazyFrame], scope: Scope | None) -> dict[str, pl.DataFrame]:
    """Per role, the live staged rows of the records in ``scope`` (every record if None)."""
    if scope is None:
        wanted = {role: pl.lit(True) for role in ROLES}
    else:
        wanted = {
            "contacts": values_in("email", scope.emails),
            "enrichment": values_in("email", scope.emails),
            "orders": values_in("order_id", scope.order_ids),
            "events": values_in("event_id", scope.event_ids),
        }
    frames = pl.collect_all([live_where(logs[r], wanted[r]) for r in ROLES])
    return dict(zip(ROLES, frames, strict=True))


@dataclass(frozen=True)
class SilverRows:
    """Silver rows built from staged rows, checked: what :func:`commit_silver` writes.

    ``person_orders``/``person_events``: the deduplicated orders and events of the people
    rebuilt (what identity resolution read); ``contacts``: the resolved people before checks.
    """

    orders: Split
    events: Split
    contacts: Split
    resolved: pl.DataFrame
    person_orders: pl.DataFrame
    person_events: pl.DataFrame


def silver_rows(
    rows: dict[str, pl.DataFrame],
    scope: Scope | None,
    config: PipelineConfig,
    *,
    checker: Checker,
    secret: bytes,
    version: int,
    consent: pl.DataFrame | None = None,
    links: pl.LazyFrame | None = None,
) -> SilverRows:
    """Build and check silver orders, events and contacts from live staged rows (no lake).

    ``consent``: the people's current consent from the consent ledger
    (:func:`tasks.engine.consent.record_and_decide`); without it, derived from their rows.
    ``links``: the anonymous-id links of all events, when ``rows`` are one bucket of people.
    """
    settings = config.transform
    rates = settings.currency.to_reporting()
    orders = dedupe_orders(rows["orders"].lazy()).collect()
    events = dedupe_events(rows["events"].lazy()).collect()
    enrichment = dedupe_enrichment(rows["enrichment"].lazy()).collect()
    person = pl.lit(True) if scope is None else values_in("email", scope.emails)

    built_orders = silver_orders(
        orders.lazy(), rates=rates, pepper=secret, key_version=version
    ).collect()
    checked_orders = checker.check(built_orders, SilverOrder, table=ORDERS)
    built_events = silver_events(
        events.lazy(), pepper=secret, key_version=version, links=links
    ).collect()
    checked_events = checker.check(built_events, SilverEvent, table=EVENTS)
    person_orders = orders.filter(person)
    contacts = (
        resolve_contacts(
            rows["contacts"].lazy(),
            enrichment.lazy(),
            person_orders.lazy(),
            events.lazy(),
            identity=settings.identity,
            pepper=secret,
            key_version=version,
            consent=None if consent is None else consent.lazy(),
            links=links,
        )
        .filter(person)
        .collect()
    )
    checked_contacts = checker.check(contacts, SilverContact, table=CONTACTS)
    return SilverRows(
        orders=checked_orders,
        events=checked_events,
        contacts=checked_contacts,
        resolved=contacts,
        person_orders=person_orders,
        person_events=events.filter(person),
    )


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


def _balances(
    rows: dict[str, pl.DataFrame], built: SilverRows, rejected: dict[str, int]
) -> list[TableReport]:
    """Balances over the rows processed this run: the changed rows staging rejected, plus the
    staged rows each rebuild read. Duplicates are counted from the inputs, independently of
    what was built, so a balance that holds proves one row per key and no lost record."""

    def superseded(frame: pl.DataFrame, key: str) -> int:
        return frame.height - frame.get_column(key).n_unique()

    contacts = built.resolved
    merged_people = int(contacts.get_column("record_count").sum() or 0) - contacts.height
    return [
        TableReport(
            CONTACTS,
            rows_in=rejected["contacts"]
            + rejected["enrichment"]
            + rows["contacts"].height
            + rows["enrichment"].height
            + _distinct_people(built.person_orders)
            + _distinct_people(built.person_events),
            rows_out=built.contacts.valid.height,
            quarantined=rejected["contacts"] + rejected["enrichment"] + built.contacts.rejected,
            duplicates=superseded(rows["enrichment"], "email") + merged_people,
        ),
        TableReport(
            ORDERS,
            rows_in=rejected["orders"] + rows["orders"].height,
            rows_out=built.orders.valid.height,
            quarantined=rejected["orders"] + built.orders.rejected,
            duplicates=superseded(rows["orders"], "order_id"),
        ),
        TableReport(
            EVENTS,
            rows_in=rejected["events"] + rows["events"].height,
            rows_out=built.events.valid.height,
            quarantined=rejected["events"] + built.events.rejected,
            duplicates=superseded(rows["events"], "event_id"),
        ),
    ]


def _distinct_people(frame: pl.DataFrame) -> int:
    """Distinct ``(source, email)`` with an email: the identity records a role contributes."""
    return frame.filter(pl.col("email").is_not_null()).select("_source", "email").n_unique()


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

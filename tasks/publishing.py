"""Publishing one audience: claim its list, plan against the ledger, send batch by batch.

The order of the steps is what makes a publish safe to crash and to run twice at once:

1. **claim** the destination list in ``ops/publish_leases`` (:mod:`tasks.connectors.leases`);
   if another run holds it, wait up to ``publish.lease_wait_seconds``, then skip the audience;
2. **plan** against ``ops/sync_ledger`` *after* claiming, so a run that waited sees what the
   holder sent and plans only the rest;
3. for each platform batch: renew the claim (from the second batch on; a renewal fails if
   another run took the list), commit the batch's rows to the ledger as ``pending`` (the
   intent), send the batch, commit each contact's result;
4. release the claim.

A crash at any point therefore leaves at most one batch per audience sent but not recorded as
sent; the next run sends that batch again (a batch upsert keyed by email is idempotent on the
platform) and everything else exactly once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import polars as pl
from prefect import get_run_logger

from tasks.connectors.destinations import AudienceSink, MemberChange, open_destination
from tasks.connectors.lake import Lake
from tasks.connectors.leases import Lease, LeaseState, LeaseStore, lease_key
from tasks.core.config import Destination, PublishConfig
from tasks.core.masking import mask_emails
from tasks.core.sync import (
    ledger_rows,
    plan_sync,
    platform_batches,
    releasable,
)
from tasks.core.tables import AUDIENCE, AUDIENCE_SCHEMA, CONTACTS, LEDGER_KEYS, LEDGER_SCHEMA
from tasks.core.tables import SYNC_LEDGER as SYNC_LEDGER
from tasks.reports import PublishReport

LEASE_POLL_SECONDS = 0.5
MAX_ERRORS_REPORTED = 20


def ledger(lake: Lake) -> pl.LazyFrame:
    """``ops/sync_ledger``, or an empty frame of its schema before the first publish."""
    if lake.exists(SYNC_LEDGER):
        return lake.scan(SYNC_LEDGER)
    return pl.LazyFrame(schema=LEDGER_SCHEMA)


def audience_members(lake: Lake, segment: str) -> pl.LazyFrame:
    """One segment's rows of ``gold/audience_members``; none before gold was ever built (a first
    run whose contact source failed), so the publish reports its hold instead of crashing."""
    if not lake.exists(AUDIENCE):
        return pl.LazyFrame(schema=AUDIENCE_SCHEMA)
    return lake.scan(AUDIENCE).filter(pl.col("segment") == segment)


def current_consent(lake: Lake) -> pl.LazyFrame:
    """``silver/contacts``' keys, emails and consent; no one before silver was ever built."""
    if not lake.exists(CONTACTS):
        schema = {"contact_key": pl.String, "email": pl.String, "consent_status": pl.String}
        return pl.LazyFrame(schema=schema)
    return lake.scan(CONTACTS)


def holder_id(run_id: str) -> str:
    """Who claims a lease: the run, the machine and the process (unique per attempt)."""
    return f"{run_id}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Tally:
    sent: int = 0
    failed: int = 0
    unsubscribed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Claim:
    """A held lease, renewed before every batch after the first."""

    store: LeaseStore
    lease: Lease
    ttl: float
    batches: int = 0

    def before_batch(self) -> None:
        """Renew (a commit that fails if another run took the list) unless just claimed."""
        if self.batches:
            self.lease = self.store.renew(self.lease, ttl=self.ttl, now=_utc_now())
        self.batches += 1


def claim_list(
    store: LeaseStore, key: str, holder: str, settings: PublishConfig
) -> tuple[Lease | LeaseState, float]:
    """Claim ``key``, waiting up to ``settings.lease_wait_seconds``; (result, seconds waited)."""
    started = time.monotonic()
    while True:
        got = store.try_claim(key, holder, ttl=settings.lease_seconds, now=_utc_now())
        waited = time.monotonic() - started
        if isinstance(got, Lease) or waited >= settings.lease_wait_seconds:
            return got, waited
        time.sleep(min(LEASE_POLL_SECONDS, settings.lease_wait_seconds - waited))


def publish_segment(
    lake: Lake,
    destination_name: str,
    destination: Destination,
    segment: str,
    *,
    run_id: str,
    settings: PublishConfig,
    dry_run: bool = False,
    hold: str | None = None,
    open_sink: Callable[[Destination], AudienceSink] = open_destination,
) -> PublishReport:
    """Publish one segment's audience to one destination list (see the module docstring).

    A ``hold`` delays subscribes and updates; unsubscribes go out regardless. A dry run plans
    and sends nothing (and claims nothing).
    """
    logger = get_run_logger()
    audience = destination.audiences[segment]
    members = audience_members(lake, segment)
    base = PublishReport(
        destination=destination_name,
        segment=segment,
        audience=audience,
        members=members.select(pl.len()).collect().item(),
        planned=0,
        sent=0,
        failed=0,
        unsubscribed=0,
        held=hold,
        dry_run=dry_run,
    )
    plan = _plan(lake, members, destination_name, audience)
    if dry_run:
        logger.warning("publish %s/%s: dry run, %d planned, nothing sent",
                       destination_name, segment, plan.height)  # fmt: skip
        return replace(base, planned=plan.height)
    held = hold is not None
    if releasable(plan.lazy(), held=held, dry_run=False).collect().height == 0:
        # Nothing to send (a rerun on unchanged data, or a hold with no opt-out): claim nothing,
        # write nothing. Whatever another run may be sending, this one would send nothing.
        return _finish(logger, replace(base, planned=plan.height, held_back=plan.height))
    store = LeaseStore(lake)
    key = lease_key(destination_name, audience)
    got, waited = claim_list(store, key, holder_id(run_id), settings)
    if not isinstance(got, Lease):
        reason = f"list {key} is {got.describe()}; waited {waited:.0f}s"
        logger.warning("publish %s/%s skipped: %s", destination_name, segment, reason)
        return replace(base, skipped=reason, waited_seconds=waited)
    claim = _Claim(store, got, settings.lease_seconds)
    try:
        # Planned again under the claim: a run that waited sees what the holder recorded.
        plan = _plan(lake, members, destination_name, audience)
        sendable = releasable(plan.lazy(), held=held, dry_run=False).collect()
        tally = _send(lake, claim, open_sink, destination, sendable, segment=segment,
                      destination_name=destination_name, run_id=run_id)  # fmt: skip
    finally:
        store.release(claim.lease, now=_utc_now())
    return _finish(logger, replace(
        base, planned=plan.height, sent=tally.sent, failed=tally.failed,
        unsubscribed=tally.unsubscribed, errors=tuple(tally.errors),
        held_back=plan.height - sendable.height, waited_seconds=waited,
    ))  # fmt: skip


def _finish(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger], report: PublishReport
) -> PublishReport:
    if report.held is not None:
        logger.warning("publish %s/%s held: %s; sent %d unsubscribes, held back %d changes",
                       report.destination, report.segment, report.held, report.sent,
                       report.held_back)  # fmt: skip
    logger.info("publish %s/%s -> %s: %d sent (%d unsubscribed), %d failed",
                report.destination, report.segment, report.audience, report.sent,
                report.unsubscribed, report.failed)  # fmt: skip
    return report


def _plan(lake: Lake, members: pl.LazyFrame, destination_name: str, audience: str) -> pl.DataFrame:
    return plan_sync(
        members,
        current_consent(lake),
        ledger(lake),
        destination=destination_name,
        audience=audience,
    ).collect()


def _send(
    lake: Lake,
    claim: _Claim,
    open_sink: Callable[[Destination], AudienceSink],
    destination: Destination,
    sendable: pl.DataFrame,
    *,
    segment: str,
    destination_name: str,
    run_id: str,
) -> _Tally:
    """Per batch: intent committed, batch sent, results committed."""
    tally = _Tally()
    if sendable.height == 0:
        return tally
    audience = destination.audiences[segment]
    where = dict(destination=destination_name, audience=audience, segment=segment, run_id=run_id)
    sink = open_sink(destination)
    try:
        for batch in platform_batches(sendable, destination.batch_size):
            claim.before_batch()
            _commit(lake, ledger_rows(batch, **where, synced_at=_utc_now(), errors=None))
            changes = [
                MemberChange(**row) for row in batch.drop("payload_hash").iter_rows(named=True)
            ]
            # A platform's error may quote the address: the ledger and reports keep it masked.
            outcome = {r.contact_key: (None if r.ok else mask_emails(r.error or "error"))
                       for r in sink.send(audience, changes)}  # fmt: skip
            _commit(lake, ledger_rows(batch, **where, synced_at=_utc_now(), errors=outcome))
            for key, action in zip(batch["contact_key"], batch["action"], strict=True):
                if outcome[key] is None:
                    tally.sent += 1
                    tally.unsubscribed += action == "unsubscribe"
                else:
                    tally.failed += 1
                    if len(tally.errors) < MAX_ERRORS_REPORTED:
                        tally.errors.append(f"{key}: {outcome[key]}")
    finally:
        sink.close()
    return tally


def _commit(lake: Lake, rows: pl.DataFrame) -> None:
    lake.merge(SYNC_LEDGER, rows, keys=LEDGER_KEYS)

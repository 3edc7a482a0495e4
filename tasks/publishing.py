"""Publishing one audience: claim its list, plan against the ledger, send batch by batch.

The order of the steps is what makes a publish safe to crash and to run twice at once:

1. **claim** the destination list in ``ops/publish_leases`` (:mod:`tasks.connectors.leases`);
   if another run holds it, wait up to ``publish.lease_wait_seconds``, then skip the audience;
2. **plan** against ``ops/sync_ledger`` *after* claiming, so a run that waited sees what the
   holder sent and plans only the rest;
3. for each *window* of platform batches (:mod:`tasks.send_window`; ``publish.window_batches``,
   by default eight rounds of the platform's ``max_connections``): renew the claim (from the
   second window on; a renewal fails if another run took the list), commit the window's rows
   to the ledger as ``pending`` (the intent) in the same commit as the previous window's
   results, send the window's batches at once (at most ``max_connections`` in flight; the
   adapter keeps the platform's rate), and collect each contact's result; the last window's
   results are one more commit. A window holds one action only, so opt-outs are answered and
   recorded before anything else is sent;
4. release the claim.

Each window's results are appended to ``ops/sync_history`` (:mod:`tasks.sync_history`) before
the ledger records them. Gold is read at the publish's pinned versions and consent at its latest
version (:mod:`tasks.publish_reads`).

A crash at any point therefore leaves at most one window - W batches - per audience sent but
not recorded as sent; the next run sends those batches again (a batch upsert keyed by email is
idempotent on the platform) and everything else exactly once. A run costs two ledger commits
for its first window and one for each later one, instead of two per batch.

What is sent comes from the audience's configuration (:mod:`tasks.core.config_publish`): each
member's mapped fields (:mod:`tasks.core.mapping`), its mode (``mirror`` removes leavers) and
its holdout (recorded in ``gold/audience_holdouts``). Each batch holds one action and goes to
the platform adapter of :data:`tasks.connectors.destinations.PLATFORMS` as one ``upsert``,
``unsubscribe`` or ``remove``;
holdout rows, and members the list reports as opted out (read back by :mod:`tasks.readback`
just before the publish), are only recorded. Before the first upsert the platform's fields are
checked (``ensure_fields``, creating them when ``create_fields``); when they do not match, the
audience's unsubscribes still go out and the publish then fails naming the fields.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import polars as pl
from prefect import get_run_logger

from tasks.connectors.destinations import open_platform
from tasks.connectors.destinations.protocol import Destination as Platform
from tasks.connectors.destinations.protocol import FieldSpec, Member, RecordResult
from tasks.connectors.lake import Lake
from tasks.connectors.leases import Lease, LeaseState, LeaseStore, lease_key
from tasks.core.config import FEATURE_COLUMNS, Destination, PublishConfig
from tasks.core.config_publish import AudienceConfig, FieldMapping, resolved_fields
from tasks.core.mapping import mapped_columns, payload_expr
from tasks.core.masking import mask_emails
from tasks.core.removal_guard import audience_removals
from tasks.core.sync import (
    NEVER_HELD,
    RECORDED_ONLY,
    field_hash_key,
    ledger_rows,
    plan_sync,
    platform_batches,
    releasable,
    send_windows,
    with_field_hashes,
)
from tasks.core.tables import (
    AUDIENCE,
    AUDIENCE_SCHEMA,
    FEATURES,
    LEDGER_KEYS,
    LEDGER_SCHEMA,
)
from tasks.core.tables import SYNC_LEDGER as SYNC_LEDGER
from tasks.errors import PublishError
from tasks.publish_reads import (
    ReadPins,
    latest_consent,
    read_gold,
    resolve_pins,
    with_gold_holdouts,
)
from tasks.readback import platform_opt_outs
from tasks.reports import PublishReport
from tasks.send_window import in_flight, send_window, window_size
from tasks.sync_history import SendReads, record_sends

LEASE_POLL_SECONDS = 0.5
MAX_ERRORS_REPORTED = 20


PUBLISH_TEMPLATE = (
    "publish %s/%s -> %s: %d sent (%d unsubscribed, %d removed), %d held out, %d failed"
)
"""The line each finished publish logs; the CLI's progress feed counts contacts from it."""


def ledger(lake: Lake) -> pl.LazyFrame:
    """``ops/sync_ledger``, or an empty frame of its schema before the first publish."""
    if lake.exists(SYNC_LEDGER):
        return lake.scan(SYNC_LEDGER)
    return pl.LazyFrame(schema=LEDGER_SCHEMA)


def list_removals(
    lake: Lake, plan: pl.DataFrame, *, destination: str, audience: str
) -> tuple[int, int]:
    """``(on_list, removals)`` of one destination list for the large-removal guard: the
    contacts the sync ledger says it holds, and how many of them ``plan`` takes off it."""
    counts = audience_removals(
        plan.lazy(), ledger(lake), destination=destination, audience=audience
    ).collect()
    on_list, removals = counts.row(0)
    return int(on_list), int(removals)


def audience_members(lake: Lake, segment: str, pins: ReadPins | None = None) -> pl.LazyFrame:
    """One segment's rows of ``gold/audience_members`` (at the pinned version); none before gold
    was ever built (a first run whose contact source failed), so the publish reports its hold
    instead of crashing."""
    members = read_gold(lake, AUDIENCE, pins)
    if members is None:
        return pl.LazyFrame(schema=AUDIENCE_SCHEMA)
    return members.filter(pl.col("segment") == segment)


def publishable_members(
    lake: Lake, kind: str, segment: str, audience: AudienceConfig, *, pins: ReadPins | None = None
) -> pl.LazyFrame:
    """The segment's members with their mapped ``payload`` and ``holdout`` assignment (read
    from ``gold/audience_holdouts``: :func:`tasks.publish_reads.with_gold_holdouts`)."""
    fields = resolved_fields(kind, audience)
    members = audience_members(lake, segment, pins)
    have = set(members.collect_schema().names())
    wanted = sorted(mapped_columns(fields) - have)
    if wanted:
        members = members.join(_features(lake, wanted, pins), on="contact_key", how="left")
    schema = members.collect_schema()
    members = members.with_columns(payload_expr(fields, audience.tags, segment, schema))
    if audience.holdout > 0:
        return with_gold_holdouts(members, lake, segment, audience.holdout, pins)
    return members.with_columns(pl.lit(False).alias("holdout"))


def _features(lake: Lake, columns: list[str], pins: ReadPins | None) -> pl.LazyFrame:
    features = read_gold(lake, FEATURES, pins)
    if features is not None:
        return features.select("contact_key", *columns)
    schema = {"contact_key": pl.String(), **{c: FEATURE_COLUMNS[c] for c in columns}}
    return pl.LazyFrame(schema=schema)


def plan_audience(
    lake: Lake,
    destination_name: str,
    destination: Destination,
    segment: str,
    *,
    pins: ReadPins | None = None,
    consent: pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """What one publish of ``segment`` to ``destination`` would do (see :func:`plan_sync`):
    gold at ``pins``, consent at its latest version (``consent``, or read now), honouring the
    platform opt-outs already read back into the lake."""
    audience = destination.audiences[segment]
    members = publishable_members(lake, destination.kind, segment, audience, pins=pins)
    contacts = latest_consent(lake).frame if consent is None else consent
    opt_outs = platform_opt_outs(
        lake, contacts, destination_name=destination_name, audience=audience.list_id
    )
    return plan_sync(
        members, contacts, ledger(lake),
        destination=destination_name, audience=audience.list_id, mode=audience.mode,
        platform_opt_outs=opt_outs,
    ).collect()  # fmt: skip


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
    removed: int = 0
    held_out: int = 0
    suppressed: int = 0
    errors: list[str] = field(default_factory=list)
    fields_error: str | None = None
    skipped: int = 0
    """Planned changes not sent because the platform's fields did not match the mapping."""


@dataclass
class _Claim:
    """A held lease, renewed before every window of batches after the first."""

    store: LeaseStore
    lease: Lease
    ttl: float
    windows: int = 0

    def before_window(self) -> None:
        """Renew (a commit that fails if another run took the list) unless just claimed."""
        if self.windows:
            self.lease = self.store.renew(self.lease, ttl=self.ttl, now=_utc_now())
        self.windows += 1


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
    open_sink: Callable[[Destination], Platform] = open_platform,
    pins: ReadPins | None = None,
) -> PublishReport:
    """Publish one segment's audience to one destination list (see the module docstring).

    A ``hold`` delays subscribes, updates and removals; unsubscribes go out regardless. A dry
    run plans and sends nothing (and claims nothing). ``open_sink`` opens the platform adapter.
    Gold is read at ``pins`` (default: the versions current now), consent at its latest version.
    """
    logger = get_run_logger()
    config = destination.audiences[segment]
    audience = config.list_id
    pins = pins or resolve_pins(lake)
    members = audience_members(lake, segment, pins)
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
    plan = plan_audience(lake, destination_name, destination, segment, pins=pins)
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
        consent = latest_consent(lake)
        plan = plan_audience(
            lake, destination_name, destination, segment, pins=pins, consent=consent.frame
        )
        sendable = releasable(plan.lazy(), held=held, dry_run=False).collect()
        reads = SendReads({**pins.versions, **consent.versions}, as_of_run=pins.as_of_run)
        target = _Target(destination_name, destination, segment, config, run_id, reads)
        tally = _send(lake, claim, open_sink, target, sendable,
                      window_batches=settings.window_batches)  # fmt: skip
    finally:
        store.release(claim.lease, now=_utc_now())
    report = _finish(logger, replace(
        base, planned=plan.height, sent=tally.sent, failed=tally.failed,
        unsubscribed=tally.unsubscribed, removed=tally.removed, held_out=tally.held_out,
        suppressed=tally.suppressed, errors=tuple(tally.errors),
        held_back=plan.height - sendable.height + tally.skipped,
        waited_seconds=waited,
    ))  # fmt: skip
    if tally.fields_error is not None:
        raise PublishError(tally.fields_error)
    return report


def _finish(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger], report: PublishReport
) -> PublishReport:
    if report.held is not None:
        logger.warning("publish %s/%s held: %s; sent %d unsubscribes, held back %d changes",
                       report.destination, report.segment, report.held, report.sent,
                       report.held_back)  # fmt: skip
    logger.info(PUBLISH_TEMPLATE, report.destination, report.segment, report.audience,
                report.sent, report.unsubscribed, report.removed, report.held_out,
                report.failed)  # fmt: skip
    return report


@dataclass(frozen=True)
class _Target:
    """Where a publish sends: the destination, the segment and its audience configuration."""

    destination_name: str
    destination: Destination
    segment: str
    config: AudienceConfig
    run_id: str
    reads: SendReads

    @property
    def fields(self) -> dict[str, FieldMapping]:
        return resolved_fields(self.destination.kind, self.config)

    def field_specs(self) -> list[FieldSpec]:
        return [FieldSpec(name, m.type, label=name) for name, m in self.fields.items()]


def _send(
    lake: Lake,
    claim: _Claim,
    open_sink: Callable[[Destination], Platform],
    target: _Target,
    sendable: pl.DataFrame,
    *,
    window_batches: int | None = None,
) -> _Tally:
    """Window by window (:mod:`tasks.send_window`): renew the claim, commit the window's intent
    together with the previous window's results, send the window's batches at once, collect
    every contact's result; the last results are committed at the end, also when a batch
    raised or the claim was lost (what the platform answered is always recorded)."""
    tally = _Tally()
    if sendable.height == 0:
        return tally
    from tasks.resources import pepper

    audience = target.config.list_id
    where = dict(destination=target.destination_name, audience=audience,
                 segment=target.segment, run_id=target.run_id)  # fmt: skip
    key = field_hash_key(pepper()[0])  # the ledger's keyed field hashes
    platform = open_sink(target.destination)
    try:
        if (sendable["action"] == "subscribe").any():
            try:
                platform.ensure_fields(
                    audience, target.field_specs(), create=target.config.create_fields
                )
            except PublishError as exc:
                # Opt-outs are not a marketing choice: they still go out, then the run fails.
                tally.fields_error = str(exc)
                kept = sendable.filter(pl.col("action").is_in(sorted(NEVER_HELD)))
                tally.skipped = sendable.height - kept.height
                sendable = kept
        size = window_size(platform.limits, window_batches)
        batches = (
            with_field_hashes(batch, key)
            for batch in platform_batches(sendable, target.destination.batch_size)
        )

        def dispatch(batch: pl.DataFrame) -> dict[str, str | None]:
            return _dispatch(platform, audience, batch["action"][0], batch, target.config.tags)

        unrecorded: list[pl.DataFrame] = []
        threads = in_flight(platform.limits, size)
        with ThreadPoolExecutor(threads, thread_name_prefix="publish") as pool:
            try:
                for window in send_windows(batches, size):
                    claim.before_window()
                    if window[0]["action"][0] not in RECORDED_ONLY:  # a window holds one action
                        intent = pl.concat(window, how="vertical")
                        unrecorded.append(
                            ledger_rows(intent, **where, synced_at=_utc_now(), errors=None)
                        )
                    _commit(lake, unrecorded)
                    unrecorded = []
                    outcome = send_window(pool, window, dispatch)
                    answers: dict[str, str | None] = {}
                    for batch, errors in outcome.answered:
                        answers.update(errors)
                        _count(tally, batch["action"][0], batch, errors)
                    if outcome.answered:
                        answered = pl.concat([b for b, _ in outcome.answered], how="vertical")
                        results = ledger_rows(
                            answered, **where, synced_at=_utc_now(), errors=answers
                        )
                        # In the history before the ledger: a send is never lost from it.
                        record_sends(lake, results, target.reads)
                        unrecorded.append(results)
                    if outcome.failure is not None:
                        raise outcome.failure
            finally:
                if unrecorded:
                    _commit(lake, unrecorded)
    finally:
        platform.close()
    return tally


def _dispatch(
    platform: Platform, audience: str, action: str, batch: pl.DataFrame, tags: tuple[str, ...]
) -> dict[str, str | None]:
    """One batch of one action to the platform: each contact key -> its error, or None.

    Every refusal is sent again next run, also those the adapter calls permanent (an address
    the platform holds as unsubscribed): resending never re-subscribes anyone, and the person's
    state may change.
    """
    if action in RECORDED_ONLY:
        return dict.fromkeys(batch["contact_key"])
    members = [_member(row, tags) for row in batch.iter_rows(named=True)]
    send = {"subscribe": platform.upsert, "unsubscribe": platform.unsubscribe,
            "remove": platform.remove}[action]  # fmt: skip
    results: dict[str, RecordResult] = {r.contact_key: r for r in send(audience, members)}
    return {m.contact_key: _error(results.get(m.contact_key)) for m in members}


def _error(result: RecordResult | None) -> str | None:
    """The ledger's error text; a platform's error may quote the address, so it is masked."""
    if result is None:
        return "no result from the platform"
    return None if result.ok else mask_emails(result.error or "error")


def _member(row: dict[str, object], tags: tuple[str, ...]) -> Member:
    """A plan row as the platform sees it: mapped fields and tags for a subscribe."""
    key, email = str(row["contact_key"]), str(row["email"])
    if row["action"] != "subscribe" or not row["payload"]:
        return Member(key, email)
    payload = json.loads(str(row["payload"]))
    return Member(key, email, fields=payload["fields"], tags=tuple(payload.get("tags", tags)))


def _count(tally: _Tally, action: str, batch: pl.DataFrame, outcome: dict[str, str | None]) -> None:
    for key in batch["contact_key"]:
        error = outcome[key]
        if action == "holdout":
            tally.held_out += 1
        elif action == "suppressed":
            tally.suppressed += 1
        elif error is None:
            tally.sent += 1
            tally.unsubscribed += action == "unsubscribe"
            tally.removed += action == "remove"
        else:
            tally.failed += 1
            if len(tally.errors) < MAX_ERRORS_REPORTED:
                tally.errors.append(f"{key}: {error}")


def _commit(lake: Lake, parts: list[pl.DataFrame]) -> None:
    """One ledger commit for ``parts`` (a window's results and the next window's intent: one
    row per contact, so the keys never collide)."""
    if parts:
        lake.merge(SYNC_LEDGER, pl.concat(parts, how="vertical"), keys=LEDGER_KEYS)

"""The consent ledger in the transform: record new statements, then decide from the ledger.

Called by the silver build (:mod:`tasks.engine.silver`) in two steps:

1. :func:`pending_external` - before the scope is known: statements from outside the contact
   sources that the ledger lacks: the platform suppressions added to
   ``bronze/platform_suppressions`` since the version the ledger last read (recorded in the
   ledger's commit metadata; all of them on a full build) and every erasure request (a short
   list of keys). The known people they concern join the incremental build's scope, so a
   platform unsubscribe alone makes the next transform rebuild that person;
2. :func:`record_and_decide` - with the staged contact rows of the people being rebuilt: the
   statements their records make now are compared with the heads of the ledger's record chains
   (:func:`tasks.core.consent.source_events`), the difference is appended together with the
   pending external statements in one commit that adds only event ids the ledger lacks, and
   the people's current consent is computed from the ledger (:func:`tasks.core.consent.decide`).

Only rows are ever appended (``insert_new`` on ``event_id``); a rerun, a retry or a full
refresh finds every statement already there and commits nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from tasks.connectors.lake import Lake, LakeError
from tasks.core.consent import (
    DECISION_SCHEMA,
    decide,
    erasure_statements,
    heads,
    ledger_rows,
    platform_statements,
    source_events,
    source_statements,
)
from tasks.core.incremental import values_in
from tasks.core.normalise import contact_key
from tasks.core.tables import (
    CONSENT_EVENTS,
    CONSENT_EVENTS_SCHEMA,
    CONTACTS,
    ERASURE_REQUESTS,
    PLATFORM_SUPPRESSIONS,
    PLATFORM_SUPPRESSIONS_SCHEMA,
)
from tasks.engine.buckets import bucket_of
from tasks.engine.delta import latest_state

SUPPRESSIONS_READ = "audience_lake.consent.platform_suppressions_version"
"""Commit metadata of the ledger: the ``bronze/platform_suppressions`` version it has read."""


@dataclass(frozen=True)
class PendingConsent:
    """Platform and erasure statements the ledger lacks (as ledger rows), the emails of the
    known people they concern, and the suppressions version they were read up to."""

    rows: pl.DataFrame
    emails: pl.Series
    suppressions_version: int | None
    suppressions_read: int | None

    @property
    def moved(self) -> bool:
        """Something to append, or a suppressions version to remember."""
        return not self.rows.is_empty() or self.suppressions_version != self.suppressions_read


def pending_external(
    lake: Lake,
    *,
    full: bool,
    secret: bytes,
    version: int,
    now: datetime,
    run_id: str,
) -> PendingConsent:
    """Platform suppressions and erasure requests not yet in the ledger (see module doc)."""
    parts: list[pl.LazyFrame] = []
    if lake.exists(ERASURE_REQUESTS):
        parts.append(erasure_statements(lake.scan(ERASURE_REQUESTS)))
    read = _suppressions_read(lake)
    current = lake.version(PLATFORM_SUPPRESSIONS) if lake.exists(PLATFORM_SUPPRESSIONS) else None
    if current is not None and (full or current != read):
        suppressions = _suppressions_since(lake, None if full else read)
        parts.append(platform_statements(suppressions, pepper=secret, key_version=version))
    if not parts:
        empty = pl.DataFrame(schema=CONSENT_EVENTS_SCHEMA)
        return PendingConsent(empty, pl.Series("email", [], pl.String), current, read)
    rows = _not_recorded(lake, ledger_rows(pl.concat(parts), now=now, run_id=run_id).collect())
    keys = rows.get_column("contact_key")
    emails = (
        lake.scan(CONTACTS).filter(values_in("contact_key", keys)).select("email").collect()
        if lake.exists(CONTACTS) and keys.len()
        else pl.DataFrame(schema={"email": pl.String()})
    )
    return PendingConsent(rows, emails.get_column("email"), current, read)


def record_and_decide(
    lake: Lake,
    pending: PendingConsent,
    contact_rows: pl.DataFrame,
    emails: pl.Series | None,
    *,
    secret: bytes,
    version: int,
    now: datetime,
    run_id: str,
) -> pl.DataFrame:
    """Append what the people's records now say and the pending statements; return the current
    consent (:data:`~tasks.core.consent.DECISION_SCHEMA`) of the people at ``emails`` (None:
    everyone). ``contact_rows`` are the live staged contact rows of those people."""
    people, keys = contact_rows.lazy(), None
    if emails is not None:  # each person's key once: for their rows and their ledger rows
        keyed = people_keys(emails, secret=secret, version=version)
        people, keys = people.join(keyed.lazy(), on="email", how="left"), keyed["contact_key"]
    stated = _new_rows(
        lake, people, _ledger_of(lake, keys), secret=secret, version=version, now=now, run_id=run_id
    )
    rows = pl.concat([pending.rows, stated]).unique("event_id", keep="first", maintain_order=True)
    if not rows.is_empty() or pending.moved:
        _append(lake, rows, suppressions_version=pending.suppressions_version)
    if not lake.exists(CONSENT_EVENTS):
        return pl.DataFrame(schema=DECISION_SCHEMA)
    return decide(_ledger_of(lake, keys)).collect()


def people_keys(emails: pl.Series, *, secret: bytes, version: int) -> pl.DataFrame:
    """``email`` and ``contact_key`` of each of ``emails``."""
    return pl.DataFrame({"email": emails}).with_columns(
        contact_key(pl.col("email"), pepper=secret, version=version).alias("contact_key")
    )


def bucket_statements(
    lake: Lake,
    contact_rows: pl.DataFrame,
    people: pl.DataFrame,
    *,
    secret: bytes,
    version: int,
    now: datetime,
    run_id: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`record_and_decide` for one bucket of a full build, without writing: the ledger
    rows to append for the bucket's ``people`` (``email``, ``contact_key``: all of whose
    contact rows are in ``contact_rows``), and their consent once those rows are appended.

    Read-only, so buckets can run side by side; the build appends the rows afterwards, bucket
    by bucket (:func:`append_statements`). Deciding from the ledger rows of the people's keys
    plus the new rows equals deciding after the append: a person's chains are keyed by their
    contact key, so no other bucket's rows concern them, and the pending platform and erasure
    statements were recorded before the first bucket (:func:`record_pending`).
    """
    keys = people.get_column("contact_key")
    joined = contact_rows.lazy().join(people.lazy(), on="email", how="left")
    ledger = _ledger_of(lake, keys).collect()
    rows = _new_rows(
        lake, joined, ledger.lazy(), secret=secret, version=version, now=now, run_id=run_id
    )
    if ledger.is_empty() and rows.is_empty() and not lake.exists(CONSENT_EVENTS):
        return rows, pl.DataFrame(schema=DECISION_SCHEMA)
    return rows, decide(pl.concat([ledger, rows]).lazy()).collect()


def append_statements(lake: Lake, rows: pl.DataFrame, *, suppressions_version: int | None) -> None:
    """Append ledger rows one bucket computed (:func:`bucket_statements`); like every commit
    of the build it repeats the suppressions version read, so the newest commit carries it."""
    if not rows.is_empty():
        _append(lake, rows, suppressions_version=suppressions_version)


def withdraw_unstated(
    lake: Lake,
    no_rows: pl.DataFrame,
    seen: pl.LazyFrame,
    *,
    slices: int,
    secret: bytes,
    version: int,
    now: datetime,
    run_id: str,
    suppressions_version: int | None,
) -> int:
    """The last step of a full build in buckets: withdraw the source statements still in force
    for people no bucket holds (their records left every source), as a single pass would.

    ``seen``: the contact keys of every bucket's people; ``no_rows``: an empty frame of staged
    contact rows (its columns). The ledger is read one slice of contact keys at a time.
    Returns the number of withdrawals appended.
    """
    if not lake.exists(CONSENT_EVENTS):
        return 0
    added = 0
    for part in range(slices):
        ledger = lake.scan(CONSENT_EVENTS).filter(bucket_of("contact_key", slices) == part)
        # Whole keys are kept or dropped, so every chain of the people left is complete.
        gone = ledger.join(
            seen.filter(bucket_of("contact_key", slices) == part), on="contact_key", how="anti"
        )
        rows = _new_rows(
            lake, no_rows.lazy(), gone, secret=secret, version=version, now=now, run_id=run_id
        )
        if not rows.is_empty():
            _append(lake, rows, suppressions_version=suppressions_version)
            added += rows.height
    return added


def record_pending(lake: Lake, pending: PendingConsent) -> None:
    """Append the pending statements alone (a run that rebuilds nobody)."""
    if pending.moved:
        _append(lake, pending.rows, suppressions_version=pending.suppressions_version)


def record_erasures(lake: Lake, keys: Sequence[str], *, now: datetime, run_id: str) -> int:
    """Record the erasure requests of ``keys`` in the ledger now (the erasure calls this after
    deleting the people's other rows, so the suppression is on record before any transform).
    Returns the number of events added (0 when they were there)."""
    if not keys or not lake.exists(ERASURE_REQUESTS):
        return 0
    requests = lake.scan(ERASURE_REQUESTS).filter(
        values_in("contact_key", pl.Series(list(keys), dtype=pl.String))
    )
    rows = _not_recorded(
        lake, ledger_rows(erasure_statements(requests), now=now, run_id=run_id).collect()
    )
    if rows.is_empty():
        return 0
    _append(lake, rows, suppressions_version=None)
    return rows.height


def _new_rows(
    lake: Lake,
    contact_rows: pl.LazyFrame,
    ledger: pl.LazyFrame,
    *,
    secret: bytes,
    version: int,
    now: datetime,
    run_id: str,
) -> pl.DataFrame:
    """The ledger rows, not yet recorded, that make the chains of ``ledger`` say what
    ``contact_rows`` (staged contact rows) state now (:func:`tasks.core.consent.source_events`)."""
    statements = source_statements(contact_rows, pepper=secret, key_version=version)
    changed = source_events(statements, heads(ledger), now=now)
    return _not_recorded(lake, ledger_rows(changed, now=now, run_id=run_id).collect())


def _ledger_of(lake: Lake, keys: pl.Series | None) -> pl.LazyFrame:
    """The ledger rows of ``keys`` (every row if None; none before the ledger exists)."""
    if not lake.exists(CONSENT_EVENTS):
        return pl.LazyFrame(schema=CONSENT_EVENTS_SCHEMA)
    ledger = lake.scan(CONSENT_EVENTS)
    return ledger if keys is None else ledger.filter(values_in("contact_key", keys))


def _not_recorded(lake: Lake, rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` whose event id the ledger lacks (one column read, filtered by the ids)."""
    if rows.is_empty() or not lake.exists(CONSENT_EVENTS):
        return rows
    ids = rows.get_column("event_id")
    known = lake.scan(CONSENT_EVENTS).filter(values_in("event_id", ids)).select("event_id")
    return rows.join(known.collect(), on="event_id", how="anti")


def _append(lake: Lake, rows: pl.DataFrame, *, suppressions_version: int | None) -> None:
    """One commit adding the rows whose event id is new (a batch named by its content, so the
    same rows are never committed twice) and the suppressions version read."""
    digest = hashlib.sha256("\n".join(sorted(rows.get_column("event_id"))).encode())
    digest.update(f"|{suppressions_version}".encode())
    metadata = {}
    if suppressions_version is not None:
        metadata[SUPPRESSIONS_READ] = str(suppressions_version)
    lake.insert_new(
        CONSENT_EVENTS,
        rows,
        keys=["event_id"],
        batch_id=f"consent-{digest.hexdigest()[:32]}",
        metadata=metadata,
    )


def _suppressions_read(lake: Lake) -> int | None:
    def parse(commit: dict[str, Any]) -> int | None:
        raw = commit.get(SUPPRESSIONS_READ)
        return int(raw) if isinstance(raw, str) and raw.isdigit() else None

    read, _ = latest_state(lake, CONSENT_EVENTS, parse)  # type: ignore[arg-type]
    return read


def _suppressions_since(lake: Lake, read: int | None) -> pl.LazyFrame:
    """Rows of the data files ``bronze/platform_suppressions`` gained since version ``read``
    (every row when None or when that version's log is gone: the ledger absorbs repeats)."""
    if read is not None:
        try:
            before = set(lake.file_uris(PLATFORM_SUPPRESSIONS, version=read))
            added = sorted(set(lake.file_uris(PLATFORM_SUPPRESSIONS)) - before)
            if not added:
                return pl.LazyFrame(schema=PLATFORM_SUPPRESSIONS_SCHEMA)
            return lake.scan_files(PLATFORM_SUPPRESSIONS, added)
        except LakeError:
            pass
    return lake.scan(PLATFORM_SUPPRESSIONS)

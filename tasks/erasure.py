"""Erasure: delete a person from every table of the lake and from every platform, with a receipt.

One erasure, for a list of emails (:func:`erase_people`):

1. Each email is normalised and turned into its ``contact_key`` (the keyed hash the transform
   uses). The key goes to ``ops/erasure_requests``: the suppression list, which the ingest and
   staging consult so the person is never landed, staged, built or published again, even by a
   source that still holds them (:mod:`tasks.suppression`). People with a finished receipt are
   not erased twice: their receipt says ``already-erased``.
2. Writers are checked: a held publish lease makes the erasure refuse (see
   :func:`check_no_writer`); the ingest and transform have no lease, so run an erasure when no
   pipeline run is in progress (the ``erase-requests`` deployment runs half an hour clear of
   the hourly pipeline).
3. Every table is searched for the person (:func:`find_rows`): ``contact_key`` where a table has
   one (silver, gold, sync ledger), the email columns elsewhere (bronze: the column the source
   maps to ``email``; staging: ``email`` and ``email_raw``), compared after normalisation, and
   the free-text columns of ``ops`` tables (quarantine ``row`` and ``value``, source run
   ``error``), and events by the visitor ids ``silver/events`` linked to the person. Matching
   rows are deleted (rewriting only the files that hold them).
   The consent ledger then gets the erasure itself, an opt-out of source ``erasure``: the
   only row left about the person (:func:`tasks.engine.consent.record_erasures`).
4. Scratch folders left by a killed bucketed transform (copies of staged rows,
   :mod:`tasks.connectors.lake.scratch`) are removed, then every table's history is purged
   (:func:`~tasks.connectors.lake.purge.purge_history`): superseded files vacuumed with
   retention 0, commits and checkpoints older than a fresh checkpoint deleted (their
   statistics hold min/max values), change data files deleted.
5. Each configured platform is asked to erase the person (the adapters' ``erase``).
6. A receipt per person goes to ``ops/erasure_log``: request id, contact key, tables and files
   touched, each platform's answer. An email never appears in a receipt or a log line; a
   delete's MERGE commit may quote the matched values (delta-rs records an early-filter
   predicate), and step 4 deletes those commits with the rest of the history.

A rerun after a crash completes the job: the request is already recorded, the deletes find
what is left, the purge is idempotent and the platforms' erase calls are too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from tasks.connectors.destinations import PLATFORMS
from tasks.connectors.lake import Lake
from tasks.connectors.lake.purge import DeleteStats, PurgeStats, delete_matching, purge_history
from tasks.core.config import PipelineConfig
from tasks.core.normalise import contact_key, is_valid_email, normalise_email
from tasks.core.tables import (
    ERASURE_LOG,
    ERASURE_LOG_SCHEMA,
    ERASURE_REQUEST_SCHEMA,
    ERASURE_REQUESTS,
    EVENTS,
    PUBLISH_LEASES,
    TABLES,
    is_bronze,
)
from tasks.engine.consent import record_erasures
from tasks.errors import AudienceLakeError

FINISHED = ("erased", "already-erased")
"""Receipt statuses after which a person is not erased again."""
FREE_TEXT_COLUMNS = ("row", "value", "error")
"""``ops`` columns that may quote a person's identifiers inside longer text."""
_KEEP = (ERASURE_REQUESTS, ERASURE_LOG)
"""Tables that hold contact keys *because* of the erasure: never searched."""

Log = Callable[[str], None]


class ErasureError(AudienceLakeError):
    """An erasure that cannot run (bad input, a writer running)."""


@dataclass(frozen=True)
class Person:
    """One person to erase: the normalised email (kept in memory only) and its contact key."""

    email: str
    contact_key: str


@dataclass
class Receipt:
    """What an erasure did for one person (one ``ops/erasure_log`` row)."""

    request_id: str
    contact_key: str
    status: str
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    rows_deleted: int = 0
    files_rewritten: int = 0
    files_deleted: int = 0
    platforms: dict[str, str] = field(default_factory=dict)

    def row(self, *, run_id: str, now: datetime) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "contact_key": self.contact_key,
            "status": self.status,
            "tables": json.dumps(self.tables, sort_keys=True),
            "rows_deleted": self.rows_deleted,
            "files_rewritten": self.files_rewritten,
            "files_deleted": self.files_deleted,
            "platforms": json.dumps(self.platforms, sort_keys=True),
            "run_id": run_id,
            "erased_at": now,
        }


# --- 1. who ---------------------------------------------------------------------------------------
def people(emails: Iterable[str], *, pepper: bytes, version: int, origin: str) -> list[Person]:
    """The distinct people behind ``emails`` (any case, surrounding blanks ignored).

    Raises:
        ErasureError: naming ``origin`` and the position of an entry that is not an email.
    """
    given = list(emails)
    frame = pl.DataFrame({"raw": given}, schema={"raw": pl.String}).with_columns(
        normalise_email(pl.col("raw")).alias("email")
    )
    bad = frame.with_row_index("n").filter(~is_valid_email(pl.col("email")).fill_null(False))
    if bad.height:
        positions = ", ".join(str(int(n) + 1) for n in bad.get_column("n").to_list()[:10])
        raise ErasureError(
            f"erase: {bad.height} entr(ies) of {origin} are not email addresses "
            f"(entry {positions}); nothing was erased"
        )
    keyed = (
        frame.select("email")
        .unique(maintain_order=True)
        .with_columns(
            contact_key(pl.col("email"), pepper=pepper, version=version).alias("contact_key")
        )
    )
    return [Person(e, k) for e, k in keyed.iter_rows()]


def record_requests(
    lake: Lake, persons: Sequence[Person], *, request_id: str, now: datetime
) -> dict[str, str]:
    """Add the people to the suppression list; their request ids (the first one that named
    each person wins)."""
    keys = [p.contact_key for p in persons]
    rows = pl.DataFrame(
        {
            "request_id": [request_id] * len(keys),
            "contact_key": keys,
            "requested_at": [now] * len(keys),
        },
        schema=ERASURE_REQUEST_SCHEMA,
    )
    lake.insert_new(
        ERASURE_REQUESTS, rows, keys=["contact_key"], batch_id=f"erasure-request:{request_id}"
    )
    recorded = (
        lake.scan(ERASURE_REQUESTS)
        .filter(pl.col("contact_key").is_in(pl.Series(keys, dtype=pl.String).implode()))
        .select("contact_key", "request_id")
        .collect()
    )
    return {str(k): str(r) for k, r in recorded.iter_rows()}


def finished(lake: Lake, keys: Sequence[str]) -> set[str]:
    """The contact keys among ``keys`` whose erasure has a finished receipt."""
    if not lake.exists(ERASURE_LOG):
        return set()
    done = (
        lake.scan(ERASURE_LOG)
        .filter(
            pl.col("contact_key").is_in(pl.Series(keys, dtype=pl.String).implode())
            & pl.col("status").is_in(list(FINISHED))
        )
        .select("contact_key")
        .unique()
        .collect()
    )
    return set(done.get_column("contact_key").to_list())


# --- 2. no writer -------------------------------------------------------------------------------
def check_no_writer(lake: Lake, now: datetime) -> None:
    """Refuse while a publish holds a lease: the purge deletes files a running writer may
    still need (and vacuum with retention 0 may delete files it has not committed yet).

    Raises:
        ErasureError: naming the leases held.
    """
    if not lake.exists(PUBLISH_LEASES):
        return
    leases = lake.read(PUBLISH_LEASES)
    if leases.height == 0:
        return
    latest = leases.sort("seq").group_by("lease_key").last()
    held = latest.filter((pl.col("event") == "claimed") & (pl.col("expires_at") > now))
    if held.height:
        names = ", ".join(sorted(held.get_column("lease_key").to_list()))
        raise ErasureError(
            f"erase: publish lease(s) held ({names}): a publish is running; rerun the erasure "
            "when it has finished (nothing was deleted)"
        )


# --- 3. find and delete ---------------------------------------------------------------------------
def email_columns(lake: Lake, config: PipelineConfig, table: str) -> list[str]:
    """The columns of ``table`` that hold an email: for a configured source's bronze, the
    column its mapping sends to ``email``; otherwise every string column named like one."""
    schema = lake.scan(table).collect_schema()
    strings = [c for c, t in schema.items() if t == pl.String]
    found = [c for c in strings if "email" in c.lower()]
    if is_bronze(table):
        source = config.sources.get(table.split("/", 1)[1])
        if source is not None and source.column("email") in strings:
            found = list(dict.fromkeys([source.column("email"), *found]))
    return found


def anonymous_ids(lake: Lake, persons: Sequence[Person]) -> pl.DataFrame:
    """``(_source, anonymous_id)`` of the people's events: the visitor ids their events were
    linked by (read from ``silver/events`` before it is cleaned)."""
    empty = pl.DataFrame(schema={"_source": pl.String, "anonymous_id": pl.String})
    if not lake.exists(EVENTS):
        return empty
    keys = pl.Series([p.contact_key for p in persons], dtype=pl.String)
    return (
        lake.scan(EVENTS)
        .filter(pl.col("contact_key").is_in(keys.implode()) & pl.col("anonymous_id").is_not_null())
        .select(pl.col("_source").cast(pl.String), pl.col("anonymous_id").cast(pl.String))
        .unique()
        .collect()
    )


def _anonymous_column(config: PipelineConfig, table: str, schema: pl.Schema) -> str | None:
    """The column of ``table`` holding a visitor id (bronze: the source's mapping)."""
    column = "anonymous_id"
    if is_bronze(table):
        source = config.sources.get(table.split("/", 1)[1])
        if source is None or source.role != "events":
            return None
        column = source.column("anonymous_id")
    return column if column in schema and "_source" in schema else None


def find_rows(
    lake: Lake,
    config: PipelineConfig,
    table: str,
    persons: Sequence[Person],
    anonymous: pl.DataFrame | None = None,
) -> list[pl.DataFrame]:
    """Frames of column values identifying the people's rows of ``table`` (each frame is one
    delete: rows whose columns equal one of its rows). ``anonymous``: the visitor ids their
    events were linked by (:func:`anonymous_ids`), whose events carry no email."""
    scan = lake.scan(table)
    schema = scan.collect_schema()
    keys = pl.Series([p.contact_key for p in persons], dtype=pl.String)
    emails = [p.email for p in persons]
    found: list[pl.DataFrame] = []
    if "contact_key" in schema:
        found.append(
            scan.filter(pl.col("contact_key").is_in(keys.implode()))
            .select("contact_key")
            .unique()
            .collect()
        )
    for column in email_columns(lake, config, table):
        hits = scan.filter(
            normalise_email(pl.col(column)).is_in(pl.Series(emails, dtype=pl.String).implode())
        )
        found.append(hits.select(column).unique().collect())
    visitor = _anonymous_column(config, table, schema)
    if visitor is not None and anonymous is not None and anonymous.height:
        ids = anonymous.rename({"anonymous_id": visitor})
        linked = scan.select("_source", visitor).join(ids.lazy(), on=["_source", visitor])
        found.append(linked.unique().collect())
    text = [c for c in FREE_TEXT_COLUMNS if schema.get(c) == pl.String]
    entry = TABLES.get(table)
    if text and entry is not None and entry.keys:
        lowered = [e.lower() for e in emails]
        quoting = pl.any_horizontal(
            pl.col(c).str.to_lowercase().str.contains_any(lowered).fill_null(False) for c in text
        )
        found.append(scan.filter(quoting).select(list(entry.keys)).unique().collect())
    return [f for f in found if f.height]


def delete_people(
    lake: Lake, config: PipelineConfig, persons: Sequence[Person], *, log: Log
) -> dict[str, DeleteStats]:
    """Delete the people's rows from every table; per table touched, what was deleted."""
    touched: dict[str, DeleteStats] = {}
    anonymous = anonymous_ids(lake, persons)
    for table in lake.tables():
        if table in _KEEP or table == PUBLISH_LEASES:
            continue
        rows = files_removed = files_added = 0
        for values in find_rows(lake, config, table, persons, anonymous):
            stats = delete_matching(lake, table, values, metadata={"audience_lake.erasure": "true"})
            rows += stats.rows
            files_removed += stats.files_removed
            files_added += stats.files_added
        if rows:
            touched[table] = DeleteStats(rows, files_removed, files_added)
            log(f"erase: {table}: {rows} row(s) deleted, {files_removed} file(s) rewritten")
    return touched


def purge_lake(lake: Lake) -> dict[str, PurgeStats]:
    """Purge the history of every table (deleted rows were in older versions of any of them:
    an audience member who left a segment last week is in a file not yet vacuumed)."""
    return {table: purge_history(lake, table) for table in lake.tables()}


# --- 5. platforms -------------------------------------------------------------------------------
def erase_on_platforms(
    config: PipelineConfig, persons: Sequence[Person]
) -> dict[str, dict[str, str]]:
    """Per person's email, each configured platform's answer (``ok: ...`` or ``failed: ...``)."""
    answers: dict[str, dict[str, str]] = {p.email: {} for p in persons}
    emails = [p.email for p in persons]
    for name, destination in sorted(config.destinations.items()):
        opener = PLATFORMS.get(destination.kind)
        if opener is None:
            continue
        try:
            adapter = opener(destination)
        except AudienceLakeError as exc:
            for email in emails:
                answers[email][name] = f"failed: {exc}"
            continue
        try:
            for result in adapter.erase(emails):
                state = "ok" if result.ok else "failed"
                answers.setdefault(result.email.strip().lower(), {})[name] = (
                    f"{state}: {result.detail}"
                )
        except AudienceLakeError as exc:
            for email in emails:
                answers[email].setdefault(name, f"failed: {exc}")
        finally:
            adapter.close()
    return answers


# --- the whole erasure ----------------------------------------------------------------------------
def erase_people(
    lake: Lake,
    config: PipelineConfig,
    emails: Sequence[str],
    *,
    pepper: bytes,
    version: int,
    run_id: str,
    now: datetime,
    request_id: str | None = None,
    origin: str = "the request",
    log: Log = print,
) -> list[Receipt]:
    """Erase the people behind ``emails`` (see the module docstring); one receipt each."""
    persons = people(emails, pepper=pepper, version=version, origin=origin)
    if not persons:
        return []
    request = request_id or f"erasure-{uuid.uuid4().hex[:16]}"
    requests = record_requests(lake, persons, request_id=request, now=now)
    done = finished(lake, [p.contact_key for p in persons])
    pending = [p for p in persons if p.contact_key not in done]
    receipts = [
        Receipt(requests[p.contact_key], p.contact_key, "already-erased")
        for p in persons
        if p.contact_key in done
    ]
    if pending:
        check_no_writer(lake, now)
        touched = delete_people(lake, config, pending, log=log)
        # The one row kept about them: the erasure, as an opt-out in the consent ledger.
        record_erasures(lake, [p.contact_key for p in pending], now=now, run_id=run_id)
        # A killed bucketed build's scratch folder holds copies of staged rows: none survives.
        if removed := lake.remove_scratch():
            log(f"erase: removed {len(removed)} scratch folder(s) left by unfinished builds")
        purged = purge_lake(lake)
        answers = erase_on_platforms(config, pending)
        receipts.extend(_receipt(p, requests, touched, purged, answers) for p in pending)
    _write_receipts(lake, receipts, run_id=run_id, now=now)
    log(
        f"erase: {len(pending)} person(s) erased, {len(persons) - len(pending)} already erased "
        f"(request {request})"
    )
    return receipts


def _receipt(
    person: Person,
    requests: dict[str, str],
    touched: dict[str, DeleteStats],
    purged: dict[str, PurgeStats],
    answers: dict[str, dict[str, str]],
) -> Receipt:
    """One person's receipt. Counts are the run's (rows of several people share files)."""
    platforms = answers.get(person.email, {})
    failed = any(a.startswith("failed") for a in platforms.values())
    return Receipt(
        request_id=requests[person.contact_key],
        contact_key=person.contact_key,
        status="platforms-pending" if failed else "erased",
        tables={
            t: {"rows": s.rows, "files_removed": s.files_removed, "files_added": s.files_added}
            for t, s in sorted(touched.items())
        },
        rows_deleted=sum(s.rows for s in touched.values()),
        files_rewritten=sum(s.files_removed for s in touched.values()),
        files_deleted=sum(p.vacuumed + p.log_files + p.change_files for p in purged.values()),
        platforms=dict(sorted(platforms.items())),
    )


def _write_receipts(lake: Lake, receipts: Sequence[Receipt], *, run_id: str, now: datetime) -> None:
    if not receipts:
        return
    rows = pl.DataFrame(
        [r.row(run_id=run_id, now=now) for r in receipts], schema=ERASURE_LOG_SCHEMA
    )
    lake.append_once(ERASURE_LOG, rows, batch_id=f"erasure-log:{run_id}")

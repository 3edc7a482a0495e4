"""Platform opt-outs read back before each push, so a publish never overwrites them.

Before a destination list is published, the platform is asked for the unsubscribes, bounces,
cleaned addresses and spam complaints it recorded since the last read
(:meth:`~tasks.connectors.destinations.protocol.Destination.suppressions_since`); they land in
``bronze/platform_suppressions`` as consent evidence of their own source, and the plan of the
push right after it honours them (:func:`platform_opt_outs`, fed to
:func:`tasks.core.sync.plan_sync`).

* **The cursor lives with the rows.** Each row carries the cursor the read returned, less
  :data:`READ_OVERLAP` (``read_cursor``), written in the same commit; the next read of the list
  starts from the largest one. The overlap covers an opt-out that a platform shows to reads a
  little after the time it stamps on it (an adapter whose cursor is the newest record read
  would otherwise step past it). A read that adds nothing leaves the cursor where it was (the
  next read repeats a window that held nothing new), and a record read twice is kept once
  (``insert_new`` on destination, audience, email, status and occurred_at). The first read of a
  list reads all.
* **A failed read holds the audience.** Its subscribes and updates wait (they could overwrite an
  opt-out the read would have shown); its unsubscribes still go out, and the next run reads
  again from the same cursor. ``override_hold`` does not lift this hold.
* **A dry run reads nothing** and writes nothing: it plans against the opt-outs already in the
  lake, so its counts can include people who opted out at the platform since the last real run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.destinations import open_platform
from tasks.connectors.destinations.protocol import Destination as Platform
from tasks.connectors.destinations.protocol import SuppressionPage
from tasks.connectors.http import caused_by
from tasks.connectors.lake import Lake
from tasks.connectors.redact import redact
from tasks.core.config import Destination
from tasks.core.masking import mask_emails
from tasks.core.normalise import UTC_MICROS, normalise_email
from tasks.core.sync import PLATFORM_OPT_OUT_SCHEMA
from tasks.core.tables import PLATFORM_SUPPRESSIONS, PLATFORM_SUPPRESSIONS_SCHEMA, TABLES
from tasks.resources import open_lake

READ_TASK_NAME = "read-platform-suppressions"
KEYS = list(TABLES[PLATFORM_SUPPRESSIONS].keys)
READ_OVERLAP = timedelta(minutes=5)
"""How far before the cursor a read returned the next read starts (re-reads are harmless)."""


@dataclass(frozen=True)
class ReadbackReport:
    """One read of one destination list: what came back and what was new to the lake."""

    destination: str
    audience: str
    since: datetime | None
    cursor: datetime
    """Where the next read starts if this one added rows (the platform's cursor less
    :data:`READ_OVERLAP`)."""
    read: int
    inserted: int
    statuses: tuple[tuple[str, int], ...] = ()
    """Rows read per status, e.g. ``(("cleaned", 1), ("unsubscribed", 3))``."""


def read_cursor(lake: Lake, destination_name: str, audience: str) -> datetime | None:
    """Where the next read of ``destination_name``/``audience`` starts; None: read everything."""
    if not lake.exists(PLATFORM_SUPPRESSIONS):
        return None
    cursor = (
        lake.scan(PLATFORM_SUPPRESSIONS)
        .filter((pl.col("destination") == destination_name) & (pl.col("audience") == audience))
        .select(pl.col("read_cursor").max())
        .collect()
        .item()
    )
    return cursor if isinstance(cursor, datetime) else None


def suppression_rows(
    page: SuppressionPage,
    *,
    destination_name: str,
    platform: str,
    audience: str,
    run_id: str,
    read_at: datetime,
) -> pl.DataFrame:
    """The rows of ``bronze/platform_suppressions`` for one read (one row per key)."""
    items = page.suppressions
    frame = pl.DataFrame(
        {
            "destination": [destination_name] * len(items),
            "platform": [platform] * len(items),
            "audience": [audience] * len(items),
            "email": [s.email for s in items],
            "status": [s.status for s in items],
            "occurred_at": [s.occurred_at for s in items],
            "platform_record_id": [s.platform_record_id for s in items],
            "read_at": [read_at] * len(items),
            "run_id": [run_id] * len(items),
            "read_cursor": [page.cursor - READ_OVERLAP] * len(items),
        },
        schema=PLATFORM_SUPPRESSIONS_SCHEMA,
    )
    return frame.unique(subset=KEYS, keep="first", maintain_order=True)


def _not_on_record(
    lake: Lake, rows: pl.DataFrame, destination_name: str, audience: str
) -> pl.DataFrame:
    """``rows`` whose keys the table does not hold yet."""
    if rows.is_empty() or not lake.exists(PLATFORM_SUPPRESSIONS):
        return rows
    known = (
        lake.scan(PLATFORM_SUPPRESSIONS)
        .filter((pl.col("destination") == destination_name) & (pl.col("audience") == audience))
        .select(KEYS)
        .collect()
    )
    return rows.join(known, on=KEYS, how="anti")


def read_suppressions(
    lake: Lake,
    destination_name: str,
    destination: Destination,
    audience: str,
    *,
    run_id: str,
    open_sink: Callable[[Destination], Platform] = open_platform,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReadbackReport:
    """Read one list's opt-outs since the lake's cursor and insert the new ones, in one commit."""
    since = read_cursor(lake, destination_name, audience)
    platform = open_sink(destination)
    try:
        page = platform.suppressions_since(audience, since)
    finally:
        platform.close()
    rows = suppression_rows(
        page, destination_name=destination_name, platform=destination.kind,
        audience=audience, run_id=run_id, read_at=now(),
    )  # fmt: skip
    # The same read repeated (a retried task) is one batch; another read is another batch.
    batch = hashlib.sha256(
        f"{destination_name}\x1f{audience}\x1f{since}\x1f{page.cursor}\x1f{run_id}".encode()
    ).hexdigest()[:32]
    fresh = _not_on_record(lake, rows, destination_name, audience)
    # Once the table exists, a read that brings nothing new commits nothing (the overlap
    # re-reads the newest records on every run): its version moves only with new evidence.
    inserted = (
        lake.insert_new(PLATFORM_SUPPRESSIONS, fresh, keys=KEYS, batch_id=f"read:{batch}")
        if not fresh.is_empty() or not lake.exists(PLATFORM_SUPPRESSIONS)
        else 0
    )
    counts = rows.group_by("status").len().sort("status").iter_rows()
    return ReadbackReport(
        destination=destination_name,
        audience=audience,
        since=since,
        cursor=page.cursor - READ_OVERLAP,
        read=rows.height,
        inserted=inserted or 0,
        statuses=tuple((str(status), int(n)) for status, n in counts),
    )


def platform_opt_outs(
    lake: Lake, contacts: pl.LazyFrame, *, destination_name: str, audience: str
) -> pl.LazyFrame:
    """Contacts with a platform opt-out at or after their consent (opt-out wins ties):
    ``contact_key`` and ``here`` (reported by ``destination_name``/``audience`` itself).

    Suppressions of every destination count: an opt-out wins wherever it was made. A consent
    newer than the platform's opt-out (the person opted in again) makes it stale.
    """
    if not lake.exists(PLATFORM_SUPPRESSIONS):
        return pl.LazyFrame(schema=PLATFORM_OPT_OUT_SCHEMA)
    suppressions = lake.scan(PLATFORM_SUPPRESSIONS).select(
        normalise_email(pl.col("email")).alias("email"),
        "occurred_at",
        ((pl.col("destination") == destination_name) & (pl.col("audience") == audience)).alias(
            "here"
        ),
    )
    if "consent_at" not in contacts.collect_schema().names():
        contacts = contacts.with_columns(pl.lit(None, UTC_MICROS).alias("consent_at"))
    people = contacts.select("contact_key", "email", pl.col("consent_at").cast(UTC_MICROS))
    return (
        suppressions.join(people, on="email", how="inner")
        .filter(pl.col("consent_at").is_null() | (pl.col("occurred_at") >= pl.col("consent_at")))
        .group_by("contact_key")
        .agg(pl.col("here").any())
        .select(list(PLATFORM_OPT_OUT_SCHEMA))
    )


@task(
    name=READ_TASK_NAME,
    task_run_name="read-suppressions-{destination_name}-{audience}",
    cache_policy=NO_CACHE,
)
def read_platform_suppressions(
    destination_name: str, destination: Destination, audience: str, *, run_id: str
) -> ReadbackReport:
    """Read a destination list's opt-outs into ``bronze/platform_suppressions``.

    No task-level retries: the HTTP client already retries 429s and 5xx with backoff, and a
    read that still fails holds the audience's subscribes and updates (see the module
    docstring); the next run reads again from the same cursor.
    """
    report = read_suppressions(open_lake(), destination_name, destination, audience, run_id=run_id)
    get_run_logger().info(
        "read %d platform opt-out(s) of %s/%s since %s (%d new): %s",
        report.read, destination_name, audience, report.since or "the beginning",
        report.inserted, dict(report.statuses) or "none",
    )  # fmt: skip
    return report


def read_before_push(
    destination_name: str,
    destination: Destination,
    audience: str,
    *,
    run_id: str,
    done: dict[tuple[str, str], ReadbackReport | str],
    unreachable: dict[str, str] | None = None,
) -> ReadbackReport | str:
    """Run the read task once per destination list and run (``done`` remembers the outcome):
    its report, or why it failed, as a hold reason naming no address or secret.

    With ``unreachable`` (destination -> why, kept for the run), a destination that could not
    be connected to at all (every retry of the HTTP client refused or timed out) is not tried
    again for its other lists in the same run: each would spend the client's whole retry
    budget to learn the same thing. Those lists are held with a reason naming the list whose
    read failed; the next run reads every list again.
    """
    where = (destination_name, audience)
    unreachable = {} if unreachable is None else unreachable
    if where not in done and destination_name in unreachable:
        done[where] = (
            f"platform opt-outs of {destination_name}/{audience} not read: "
            f"{unreachable[destination_name]}; subscribes and updates wait for a successful read"
        )
    if where not in done:
        state = read_platform_suppressions(
            destination_name, destination, audience, run_id=run_id, return_state=True
        )
        if state.is_completed():
            done[where] = state.result()
        else:
            error = state.result(raise_on_failure=False)
            detail = mask_emails(redact(str(error) or type(error).__name__))
            done[where] = (
                f"platform opt-outs of {destination_name}/{audience} could not be read "
                f"({detail}); subscribes and updates wait for a successful read"
            )
            if isinstance(error, BaseException) and caused_by(error, _COULD_NOT_CONNECT):
                unreachable[destination_name] = (
                    f"{destination_name} could not be reached when {audience} was read this run"
                )
    return done[where]


_COULD_NOT_CONNECT = (httpx.ConnectError, httpx.ConnectTimeout)
"""A read that failed with one of these (after the client's retries) never reached the platform."""

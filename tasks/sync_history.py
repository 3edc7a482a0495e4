"""``ops/sync_history``: every send per contact, with the Delta versions its publish read.

``ops/sync_ledger`` holds the latest send per contact and list (a MERGE: the plan's memory).
The history keeps every one, append-only: action, status, payload hash, run, and the Delta
versions the publish read (:mod:`tasks.publish_reads`). No value is stored: the payload can be
rebuilt from gold at the recorded version, and its hash checked against the one recorded.

:mod:`tasks.sync_explain` answers "why did this contact get this value on this day" from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.pins import versions_json
from tasks.core.tables import AUDIENCE, SYNC_HISTORY, SYNC_HISTORY_SCHEMA


@dataclass(frozen=True)
class SendReads:
    """What one publish of an audience read: recorded on each of its history rows."""

    versions: Mapping[str, int]
    as_of_run: str | None = None

    @property
    def audience_version(self) -> int | None:
        return self.versions.get(AUDIENCE)


def record_sends(lake: Lake, results: pl.DataFrame, reads: SendReads) -> bool:
    """Append one batch's results (``ops/sync_ledger`` rows with the platform's answer).

    Exactly once per batch content: a retried task that records the same answers for the same
    contacts and payloads is a no-op. Returns whether this call appended.
    """
    if results.is_empty():
        return False
    rows = results.with_columns(
        pl.lit(reads.audience_version, pl.Int64).alias("audience_version"),
        pl.lit(versions_json(reads.versions)).alias("versions"),
        pl.lit(reads.as_of_run, pl.String).alias("as_of_run"),
    ).select(list(SYNC_HISTORY_SCHEMA))
    first = rows.row(0, named=True)
    digest = hashlib.sha256()
    for row in rows.select("contact_key", "action", "payload_hash", "status", "error").iter_rows():
        digest.update("\x1f".join("" if v is None else str(v) for v in row).encode())
        digest.update(b"\x1e")
    batch = (
        f"sync-history:{first['run_id']}:{first['destination']}:{first['audience']}:"
        f"{first['segment']}:{digest.hexdigest()[:32]}"
    )
    return lake.append_once(SYNC_HISTORY, rows, batch_id=batch)


def sends_of(lake: Lake, contact_key: str) -> pl.DataFrame:
    """Every recorded send to ``contact_key``, oldest first."""
    if not lake.exists(SYNC_HISTORY):
        return pl.DataFrame(schema=SYNC_HISTORY_SCHEMA)
    return (
        lake.scan(SYNC_HISTORY)
        .filter(pl.col("contact_key") == contact_key)
        .sort("synced_at", "destination", "audience")
        .collect()
    )

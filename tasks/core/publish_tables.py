"""Columns of the two tables that make a publish explainable after the fact.

- ``gold/audience_holdouts``: each member of an audience with a holdout, where the keyed hash
  puts them (``position`` in [0, 1)) and whether that falls inside the segment's holdout share.
  Built by the transform (:mod:`tasks.engine.holdouts`), read by the publish.
- ``ops/sync_history``: one row per contact per send, append-only, with the Delta versions the
  publish read (:mod:`tasks.sync_history`). ``ops/sync_ledger`` keeps the latest send only.

The catalogue entries are in :mod:`tasks.core.tables`.
"""

from __future__ import annotations

import polars as pl

from tasks.core.normalise import UTC_MICROS

HOLDOUTS_SCHEMA: dict[str, pl.DataType] = {
    "segment": pl.String(),
    "contact_key": pl.String(),
    "share": pl.Float64(),  # the largest holdout share configured for the segment
    "position": pl.Float64(),  # HMAC(pepper, contact_key + segment) scaled to [0, 1)
    "held_out": pl.Boolean(),  # position < share
}

SYNC_HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "destination": pl.String(),
    "audience": pl.String(),
    "segment": pl.String(),
    "contact_key": pl.String(),
    "action": pl.String(),  # SyncAction
    "payload_hash": pl.String(),
    "status": pl.String(),  # SyncStatus, never "pending": a row is written once the answer is in
    "error": pl.String(),
    "run_id": pl.String(),
    "synced_at": UTC_MICROS,
    "audience_version": pl.Int64(),  # gold/audience_members version the values came from
    "versions": pl.String(),  # JSON {table: version} of everything the plan read
    "as_of_run": pl.String(),  # the run whose versions a pinned rerun reused, else null
}

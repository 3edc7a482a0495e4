"""Columns of the pipeline's own tables (``ops/...``) and of the platforms' read-back.

What each table is for, its keys and how it is written: the catalogue,
:mod:`tasks.core.tables`, which re-exports these schemas.
"""

from __future__ import annotations

import polars as pl

from tasks.core.normalise import UTC_MICROS

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "quarantine_id": pl.String(),
    "table": pl.String(),
    "source": pl.String(),
    "rule": pl.String(),
    "column": pl.String(),
    "value": pl.String(),
    "row": pl.String(),
    "run_id": pl.String(),
    "quarantined_at": UTC_MICROS,
}
"""``ops/quarantine``: one record per failed rule per row (``row`` is the row as JSON)."""

VOLUME_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "measured_at": UTC_MICROS,
    "table": pl.String(),
    "source": pl.String(),
    "segment": pl.String(),
    "rows": pl.Int64(),
    "quarantined": pl.Int64(),
}

ALERT_SCHEMA: dict[str, pl.DataType] = {
    "checked_run_id": pl.String(),
    "checked_at": UTC_MICROS,
    "run_id": pl.String(),
    "measured_at": UTC_MICROS,
    "table": pl.String(),
    "source": pl.String(),
    "segment": pl.String(),
    "severity": pl.String(),
    "rule": pl.String(),
    "rows": pl.Int64(),
    "expected": pl.Float64(),
    "lower": pl.Float64(),
    "upper": pl.Float64(),
    "score": pl.Float64(),
    "history": pl.Int64(),
    "holds": pl.List(pl.String()),
}

SOURCE_RUNS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source": pl.String(),
    "status": pl.String(),  # "landed" or "failed"
    "error": pl.String(),
    "finished_at": UTC_MICROS,
}

LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "destination": pl.String(),
    "audience": pl.String(),
    "segment": pl.String(),
    "contact_key": pl.String(),
    "action": pl.String(),  # SyncAction
    "payload_hash": pl.String(),
    "status": pl.String(),  # SyncStatus
    "error": pl.String(),
    "run_id": pl.String(),
    "synced_at": UTC_MICROS,
    # JSON: platform field -> short keyed hash of the value sent (never the value); null for
    # actions without fields and for rows written before the column existed.
    "field_hashes": pl.String(),
}
LEDGER_KEYS = ["destination", "audience", "contact_key"]

LEASE_SCHEMA: dict[str, pl.DataType] = {
    "lease_key": pl.String(),
    "seq": pl.Int64(),
    "holder": pl.String(),
    "event": pl.String(),  # "claimed" or "released"; a renewal is a new "claimed" row
    "expires_at": pl.Datetime("us", "UTC"),
    "written_at": pl.Datetime("us", "UTC"),
}

RUNS_SCHEMA: dict[str, pl.DataType] = {
    "flow_run_id": pl.String(),
    "flow": pl.String(),
    "flow_run_name": pl.String(),
    "deployment": pl.String(),  # null: not run from a deployment
    "parent_run_id": pl.String(),  # the flow run this one is a sub-flow of
    "root_run_id": pl.String(),  # what the other ops tables call run_id
    "trigger": pl.String(),  # RunTrigger
    "triggered_by": pl.String(),  # who or what created the run (automation, user), if known
    "parameters": pl.String(),  # JSON, secrets masked
    "reads": pl.String(),  # JSON {table: [versions read]}
    "writes": pl.String(),  # JSON {table: {"versions": [...], "inserted": n, ...}}
    "counts": pl.String(),  # JSON: the run's own totals (rows, sent, ...)
    "outcome": pl.String(),  # RunOutcome
    "holds": pl.List(pl.String()),
    "error_class": pl.String(),
    "error": pl.String(),  # one line, secrets masked
    "attempt": pl.Int64(),
    "started_at": UTC_MICROS,
    "ended_at": UTC_MICROS,
}
"""``ops/runs``: one row per flow run (see :mod:`tasks.runs`)."""

ERASURE_REQUEST_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "contact_key": pl.String(),
    "requested_at": UTC_MICROS,
}
"""``ops/erasure_requests``: the suppression list (no email: a contact key cannot be reversed)."""

ERASURE_LOG_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "contact_key": pl.String(),
    "status": pl.String(),  # "erased", "already-erased" or "platforms-pending"
    "tables": pl.String(),  # JSON: table -> {rows, files_removed, files_added}
    "rows_deleted": pl.Int64(),
    "files_rewritten": pl.Int64(),
    "files_deleted": pl.Int64(),
    "platforms": pl.String(),  # JSON: destination -> platform answer
    "run_id": pl.String(),
    "erased_at": UTC_MICROS,
}
"""``ops/erasure_log``: one receipt per person and erasure run."""

PLATFORM_SUPPRESSIONS_SCHEMA: dict[str, pl.DataType] = {
    "destination": pl.String(),  # the pipeline.yaml destination name
    "platform": pl.String(),  # its kind: mailchimp, klaviyo, hubspot
    "audience": pl.String(),  # the platform list the suppression was read from
    "email": pl.String(),
    "status": pl.String(),  # SuppressionStatus: unsubscribed, bounced, cleaned, spam_complaint
    "occurred_at": UTC_MICROS,  # when the platform says it happened
    "platform_record_id": pl.String(),
    "read_at": UTC_MICROS,
    "run_id": pl.String(),
    "read_cursor": UTC_MICROS,  # the cursor the read that inserted the row returned
}
"""``bronze/platform_suppressions``: what the platforms said about opt-outs, as they said it.

The next read of a destination list starts from the largest ``read_cursor`` of its rows: a
cursor is recorded in the same commit as the rows it covers, so it can never run ahead of them
(see :mod:`tasks.readback`)."""

CONSENT_EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),  # deterministic: the same statement recorded twice is one event
    "contact_key": pl.String(),
    "channel": pl.String(),  # "email"
    "status": pl.String(),  # "opt-in", "opt-out"; "withdrawn": a source record stopped saying it
    "lawful_basis": pl.String(),  # e.g. "consent"; null when the source does not say
    "source": pl.String(),  # a source name, "platform:<destination>" or "erasure"
    "source_record_id": pl.String(),
    "evidence": pl.String(),  # JSON: form id, double-opt-in time, wording version, hashed IP
    "occurred_at": UTC_MICROS,
    "recorded_at": UTC_MICROS,
    "run_id": pl.String(),
    "supersedes": pl.String(),  # the event of the same source record this one replaces
}
"""``ops/consent_events``: the consent ledger, append-only, by contact_key (no email); see
:mod:`tasks.core.consent`."""

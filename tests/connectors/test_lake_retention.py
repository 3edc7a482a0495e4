"""Retention on real Delta tables (local and on the S3 test server): expired rows deleted by
predicate or by key, the change data that would keep them dropped with the vacuum retention,
and nothing of an expired row left in storage once the retention has passed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tasks.connectors.lake import Lake, LakeError, maintain_table
from tasks.connectors.lake.purge import TableStore
from tasks.core.retention import RetentionRule
from tasks.core.tables import QUARANTINE, QUARANTINE_SCHEMA
from tasks.retention import expire_table

NOW = datetime(2026, 12, 1, tzinfo=UTC)
WEB = "bronze/retention_web"
OLD_MARK = "expired-visitor@old.example"


def _quarantine(ages_days: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "quarantine_id": [f"q{i}" for i in range(len(ages_days))],
            "table": ["bronze/orders"] * len(ages_days),
            "source": ["orders"] * len(ages_days),
            "rule": ["amount"] * len(ages_days),
            "column": ["amount"] * len(ages_days),
            "value": ["n/a"] * len(ages_days),
            "row": ["{}"] * len(ages_days),
            "run_id": ["r"] * len(ages_days),
            "quarantined_at": [NOW - timedelta(days=d) for d in ages_days],
        },
        schema=QUARANTINE_SCHEMA,
    )


def _events(lake: Lake) -> None:
    """Bronze as the events source writes it: text as delivered, change data feed on."""
    rows = pl.DataFrame(
        {
            "event_id": ["e-old", "e-new", "e-garbled-old"],
            "user_email": [OLD_MARK, "fresh@new.example", "garbled@old.example"],
            "occurred_at": ["2025-06-01T10:00:00.000Z", "2026-11-20T10:00:00Z", "not a time"],
            "_ingested_at": [NOW - timedelta(days=1)] * 2 + [datetime(2025, 6, 2, tzinfo=UTC)],
        },
        schema_overrides={"_ingested_at": pl.Datetime("us", "UTC")},
    )
    lake.overwrite(WEB, rows)
    lake.enable_change_feed(WEB)


def test_typed_tables_lose_the_rows_older_than_the_cutoff_in_one_delete(lake: Lake) -> None:
    lake.overwrite(QUARANTINE, _quarantine([1, 89, 91, 400]))
    rule = RetentionRule(QUARANTINE, 90, "quarantined_at", configured=False)
    [expiry] = expire_table(lake, rule, now=NOW)
    assert (expiry.rows, expiry.files_removed) == (2, 1)
    assert expiry.cutoff == NOW - timedelta(days=90)
    assert sorted(lake.read(QUARANTINE).get_column("quarantine_id")) == ["q0", "q1"]
    commit = lake.history(QUARANTINE, limit=1)[0]
    assert commit["operation"] == "DELETE" and commit["audience_lake.retention"] == "true"
    # Nothing older is left: a second pass commits nothing.
    version = lake.version(QUARANTINE)
    assert expire_table(lake, rule, now=NOW)[0].rows == 0
    assert lake.version(QUARANTINE) == version


def test_text_times_are_parsed_and_rows_deleted_by_key(lake: Lake) -> None:
    _events(lake)
    rule = RetentionRule(WEB, 395, "occurred_at", configured=False, key="event_id")
    [expiry] = expire_table(lake, rule, now=NOW)  # no role: no silver to follow
    assert expiry.rows == 2
    assert lake.read(WEB).get_column("event_id").to_list() == ["e-new"]
    # The commit names event ids at most (delta-rs records the MERGE's source values as an
    # early filter), never the expired rows' other values.
    assert OLD_MARK not in json.dumps(lake.history(WEB, limit=1)[0])


def test_a_missing_age_column_or_key_fails_naming_the_table(lake: Lake) -> None:
    _events(lake)
    with pytest.raises(LakeError, match=f"{WEB}: retention column 'ts' is not in the table"):
        expire_table(lake, RetentionRule(WEB, 1, "ts", configured=True, key="event_id"), now=NOW)
    with pytest.raises(LakeError, match=f"{WEB}: 'occurred_at' is text and the table has no key"):
        expire_table(lake, RetentionRule(WEB, 1, "occurred_at", configured=True), now=NOW)


def _holding(lake: Lake, table: str, needle: str) -> list[str]:
    """Objects of ``table`` whose bytes or decoded values hold ``needle``."""
    store = TableStore.of(lake, table)
    found = []
    for path in store.objects(""):
        content = _read(lake, table, path)
        text = content.decode("utf-8", "replace")
        if path.endswith(".parquet"):
            text += pl.read_parquet(content).write_ndjson()
        if needle in text:
            found.append(path)
    return found


def _read(lake: Lake, table: str, path: str) -> bytes:
    from tasks.connectors.s3 import s3_client, split_s3_uri

    if lake.is_remote:
        bucket, base = split_s3_uri(lake.uri(table))
        client = s3_client(lake.storage_options, read_timeout=30.0)
        return bytes(client.get_object(Bucket=bucket, Key=f"{base}/{path}")["Body"].read())
    with open(f"{lake.uri(table)}/{path}", "rb") as handle:
        return handle.read()


def test_expired_rows_leave_storage_with_the_vacuum_retention_change_data_included(
    lake: Lake,
) -> None:
    _events(lake)
    rule = RetentionRule(WEB, 395, "occurred_at", configured=False, key="event_id")
    expire_table(lake, rule, now=NOW)
    # The delete wrote the expired rows into change data, and the old file still holds them:
    # within the vacuum retention, time travel and change readers still see them.
    held = _holding(lake, WEB, OLD_MARK)
    assert any(p.startswith("_change_data/") for p in held), held
    before = pl.read_delta(lake.uri(WEB), version=1, storage_options=lake.read_options)
    assert before.height == 3
    kept = maintain_table(lake, WEB, retention_hours=168)
    assert kept.vacuumed_files == 0
    assert _holding(lake, WEB, OLD_MARK) == held
    # Past the retention (0 here: every removed file is older than it), the data file and the
    # change data go; the commit log's JSON held only statistics of the removed file, and the
    # checkpoint maintenance writes holds the current files only.
    gone = maintain_table(lake, WEB, retention_hours=0)
    assert any(p.startswith("_change_data/") for p in gone.vacuumed), gone.vacuumed
    left = [p for p in _holding(lake, WEB, OLD_MARK) if not p.startswith("_delta_log/0")]
    assert left == []
    assert lake.read(WEB).get_column("event_id").to_list() == ["e-new"]

"""SQL and file readers and the Mailchimp sink against real files and loopback stand-ins.

The HubSpot-style CRM is read through the declarative REST source: tests/connectors/test_rest_*.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import httpx
import polars as pl
import pytest

from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.destinations.mailchimp import MailchimpAudience, MemberChange
from tasks.connectors.http import RetryPolicy, build_client
from tasks.connectors.sources.files import FileDropReader
from tasks.connectors.sources.sql import SqlTableReader
from tasks.errors import PublishError, SourceError

NO_SLEEP = RetryPolicy(sleep=lambda _s: None, rng=random.Random(0))


def never(_batch_id: str) -> bool:
    return False


def _orders_db(path: Path, rows_: list[tuple[str, str]]) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (order_id TEXT PRIMARY KEY, updated_at TEXT, amount TEXT)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, '1')", rows_)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def test_sql_keyset_never_skips_ties_at_chunk_boundaries(tmp_path: Path) -> None:
    # 7 rows share one timestamp and straddle the chunk size of 3.
    rows_ = [(f"o{i:02d}", "2026-10-01T00:00:00Z") for i in range(7)]
    rows_ += [(f"p{i:02d}", "2026-10-02T00:00:00Z") for i in range(4)]
    url = _orders_db(tmp_path / "o.db", rows_)
    r = SqlTableReader(
        url, source_name="orders", table="orders", primary_key="order_id",
        cursor_field="updated_at", chunk_size=3,
    )  # fmt: skip
    got = pl.concat([b.frame for b in r.batches(since=None, is_committed=never)])
    assert sorted(got["order_id"]) == sorted(r_[0] for r_ in rows_)
    tail = pl.concat([b.frame for b in r.batches(since="2026-10-02T00:00:00Z", is_committed=never)])
    assert sorted(tail["order_id"]) == [f"p{i:02d}" for i in range(4)]


def test_sql_missing_database_and_table_are_named(tmp_path: Path) -> None:
    r = SqlTableReader(
        f"sqlite:///{tmp_path}/none.db", source_name="orders", table="orders",
        primary_key="id", cursor_field="updated_at",
    )  # fmt: skip
    with pytest.raises(SourceError, match="source 'orders': database file .* does not exist"):
        list(r.batches(since=None, is_committed=never))
    url = _orders_db(tmp_path / "o.db", [])
    r = SqlTableReader(
        url, source_name="orders", table="nope", primary_key="id", cursor_field="updated_at"
    )
    with pytest.raises(SourceError, match="source 'orders': table 'nope'"):
        list(r.batches(since=None, is_committed=never))
    with pytest.raises(SourceError, match="unsupported database URL"):
        SqlTableReader("oracle://x", source_name="o", table="t", primary_key="i", cursor_field="u")


def test_file_drops_skip_committed_files_and_name_corrupt_ones(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_text('{"event_id": "e1", "props": {"k": 1}}\n')
    (tmp_path / "b.ndjson").write_text('{"event_id": "e2"}\n')
    r = FileDropReader(str(tmp_path), source_name="ev", file_format="ndjson", pattern="*.ndjson")
    batches = list(r.batches(since=None, is_committed=never))
    assert [b.frame["event_id"].item() for b in batches] == ["e1", "e2"]
    assert batches[0].frame["props"].item() == '{"k": 1}'
    done = {batches[0].batch_id}
    again = list(r.batches(since=None, is_committed=lambda b: b in done))
    assert [b.origin for b in again] == [str(tmp_path / "b.ndjson")]
    (tmp_path / "c.ndjson").write_text("{not json\n")
    # A corrupt file no longer stops the source: it comes back rejected whole (the ingest task
    # quarantines it and records it; see tests/connectors/test_file_drops.py).
    (rejected,) = r.batches(since=None, is_committed=lambda b: b.split(":")[1] != "c.ndjson")
    assert rejected.rejected is not None and rejected.frame.is_empty()
    assert rejected.rejected.rule == "unreadable_file" and "c.ndjson" in rejected.rejected.reason


def test_mailchimp_sink_reports_each_member_and_retries_5xx() -> None:
    with MailchimpStandIn(api_key="k-us1", lists=["L"]) as mc:
        sink = MailchimpAudience(
            build_client(mc.url, auth=httpx.BasicAuth("x", "k-us1")), batch_size=2, policy=NO_SLEEP
        )
        mc.fail_next(1, status=503)
        changes = [
            MemberChange("k1", "a@example.com", "subscribe", "A", None),
            MemberChange("k2", "not-an-email", "subscribe"),
            MemberChange("k3", "c@example.com", "subscribe"),
        ]
        results = list(sink.send("L", changes))
        assert [(r.contact_key, r.ok) for r in results] == [
            ("k1", True),
            ("k2", False),
            ("k3", True),
        ]
        assert "invalid" in (results[1].error or "")
        assert sink.requests_sent == 2
        assert len(mc.members("L")) == 2
        results = list(sink.send("L", [MemberChange("k1", "a@example.com", "unsubscribe")]))
        assert results[0].ok
        statuses = {m["email_address"]: m["status"] for m in mc.members("L").values()}
        assert statuses["a@example.com"] == "unsubscribed"
        with pytest.raises(PublishError, match="mailchimp list 'nope'.*404"):
            list(sink.send("nope", changes[:1]))
        sink.close()
        bad_key = MailchimpAudience(build_client(mc.url, auth=httpx.BasicAuth("x", "bad")))
        with pytest.raises(PublishError, match="401"):
            list(bad_key.send("L", changes[:1]))
        bad_key.close()


def test_retry_policy_backoff_is_bounded() -> None:
    policy = RetryPolicy(rng=random.Random(1))
    assert all(0 <= policy.backoff(a) <= policy.cap for a in range(20))

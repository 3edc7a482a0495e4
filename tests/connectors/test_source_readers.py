"""Source readers and the Mailchimp sink against real loopback stand-ins and real files."""

from __future__ import annotations

import random
import sqlite3
from datetime import timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import build_crm
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.destinations.mailchimp import MailchimpAudience, MemberChange
from tasks.connectors.http import OAuth2ClientCredentials, RetryPolicy, build_client
from tasks.connectors.sources.files import FileDropReader
from tasks.connectors.sources.hubspot import HubSpotContactsReader
from tasks.connectors.sources.sql import SqlTableReader
from tasks.errors import PublishError, SourceError

NO_SLEEP = RetryPolicy(sleep=lambda _s: None, rng=random.Random(0))
PROPS = ["email", "firstname", "lastmodifieddate"]


def never(_batch_id: str) -> bool:
    return False


@pytest.fixture
def crm() -> CrmStandIn:
    records, _people, _dups = build_crm(random.Random(3), 450)
    with CrmStandIn(records, client_id="cid", client_secret="secret") as server:
        yield server


def reader(crm: CrmStandIn, **kwargs: object) -> HubSpotContactsReader:
    auth = OAuth2ClientCredentials(f"{crm.url}/oauth/v1/token", "cid", "secret")
    client = build_client(crm.url, auth=auth)
    options: dict[str, object] = {"properties": PROPS, "page_size": 100, "policy": NO_SLEEP}
    options.update(kwargs)
    return HubSpotContactsReader(client, source_name="crm", **options)  # type: ignore[arg-type]


def rows(r: HubSpotContactsReader, since: str | None = None) -> pl.DataFrame:
    try:
        return pl.concat([b.frame for b in r.batches(since=since, is_committed=never)])
    finally:
        r.close()


def test_hubspot_reads_every_contact_once_in_pages(crm: CrmStandIn) -> None:
    r = reader(crm)
    df = rows(r)
    assert df.height == len(crm.contacts())
    assert df["id"].n_unique() == df.height
    assert r.pages_read == 5
    assert df.columns == ["id", "email", "firstname", "lastmodifieddate"]


def test_hubspot_incremental_since_watermark_with_overlap(crm: CrmStandIn) -> None:
    full = rows(reader(crm))
    watermark = full["lastmodifieddate"].max()
    changed = crm.upsert_contact({"email": "new.person@example.com", "firstname": "New"})
    df = rows(reader(crm, overlap=timedelta(0)), since=str(watermark))
    assert changed["id"] in df["id"].to_list()
    assert df.height < 10  # only the tail at the watermark, not the whole table


def test_hubspot_rewindows_at_the_search_cap(crm: CrmStandIn) -> None:
    r = reader(crm, search_cap=250)  # the stand-in enforces 10,000; the reader honours its cap
    df = rows(r)
    assert df["id"].n_unique() == len(crm.contacts())


def test_hubspot_token_expiry_mid_run_refreshes_once(crm: CrmStandIn) -> None:
    r = reader(crm, rows_per_batch=100)
    batches = r.batches(since=None, is_committed=never)
    first = next(batches)
    crm.expire_tokens()
    rest = list(batches)
    assert first.frame.height + sum(b.frame.height for b in rest) == len(crm.contacts())
    assert crm.token_requests == 2


@pytest.mark.parametrize("retry_after", [None, "0"])
def test_hubspot_retries_429_and_5xx(crm: CrmStandIn, retry_after: str | None) -> None:
    crm.fail_next(2, status=429, retry_after=retry_after)
    crm.fail_next(1, status=503)
    assert rows(reader(crm)).height == len(crm.contacts())


def test_hubspot_garbage_and_errors_name_the_source(crm: CrmStandIn) -> None:
    crm.fail_next(1, status=200, body=b"<html>maintenance</html>")
    with pytest.raises(SourceError, match=r"source 'crm'.*non-JSON"):
        rows(reader(crm))
    crm.fail_next(1, status=200, body=b'{"rows": []}')
    with pytest.raises(SourceError, match=r"source 'crm'.*'results' list"):
        rows(reader(crm))
    crm.fail_next(6, status=500)
    with pytest.raises(SourceError, match=r"source 'crm'.*answered 500"):
        rows(reader(crm))


def test_oauth_bad_credentials_fail_clearly(crm: CrmStandIn) -> None:
    auth = OAuth2ClientCredentials(f"{crm.url}/oauth/v1/token", "cid", "wrong")
    r = HubSpotContactsReader(
        build_client(crm.url, auth=auth), source_name="crm", properties=PROPS, policy=NO_SLEEP
    )
    with pytest.raises(SourceError, match="source 'crm'.*token endpoint .* answered 401"):
        rows(r)


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

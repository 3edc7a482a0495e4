"""Pure core: normalisation, contracts + quarantine, identity and consent, features, sync plan."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tasks.core.config import Segment
from tasks.core.contracts import ContactCandidate, split_valid
from tasks.core.entities import resolve_contacts, silver_events, silver_orders
from tasks.core.features import customer_features
from tasks.core.normalise import normalise_email, parse_timestamp
from tasks.core.segments import audience_members
from tasks.core.sync import LEDGER_SCHEMA, plan_sync
from tasks.errors import DataQualityError

PEPPER = b"test-pepper"
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def candidates(rows: list[dict[str, object]]) -> pl.DataFrame:
    defaults: dict[str, object] = {
        "_source": "crm",
        "first_name": None,
        "last_name": None,
        "phone": None,
        "country": None,
        "opted_in": None,
        "opted_in_at": None,
        "opted_out": None,
    }
    schema = {
        "_source": pl.String,
        "source_id": pl.String,
        "email": pl.String,
        "first_name": pl.String,
        "last_name": pl.String,
        "phone": pl.String,
        "country": pl.String,
        "opted_in": pl.Boolean,
        "opted_in_at": pl.Datetime("us", "UTC"),
        "opted_out": pl.Boolean,
        "updated_at": pl.Datetime("us", "UTC"),
    }
    return pl.DataFrame([{**defaults, **r} for r in rows], schema=schema)


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_normalise_email_is_idempotent_and_never_raises(raw: str) -> None:
    once = pl.select(normalise_email(pl.lit(raw, pl.String))).item()
    twice = pl.select(normalise_email(pl.lit(once, pl.String))).item()
    assert once == twice


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_parse_timestamp_never_raises(raw: str) -> None:
    pl.select(parse_timestamp(pl.lit(raw, pl.String), pl.String()))


def test_split_valid_quarantines_each_bad_row_with_its_rule() -> None:
    df = candidates(
        [
            {"source_id": "1", "email": "a@x.io", "updated_at": NOW},
            {"source_id": "2", "email": "not-an-email", "updated_at": NOW},
            {"source_id": "3", "email": None, "updated_at": NOW},
            {"source_id": "4", "email": "b@x.io", "updated_at": None},
        ]
    )
    split = split_valid(df, ContactCandidate, table="silver/contacts", run_id="r1", now=NOW)
    assert split.valid["source_id"].to_list() == ["1"]
    rules = dict(zip(split.quarantine["column"], split.quarantine["rule"], strict=True))
    assert rules["updated_at"] == "not_nullable"
    assert split.quarantine.filter(pl.col("column") == "email").height == 2
    assert set(split.quarantine["source"]) == {"crm"}
    assert split.quarantine["row"].str.contains('"source_id":"2"').any()
    # Balance: nothing dropped silently.
    bad_rows = split.quarantine["row"].n_unique()
    assert split.valid.height + bad_rows == df.height
    # Ids are stable across runs, so re-running merges instead of duplicating.
    again = split_valid(df, ContactCandidate, table="silver/contacts", run_id="r2", now=NOW)
    assert set(again.quarantine["quarantine_id"]) == set(split.quarantine["quarantine_id"])


def test_split_valid_raises_on_missing_column() -> None:
    df = pl.DataFrame({"_source": ["crm"], "source_id": ["1"], "updated_at": [NOW]})
    with pytest.raises(DataQualityError, match=r"silver/contacts: .*'email'"):
        split_valid(df, ContactCandidate, table="silver/contacts", run_id="r", now=NOW)


def test_same_person_across_casings_is_one_contact_with_latest_attributes() -> None:
    df = candidates(
        [
            {"source_id": "1", "email": "jane@x.io", "first_name": "Jane", "last_name": "Old",
             "updated_at": ts("2026-10-01T00:00:00")},
            {"source_id": "2", "email": "jane@x.io", "first_name": None, "last_name": "New",
             "updated_at": ts("2026-10-05T00:00:00")},
            {"source_id": "3", "email": "bob@x.io", "updated_at": ts("2026-10-02T00:00:00")},
        ]
    )  # fmt: skip
    out = resolve_contacts(df.lazy(), None, pepper=PEPPER, key_version=1).collect()
    assert out.height == 2
    jane = out.filter(pl.col("email") == "jane@x.io").row(0, named=True)
    assert jane["first_name"] == "Jane"  # most recent non-null
    assert jane["last_name"] == "New"
    assert jane["source_ids"] == ["crm:1", "crm:2"]
    assert jane["contact_key"].startswith("v1:") and "jane" not in jane["contact_key"]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], "unknown"),
        ([("in", "2026-10-01")], "subscribed"),
        ([("in", "2026-10-01"), ("out", "2026-10-02")], "unsubscribed"),
        ([("out", "2026-10-01"), ("in", "2026-10-03")], "subscribed"),
        ([("in", "2026-10-02"), ("out", "2026-10-02")], "unsubscribed"),  # tie: opt-out wins
        ([("none", "2026-10-09"), ("out", "2026-10-01")], "unsubscribed"),
    ],
)
def test_current_consent(events: list[tuple[str, str]], expected: str) -> None:
    rows: list[dict[str, object]] = [
        {
            "source_id": str(i),
            "email": "p@x.io",
            "opted_in": kind == "in",
            "opted_in_at": ts(f"{day}T00:00:00") if kind == "in" else None,
            "opted_out": kind == "out",
            "updated_at": ts(f"{day}T00:00:00"),
        }
        for i, (kind, day) in enumerate(events)
    ] or [{"source_id": "0", "email": "p@x.io", "updated_at": NOW}]
    out = resolve_contacts(candidates(rows).lazy(), None, pepper=PEPPER, key_version=1).collect()
    assert out["consent_status"].to_list() == [expected]


def _orders() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "_source": ["db"] * 4,
            "order_id": ["o1", "o1", "o2", "o3"],
            "email": ["jane@x.io"] * 4,
            "amount": [10.0, 12.0, 100.0, 50.0],
            "currency": ["EUR"] * 4,
            "category": ["a"] * 4,
            "status": ["paid", "paid", "paid", "cancelled"],
            "created_at": [ts("2026-09-01T00:00:00")] * 4,
            "updated_at": [ts("2026-09-01T00:00:00"), ts("2026-09-02T00:00:00"),
                           ts("2026-10-01T00:00:00"), ts("2026-10-01T00:00:00")],
            "_ingested_at": [NOW] * 4,
        }
    )  # fmt: skip


def test_orders_dedupe_latest_and_features_skip_cancelled() -> None:
    contacts = resolve_contacts(
        candidates([{"source_id": "1", "email": "jane@x.io", "opted_in": True,
                     "opted_in_at": NOW, "updated_at": NOW}]).lazy(),
        None, pepper=PEPPER, key_version=1,
    )  # fmt: skip
    orders = silver_orders(
        _orders().lazy(), rates={"EUR": 1.0}, pepper=PEPPER, key_version=1
    ).collect()
    assert orders.height == 3
    assert orders.filter(pl.col("order_id") == "o1")["amount"].item() == 12.0
    events = pl.LazyFrame(
        {"contact_key": [orders["contact_key"][0]] * 2,
         "occurred_at": [ts("2026-10-25T00:00:00"), ts("2026-07-01T00:00:00")]}
    )  # fmt: skip
    features = customer_features(contacts, orders.lazy(), events, as_of=NOW).collect()
    row = features.row(0, named=True)
    assert (row["order_count"], row["lifetime_value"], row["avg_order_value"]) == (2, 112.0, 56.0)
    assert (row["events_30d"], row["events_90d"]) == (1, 1)
    members = audience_members(
        features.lazy(),
        contacts,
        [
            Segment(name="big", where="lifetime_value > 100"),
            Segment(name="none", where="lifetime_value > 1e9"),
        ],
    ).collect()
    assert members["segment"].to_list() == ["big"]


def test_events_dedupe_on_event_id() -> None:
    events = pl.LazyFrame(
        {
            "_source": ["web"] * 3,
            "event_id": ["e1", "e1", "e2"],
            "email": ["a@x.io", "a@x.io", None],
            "anonymous_id": ["x", "x", "y"],
            "event_type": ["click"] * 3,
            "occurred_at": [NOW] * 3,
            "url": [None] * 3,
            "_ingested_at": [NOW] * 3,
        }
    )
    out = silver_events(events, pepper=PEPPER, key_version=1).collect()
    assert out["event_id"].to_list() == ["e1", "e2"]
    # e2 has no email, but its anonymous id "y" was never seen with one: nobody to link to.
    assert out["contact_key"].null_count() == 1


def test_opted_out_contacts_are_never_audience_members() -> None:
    contacts = pl.LazyFrame(
        {"contact_key": ["k1", "k2", "k3"], "email": ["a@x.io", "b@x.io", "c@x.io"],
         "first_name": [None] * 3, "last_name": [None] * 3, "phone": [None] * 3,
         "consent_status": ["subscribed", "unsubscribed", "unknown"],
         "consent_at": [NOW, NOW, None]}
    )  # fmt: skip
    features = pl.LazyFrame({"contact_key": ["k1", "k2", "k3"], "country": [None] * 3,
                             "order_count": [5, 5, 5]})  # fmt: skip
    members = audience_members(features, contacts, [Segment(name="s", where="order_count > 1")])
    assert members.collect()["contact_key"].to_list() == ["k1"]


def _ledger(rows: list[dict[str, object]]) -> pl.LazyFrame:
    base = {"destination": "mc", "audience": "L", "segment": "s", "error": None,
            "run_id": "r0", "synced_at": NOW}  # fmt: skip
    return pl.DataFrame([{**base, **r} for r in rows], schema=LEDGER_SCHEMA).lazy()


def test_plan_sync_sends_only_changes_and_unsubscribes_opt_outs() -> None:
    members = pl.LazyFrame(
        {"contact_key": ["k1", "k2", "k3"], "email": ["a@x.io", "b@x.io", "c@x.io"],
         "first_name": ["A", "B", "C"], "last_name": [None, None, None]}
    )  # fmt: skip
    contacts = pl.LazyFrame(
        {"contact_key": ["k1", "k2", "k3", "k4"],
         "email": ["a@x.io", "b@x.io", "c@x.io", "d@x.io"],
         "consent_status": ["subscribed", "subscribed", "subscribed", "unsubscribed"]}
    )  # fmt: skip
    first = plan_sync(members, contacts, _ledger([]), destination="mc", audience="L").collect()
    assert first["contact_key"].to_list() == ["k1", "k2", "k3"]
    ledger = _ledger(
        [
            {"contact_key": k, "action": "subscribe", "payload_hash": h, "status": s}
            for k, h, s in zip(
                first["contact_key"], first["payload_hash"], ["ok", "ok", "error"], strict=True
            )
        ]
        + [{"contact_key": "k4", "action": "subscribe", "payload_hash": "old", "status": "ok"}]
    )
    second = plan_sync(members, contacts, ledger, destination="mc", audience="L").collect()
    # k3 failed last time -> retried; k4 opted out -> unsubscribed; k1/k2 unchanged -> skipped.
    assert sorted(zip(second["contact_key"], second["action"], strict=True)) == [
        ("k3", "subscribe"),
        ("k4", "unsubscribe"),
    ]
    # Another destination's ledger does not count.
    other = plan_sync(members, contacts, ledger, destination="klaviyo", audience="L").collect()
    assert other.height == 3
    assert_frame_equal(
        plan_sync(members, contacts, ledger, destination="mc", audience="L").collect(), second
    )

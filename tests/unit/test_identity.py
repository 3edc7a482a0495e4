"""Identity resolution and dedupe: one contact per person, explainable merges, consent unchanged.

Inputs here are what the transform hands the core: canonical rows (already normalised, as
``to_canonical`` produces them) that passed their contracts.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.canonical import to_canonical
from tasks.core.config import FileDropSource, SqlSource
from tasks.core.config_transform import IdentityConfig
from tasks.core.entities import (
    dedupe_enrichment,
    dedupe_events,
    dedupe_orders,
    identity_records,
    resolve_contacts,
    silver_events,
    silver_orders,
)

PEPPER = b"test-pepper"


def ts(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 10, day, hour, tzinfo=UTC)


CONTACT_SCHEMA = {
    "_source": pl.String, "source_id": pl.String, "email": pl.String, "first_name": pl.String,
    "last_name": pl.String, "phone": pl.String, "country": pl.String, "opted_in": pl.Boolean,
    "opted_in_at": pl.Datetime("us", "UTC"), "opted_out": pl.Boolean,
    "updated_at": pl.Datetime("us", "UTC"),
}  # fmt: skip
ENRICHMENT_SCHEMA = {
    "_source": pl.String, "email": pl.String, "company": pl.String, "job_title": pl.String,
    "city": pl.String, "country": pl.String, "updated_at": pl.Datetime("us", "UTC"),
    "_ingested_at": pl.Datetime("us", "UTC"),
}  # fmt: skip
ORDER_SCHEMA = {
    "_source": pl.String, "order_id": pl.String, "email": pl.String, "amount": pl.Float64,
    "currency": pl.String, "category": pl.String, "status": pl.String,
    "created_at": pl.Datetime("us", "UTC"), "updated_at": pl.Datetime("us", "UTC"),
    "_ingested_at": pl.Datetime("us", "UTC"),
}  # fmt: skip
EVENT_SCHEMA = {
    "_source": pl.String, "event_id": pl.String, "email": pl.String, "anonymous_id": pl.String,
    "event_type": pl.String, "occurred_at": pl.Datetime("us", "UTC"), "url": pl.String,
    "_ingested_at": pl.Datetime("us", "UTC"),
}  # fmt: skip


def frame(schema: dict[str, object], rows: list[dict[str, object]]) -> pl.LazyFrame:
    filled = [{name: row.get(name) for name in schema} for row in rows]
    return pl.DataFrame(filled, schema=schema, orient="row").lazy()  # type: ignore[arg-type]


def contacts(*rows: dict[str, object]) -> pl.LazyFrame:
    return frame(CONTACT_SCHEMA, [{"_source": "crm", **r} for r in rows])


def enrichment(*rows: dict[str, object]) -> pl.LazyFrame:
    return frame(
        ENRICHMENT_SCHEMA, [{"_source": "enrich", "_ingested_at": ts(30), **r} for r in rows]
    )


def orders(*rows: dict[str, object]) -> pl.LazyFrame:
    base = {"_source": "shop", "amount": 10.0, "currency": "EUR", "status": "paid",
            "created_at": ts(1), "_ingested_at": ts(30)}  # fmt: skip
    return frame(ORDER_SCHEMA, [{**base, **r} for r in rows])


def events(*rows: dict[str, object]) -> pl.LazyFrame:
    base = {"_source": "web", "event_type": "page_view", "_ingested_at": ts(30)}
    return frame(EVENT_SCHEMA, [{**base, **r} for r in rows])


def resolve(
    crm: pl.LazyFrame,
    enrich: pl.LazyFrame | None = None,
    shop: pl.LazyFrame | None = None,
    web: pl.LazyFrame | None = None,
    identity: IdentityConfig | None = None,
) -> pl.DataFrame:
    return resolve_contacts(
        crm, enrich, shop, web, pepper=PEPPER, key_version=1, identity=identity
    ).collect()


def by_email(df: pl.DataFrame, email: str) -> dict[str, object]:
    return df.filter(pl.col("email") == email).row(0, named=True)


def test_same_person_with_different_casing_across_three_sources_is_one_contact() -> None:
    # Raw values as each source wrote them, through the real canonical mapping.
    crm_source = SqlSource(
        kind="sql", role="contacts", url="sqlite:///c.db", table="c", primary_key="id",
        fields={"source_id": "id"},
    )  # fmt: skip
    shop_source = SqlSource(
        kind="sql", role="orders", url="sqlite:///o.db", table="o", primary_key="order_id",
        fields={"email": "customer_email"},
    )  # fmt: skip
    web_source = FileDropSource(kind="files", role="events", path="/x", format="ndjson")
    crm = to_canonical(
        pl.LazyFrame({"id": ["7"], "email": ["  Jane.Doe@Example.COM"], "first_name": ["Jane"],
                      "updated_at": ["2026-10-01T00:00:00Z"]}),
        crm_source, source_name="crm",
    )  # fmt: skip
    shop = to_canonical(
        pl.LazyFrame({"order_id": ["o1"], "customer_email": ["JANE.DOE@example.com\u00a0"],
                      "amount": ["12.50"], "updated_at": ["2026-10-05T00:00:00Z"]}),
        shop_source, source_name="shop",
    )  # fmt: skip
    web = to_canonical(
        pl.LazyFrame({"event_id": ["e1"], "email": ["jane.DOE@EXAMPLE.com"],
                      "anonymous_id": ["anon-1"], "event_type": ["click"],
                      "occurred_at": ["2026-10-09T00:00:00Z"]}),
        web_source, source_name="web",
    )  # fmt: skip
    out = resolve(crm, None, shop, web)
    assert out.height == 1
    jane = out.row(0, named=True)
    assert jane["email"] == "jane.doe@example.com"
    assert jane["first_name"] == "Jane"
    assert jane["source_ids"] == ["crm:7", "shop:email", "web:anon-1", "web:email"]
    assert jane["record_count"] == 3
    assert jane["updated_at"] == ts(9)  # latest record of any source
    assert jane["consent_status"] == "unknown"  # nobody stated consent
    assert jane["contact_key"].startswith("v1:") and "jane" not in jane["contact_key"]


def test_conflicting_attributes_most_recent_non_null_wins_and_ties_are_deterministic() -> None:
    crm = contacts(
        {"source_id": "1", "email": "p@x.io", "first_name": "Hannah", "last_name": "Old",
         "phone": "+49301111111", "updated_at": ts(1)},
        {"source_id": "2", "email": "p@x.io", "first_name": None, "last_name": "New",
         "phone": "+49302222222", "updated_at": ts(5)},
        {"source_id": "3", "email": "p@x.io", "first_name": "Hanna", "last_name": None,
         "updated_at": ts(3)},
        # Same timestamp as record 2: the tie is broken by source, then record id, not by order.
        {"source_id": "0", "email": "p@x.io", "phone": "+49300000000", "updated_at": ts(5)},
    )  # fmt: skip
    out = by_email(resolve(crm), "p@x.io")
    assert out["first_name"] == "Hanna"  # newest non-null (record 2 has none)
    assert out["last_name"] == "New"
    assert out["phone"] == "+49300000000"  # tie at ts(5): record "0" sorts before "2"
    assert out["source_ids"] == ["crm:0", "crm:1", "crm:2", "crm:3"]
    # The result does not depend on input order.
    reversed_ = contacts(*reversed(crm.collect().to_dicts()))
    assert resolve(reversed_).equals(resolve(crm))


def test_source_priority_beats_recency_per_attribute() -> None:
    crm = contacts({"source_id": "1", "email": "p@x.io", "country": "DE", "updated_at": ts(1)})
    enrich = enrichment(
        {"email": "p@x.io", "country": "FR", "company": "Acme", "updated_at": ts(9)}
    )
    # Default: most recent non-null wins -> enrichment's newer country.
    assert by_email(resolve(crm, enrich), "p@x.io")["country"] == "FR"
    trusted = IdentityConfig(source_priority=["crm"])
    out = by_email(resolve(crm, enrich, identity=trusted), "p@x.io")
    assert out["country"] == "DE"  # the CRM is trusted first...
    assert out["company"] == "Acme"  # ...but a lower source still fills what it lacks
    per_attribute = IdentityConfig(
        source_priority=["crm"], attribute_priority={"country": ["enrich", "crm"]}
    )
    assert by_email(resolve(crm, enrich, identity=per_attribute), "p@x.io")["country"] == "FR"


def test_a_person_only_in_events_becomes_a_contact_with_unknown_consent() -> None:
    crm = contacts({"source_id": "1", "email": "a@x.io", "opted_in": True, "updated_at": ts(1)})
    web = events(
        {"event_id": "e1", "email": "visitor@x.io", "anonymous_id": "anon-9", "occurred_at": ts(2)},
        {"event_id": "e2", "email": None, "anonymous_id": "anon-9", "occurred_at": ts(4)},
        {"event_id": "e3", "email": None, "anonymous_id": "anon-stranger", "occurred_at": ts(4)},
    )  # fmt: skip
    out = resolve(crm, None, None, web)
    assert sorted(out["email"]) == ["a@x.io", "visitor@x.io"]  # no contact for a stranger
    visitor = by_email(out, "visitor@x.io")
    assert visitor["consent_status"] == "unknown"
    assert visitor["consent_at"] is None and visitor["consent_source"] is None
    assert visitor["source_ids"] == ["web:anon-9", "web:email"]
    assert by_email(out, "a@x.io")["consent_status"] == "subscribed"


def test_an_orders_only_guest_becomes_a_contact_with_unknown_consent() -> None:
    crm = contacts({"source_id": "1", "email": "a@x.io", "opted_in": True, "updated_at": ts(1)})
    shop = orders(
        {"order_id": "o1", "email": "guest@x.io", "updated_at": ts(3)},
        {"order_id": "o2", "email": "guest@x.io", "updated_at": ts(6)},
        {"order_id": "o3", "email": "a@x.io", "updated_at": ts(2)},
    )
    out = resolve(crm, None, shop)
    guest = by_email(out, "guest@x.io")
    assert (guest["consent_status"], guest["record_count"]) == ("unknown", 1)
    assert guest["source_ids"] == ["shop:email"] and guest["updated_at"] == ts(6)
    assert by_email(out, "a@x.io")["source_ids"] == ["crm:1", "shop:email"]


def test_enrichment_only_person_is_a_contact_and_enrichment_never_states_consent() -> None:
    crm = contacts({"source_id": "1", "email": "a@x.io", "opted_out": True, "updated_at": ts(1)})
    enrich = enrichment({"email": "b@x.io", "company": "Initech", "updated_at": ts(9)})
    out = resolve(crm, enrich)
    assert by_email(out, "b@x.io")["consent_status"] == "unknown"
    assert by_email(out, "a@x.io")["consent_status"] == "unsubscribed"


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        ([], "unknown"),
        ([("crm", "in", 1)], "subscribed"),
        ([("crm", "in", 1), ("crm2", "out", 2)], "unsubscribed"),
        ([("crm", "out", 1), ("crm2", "in", 3)], "subscribed"),
        ([("crm", "in", 2), ("crm2", "out", 2)], "unsubscribed"),  # tie across sources
        ([("crm", "none", 9), ("crm2", "out", 1)], "unsubscribed"),  # silence is no statement
    ],
)
def test_consent_semantics_across_merged_sources(
    statements: list[tuple[str, str, int]], expected: str
) -> None:
    rows: list[dict[str, object]] = [
        {"source_id": str(i), "email": "p@x.io", "_source": source, "opted_in": kind == "in",
         "opted_in_at": ts(day) if kind == "in" else None, "opted_out": kind == "out",
         "updated_at": ts(day)}
        for i, (source, kind, day) in enumerate(statements)
    ] or [{"source_id": "0", "email": "p@x.io", "updated_at": ts(1)}]  # fmt: skip
    crm = frame(CONTACT_SCHEMA, [{"_source": "crm", **r} for r in rows])
    shop = orders({"order_id": "o1", "email": "p@x.io", "updated_at": ts(20)})
    out = resolve(crm, None, shop)  # a newer order says nothing about consent
    assert out["consent_status"].to_list() == [expected]


def test_ambiguous_anonymous_ids_link_nobody() -> None:
    web = events(
        {"event_id": "e1", "email": "a@x.io", "anonymous_id": "shared", "occurred_at": ts(1)},
        {"event_id": "e2", "email": "b@x.io", "anonymous_id": "shared", "occurred_at": ts(2)},
        {"event_id": "e3", "email": None, "anonymous_id": "shared", "occurred_at": ts(3)},
        {"event_id": "e4", "email": "a@x.io", "anonymous_id": "own", "occurred_at": ts(1)},
        {"event_id": "e5", "email": None, "anonymous_id": "own", "occurred_at": ts(5)},
        # The same id string in another source is another id: no link across sources.
        {"_source": "app", "event_id": "e6", "email": None, "anonymous_id": "own",
         "occurred_at": ts(6)},
    )  # fmt: skip
    out = silver_events(web, pepper=PEPPER, key_version=1).collect()
    linked = dict(zip(out["event_id"], out["linked_by"], strict=True))
    assert linked == {"e1": "email", "e2": "email", "e3": None, "e4": "email",
                      "e5": "anonymous_id", "e6": None}  # fmt: skip
    keys = dict(zip(out["event_id"], out["contact_key"], strict=True))
    assert keys["e5"] == keys["e4"] and keys["e3"] is None
    contacts_out = resolve(contacts({"source_id": "1", "email": "a@x.io", "updated_at": ts(1)}),
                           None, None, web)  # fmt: skip
    assert by_email(contacts_out, "a@x.io")["source_ids"] == ["crm:1", "web:email", "web:own"]


# --- dedupe -----------------------------------------------------------------------------------
def test_orders_dedupe_keeps_the_latest_version() -> None:
    shop = orders(
        {"order_id": "o1", "email": "a@x.io", "status": "paid", "updated_at": ts(1)},
        {"order_id": "o1", "email": "a@x.io", "status": "refunded", "updated_at": ts(4)},
        {"order_id": "o1", "email": "a@x.io", "status": "shipped", "updated_at": ts(2)},
        {"order_id": "o2", "email": "a@x.io", "status": "paid", "updated_at": ts(1)},
    )
    out = dedupe_orders(shop).collect().sort("order_id")
    assert out.select("order_id", "status").rows() == [("o1", "refunded"), ("o2", "paid")]
    silver = silver_orders(shop, rates={"EUR": 1.0}, pepper=PEPPER, key_version=1).collect()
    assert silver["order_id"].to_list() == ["o1", "o2"]


def test_orders_with_equal_timestamps_resolve_the_same_way_in_any_order() -> None:
    rows = [
        {"order_id": "o1", "email": "a@x.io", "status": status, "updated_at": ts(1)}
        for status in ("shipped", "delivered", "paid")
    ]
    results = {
        dedupe_orders(orders(*perm)).collect()["status"].item()
        for perm in (rows, rows[::-1], [rows[1], rows[2], rows[0]])
    }
    assert results == {"delivered"}


def test_events_dedupe_first_delivery_and_enrichment_latest_per_key() -> None:
    web = events(
        {"event_id": "e1", "email": "a@x.io", "occurred_at": ts(1), "_ingested_at": ts(3)},
        {"event_id": "e1", "email": "a@x.io", "occurred_at": ts(1), "_ingested_at": ts(2)},
        {"event_id": "e2", "email": None, "occurred_at": ts(2)},
    )
    assert dedupe_events(web).collect().sort("event_id")["_ingested_at"].to_list() == [
        ts(2),
        ts(30),
    ]
    enrich = enrichment(
        {"email": "a@x.io", "company": "Old", "updated_at": ts(1)},
        {"email": "a@x.io", "company": "New", "updated_at": ts(5)},
        {"email": "b@x.io", "company": "B", "updated_at": ts(1)},
    )
    out = dedupe_enrichment(enrich).collect().sort("email")
    assert out["company"].to_list() == ["New", "B"]


# --- row balance of identity resolution -------------------------------------------------------
EMAILS = st.sampled_from(["a@x.io", "b@x.io", "c@x.io", "d@x.io"])


@given(
    crm=st.lists(st.tuples(EMAILS, st.integers(1, 9)), min_size=1, max_size=6),
    shop=st.lists(EMAILS, max_size=5),
    web=st.lists(st.tuples(st.one_of(EMAILS, st.none()), st.sampled_from(["x", "y", "z"])),
                 max_size=6),
    enrich=st.lists(EMAILS, max_size=4),
)  # fmt: skip
@settings(max_examples=40, deadline=None)
def test_every_identity_record_lands_in_exactly_one_contact(
    crm: list[tuple[str, int]],
    shop: list[str],
    web: list[tuple[str | None, str]],
    enrich: list[str],
) -> None:
    crm_lf = contacts(
        *({"source_id": str(i), "email": e, "updated_at": ts(d)} for i, (e, d) in enumerate(crm))
    )
    shop_lf = dedupe_orders(
        orders(
            *({"order_id": f"o{i}", "email": e, "updated_at": ts(1)} for i, e in enumerate(shop))
        )
    )
    web_lf = dedupe_events(
        events(*({"event_id": f"e{i}", "email": e, "anonymous_id": a, "occurred_at": ts(1)}
                 for i, (e, a) in enumerate(web)))
    )  # fmt: skip
    enrich_lf = dedupe_enrichment(enrichment(*({"email": e, "updated_at": ts(1)} for e in enrich)))
    records = identity_records(crm_lf, enrich_lf, shop_lf, web_lf).collect()
    out = resolve(crm_lf, enrich_lf, shop_lf, web_lf)
    # Balance: identity records in = contacts out + records merged into another contact.
    assert int(out["record_count"].sum()) == records.height
    assert out.height == records["email"].n_unique()
    assert out["email"].is_unique().all()
    expected_records = (
        len(crm) + len(set(enrich)) + len(set(shop)) + len({e for e, _ in web if e is not None})
    )
    assert records.height == expected_records
    # Every CRM record id is explained by exactly one contact.
    crm_ids = out.select(pl.col("source_ids").explode()).filter(
        pl.col("source_ids").str.starts_with("crm:")
    )
    assert sorted(crm_ids["source_ids"]) == sorted(f"crm:{i}" for i in range(len(crm)))

"""Contracts: one pandera model per silver/gold table, quarantine records, counts per rule, and
the row balance ``input = valid + rejected`` of every split."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandera.polars as pa
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.contracts import (
    AudienceMember,
    ContactCandidate,
    CustomerFeatures,
    EventCandidate,
    SilverContact,
    SilverEvent,
    SilverOrder,
    order_contract,
    rule_counts,
    split_valid,
)
from tasks.core.entities import resolve_contacts, silver_events, silver_orders
from tasks.core.features import customer_features
from tasks.core.normalise import UTC_MICROS
from tasks.core.segments import audience_members
from tasks.errors import DataQualityError
from tasks.reports import TableReport

NOW = datetime(2026, 11, 1, tzinfo=UTC)
PEPPER = b"pepper"
KEY = "v1:" + "a" * 64


def split(df: pl.DataFrame, contract: type[pa.DataFrameModel] | pa.DataFrameSchema) -> object:
    return split_valid(df, contract, table="t", run_id="r1", now=NOW)


def orders(**overrides: list[object]) -> pl.DataFrame:
    data: dict[str, list[object]] = {
        "_source": ["shop"] * 4,
        "order_id": ["o1", "o2", "o3", "o4"],
        "email": ["a@x.io"] * 4,
        "amount": [10.0, 20.0, 30.0, 40.0],
        "currency": ["EUR", "USD", "JPY", None],
        "category": ["books"] * 4,
        "status": ["paid"] * 4,
        "created_at": [NOW] * 4,
        "updated_at": [NOW] * 4,
        "_ingested_at": [NOW] * 4,
    }
    data.update(overrides)
    return pl.DataFrame(data, schema_overrides={"currency": pl.String, "created_at": UTC_MICROS})


def test_amounts_in_a_currency_without_a_rate_are_quarantined_with_a_clear_rule() -> None:
    result = split_valid(
        orders(), order_contract(["EUR", "USD"]), table="silver/orders", run_id="r1", now=NOW
    )
    assert result.valid["order_id"].to_list() == ["o1", "o2"]
    assert result.rejected == 2
    records = result.quarantine.sort("value", nulls_last=True)
    assert records.select("rule", "column", "value", "source").rows() == [
        ("currency_has_rate", "currency", "JPY", "shop"),
        ("currency_has_rate", "currency", None, "shop"),  # a missing currency is not assumed
    ]
    assert json.loads(records["row"][0])["order_id"] == "o3"


def test_quarantine_records_name_table_source_rule_column_value_and_run() -> None:
    df = orders(amount=[10.0, -5.0, None, 1.0], email=["a@x.io", "bad", "a@x.io", "b@x.io"])
    result = split_valid(df, order_contract(["EUR", "USD", "JPY"]), table="silver/orders",
                         run_id="run-9", now=NOW)  # fmt: skip
    q = result.quarantine
    assert set(q.columns) >= {"table", "source", "rule", "column", "value", "row", "run_id"}
    assert set(q["table"]) == {"silver/orders"} and set(q["run_id"]) == {"run-9"}
    assert sorted(zip(q["rule"], q["column"], q["value"], strict=True), key=str) == sorted(
        [
            ("email_syntax", "email", "bad"),
            ("greater_than_or_equal_to(0)", "amount", "-5.0"),
            ("not_nullable", "amount", None),
            ("currency_has_rate", "currency", None),
        ],
        key=str,
    )
    # Row o2 broke two rules: two records, one rejected row.
    assert result.rejected == 3 and result.valid["order_id"].to_list() == ["o1"]
    counts = rule_counts(q.lazy()).collect()
    assert counts["rows"].sum() == 4
    assert counts.filter(pl.col("rule") == "email_syntax")["example"].item() == "bad"


def test_row_level_dataframe_checks_name_no_column() -> None:
    events = pl.DataFrame(
        {"event_id": ["e1", "e2"], "contact_key": [KEY, None], "anonymous_id": [None, None],
         "event_type": ["click"] * 2, "occurred_at": [NOW] * 2, "url": [None, None],
         "linked_by": [None, None], "_source": ["web"] * 2},
        schema_overrides={"anonymous_id": pl.String, "url": pl.String, "linked_by": pl.String},
    )  # fmt: skip
    result = split(events, SilverEvent)
    assert result.rejected == 1  # type: ignore[attr-defined]
    record = result.quarantine.row(0, named=True)  # type: ignore[attr-defined]
    assert (record["rule"], record["column"], record["value"]) == (
        "linked_iff_contact_key",
        None,
        None,
    )


def test_a_broken_frame_raises_instead_of_quarantining_everything() -> None:
    with pytest.raises(
        DataQualityError, match=r"silver/contacts: contract ContactCandidate.*'email'"
    ):
        split_valid(pl.DataFrame({"source_id": ["1"], "updated_at": [NOW]}), ContactCandidate,
                    table="silver/contacts", run_id="r", now=NOW)  # fmt: skip
    strict = pl.DataFrame({"segment": ["s"], "contact_key": [KEY], "surprise": [1]})
    with pytest.raises(DataQualityError, match="gold/audience_members: contract AudienceMember"):
        split_valid(strict, AudienceMember, table="gold/audience_members", run_id="r", now=NOW)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["e1", "e2", "e3", None]),
            st.sampled_from(["click", None]),
            st.sampled_from(["a@x.io", "bad", None, "b@x.io"]),
        ),
        max_size=15,
    )
)
@settings(max_examples=60, deadline=None)
def test_every_split_balances_and_every_rejected_row_has_a_record(
    rows: list[tuple[str | None, str | None, str | None]],
) -> None:
    df = pl.DataFrame(
        {"_source": ["web"] * len(rows), "event_id": [r[0] for r in rows],
         "event_type": [r[1] for r in rows], "email": [r[2] for r in rows],
         "occurred_at": [NOW] * len(rows)},
        schema={"_source": pl.String, "event_id": pl.String, "event_type": pl.String,
                "email": pl.String, "occurred_at": UTC_MICROS},
    )  # fmt: skip
    result = split_valid(df, EventCandidate, table="silver/events", run_id="r", now=NOW)
    assert result.valid.height + result.rejected == df.height
    assert TableReport("silver/events", df.height, result.valid.height, result.rejected, 0).balanced
    bad = df.filter(
        pl.col("event_id").is_null()
        | pl.col("event_type").is_null()
        | (pl.col("email") == "bad").fill_null(False)
    )
    assert result.rejected == bad.height
    assert result.quarantine["row"].n_unique() == bad.unique().height


def test_the_table_report_balance_detects_lost_rows() -> None:
    assert TableReport("t", rows_in=10, rows_out=6, quarantined=3, duplicates=1).balanced
    assert not TableReport("t", rows_in=10, rows_out=6, quarantined=3, duplicates=0).balanced


# --- every silver and gold table has a model, and what the core builds satisfies it ---------
def test_core_outputs_satisfy_their_table_contracts() -> None:
    crm = pl.LazyFrame(
        {"_source": ["crm", "crm"], "source_id": ["1", "2"], "email": ["a@x.io", "b@x.io"],
         "first_name": ["Ann", None], "last_name": [None, None], "phone": ["+49301234567", None],
         "country": ["DE", None], "opted_in": [True, None], "opted_in_at": [NOW, None],
         "opted_out": [False, True], "updated_at": [NOW, NOW]},
        schema_overrides={"last_name": pl.String, "opted_in_at": UTC_MICROS},
    )  # fmt: skip
    contacts = resolve_contacts(crm, pepper=PEPPER, key_version=1).collect()
    valid_orders = orders().filter(pl.col("currency").is_in(["EUR", "USD"]))
    built_orders = silver_orders(
        valid_orders.lazy(), rates={"EUR": 1.0, "USD": 0.9}, pepper=PEPPER, key_version=1
    ).collect()
    web = pl.LazyFrame(
        {"_source": ["web"] * 2, "event_id": ["e1", "e2"], "email": ["a@x.io", None],
         "anonymous_id": ["x", "x"], "event_type": ["click"] * 2, "occurred_at": [NOW] * 2,
         "url": [None, None], "_ingested_at": [NOW] * 2},
        schema_overrides={"url": pl.String},
    )  # fmt: skip
    built_events = silver_events(web, pepper=PEPPER, key_version=1).collect()
    features = customer_features(
        contacts.lazy(), built_orders.lazy(), built_events.lazy(), as_of=NOW
    ).collect()
    from tasks.core.config import Segment

    members = audience_members(
        features.lazy(), contacts.lazy(), [Segment(name="all", where="order_count >= 0")]
    ).collect()
    assert members["email"].to_list() == ["a@x.io"]  # b opted out
    for df, model in [
        (contacts, SilverContact),
        (built_orders, SilverOrder),
        (built_events, SilverEvent),
        (features, CustomerFeatures),
        (members, AudienceMember),
    ]:
        result = split_valid(df, model, table=model.__name__, run_id="r", now=NOW)
        assert result.rejected == 0, (model.__name__, result.quarantine.to_dicts())
    assert built_orders.filter(pl.col("currency") == "USD")["amount_reporting"].item() == 18.0


def test_silver_contact_model_rejects_what_would_be_unsafe_to_publish() -> None:
    row = {
        "contact_key": KEY, "email": "a@x.io", "first_name": None, "last_name": None,
        "phone": None, "country": None, "company": None, "job_title": None, "city": None,
        "consent_status": "subscribed", "consent_at": None, "consent_source": None,
        "source_ids": ["crm:1"], "record_count": 1, "updated_at": NOW,
    }  # fmt: skip
    schema = {name: pl.String for name in row} | {
        "consent_at": UTC_MICROS, "updated_at": UTC_MICROS,
        "source_ids": pl.List(pl.String), "record_count": pl.Int64,
    }  # fmt: skip
    bad = [
        {**row, "consent_at": None},  # subscribed without a time or source
        {**row, "contact_key": "jane@x.io", "consent_status": "unknown"},  # raw email as key
        {**row, "contact_key": "v1:" + "b" * 64, "consent_status": "maybe"},
        {**row, "contact_key": "v1:" + "c" * 64, "consent_status": "unknown", "phone": "0301234"},
        {**row, "contact_key": "v1:" + "d" * 64, "consent_status": "unknown", "country": "XX"},
        {**row, "contact_key": "v1:" + "e" * 64, "consent_status": "unknown", "source_ids": []},
    ]
    df = pl.DataFrame(bad, schema=schema)
    result = split_valid(df, SilverContact, table="silver/contacts", run_id="r", now=NOW)
    assert result.rejected == len(bad)
    assert set(result.quarantine["rule"]) >= {
        "consent_has_source_and_time",
        "str_matches('^v[0-9]+:[0-9a-f]{64}$')",
        "isin(['subscribed', 'unsubscribed', 'unknown'])",
        "iso_country",
        "explained_by_source_ids",
    }

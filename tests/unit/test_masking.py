"""Quarantine records keep enough to debug and no raw identifier."""

from __future__ import annotations

import json
import traceback
from datetime import UTC, datetime

import pandera.polars as pa
import polars as pl
import pytest

from tasks.core.contracts import split_valid, validate_or_raise
from tasks.core.drift import Rejection, rejection_records, split_drift
from tasks.core.masking import (
    is_pii_name,
    mask_emails,
    mask_quarantine,
    mask_value,
)
from tasks.core.tables import TABLES, pii_columns
from tasks.errors import DataQualityError

NOW = datetime(2026, 11, 1, tzinfo=UTC)
EMAIL = "zelda.quartz+canary@wexample.com"
PHONE = "+44 20 7946 0958"


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (EMAIL, "z***@w***.com"),
        (PHONE, "***58"),
        ("Zelda", "Z***"),
        ("not-an-email@", "n***"),
        ("", ""),
    ],
)
def test_values_are_masked_by_shape_and_masking_again_changes_nothing(
    raw: str, masked: str
) -> None:
    assert mask_value(raw) == masked
    assert mask_value(masked) == masked


def test_emails_inside_text_are_masked() -> None:
    assert mask_emails(f"{EMAIL} looks fake") == "z***@w***.com looks fake"
    assert mask_emails("no address here") == "no address here"


def test_column_names_that_say_identifier() -> None:
    assert all(
        is_pii_name(c)
        for c in ("email", "customer_email", "firstname", "phone_raw", "ip", "client_ip")
    )
    assert not any(is_pii_name(c) for c in ("id", "order_id", "amount", "zip", "description"))


def test_contract_records_keep_rule_column_and_record_id_but_no_identifier() -> None:
    contract = pa.DataFrameSchema(
        {
            "email": pa.Column(str),
            "first_name": pa.Column(str),
            "last_name": pa.Column(str),
            "phone": pa.Column(str, pa.Check.str_matches(r"^\+[1-9]\d{6,14}$")),
            "source_id": pa.Column(str),
        },
        name="contact",
    )
    frame = pl.DataFrame(
        {
            "email": [EMAIL],
            "first_name": ["Zelda"],
            "last_name": ["Quartz"],
            "phone": [PHONE],  # not E.164: the contract rejects it
            "source_id": ["crm-77"],
        }
    )
    split = split_valid(frame, contract, table="silver/contacts", run_id="r", now=NOW)
    assert split.quarantine.height > 0
    masked = mask_quarantine(split.quarantine, pii_columns(frame.columns))
    text = masked.write_ndjson()
    for raw in (EMAIL, PHONE, "Zelda", "Quartz"):
        assert raw not in text
    assert masked["quarantine_id"].to_list() == split.quarantine["quarantine_id"].to_list()
    row = json.loads(masked["row"][0])
    assert row["source_id"] == "crm-77" and row["email"] == "z***@w***.com"
    assert row["phone"] == "***58" and row["first_name"] == "Z***"


def test_drift_records_mask_the_sources_own_identifier_columns() -> None:
    batch = pl.LazyFrame({"id": [None], "customer_email": [EMAIL], "note": [f"from {EMAIL}"]})
    split = split_drift(
        batch, target=None, primary_key="id", table="bronze/x", source="x", run_id="r", now=NOW
    )
    masked = mask_quarantine(split.quarantine.collect(), ("customer_email",))
    assert EMAIL not in masked.write_ndjson()
    assert json.loads(masked["row"][0]) == {
        "id": None,
        "customer_email": "z***@w***.com",
        "note": "from z***@w***.com",
    }


def test_an_unparseable_record_keeps_its_position_and_fingerprint_not_its_text() -> None:
    raw = f'{{"event_id": "e1", "user_email": "{EMAIL}", "name": "Zelda'
    records = rejection_records(
        [
            Rejection(
                "unparseable_record", "line 3: bad JSON", "drops/e.ndjson", raw=raw, position=3
            )
        ],
        table="bronze/events",
        source="events",
        run_id="r",
        now=NOW,
    )
    masked = mask_quarantine(records)
    row = json.loads(masked["row"][0])
    assert "raw" not in row and row["raw_chars"] == len(raw) and row["position"] == 3
    assert EMAIL not in masked.write_ndjson() and "Zelda" not in masked.write_ndjson()


def test_only_tables_that_need_identifiers_hold_them() -> None:
    holders = {name for name, entry in TABLES.items() if entry.pii}
    assert holders == {
        "silver/staged_contacts",
        "silver/staged_enrichment",
        "silver/staged_orders",
        "silver/staged_events",
        "silver/contacts",
        "gold/audience_members",
        "bronze/platform_suppressions",
    }
    for entry in TABLES.values():
        if entry.schema is not None and not entry.pii:
            assert not pii_columns(list(entry.schema)), entry.name
        if entry.masked:
            assert entry.schema is not None and set(entry.masked) <= set(entry.schema)
    assert TABLES["ops/quarantine"].masked == ("value", "row")


def test_a_contract_error_without_quarantine_names_the_value_masked() -> None:
    contract = pa.DataFrameSchema(
        {"email": pa.Column(str, pa.Check.str_matches(r"^\S+@\S+\.\S+$"))}, name="member"
    )
    with pytest.raises(DataQualityError) as caught:
        validate_or_raise(pl.DataFrame({"email": ["zelda at wexample"]}), contract, table="t")
    message = "".join(traceback.format_exception_only(caught.value))
    assert "z***" in message and "zelda" not in message
    assert caught.value.__suppress_context__  # pandera's own message is not chained

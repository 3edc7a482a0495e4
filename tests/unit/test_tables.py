"""The table catalogue agrees with what the code writes."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from tasks.core.config import Segment, SourceBase
from tasks.core.contracts import CustomerFeatures
from tasks.core.feature_catalog import CUSTOMER_FEATURES, FEATURE_COLUMNS, FEATURE_ROLES
from tasks.core.features import customer_features
from tasks.core.segments import audience_members
from tasks.core.tables import (
    AUDIENCE,
    FEATURES,
    STAGED,
    TABLES,
    bronze_entry,
    table,
)

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


def test_every_table_has_a_layer_and_its_pii_columns_exist() -> None:
    for entry in TABLES.values():
        assert entry.layer in ("bronze", "silver", "gold", "ops")
        if entry.schema is not None:
            assert set(entry.pii) <= set(entry.schema), entry.name
            assert set(entry.keys) <= set(entry.schema), entry.name
            assert set(entry.partition_by) <= set(entry.schema), entry.name


def test_staging_logs_flag_emails_and_their_raw_copies() -> None:
    assert {"email", "email_raw"} <= set(table(STAGED["contacts"]).pii)
    assert {"phone", "phone_raw", "first_name", "last_name"} <= set(table(STAGED["contacts"]).pii)
    assert "email" in table(STAGED["orders"]).pii


def test_bronze_pii_follows_the_field_mapping() -> None:
    source = SourceBase(role="contacts", fields={"email": "properties_email", "source_id": "id"})
    entry = bronze_entry("crm", source, write="merge", keys=("id",))
    assert entry.name == "bronze/crm"
    assert "properties_email" in entry.pii and "first_name" in entry.pii
    assert "id" not in entry.pii


def test_the_feature_table_and_its_contract_come_from_the_feature_catalogue() -> None:
    assert table(FEATURES).schema == FEATURE_COLUMNS
    assert list(CustomerFeatures.to_schema().columns) == [f.name for f in CUSTOMER_FEATURES]
    assert set(FEATURE_ROLES) == set(FEATURE_COLUMNS)


def test_written_frames_match_the_catalogue_schemas() -> None:
    contacts = pl.LazyFrame(
        {
            "contact_key": ["v1:" + "a" * 64],
            "email": ["a@x.io"],
            "first_name": ["A"],
            "last_name": [None],
            "phone": [None],
            "country": ["DE"],
            "consent_status": ["subscribed"],
            "consent_at": [AS_OF],
        },
        schema_overrides={"last_name": pl.String, "phone": pl.String},
    )
    orders = pl.LazyFrame(
        schema={
            "contact_key": pl.String,
            "amount_reporting": pl.Float64,
            "category": pl.String,
            "status": pl.String,
            "created_at": pl.Datetime("us", "UTC"),
        }
    )
    events = pl.LazyFrame(
        schema={"contact_key": pl.String, "occurred_at": pl.Datetime("us", "UTC")}
    )
    features = customer_features(contacts, orders, events, as_of=AS_OF).collect()
    assert dict(features.schema) == table(FEATURES).schema
    members = audience_members(
        features.lazy(), contacts, [Segment(name="everyone", where="order_count >= 0")]
    ).collect()
    assert members.height == 1
    assert dict(members.schema) == table(AUDIENCE).schema

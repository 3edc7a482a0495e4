"""The transform flow as a real Prefect run on the sandbox's messy sample data.

Ingest once (real CRM stand-in, SQLite orders, file drops), then transform and check what a
marketer and a data engineer rely on: every table balances, every quarantined row names its
rule, identities merged across sources, consent unchanged, features and audiences consistent,
and an unchanged rerun writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from flows.ingest import ingest
from flows.transform import TransformReport, transform
from infra.sandbox.generate import REFERENCE_TIME
from tasks.connectors.lake import Lake
from tasks.engine.delta import replace_table
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)  # the sample data's "now"
SILVER_GOLD = (
    "silver/contacts",
    "silver/orders",
    "silver/events",
    "gold/customer_features",
    "gold/audience_members",
)


def run_transform() -> TransformReport:
    return transform(config_path=CONFIG, as_of=AS_OF)


def test_transform_on_sample_data(sandbox: Sandbox) -> None:
    assert REFERENCE_TIME == AS_OF
    ingest(config_path=CONFIG)
    report = run_transform()
    lake: Lake = sandbox.lake

    # -- row balance: every table, and the report says so --------------------------------
    by_table = {t.table: t for t in report.tables}
    assert set(by_table) == set(SILVER_GOLD)
    for table in by_table.values():
        assert table.balanced, table
        assert table.rows_out == lake.read(table.table).height, table
    assert by_table["silver/orders"].quarantined >= 2  # "n/a" and a negative amount
    assert lake.read("silver/events")["event_id"].is_unique().all()  # re-deliveries merged
    assert by_table["silver/contacts"].duplicates > 0  # same people in several sources

    # -- quarantine: each rule counted, each record explained ------------------------------
    quarantine = lake.read("ops/quarantine")
    rules = {(r["table"], r["rule"], r["column"]) for r in report.rule_counts}
    assert ("silver/contacts", "email_syntax", "email") in rules
    assert ("silver/orders", "greater_than_or_equal_to(0)", "amount") in rules
    assert ("silver/orders", "not_nullable", "amount") in rules
    assert sum(r["rows"] for r in report.rule_counts if r["table"] == "silver/orders") == (
        by_table["silver/orders"].quarantined
    )
    assert quarantine.filter(pl.col("run_id").is_null() | pl.col("rule").is_null()).is_empty()
    assert {"phone", "country"} >= {loss["field"] for loss in report.losses}

    # -- identity ------------------------------------------------------------------------
    contacts = lake.read("silver/contacts")
    assert contacts["email"].is_unique().all() and contacts["contact_key"].is_unique().all()
    # Every CRM record with a valid email is in exactly one contact's source_ids.
    crm_ids = contacts.select(pl.col("source_ids").explode()).filter(
        pl.col("source_ids").str.starts_with("crm_contacts:")
    )
    assert crm_ids["source_ids"].is_unique().all()
    duplicates = contacts.filter(
        pl.col("source_ids").list.eval(pl.element().str.starts_with("crm_contacts:")).list.sum() > 1
    )
    assert duplicates.height > 0  # the sample has re-cased duplicate CRM records
    # Order guests are contacts with unknown consent; nobody without a CRM record has consent.
    guests = contacts.filter(pl.col("email").str.starts_with("guest"))
    assert guests.height > 0 and set(guests["consent_status"]) == {"unknown"}
    no_crm = contacts.filter(
        ~pl.col("source_ids").list.eval(pl.element().str.starts_with("crm_contacts:")).list.any()
    )
    assert set(no_crm["consent_status"]) == {"unknown"}
    # Phones are E.164 and countries ISO alpha-2 after normalisation.
    assert contacts["phone"].drop_nulls().str.contains(r"^\+[1-9]\d{6,14}$").all()
    assert set(contacts["country"].drop_nulls()) <= {"DE", "FR", "GB", "US", "NL", "ES", "IT", "PL"}

    # -- orders and events ---------------------------------------------------------------
    orders = lake.read("silver/orders")
    assert set(orders["currency"]) <= {"EUR", "USD", "GBP"}
    usd = orders.filter(pl.col("currency") == "USD").row(0, named=True)
    assert usd["amount_reporting"] == pytest.approx(usd["amount"] * 0.92)
    assert orders.join(contacts, on="contact_key", how="anti").is_empty()
    events = lake.read("silver/events")
    linked = events.filter(pl.col("linked_by") == "anonymous_id")
    assert linked.height > 0  # logged-out events attributed through their anonymous id
    assert linked.join(contacts, on="contact_key", how="anti").is_empty()

    # -- gold ------------------------------------------------------------------------------
    features = lake.read("gold/customer_features")
    assert features.height == contacts.height
    scored = features.filter(pl.col("frequency") > 0)
    assert set(scored["r_score"]) <= {1, 2, 3, 4, 5} and scored["r_score"].null_count() == 0
    assert features.filter(pl.col("frequency") == 0)["rfm_score"].null_count() == (
        features.filter(pl.col("frequency") == 0).height
    )
    members = lake.read("gold/audience_members")
    subscribed = set(contacts.filter(pl.col("consent_status") == "subscribed")["contact_key"])
    assert set(members["contact_key"]) <= subscribed
    exclusive = members.filter(pl.col("segment").is_in(["champions", "at_risk", "new_customers"]))
    assert exclusive["contact_key"].is_unique().all()
    assert report.audience_sizes == dict(members.group_by("segment").len().iter_rows()) | {
        s: 0 for s in report.audience_sizes if s not in set(members["segment"])
    }

    # -- an unchanged rerun commits nothing to silver or gold ----------------------------
    versions = {table: lake.version(table) for table in SILVER_GOLD[:4]}
    again = run_transform()
    assert all(t.balanced for t in again.tables)
    assert {table: lake.version(table) for table in SILVER_GOLD[:4]} == versions
    assert lake.read("ops/quarantine").height == quarantine.height


def test_a_contact_whose_crm_email_changed_loses_the_old_consent(sandbox: Sandbox) -> None:
    ingest(config_path=CONFIG)
    run_transform()
    lake = sandbox.lake
    contacts = lake.read("silver/contacts")
    # A subscribed person known only from one CRM record (and maybe their own activity).
    person = contacts.filter(
        (pl.col("consent_status") == "subscribed")
        & (
            pl.col("source_ids").list.eval(pl.element().str.starts_with("crm_contacts:")).list.sum()
            == 1
        )
    ).row(0, named=True)
    crm_id = next(s for s in person["source_ids"] if s.startswith("crm_contacts:")).split(":")[1]
    sandbox.crm.upsert_contact({"email": "Moved.Person@Example.org"}, id=crm_id)
    ingest(config_path=CONFIG, sources=["crm_contacts"])
    report = run_transform()
    assert all(t.balanced for t in report.tables)
    after = lake.read("silver/contacts")
    moved = after.filter(pl.col("email") == "moved.person@example.org").row(0, named=True)
    assert moved["consent_status"] == "subscribed"
    assert f"crm_contacts:{crm_id}" in moved["source_ids"]
    # The old address keeps no consent: it is gone, or left only by orders/events (unknown).
    old = after.filter(pl.col("email") == person["email"])
    assert old.is_empty() or old["consent_status"].to_list() == ["unknown"]
    members = lake.read("gold/audience_members")
    assert person["contact_key"] not in set(members["contact_key"])


def test_replace_table_writes_only_changes_and_removes_stale_keys(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    first = pl.DataFrame({"k": ["a", "b", "c"], "v": [1, 2, 3]})
    replace_table(lake, "silver/t", first, key="k")
    version = lake.version("silver/t")
    replace_table(lake, "silver/t", first, key="k")
    assert lake.version("silver/t") == version  # unchanged: no commit
    second = pl.DataFrame({"k": ["a", "c", "d"], "v": [1, 30, 4]})
    replace_table(lake, "silver/t", second, key="k")
    assert lake.read("silver/t").sort("k").equals(second)
    widened = second.with_columns(pl.lit("x").alias("w"))
    replace_table(lake, "silver/t", widened, key="k")  # schema change: rewritten whole
    assert lake.read("silver/t").sort("k").equals(widened)
    narrowed = second.head(1)
    replace_table(lake, "silver/t", narrowed, key="k")
    assert lake.read("silver/t").equals(narrowed)

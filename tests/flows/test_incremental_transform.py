"""Incremental transform as real Prefect runs on the sandbox: after a small change in every
source, an incremental run rebuilds only the affected people and yields exactly the tables a
full refresh yields.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from flows.ingest import ingest
from flows.transform import TransformReport, transform
from tasks.connectors.lake import Lake
from tasks.core.features import SCORE_COLUMNS
from tasks.core.incremental import live_rows
from tasks.core.tables import AUDIENCE, CONTACTS, EVENTS, FEATURES, ORDERS, STAGED
from tasks.volume import VOLUME_METRICS
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)  # the sample data's "now"
BUILT = (CONTACTS, ORDERS, EVENTS, FEATURES, AUDIENCE)


def run(**kwargs: object) -> TransformReport:
    return transform(config_path=CONFIG, as_of=AS_OF, **kwargs)  # type: ignore[arg-type]


def snapshot(lake: Lake) -> dict[str, pl.DataFrame]:
    """Every silver and gold table, sorted; staging logs as the rows they hold (no log
    bookkeeping: sequence numbers differ between a full and an incremental history)."""
    tables = {t: lake.read(t) for t in BUILT}
    tables |= {t: live_rows(lake.scan(t)).collect() for t in STAGED.values()}
    return {t: df.sort(pl.all()) for t, df in tables.items()}


def assert_same_tables(left: dict[str, pl.DataFrame], right: dict[str, pl.DataFrame]) -> None:
    assert left.keys() == right.keys()
    for table in left:
        assert left[table].equals(right[table]), f"{table} differs"


@dataclass(frozen=True)
class Change:
    """Emails of the people whose records the change touches (normalised)."""

    emails: set[str]
    moved_from: str
    moved_to: str
    opted_out: str
    invalidated: str


def change_every_source(sandbox: Sandbox) -> Change:
    """A day's worth of small changes in the CRM, the orders database, events and enrichment."""
    lake = sandbox.lake
    contacts = lake.read(CONTACTS)
    crm_only = contacts.filter(
        pl.col("source_ids").list.eval(pl.element().str.starts_with("crm_contacts:")).list.sum()
        == 1
    ).sort("email")
    subscribed = crm_only.filter(pl.col("consent_status") == "subscribed")
    mover, quitter = subscribed.row(0, named=True), subscribed.row(1, named=True)
    others = crm_only.filter(~pl.col("email").is_in([mover["email"], quitter["email"]]))
    broken, visitor = others.row(0, named=True), others.row(1, named=True)

    def crm_id(person: dict[str, object]) -> str:
        ids = person["source_ids"]
        assert isinstance(ids, list)
        return next(s for s in ids if s.startswith("crm_contacts:")).split(":", 1)[1]

    sandbox.crm.upsert_contact({"email": "Moved.Person@Example.org"}, id=crm_id(mover))
    sandbox.crm.upsert_contact({"hs_email_optout": "true"}, id=crm_id(quitter))
    sandbox.crm.upsert_contact({"email": "not-an-email"}, id=crm_id(broken))

    db = sqlite3.connect(sandbox.data_dir / "orders.db")
    with db:
        refunded, buyer = db.execute(
            "SELECT order_id, customer_email FROM orders ORDER BY order_id LIMIT 1"
        ).fetchone()
        db.execute(
            "UPDATE orders SET status = 'refunded', updated_at = '2026-11-01T00:00:05Z' "
            "WHERE order_id = ?",
            (refunded,),
        )
        db.execute(
            "INSERT INTO orders VALUES ('ord_new_0001', ?, '120.00', 'EUR', 'books', 'paid', "
            "'2026-10-31T10:00:00Z', '2026-11-01T00:00:06Z')",
            (quitter["email"],),
        )
    db.close()

    event = {
        "event_id": "evt_new_0001",
        "user_email": "  " + visitor["email"].upper(),
        "anonymous_id": "anon_brand_new",
        "event_type": "page_view",
        "occurred_at": "2026-10-31T08:00:00.000Z",
        "url": "https://shop.example.com/new",
    }
    (sandbox.data_dir / "drops" / "events" / "events-9001.ndjson").write_text(
        json.dumps(event) + "\n"
    )
    (sandbox.data_dir / "drops" / "enrichment" / "enrichment-9001.csv").write_text(
        "email,company,job_title,city,country,updated_at\n"
        f"{broken['email']},Newco,CTO,Berlin,DE,2026-10-31T00:00:00Z\n"
    )
    return Change(
        emails={
            mover["email"],
            "moved.person@example.org",
            quitter["email"],
            broken["email"],
            visitor["email"],
            str(buyer).strip().lower(),
        },
        moved_from=mover["email"],
        moved_to="moved.person@example.org",
        opted_out=quitter["email"],
        invalidated=broken["email"],
    )


def changed_keys(before: pl.DataFrame, after: pl.DataFrame, key: str) -> set[str]:
    """Keys whose row was added, removed or altered."""
    differ = pl.concat(
        [before.join(after, on=before.columns, how="anti", nulls_equal=True),
         after.join(before, on=after.columns, how="anti", nulls_equal=True)]
    )  # fmt: skip
    return set(differ.get_column(key))


def metrics_of(lake: Lake, run_id: str) -> pl.DataFrame:
    return (
        lake.read(VOLUME_METRICS)
        .filter(pl.col("run_id") == run_id)
        .select("table", "source", "segment", "rows", "quarantined")
        .sort(pl.all())
    )


def test_incremental_run_matches_a_full_refresh_and_touches_only_the_changed_people(
    sandbox: Sandbox,
) -> None:
    ingest(config_path=CONFIG)
    first = run()
    assert first.mode == "full" and set(first.staging.values()) == {"full"}
    lake = sandbox.lake
    before = snapshot(lake)
    change = change_every_source(sandbox)
    ingest(config_path=CONFIG)
    quarantined_before = lake.read("ops/quarantine").height

    incremental = run()
    assert incremental.mode == "incremental"
    assert set(incremental.staging.values()) == {"incremental"}
    assert all(t.balanced for t in incremental.tables), incremental.tables
    after = snapshot(lake)

    # Only the people the change touched were rebuilt, and only their rows were written.
    assert incremental.contacts_rebuilt is not None
    assert incremental.contacts_rebuilt < before[CONTACTS].height / 10
    contact_changes = changed_keys(before[CONTACTS], after[CONTACTS], "email")
    assert contact_changes <= change.emails
    assert {change.moved_from, change.moved_to, change.opted_out} <= contact_changes
    merge = lake.history(CONTACTS, 1)[0]
    assert merge["operation"] == "MERGE"
    written = merge["operationMetrics"]
    assert written["num_target_rows_inserted"] + written["num_target_rows_updated"] + written[
        "num_target_rows_deleted"
    ] == len(contact_changes)
    assert written["num_source_rows"] == len(contact_changes)  # nothing else was sent
    # Features: besides re-ranked RFM scores, only the affected contacts' rows moved.
    features_before, features_after = (
        frame.drop(SCORE_COLUMNS) for frame in (before[FEATURES], after[FEATURES])
    )
    keys = set(after[CONTACTS].filter(pl.col("email").is_in(change.emails))["contact_key"]) | set(
        before[CONTACTS].filter(pl.col("email").is_in(change.emails))["contact_key"]
    )
    assert changed_keys(features_before, features_after, "contact_key") <= keys

    # Consent followed the CRM; the record with a broken email was quarantined this run.
    moved = after[CONTACTS].filter(pl.col("email") == change.moved_to).row(0, named=True)
    assert moved["consent_status"] == "subscribed"
    quitter = after[CONTACTS].filter(pl.col("email") == change.opted_out).row(0, named=True)
    assert quitter["consent_status"] == "unsubscribed"
    assert quitter["contact_key"] not in set(after[AUDIENCE]["contact_key"])
    rules = {(r["table"], r["rule"]): r["rows"] for r in incremental.rule_counts}
    assert rules[(CONTACTS, "email_syntax")] == 1
    assert lake.read("ops/quarantine").height == quarantined_before + 1

    # A full refresh of the same bronze yields the same tables and finds nothing to rewrite.
    versions = {t: lake.version(t) for t in (CONTACTS, ORDERS, EVENTS, AUDIENCE)}
    full = run(full_refresh=True)
    assert full.mode == "full" and set(full.staging.values()) == {"full"}
    assert all(t.balanced for t in full.tables)
    assert_same_tables(snapshot(lake), after)
    assert {t: lake.version(t) for t in versions} == versions
    assert lake.read("ops/quarantine").height == quarantined_before + 1  # same records
    # Volume metrics are table totals either way: incremental runs never look like a drop, and
    # a source's quarantined count is its current rows failing the contract (the broken email
    # included), not the rows one run happened to check.
    assert metrics_of(lake, incremental.run_id).equals(metrics_of(lake, full.run_id))


def test_a_new_as_of_recomputes_every_contacts_features_but_no_silver(sandbox: Sandbox) -> None:
    ingest(config_path=CONFIG)
    run()
    lake = sandbox.lake
    silver = {t: lake.version(t) for t in (CONTACTS, ORDERS, EVENTS)}
    features = lake.read(FEATURES)

    later = transform(config_path=CONFIG, as_of=AS_OF + timedelta(days=9))
    assert later.mode == "unchanged" and later.contacts_rebuilt is None
    assert {t: lake.version(t) for t in silver} == silver
    moved = lake.read(FEATURES).join(features, on="contact_key", suffix="_before")
    ordered = moved.filter(pl.col("recency_days").is_not_null())
    assert (ordered["recency_days"] - ordered["recency_days_before"]).unique().to_list() == [9]
    after = snapshot(lake)

    full = transform(config_path=CONFIG, as_of=AS_OF + timedelta(days=9), full_refresh=True)
    assert full.mode == "full"
    assert_same_tables(snapshot(lake), after)
    # And the next run on the same day finds nothing to do.
    again = transform(config_path=CONFIG, as_of=AS_OF + timedelta(days=9))
    assert again.mode == "unchanged" and again.contacts_rebuilt == 0


def test_buckets_of_people_give_the_tables_of_one_pass_full_and_incremental(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The flow with ``engine.buckets: 3``: the first run (full, in buckets), a full refresh in
    one pass that finds nothing to rewrite, an incremental run, a new day (gold in buckets),
    and full refreshes in buckets matching each."""
    raw = yaml.safe_load(Path(CONFIG).read_text())
    raw["engine"] = {"task_runner": "inline", "buckets": 3}
    bucketed = tmp_path / "pipeline-buckets.yaml"
    bucketed.write_text(yaml.safe_dump(raw, sort_keys=False))
    ingest(config_path=CONFIG)
    first = transform(config_path=str(bucketed), as_of=AS_OF)
    assert first.mode == "full" and all(t.balanced for t in first.tables)
    lake = sandbox.lake
    built = snapshot(lake)
    versions = {t: lake.version(t) for t in (CONTACTS, ORDERS, EVENTS, AUDIENCE)}
    assert run(full_refresh=True).mode == "full"
    assert {t: lake.version(t) for t in versions} == versions  # one pass: nothing to rewrite
    assert_same_tables(snapshot(lake), built)

    change_every_source(sandbox)
    ingest(config_path=CONFIG)
    incremental = transform(config_path=str(bucketed), as_of=AS_OF)
    assert incremental.mode == "incremental"
    after = snapshot(lake)
    full = transform(config_path=str(bucketed), as_of=AS_OF, full_refresh=True)
    assert full.mode == "full" and all(t.balanced for t in full.tables)
    assert_same_tables(snapshot(lake), after)

    later = AS_OF + timedelta(days=3)
    assert transform(config_path=str(bucketed), as_of=later).mode == "unchanged"
    moved_on = snapshot(lake)
    transform(config_path=CONFIG, as_of=later, full_refresh=True)
    assert_same_tables(snapshot(lake), moved_on)


def test_lake_primitives_behind_incremental_writes(tmp_path: Path) -> None:
    """upsert = upserts + deletes in one MERGE that leaves untouched files alone; file_uris +
    scan_files read what changed between two versions (including removed files)."""
    lake = Lake(str(tmp_path / "lake"))
    rows = pl.DataFrame({"segment": ["a", "a", "b"], "k": ["1", "2", "3"], "v": [1, 2, 3]})
    lake.upsert("gold/t", rows, keys=["segment", "k"], partition_by=["segment"])
    version = lake.version("gold/t")
    stats = lake.upsert(
        "gold/t",
        pl.DataFrame({"segment": ["a", "a"], "k": ["1", "2"], "v": [1, 20]}),
        keys=["segment", "k"],
        delete=pl.DataFrame({"segment": ["a"], "k": ["9"]}),  # not there: nothing to delete
    )
    assert (stats.inserted, stats.updated, stats.deleted) == (0, 1, 0)
    metrics = lake.history("gold/t", 1)[0]["operationMetrics"]
    assert metrics["num_target_files_skipped_during_scan"] == 1  # partition b untouched
    before, after = set(lake.file_uris("gold/t", version=version)), set(lake.file_uris("gold/t"))
    old = lake.scan_files("gold/t", sorted(before - after)).collect().sort("k")
    new = lake.scan_files("gold/t", sorted(after - before)).collect().sort("k")
    assert old["v"].to_list() == [1, 2] and new["v"].to_list() == [1, 20]  # file rewritten
    assert set(old["segment"]) == {"a"}  # partition values come from the path
    gone = lake.upsert(
        "gold/t",
        rows.head(0),
        keys=["segment", "k"],
        delete=pl.DataFrame({"segment": ["b"], "k": ["3"]}),
    )
    assert gone.deleted == 1 and lake.count("gold/t") == 2
    unchanged = lake.upsert("gold/t", lake.read("gold/t"), keys=["segment", "k"])
    assert unchanged.version is None  # nothing changed: nothing committed

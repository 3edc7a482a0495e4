"""A full build in buckets of people gives the tables of a single pass, row for row.

Bronze comes from the benchmark's generator (anonymous visitors linked to people through
anonymous ids, duplicate deliveries, late order updates) plus records made to cross buckets:
orders corrected to another customer, events redelivered under another email, and devices
shared by two people (ids that must link to nobody). The engine's plain functions run on real
Delta tables in temp dirs: once in one pass, once in buckets; then bronze changes (records
deleted, so silver must lose rows) and both lakes are rebuilt with ``full_refresh``.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from benchmarks.bronze_gen import REFERENCE_TIME, UTC_US, bronze_tables
from tasks.connectors.lake import STALE_SCRATCH, Lake, Scratch
from tasks.connectors.lake.scratch import scratch_folders as folders_at
from tasks.core.config import PipelineConfig, load_pipeline
from tasks.core.tables import (
    AUDIENCE,
    CONSENT_EVENTS,
    CONTACTS,
    EVENTS,
    FEATURES,
    ORDERS,
    QUARANTINE,
    STAGED,
)
from tasks.engine.buckets import cross_bucket_links
from tasks.engine.delta import pinned
from tasks.engine.gold import build_gold_tables
from tasks.engine.roles import stage_bronze
from tasks.engine.silver import build_silver_tables
from tasks.engine.state import record_transform_state
from tasks.reports import TableReport

ROOT = Path(__file__).resolve().parents[2]
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
BUILT = (CONTACTS, ORDERS, EVENTS, FEATURES, AUDIENCE)
LOGGER = logging.getLogger("test_transform_buckets")
CROSSING = 40


@pytest.fixture(autouse=True)
def _pepper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_PEPPER", "bucket-test-pepper")


def config_with(buckets: int) -> PipelineConfig:
    config = load_pipeline(str(ROOT / "pipeline.yaml"), env={})
    return config.model_copy(
        update={"engine": config.engine.model_copy(update={"buckets": buckets})}
    )


def crossing_bronze(contacts: int) -> dict[str, pl.DataFrame]:
    """Generated bronze plus records whose versions or deliveries name different people."""
    tables = bronze_tables(contacts, seed=11)
    orders, events = tables["bronze/orders"], tables["bronze/web_events"]
    later = (REFERENCE_TIME - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    others = orders.slice(500, CROSSING).get_column("customer_email")
    moved_orders = orders.head(CROSSING).with_columns(
        others.alias("customer_email"), pl.lit(later).alias("updated_at")
    )
    emailed = events.filter(pl.col("user_email").is_not_null())
    strangers = emailed.slice(700, CROSSING).get_column("user_email")
    earlier = pl.lit(REFERENCE_TIME - timedelta(days=1)).cast(UTC_US)
    redelivered = emailed.head(CROSSING).with_columns(
        strangers.alias("user_email"), earlier.alias("_ingested_at")
    )
    shared = emailed.slice(100, CROSSING).with_columns(
        (pl.col("event_id") + "_shared").alias("event_id"),
        emailed.slice(900, CROSSING).get_column("user_email").alias("user_email"),
    )
    tables["bronze/orders"] = pl.concat([orders, moved_orders])
    tables["bronze/web_events"] = pl.concat([events, redelivered, shared])
    return tables


def transform(
    lake: Lake, config: PipelineConfig, *, run: str, now: datetime | None = None
) -> list[TableReport]:
    """The full transform's stage functions, as the flow calls them (no Prefect); ``now``: the
    run's clock (the same for two lakes whose consent ledgers are compared)."""
    now = now or datetime.now(UTC)
    staging = stage_bronze(lake, config, run_id=run, now=now, full_refresh=True, logger=LOGGER)
    silver = build_silver_tables(
        lake,
        config,
        staging=staging,
        run_id=run,
        now=now,
        as_of=AS_OF,
        full_refresh=True,
        logger=LOGGER,
    )
    gold = build_gold_tables(
        lake,
        config,
        as_of=AS_OF,
        run_id=run,
        now=now,
        contact_keys=silver.contact_keys,
        logger=LOGGER,
    )
    assert silver.state is not None
    record_transform_state(lake, silver.state, run_id=run)
    return [*silver.tables, *gold.tables]


def scratch_folders(lake: Lake) -> list[Scratch]:
    return folders_at(lake.root, lake.storage_options, None)


def snapshot(lake: Lake) -> dict[str, pl.DataFrame]:
    tables = {table: lake.read(table) for table in BUILT}
    tables[QUARANTINE] = lake.read(QUARANTINE).drop("run_id", "quarantined_at")
    # The consent ledger, but for the run names (commits differ too: one per bucket).
    tables[CONSENT_EVENTS] = lake.read(CONSENT_EVENTS).drop("run_id")
    return {table: frame.sort(pl.all()) for table, frame in tables.items()}


def assert_same(left: Lake, right: Lake) -> None:
    a, b = snapshot(left), snapshot(right)
    for table in a:
        assert a[table].schema == b[table].schema, table
        assert a[table].equals(b[table]), f"{table} differs"


def test_buckets_build_the_tables_of_one_pass(tmp_path: Path) -> None:
    one, many = Lake(str(tmp_path / "one")), Lake(str(tmp_path / "many"))
    for table, frame in crossing_bronze(3_000).items():
        one.overwrite(table, frame)
        many.overwrite(table, frame)

    now = datetime.now(UTC)
    single = transform(one, config_with(1), run="one", now=now)
    bucketed = transform(many, config_with(3), run="many", now=now)
    assert bucketed == single
    assert all(report.balanced for report in bucketed)
    assert_same(one, many)
    assert len(many.history(CONTACTS)) == 3  # one commit per bucket
    assert len(one.history(CONTACTS)) == 1

    # The crossing records really were routed by their winning version.
    logs = {role: pinned(many, table, None) for role, table in STAGED.items()}
    cross = cross_bucket_links(logs, 3)
    assert cross.orders.height >= CROSSING // 2 and cross.events.height >= CROSSING
    assert cross.orders.get_column("_bucket").n_unique() == 3
    links = cross.links.collect()
    assert links.height and links.select("_source", "anonymous_id").is_unique().all()

    # Bronze loses records: silver must lose their rows in both lakes.
    for lake in (one, many):
        orders = lake.read("bronze/orders")
        lake.overwrite("bronze/orders", orders.filter(pl.col("order_id").hash() % 7 != 0))
        crm = lake.read("bronze/crm_contacts")
        lake.overwrite("bronze/crm_contacts", crm.filter(pl.col("id").hash() % 9 != 0))
        web = lake.read("bronze/web_events")
        lake.overwrite("bronze/web_events", web.filter(pl.col("event_id").hash() % 5 != 0))
    later = datetime.now(UTC)
    assert transform(many, config_with(4), run="many-2", now=later) == transform(
        one, config_with(1), run="one-2", now=later
    )
    assert_same(one, many)
    # People whose every record left the sources had their statements withdrawn in both.
    withdrawn = many.read(CONSENT_EVENTS).filter(pl.col("status") == "withdrawn")
    assert withdrawn.height and withdrawn.get_column("occurred_at").max() == later

    # Rebuilding unchanged data in buckets writes nothing.
    versions = {table: many.version(table) for table in (CONTACTS, ORDERS, EVENTS)}
    transform(many, config_with(5), run="many-3")
    assert {table: many.version(table) for table in versions} == versions
    assert_same(one, many)


def test_a_copied_lake_gives_the_same_tables_in_any_number_of_buckets(tmp_path: Path) -> None:
    source = Lake(str(tmp_path / "source"))
    for table, frame in crossing_bronze(1_000).items():
        source.overwrite(table, frame)
    shutil.copytree(tmp_path / "source", tmp_path / "two")
    now = datetime.now(UTC)
    transform(source, config_with(1), run="one", now=now)
    two = Lake(str(tmp_path / "two"))
    # A killed build's scratch folder (nothing written for longer than any build's pause) and
    # one a running build is writing: the next bucketed build removes only the first.
    killed, running = two.scratch("silver-killed"), two.scratch("silver-running")
    for folder in (killed, running):
        folder.write("contacts-0.parquet", source.read(CONTACTS).head(5))
    stale = (now - STALE_SCRATCH - timedelta(minutes=1)).timestamp()
    os.utime(killed.path("contacts-0.parquet"), (stale, stale))
    transform(two, config_with(7), run="seven", now=now)
    assert_same(source, two)
    assert [folder.name for folder in scratch_folders(two)] == ["silver-running"]

"""The ``maintain`` flow as real Prefect runs: the artifact, the CLI summary, and a real
incremental transform committing while maintenance compacts the tables it writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import polars as pl
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.cli import main
from flows.ingest import ingest
from flows.maintain import MaintainReport, maintain
from flows.transform import TransformReport, transform
from tasks.connectors.lake import Lake, TableMaintenance, maintain_table
from tasks.core.config import load_pipeline
from tasks.core.tables import AUDIENCE, BUILT_TABLES, FEATURES
from tests.flows.conftest import CONFIG, Sandbox
from tests.flows.test_incremental_transform import (
    assert_same_tables,
    change_every_source,
    snapshot,
)

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


def _small_commits(lake: Lake, commits: int = 6) -> pl.DataFrame:
    for n in range(commits):
        rows = pl.DataFrame(
            {
                "segment": ["vip", "all"],
                "contact_key": [f"k{n:03d}", f"k{n:03d}"],
                "score": [n, n],
            }
        )
        lake.upsert(AUDIENCE, rows, keys=["segment", "contact_key"], partition_by=["segment"])
    return lake.read(AUDIENCE).sort(pl.all())


@pytest.mark.usefixtures("lake_env")
def test_a_maintenance_run_reports_files_and_bytes_before_and_after(
    sandbox: Sandbox, lake_env: str
) -> None:
    lake = sandbox.lake
    rows = _small_commits(lake)
    lake.merge("ops/maint_flow_ledger", pl.DataFrame({"id": [1]}), keys=["id"])

    state = maintain(config_path=CONFIG, return_state=True)
    report = state.result()
    assert isinstance(report, MaintainReport) and not report.failed
    by_table = {t.table: t for t in report.tables}
    assert set(by_table) == {AUDIENCE, "ops/maint_flow_ledger"}
    members = by_table[AUDIENCE]
    assert (members.before.files, members.after.files) == (12, 2)
    assert members.optimized == "z_order" and members.z_order == ("contact_key",)
    assert lake.read(AUDIENCE).sort(pl.all()).equals(rows)

    run_id = UUID(str(state.state_details.flow_run_id))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    table = next(a for a in artifacts if a.key == "lake-maintenance")
    text = str(table.data)
    assert AUDIENCE in text and "files_before" in text and "mib_after" in text


def test_the_cli_prints_the_summary_and_vacuums_with_a_run_retention(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = sandbox.lake
    _small_commits(lake)
    assert main(["maintain", "--config", CONFIG, "--table", AUDIENCE]) == 0
    first = capsys.readouterr().out
    assert f"{AUDIENCE}" in first and "12 -> 2" in first and "z_order by contact_key" in first
    # Retention 0 for this run only (what an erasure needs): the 12 replaced files go now.
    assert (
        main(["maintain", "--config", CONFIG, "--table", AUDIENCE, "--retention-hours", "0"]) == 0
    )
    second = capsys.readouterr().out
    assert "2 -> 2" in second and "12 file(s) vacuumed" in second

    assert main(["maintain", "--config", CONFIG, "--table", "gold/nope"]) == 2
    assert "gold/nope" in capsys.readouterr().err


def _maintaining(
    lake: Lake, tables: Callable[[list[str]], list[str]]
) -> tuple[threading.Event, threading.Thread, list[TableMaintenance], list[BaseException]]:
    """A thread that maintains ``tables(lake tables)`` over and over until the event is set,
    through its own Lake (as another process would)."""
    maintainer = Lake(lake.root, lake.storage_options)
    settings = load_pipeline(CONFIG).maintenance
    done = threading.Event()
    reports: list[TableMaintenance] = []
    errors: list[BaseException] = []

    def run() -> None:
        deadline = time.monotonic() + 300
        try:
            while not done.is_set() and time.monotonic() < deadline:
                for table in tables(maintainer.tables()):
                    reports.append(
                        maintain_table(
                            maintainer,
                            table,
                            z_order=settings.z_order.get(table, ()),
                            retention_hours=settings.retention_hours,
                        )
                    )
        except BaseException as exc:  # asserted by the caller
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return done, thread, reports, errors


def _transform_while_maintaining(
    lake: Lake, tables: Callable[[list[str]], list[str]], **kwargs: Any
) -> tuple[TransformReport, list[TableMaintenance]]:
    done, thread, reports, errors = _maintaining(lake, tables)
    try:
        report = transform(config_path=CONFIG, as_of=AS_OF, **kwargs)
    finally:
        done.set()
        thread.join(timeout=300)
    assert not errors, errors
    assert any(r.optimized for r in reports), "maintenance rewrote nothing"
    return report, reports


def test_transforms_next_to_maintenance_lose_nothing(sandbox: Sandbox) -> None:
    """Maintenance compacts and Z-orders tables over and over while real transforms commit:

    * an incremental transform, while bronze, staging and ops tables are maintained (it reads
      bronze changes across the compactions and merges into the staging logs);
    * a full refresh, while every table is maintained (it overwrites silver and gold).

    Both end with exactly the tables a full refresh without maintenance builds.
    """
    ingest(config_path=CONFIG)
    transform(config_path=CONFIG, as_of=AS_OF)
    change_every_source(sandbox)
    ingest(config_path=CONFIG)
    lake = sandbox.lake

    def not_built(tables: list[str]) -> list[str]:
        return [t for t in tables if t not in (*BUILT_TABLES, FEATURES)]

    incremental, _ = _transform_while_maintaining(lake, not_built)
    # Silver and gold untouched by maintenance: the run stays incremental.
    assert incremental.mode == "incremental"
    after_incremental = snapshot(lake)

    full, _ = _transform_while_maintaining(lake, list, full_refresh=True)
    assert full.mode == "full"
    after_full = snapshot(lake)

    transform(config_path=CONFIG, as_of=AS_OF, full_refresh=True)
    clean = snapshot(lake)
    assert_same_tables(after_incremental, clean)
    assert_same_tables(after_full, clean)


def test_maintaining_silver_and_gold_keeps_the_next_transform_incremental(
    sandbox: Sandbox,
) -> None:
    """Compaction and Z-order of the built tables change no row, so the next run stays
    incremental (a version comparison would rebuild everything) and still equals a full
    refresh; a real row change to a built table still forces the full rebuild."""
    ingest(config_path=CONFIG)
    transform(config_path=CONFIG, as_of=AS_OF)
    lake = sandbox.lake
    settings = load_pipeline(CONFIG).maintenance
    for table in (*BUILT_TABLES, FEATURES):
        maintain_table(lake, table, z_order=settings.z_order.get(table, ()), retention_hours=168)
    change_every_source(sandbox)
    ingest(config_path=CONFIG)

    incremental = transform(config_path=CONFIG, as_of=AS_OF)
    assert incremental.mode == "incremental"
    after_incremental = snapshot(lake)
    transform(config_path=CONFIG, as_of=AS_OF, full_refresh=True)
    assert_same_tables(after_incremental, snapshot(lake))

    member = lake.read(AUDIENCE).head(1)
    lake.merge(AUDIENCE, member, keys=["segment", "contact_key"], only_if_changed=False)
    assert transform(config_path=CONFIG, as_of=AS_OF).mode == "full"

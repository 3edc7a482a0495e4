"""Retention as real Prefect runs: the ``maintain`` flow expires old raw events, reports them in
its artifact and in ``ops/runs``, the next incremental transform takes them out of silver and
gold exactly as a full rebuild does, and the next maintenance prunes them from the staging log.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.cli import main
from flows.ingest import ingest
from flows.maintain import MaintainReport, maintain
from flows.transform import transform
from tasks.connectors.lake import Lake
from tasks.core.normalise import parse_timestamp
from tasks.core.tables import (
    EVENTS,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    RUNS,
    STAGED,
    bronze_table,
)
from tests.flows.conftest import CONFIG, Sandbox
from tests.flows.test_incremental_transform import (
    assert_same_tables,
    change_every_source,
    snapshot,
)

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
WEB = bronze_table("web_events")


def _occurred(lake: Lake) -> pl.Series:
    bronze = lake.read(WEB)
    return bronze.select(parse_timestamp(pl.col("occurred_at"), bronze.schema["occurred_at"]))[
        "occurred_at"
    ]


def _config_keeping(tmp_path: Path, days: int) -> str:
    """pipeline.yaml with raw web events kept ``days`` days."""
    config = yaml.safe_load(Path(CONFIG).read_text(encoding="utf-8"))
    config["maintenance"] = {"retention": {WEB: f"{days}d"}}
    path = tmp_path / "pipeline-retention.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return str(path)


def _artifact_text(flow_run_id: UUID) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return str(next(a for a in artifacts if a.key == "lake-maintenance").data)


def test_expired_events_leave_bronze_silver_gold_and_staging_as_a_full_rebuild_would(
    sandbox: Sandbox, lake_env: str, tmp_path: Path
) -> None:
    lake = sandbox.lake
    assert lake.is_remote == (lake_env == "s3")
    ingest(config_path=CONFIG)
    transform(config_path=CONFIG, as_of=AS_OF)

    # Expire the oldest tenth or so of the sample's events (a small change: the transform
    # stays incremental; a large one makes it choose a full build, which proves less).
    occurred = _occurred(lake)
    now = datetime.now(UTC)
    days = math.ceil((now - occurred.sort()[len(occurred) // 10]).total_seconds() / 86_400)
    config = _config_keeping(tmp_path, days)
    state = maintain(config_path=config, return_state=True)
    cutoff_latest = datetime.now(UTC)
    report = state.result()
    assert isinstance(report, MaintainReport) and not report.failed
    by_table = {e.table: e for e in report.expired}
    web = by_table[WEB]
    assert web.days == days and web.column == "occurred_at" and web.cutoff is not None
    older = int((occurred < web.cutoff).sum())
    assert 0 < web.rows == older < len(occurred)
    assert report.rows_expired == sum(e.rows for e in report.expired)
    left = _occurred(lake)
    assert left.len() == len(occurred) - older and bool((left >= web.cutoff).all())
    assert cutoff_latest > web.cutoff  # the cutoff is the run's clock minus the retention

    # The run page and the run audit say what was deleted where.
    run_id = UUID(str(state.state_details.flow_run_id))
    text = _artifact_text(run_id)
    assert "rows_expired" in text and str(older) in text
    run = lake.read(RUNS).filter(pl.col("flow_run_id") == str(run_id)).row(0, named=True)
    assert json.loads(run["counts"])["rows_expired"] == report.rows_expired
    assert json.loads(run["writes"])[WEB]["deleted"] == older

    # The expired events left silver/events in the same pass (the incremental transform
    # rebuilds events bronze still holds, not those it lost), so the next transform rebuilds
    # silver and gold in full from the remaining staged rows.
    silver_events = by_table[EVENTS]
    assert silver_events.rows > 0 and silver_events.cutoff == web.cutoff
    assert bool((lake.read(EVENTS)["occurred_at"] >= web.cutoff).all())
    assert transform(config_path=CONFIG, as_of=AS_OF).mode == "full"
    silver = lake.read(EVENTS)
    assert silver.height and bool((silver["occurred_at"] >= web.cutoff).all())
    staged = lake.read(STAGED["events"])
    assert bool((staged["occurred_at"] < web.cutoff).any())  # their removal is in the log

    # The next maintenance prunes the built removals from the staging log.
    pruned = maintain(config_path=config)
    staged_events = {e.table: e for e in pruned.expired}[STAGED["events"]]
    assert staged_events.rows >= older and staged_events.cutoff is None
    staged = lake.read(STAGED["events"])
    assert staged.height and bool((staged["occurred_at"] >= web.cutoff).all())

    # Pruning changed what no build reads: the next run has nothing to do, and what the
    # retention pass left equals a full rebuild from the remaining bronze.
    assert transform(config_path=CONFIG, as_of=AS_OF).mode == "unchanged"
    after_retention = snapshot(lake)
    # A day's changes in every source on top of the pruned log: still incremental, still the
    # tables a full rebuild makes.
    change_every_source(sandbox)
    ingest(config_path=CONFIG)
    assert transform(config_path=CONFIG, as_of=AS_OF).mode == "incremental"
    incremental = snapshot(lake)
    assert transform(config_path=CONFIG, as_of=AS_OF, full_refresh=True).mode == "full"
    assert_same_tables(incremental, snapshot(lake))
    assert after_retention[EVENTS].height < incremental[EVENTS].height  # the change landed


def test_the_cli_expires_old_quarantine_records_unless_told_not_to(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = sandbox.lake
    now = datetime.now(UTC)
    ages = [1, 89, 91, 365]
    lake.append_once(
        QUARANTINE,
        pl.DataFrame(
            {
                "quarantine_id": [f"q{age}" for age in ages],
                "table": [WEB] * 4,
                "source": ["web_events"] * 4,
                "rule": ["occurred_at"] * 4,
                "column": ["occurred_at"] * 4,
                "value": ["n/a"] * 4,
                "row": ["{}"] * 4,
                "run_id": ["r"] * 4,
                "quarantined_at": [now - timedelta(days=age) for age in ages],
            },
            schema=QUARANTINE_SCHEMA,
        ),
        batch_id="retention-cli-test",
    )
    assert main(["maintain", "--config", CONFIG, "--table", QUARANTINE, "--no-expire"]) == 0
    assert "expired" not in capsys.readouterr().out
    assert lake.read(QUARANTINE).height == 4

    assert main(["maintain", "--config", CONFIG, "--table", QUARANTINE]) == 0
    assert "2 row(s) expired" in capsys.readouterr().out  # older than 90 days
    assert sorted(lake.read(QUARANTINE)["quarantine_id"]) == ["q1", "q89"]

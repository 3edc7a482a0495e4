"""The run audit ``ops/runs`` as real Prefect flow runs: one row per flow run of every flow, with
trigger, masked parameters, Delta versions read and written, outcome, holds and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect import get_client
from prefect.client.schemas.objects import CreatedBy, FlowRun

from flows.audit import run_trigger
from flows.cli import main
from flows.events import land_events
from flows.ingest import ingest
from flows.maintain import maintain
from flows.pipeline import pipeline
from tasks.core.tables import RUNS, SYNC_LEDGER, bronze_table
from tasks.errors import ConfigError
from tasks.resources import open_lake
from tests.flows import audit_flows
from tests.flows.conftest import CONFIG, ROOT, Sandbox

pytestmark = pytest.mark.flow


def runs() -> pl.DataFrame:
    return open_lake().read(RUNS).sort("started_at")


def only(frame: pl.DataFrame, **where: Any) -> dict[str, Any]:
    for column, value in where.items():
        frame = frame.filter(pl.col(column) == value)
    assert frame.height == 1, frame
    return frame.row(0, named=True)


@pytest.mark.usefixtures("lake_env")
def test_a_pipeline_run_records_itself_and_its_sub_flows(sandbox: Sandbox) -> None:
    report = pipeline(config_path=CONFIG)
    table = runs()
    assert sorted(table["flow"]) == ["ingest", "pipeline", "publish", "transform"]
    top = only(table, flow="pipeline")
    assert top["root_run_id"] == report.run_id == top["flow_run_id"]
    assert top["parent_run_id"] is None and top["deployment"] is None
    for name in ("ingest", "transform", "publish"):
        row = only(table, flow=name)
        assert row["parent_run_id"] == top["flow_run_id"], row
        assert row["root_run_id"] == report.run_id
        assert row["trigger"] == "cli" and row["outcome"] == "completed", row
        assert row["ended_at"] >= row["started_at"]
    assert set(table["trigger"]) == {"cli"} and set(table["outcome"]) == {"completed"}
    assert json.loads(top["parameters"])["config_path"] == CONFIG

    lake = open_lake()
    crm = bronze_table("crm_contacts")
    ingest_writes = json.loads(only(table, flow="ingest")["writes"])
    assert ingest_writes[crm]["versions"] == [lake.version(crm)]
    assert ingest_writes[crm]["inserted"] == lake.count(crm)
    # The transform read the version the ingest wrote; publish wrote the ledger it left behind.
    assert lake.version(crm) in json.loads(only(table, flow="transform")["reads"])[crm]
    publish_writes = json.loads(only(table, flow="publish")["writes"])
    assert publish_writes[SYNC_LEDGER]["versions"][-1] == lake.version(SYNC_LEDGER)
    # The pipeline's row covers what its sub-flows did.
    assert json.loads(top["writes"])[SYNC_LEDGER] == publish_writes[SYNC_LEDGER]
    counts = json.loads(only(table, flow="publish")["counts"])
    assert counts["sent"] == sum(p.sent for p in report.publish) > 0
    # ops/runs never records its own commits.
    assert RUNS not in json.loads(top["writes"])
    # Who was sent what, by which run, and why: a join of the ledger and the runs.
    sent = lake.read(SYNC_LEDGER).join(
        table.filter(pl.col("flow") == "publish"), left_on="run_id", right_on="root_run_id"
    )
    assert sent.height == lake.count(SYNC_LEDGER) and set(sent["trigger"]) == {"cli"}


def test_maintain_and_land_events_are_recorded(sandbox: Sandbox) -> None:
    [landed] = land_events(config_path=CONFIG)
    maintain(config_path=CONFIG, retention_hours=0)
    table = runs()
    events = only(table, flow="land-events")
    assert events["outcome"] == "completed"
    written = json.loads(events["writes"])[bronze_table("web_events")]
    assert written["inserted"] == landed.rows
    done = only(table, flow="maintain")
    assert done["outcome"] == "completed" and done["parent_run_id"] is None


def test_a_failing_run_records_the_error_class_and_a_masked_line(sandbox: Sandbox) -> None:
    with pytest.raises(ConfigError):
        ingest(config_path=CONFIG, sources=["nope"])
    row = only(runs(), flow="ingest")
    assert row["outcome"] == "failed" and row["error_class"] == "ConfigError"
    assert "nope" in row["error"] and row["ended_at"] is not None

    with pytest.raises(RuntimeError):
        audit_flows.leaky(url="https://ops:hunter22@example.test/x", password="s3cret-pw")
    leak = only(runs(), flow="audit-leaky")
    stored = json.dumps(leak, default=str)
    assert "hunter22" not in stored and "s3cret-pw" not in stored
    assert leak["error_class"] == "RuntimeError" and "\n" not in leak["error"]
    assert json.loads(leak["parameters"])["password"] == "***"


def test_a_retried_run_keeps_one_row_updated_by_the_last_attempt(sandbox: Sandbox) -> None:
    assert audit_flows.flaky(tag="retry") == 2
    row = only(runs(), flow="audit-flaky")
    assert row["outcome"] == "completed" and row["attempt"] == 2
    assert row["error"] is None and row["error_class"] is None
    # Both attempts committed to the probe table; the row keeps the retried attempt's commit.
    assert json.loads(row["writes"])[audit_flows.TABLE]["versions"] == [1]


def test_a_held_run_records_its_holds(sandbox: Sandbox) -> None:
    audit_flows.held()
    row = only(runs(), flow="audit-held")
    assert row["outcome"] == "held"
    # Without publish reports to name the audiences, the state's message is the hold.
    assert row["holds"] == ["mailchimp/vip: volume anomaly; x/y: lease"]


async def _deployment_run(tag: str) -> str:
    deployment = await audit_flows.probe.to_deployment(name="audit-probe-api", entrypoint_type=None)
    deployment.entrypoint = "tests/flows/audit_flows.py:probe"
    deployment.storage = None
    deployment_id = await deployment.apply()
    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"tag": tag, "api_token": "tok-123456789"}
        )
    return str(flow_run.id)


def test_trigger_of_a_deployment_run_versus_a_cli_run(sandbox: Sandbox) -> None:
    """The deployment run is created through the API (as the UI's Run button does) and executed
    by Prefect's own engine in a separate process, as a worker would."""
    import asyncio

    audit_flows.probe(tag="cli")
    flow_run_id = asyncio.run(_deployment_run("api"))
    from prefect.settings import get_current_settings

    api = str(get_current_settings().api.url)  # the test server (set in-process, not in env)
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": flow_run_id, "PREFECT_API_URL": api}
    done = subprocess.run(
        [sys.executable, "-m", "prefect.engine"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = runs().filter(pl.col("flow") == "audit-probe")
    cli = only(table, trigger="cli")
    assert cli["deployment"] is None
    api = only(table, flow_run_id=flow_run_id)
    assert api["trigger"] == "ui" and api["deployment"] == "audit-probe-api"
    assert json.loads(api["parameters"]) == {"tag": "api", "api_token": "***"}
    assert json.loads(api["writes"])[audit_flows.TABLE]["versions"] == [1]


def test_trigger_rules_for_schedule_and_event_runs() -> None:
    """Schedule and automation runs are made by Prefect's scheduler and automation services,
    which the test server does not run; the rule is checked on the run objects they create."""
    base: dict[str, Any] = {"flow_id": "00000000-0000-0000-0000-000000000001"}
    deployed = {**base, "deployment_id": "00000000-0000-0000-0000-000000000002"}
    assert run_trigger(FlowRun(**base)) == "cli"
    assert run_trigger(FlowRun(**deployed)) == "ui"
    assert run_trigger(FlowRun(**deployed, auto_scheduled=True)) == "schedule"
    automation = CreatedBy(type="AUTOMATION", display_value="land on event")
    assert run_trigger(FlowRun(**deployed, created_by=automation)) == "event"
    user = CreatedBy(type="USER", display_value="ana")
    assert run_trigger(FlowRun(**deployed, created_by=user)) == "ui"


def test_cli_runs_lists_recent_runs(sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    audit_flows.probe(tag="one", api_token="tok-abcdefgh")
    with pytest.raises(RuntimeError):
        audit_flows.leaky(url="https://example.test", password="pw-123456")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "audit-probe" in out and "audit-leaky" in out and "RuntimeError" in out
    assert main(["runs", "--flow", "audit-probe", "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert "audit-probe" in out and "audit-leaky" not in out
    assert "tok-abcdefgh" not in out and "pw-123456" not in out


def test_runs_table_is_in_the_catalogue() -> None:
    from tasks.core.tables import TABLES

    assert TABLES[RUNS].keys == ("flow_run_id",) and TABLES[RUNS].write == "merge"
    assert Path(audit_flows.__file__).is_relative_to(ROOT)

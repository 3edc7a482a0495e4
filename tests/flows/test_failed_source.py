"""A failing source, in real Prefect runs on the sandbox: the others still land, the flow
fails naming it, and the audiences it feeds are held until it lands again."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from flows.ingest import ingest
from flows.pipeline import PIPELINE_SUMMARY_KEY, pipeline
from flows.publish import publish
from tasks.core.audience_lineage import source_audiences
from tasks.core.config import load_pipeline
from tasks.publish import publish_holds
from tasks.source_runs import SOURCE_RUNS
from tasks.volume import VOLUME_METRICS
from tests.conftest import free_port
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

FAILING = "crm_contacts"


def config_failing_fast(path: Path) -> str:
    """pipeline.yaml with the CRM's HTTP retries kept short (it is meant to stay down)."""
    raw = yaml.safe_load(Path(CONFIG).read_text(encoding="utf-8"))
    raw["sources"][FAILING]["retry"] = {
        "max_attempts": 2,
        "base_seconds": 0.05,
        "cap_seconds": 0.1,
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def other_sources(config_path: str) -> set[str]:
    config = load_pipeline(config_path)
    return {name for name, s in config.sources.items() if s.enabled and name != FAILING}


def test_a_source_answering_500_does_not_stop_the_others(sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_failing_fast(tmp_path / "pipeline.yaml")
    sandbox.crm.fail_next(50, status=500)

    state = ingest(config_path=config, return_state=True)

    assert state.is_failed()
    message = state.message or ""
    assert f"{FAILING}: SourceError: source '{FAILING}'" in message
    assert "answered 500" in message
    assert "1 of 4 source(s) failed" in message
    failure_lines = [line for line in message.splitlines() if line.startswith("  ")]
    assert len(failure_lines) == 1  # one clear line per failed source
    lake = sandbox.lake
    for name in other_sources(config):
        assert lake.exists(f"bronze/{name}") and lake.count(f"bronze/{name}") > 0, name
    assert not lake.exists(f"bronze/{FAILING}")
    runs = lake.read(SOURCE_RUNS)
    assert dict(zip(runs["source"], runs["status"], strict=True)) == {
        **dict.fromkeys(other_sources(config), "landed"),
        FAILING: "failed",
    }


def test_the_pipeline_goes_on_without_a_down_source_and_holds_what_it_feeds(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_failing_fast(tmp_path / "pipeline.yaml")
    assert pipeline(config_path=config, return_state=True).is_completed()  # a normal day
    crm_url = sandbox.crm.url
    monkeypatch.setenv("AUDIENCE_LAKE_CRM_URL", f"http://127.0.0.1:{free_port()}")  # down

    down = pipeline(config_path=config, return_state=True)

    assert down.is_failed()
    assert f"{FAILING}: SourceError: source '{FAILING}'" in (down.message or "")
    # The failed run's page still says what happened, naming the source.
    with get_client(sync_client=True) as client:
        (summary,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[PIPELINE_SUMMARY_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[down.state_details.flow_run_id]),
            )
        )
    assert f"| {FAILING} | SourceError: source '{FAILING}'" in str(summary.data)
    lake = sandbox.lake
    runs = lake.read(SOURCE_RUNS)
    failed_run = runs.filter(pl.col("status") == "failed")
    assert failed_run["source"].to_list() == [FAILING]
    run_id = failed_run["run_id"][0]
    this_run = runs.filter(pl.col("run_id") == run_id)
    assert set(this_run.filter(pl.col("status") == "landed")["source"]) == other_sources(config)
    # Transform still ran on what landed: it measured its tables in the failed run.
    measured = lake.read(VOLUME_METRICS).filter(pl.col("run_id") == run_id)["table"]
    assert any(table.startswith("gold/") for table in measured)

    # The following publish holds every audience the CRM feeds, naming it, and sends nothing.
    fed = set(source_audiences(load_pipeline(config), FAILING))
    assert fed
    reports = publish(config_path=config)
    for report in reports:
        if report.segment in fed:
            assert report.held is not None and f"source {FAILING} failed" in report.held
            assert report.sent == 0

    some = sorted(fed)[0]
    overridden = publish(config_path=config, segments=[some], override_hold=True)
    assert overridden and all(r.held is None for r in overridden)  # override_hold sends anyway

    monkeypatch.setenv("AUDIENCE_LAKE_CRM_URL", crm_url)  # back up
    back = pipeline(config_path=config, return_state=True)

    assert back.is_completed(), back.message
    holds = publish_holds(lake, load_pipeline(config))
    assert not any(f"source {FAILING}" in reason for reason in holds.values())


def test_an_ingest_that_read_nothing_stops_the_pipeline_before_transform(
    sandbox: Sandbox,
) -> None:
    state = pipeline(config_path=CONFIG, sources=["no_such_source"], return_state=True)
    assert state.is_failed()
    assert "unknown source(s) ['no_such_source']" in (state.message or "")
    assert not sandbox.lake.exists("silver/contacts")


def test_a_first_ever_run_with_the_contact_source_down_fails_naming_it(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an empty lake gold has never been built: publish reports its holds instead of
    crashing on the missing audience table, and the run fails naming the source."""
    config = config_failing_fast(tmp_path / "pipeline.yaml")
    monkeypatch.setenv("AUDIENCE_LAKE_CRM_URL", f"http://127.0.0.1:{free_port()}")  # down

    down = pipeline(config_path=config, return_state=True)

    assert down.is_failed()
    message = down.message or ""
    assert f"{FAILING}: SourceError: source '{FAILING}'" in message, message
    assert "TableNotFound" not in message and "does not exist" not in message, message
    lists = load_pipeline(config).destinations["mailchimp"].list_ids()
    assert all(not sandbox.mailchimp.members(list_id) for list_id in lists)  # nobody consented

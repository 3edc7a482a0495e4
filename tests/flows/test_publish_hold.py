"""Volume anomalies and large removals hold publishing, in real Prefect runs on the sandbox.

A healthy run on a fresh lake gives the shape of a normal day; five weeks of such days are
seeded as history into a second fresh lake, and the next run there meets a broken CRM load.
"""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import ReceivedEvent

from flows.cli import EXIT_HELD, main
from flows.common import utc_now
from flows.ingest import ingest
from flows.pipeline import PUBLISH_SUMMARY_KEY, PipelineReport, pipeline
from flows.publish import publish
from flows.transform import transform
from tasks.anomaly import ARTIFACT_KEY, EVENT_NAME, VOLUME_ALERTS, record_alerts
from tasks.connectors.lake import Lake
from tasks.connectors.leases import Lease, LeaseStore, lease_key
from tasks.core.config import load_pipeline
from tasks.publish import PUBLISH_EVENT_PREFIX, publish_holds
from tasks.volume import VOLUME_METRICS
from tests.connectors.test_notifiers import HOOK_PATH, SlackWebhookStandIn
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

AUDIENCES = {
    segment
    for destination in load_pipeline(CONFIG, env={}).destinations.values()
    for segment in destination.audiences
}
SEED_DAYS = 35  # five of each weekday: enough for same-weekday series (min_history 5)


def seed_history(lake: Lake, normal: pl.DataFrame, *, days: int = SEED_DAYS) -> None:
    """``days`` daily runs shaped like ``normal`` (one run's metrics), each within +-3 %."""
    frames = [
        normal.with_columns(
            pl.lit(f"seed-{day}").alias("run_id"),
            pl.col("measured_at") - timedelta(days=day),
            (pl.col("rows") * (1 + 0.03 * math.sin(day * 1.7))).round().cast(pl.Int64),
        )
        for day in range(1, days + 1)
    ]
    lake.append_once(VOLUME_METRICS, pl.concat(frames), batch_id="seeded-history")


def healthy_run_metrics(sandbox: Sandbox) -> pl.DataFrame:
    """Ingest and transform once on the sandbox's fresh lake: its metrics are a normal day."""
    ingest(config_path=CONFIG)
    report = transform(config_path=CONFIG)
    assert report.anomalies == []  # no history yet: nothing to judge against
    return sandbox.lake.read(VOLUME_METRICS)


def config_with_slack(path: Path) -> str:
    """pipeline.yaml plus a Slack-compatible notifier whose URL comes from a secret."""
    raw = yaml.safe_load(Path(CONFIG).read_text(encoding="utf-8"))
    raw["volume"]["notifiers"] = {
        "ops_channel": {"kind": "slack_webhook", "url": {"secret": "ops_webhook"}}
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def fresh_lake(monkeypatch: pytest.MonkeyPatch, path: Path) -> Lake:
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(path))
    return Lake(str(path))


def keep_only(sandbox: Sandbox, emails: set[str], count: int) -> None:
    """The CRM serves only ``count`` contacts (preferring ``emails``): a broken load."""
    contacts = sandbox.crm.contacts()
    preferred = [
        c["id"] for c in contacts if (c["properties"].get("email") or "").strip().lower() in emails
    ]
    keep = set(preferred[:count])
    for contact in contacts:
        if contact["id"] not in keep:
            sandbox.crm.archive_contact(contact["id"])


def anomaly_events(resource_id: str, *, timeout: float = 15.0) -> list[ReceivedEvent]:
    """Events for one series as the Prefect server stored them (they arrive asynchronously)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                EventFilter(
                    event=EventNameFilter(name=[EVENT_NAME]),
                    resource=EventResourceFilter(id=[resource_id]),
                ),
                limit=20,
            )
            if page.events or time.monotonic() > deadline:
                return list(page.events)
            time.sleep(0.5)


def test_a_broken_crm_load_holds_its_audiences_until_overridden(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    normal = healthy_run_metrics(sandbox)
    audience = sandbox.lake.read("gold/audience_members")
    loyal = set(audience.filter(pl.col("segment") == "loyal_customers")["email"])
    assert loyal

    lake = fresh_lake(monkeypatch, tmp_path / "lake_b")
    seed_history(lake, normal)
    keep_only(sandbox, loyal, count=8)  # ~300 contacts normally, 8 today
    config = config_with_slack(tmp_path / "pipeline.yaml")
    with SlackWebhookStandIn() as slack:
        monkeypatch.setenv("AUDIENCE_LAKE_SECRET_OPS_WEBHOOK", slack.url + HOOK_PATH)
        report: PipelineReport = pipeline(config_path=config)

    # The detector flags the CRM series, and only series fed by the CRM.
    errors = {(a.table, a.source, a.segment): a for a in report.transform.anomalies}
    crm = errors[("bronze/crm_contacts", "crm_contacts", None)]
    assert (crm.severity, crm.rule) == ("error", "drop")
    assert crm.lower is not None and crm.rows <= 8 < crm.lower
    assert set(crm.holds) >= AUDIENCES
    assert not any(table in {"bronze/orders", "silver/orders"} for table, _, _ in errors)

    # Every audience fed by the CRM is held: nothing sent, the reason names the series.
    assert {p.segment for p in report.publish} == AUDIENCES
    for published in report.publish:
        assert published.held is not None and published.sent == 0, published
        assert "volume anomaly: error bronze/crm_contacts source=crm_contacts" in published.held
    assert not lake.exists("ops/sync_ledger")
    # The run audit says so: the publish and the pipeline runs ended held, naming each audience.
    runs = lake.read("ops/runs").filter(pl.col("root_run_id") == report.run_id)
    for flow_name in ("publish", "pipeline"):
        [row] = runs.filter(pl.col("flow") == flow_name).to_dicts()
        assert row["outcome"] == "held", row
        assert {h.split(": ", 1)[0] for h in row["holds"]} == {
            f"{p.destination}/{p.segment}" for p in report.publish
        }

    # Recorded once per run, shown as an artifact, emitted as an event for automations.
    alerts = lake.read(VOLUME_ALERTS)
    assert set(alerts["checked_run_id"]) == {report.run_id}
    assert alerts.height == len(report.transform.anomalies)
    again = record_alerts(lake, report.transform.anomalies, run_id=report.run_id, now=utc_now())
    assert again is False and lake.read(VOLUME_ALERTS).height == alerts.height
    assert alerts.filter(pl.col("table") == "bronze/crm_contacts")["severity"].to_list() == [
        "error"
    ]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
            limit=50,
        )
    markdown = next(str(a.data) for a in artifacts if report.run_id in str(a.data))
    assert "`bronze/crm_contacts source=crm_contacts`" in markdown
    assert "| **error** |" in markdown
    events = anomaly_events("audience-lake.volume.bronze/crm_contacts.source.crm_contacts")
    assert events, "no audience-lake.volume.anomaly event reached the Prefect server"
    event = events[0]
    assert event.resource["audience-lake.severity"] == "error"
    assert event.payload["run_id"] == report.run_id
    held_related = {r.id for r in event.related if r.role == "held-audience"}
    assert held_related >= {f"audience-lake.segment.{s}" for s in AUDIENCES}

    # The alert reached the chat channel, once.
    assert len(slack.messages) == 1
    assert "bronze/crm_contacts" in slack.messages[0]["text"]
    assert "holds publishing of" in slack.messages[0]["text"]

    # Publishing later, alone, reaches the same verdict from the lake; override_hold sends.
    holds = publish_holds(lake, load_pipeline(config))
    assert {segment for _, segment in holds} == AUDIENCES
    forced = publish(config_path=config, override_hold=True)
    assert all(p.held is None for p in forced)
    loyal_forced = next(p for p in forced if p.segment == "loyal_customers")
    assert loyal_forced.sent == loyal_forced.members > 0
    assert lake.read("ops/sync_ledger").height == sum(p.sent for p in forced)


def test_an_opt_out_storm_is_held_but_its_unsubscribes_go_out_and_the_hold_shows(
    sandbox: Sandbox,
) -> None:
    first = pipeline(config_path=CONFIG)
    assert not [p for p in first.publish if p.held]
    biggest = max(first.publish, key=lambda p: p.members)
    assert biggest.members >= 20, "the sample needs a list large enough for the removal guard"
    lake = sandbox.lake
    members = lake.read("gold/audience_members").filter(pl.col("segment") == biggest.segment)
    # A CRM mapping bug marks most of the list as opted out; one remaining member is renamed.
    storm = set(members["email"].head(members.height * 3 // 5))
    renamed = members["email"][-1]
    for contact in sandbox.crm.contacts():
        email = (contact["properties"].get("email") or "").strip().lower()
        if email in storm:
            sandbox.crm.upsert_contact({"hs_email_optout": "true"}, id=contact["id"])
        elif email == renamed:
            sandbox.crm.upsert_contact({"firstname": "Renamed"}, id=contact["id"])

    # The command exits 3: completed, with an audience held.
    assert main(["run", "--config", CONFIG]) == EXIT_HELD == 3
    run = latest_flow_run("pipeline")
    assert run.state is not None and run.state.name == "Held" and run.state.is_completed()
    report = latest_publish_reports(run.id)
    held = report[biggest.segment]
    assert held["held"] is not None and "large removal" in held["held"], held
    assert held["outcome"] == "held"

    # Opt-outs are legal obligations: every one of them went out despite the hold ...
    platform = sandbox.mailchimp.members(biggest.audience)
    by_email = {m["email_address"].lower(): m for m in platform.values()}
    assert {e for e in storm if by_email[e]["status"] == "unsubscribed"} == storm
    assert held["unsubscribed"] == held["sent"] == len(storm)
    # ... while the update waits for a run without the hold.
    assert held["held_back"] == 1
    assert by_email[renamed]["merge_fields"]["FNAME"] != "Renamed"

    # The task, the publish sub-flow and the pipeline run all say Held, not Completed.
    with get_client(sync_client=True) as client:
        publish_run = next(
            r
            for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                )
            )
            if r.name and r.state and r.state.name == "Held"
        )
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[publish_run.id]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[PUBLISH_SUMMARY_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            )
        )
    states = {t.name: t.state.name for t in tasks if t.state is not None}
    assert states[f"publish-{biggest.segment}"] == "Held"
    assert sorted(set(states.values())) == ["Completed", "Held"]
    # The summary artifact sits on the top-level pipeline run and gives the reason.
    assert len(artifacts) == 1, artifacts
    summary = str(artifacts[0].data)
    assert f"| {biggest.segment} | {biggest.audience} | **held** |" in summary
    assert "large removal" in summary
    # An event an automation can alert on, naming the destination list.
    events = publish_events(f"audience-lake.audience.mailchimp.{biggest.audience}", run.id)
    assert events, "no audience-lake.publish.held event reached the Prefect server"
    assert events[0].event == "audience-lake.publish.held"
    assert events[0].resource["audience-lake.segment"] == biggest.segment
    assert events[0].resource["audience-lake.destination"] == "mailchimp"
    assert events[0].resource["audience-lake.audience"] == biggest.audience
    assert "large removal" in events[0].payload["reason"]

    # With nobody left to remove, the hold lifts and the update goes out; a plain run ends
    # Completed and exits 0.
    assert main(["run", "--config", CONFIG]) == 0
    after = latest_flow_run("pipeline")
    assert after.state is not None and after.state.name == "Completed"
    updated = {m["email_address"].lower(): m for m in
               sandbox.mailchimp.members(biggest.audience).values()}  # fmt: skip
    assert updated[renamed]["merge_fields"]["FNAME"] == "Renamed"


def test_a_dry_run_of_a_held_audience_sends_nothing_not_even_unsubscribes(
    sandbox: Sandbox,
) -> None:
    first = pipeline(config_path=CONFIG)
    biggest = max(first.publish, key=lambda p: p.members)
    members = sandbox.lake.read("gold/audience_members").filter(
        pl.col("segment") == biggest.segment
    )
    storm = set(members["email"].head(members.height * 3 // 5))
    for contact in sandbox.crm.contacts():
        if (contact["properties"].get("email") or "").strip().lower() in storm:
            sandbox.crm.upsert_contact({"hs_email_optout": "true"}, id=contact["id"])
    before = len(sandbox.mailchimp.requests)
    dry = pipeline(config_path=CONFIG, dry_run=True)
    held = next(p for p in dry.publish if p.segment == biggest.segment)
    assert held.held is not None and held.dry_run and held.sent == 0
    assert held.planned >= len(storm)
    assert [r for r in sandbox.mailchimp.requests[before:] if r[0] == "POST"] == []


def test_a_list_claimed_by_another_run_is_skipped_visibly(sandbox: Sandbox, tmp_path: Path) -> None:
    first = pipeline(config_path=CONFIG)
    target = max(first.publish, key=lambda p: p.members)
    raw = yaml.safe_load(Path(CONFIG).read_text(encoding="utf-8"))
    raw["publish"] = {"lease_wait_seconds": 0}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    # One member is renamed, so the list has something to send ...
    renamed = sandbox.lake.read("gold/audience_members").filter(
        pl.col("segment") == target.segment
    )["email"][0]
    for contact in sandbox.crm.contacts():
        if (contact["properties"].get("email") or "").strip().lower() == renamed:
            sandbox.crm.upsert_contact({"firstname": "Renamed"}, id=contact["id"])
    # ... but a run elsewhere holds it (e.g. a scheduled run meeting a rerun from the UI).
    other = LeaseStore(sandbox.lake).try_claim(
        lease_key("mailchimp", target.audience), "scheduled@elsewhere:1", ttl=600, now=utc_now()
    )
    assert isinstance(other, Lease)
    before = len(sandbox.mailchimp.member_requests(target.audience))

    assert main(["run", "--config", str(config)]) == EXIT_HELD
    run = latest_flow_run("pipeline")
    assert run.state is not None and run.state.name == "Skipped" and run.state.is_completed()
    row = latest_publish_reports(run.id)[target.segment]
    assert row["outcome"] == "skipped"
    assert f"list mailchimp/{target.audience} is claimed by scheduled@elsewhere:1" in row["skipped"]
    assert len(sandbox.mailchimp.member_requests(target.audience)) == before
    with get_client(sync_client=True) as client:
        children = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]))
        publish_run = next(
            r for r in client.read_flow_runs(flow_run_filter=children)
            if r.state is not None and r.state.name == "Skipped"
        )  # fmt: skip
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[publish_run.id]))
        )
    states = {t.name: t.state.name for t in tasks if t.state is not None}
    assert states[f"publish-{target.segment}"] == "Skipped"
    events = publish_events(f"audience-lake.audience.mailchimp.{target.audience}", run.id)
    assert [e.event for e in events] == ["audience-lake.publish.skipped"]


def latest_flow_run(name: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return runs[0]


def latest_publish_reports(pipeline_run_id: UUID) -> dict[str, dict[str, Any]]:
    """The rows of the ``publish-results`` table artifact of the pipeline's publish sub-flow."""
    with get_client(sync_client=True) as client:
        children = FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_run_id])
        )
        subflows = [r.id for r in client.read_flow_runs(flow_run_filter=children)]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["publish-results"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=subflows),
            )
        )
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return {row["segment"]: row for row in rows}


def publish_events(resource_id: str, run_id: UUID, *, timeout: float = 15.0) -> list[ReceivedEvent]:
    """``audience-lake.publish.*`` events about one list from one run, as the server stored them."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                EventFilter(
                    event=EventNameFilter(prefix=[PUBLISH_EVENT_PREFIX]),
                    resource=EventResourceFilter(id=[resource_id]),
                ),
                limit=50,
            )
            mine = [e for e in page.events if e.payload.get("run_id") == str(run_id)]
            if mine or time.monotonic() > deadline:
                return mine
            time.sleep(0.5)

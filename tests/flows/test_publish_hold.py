"""Volume anomalies and large removals hold publishing, in real Prefect runs on the sandbox.

A healthy run on a fresh lake gives the shape of a normal day; five weeks of such days are
seeded as history into a second fresh lake, and the next run there meets a broken CRM load.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import ReceivedEvent

from flows.common import utc_now
from flows.ingest import ingest
from flows.pipeline import PipelineReport, pipeline
from flows.publish import publish
from flows.transform import transform
from tasks.anomaly import ARTIFACT_KEY, EVENT_NAME, VOLUME_ALERTS, record_alerts
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.publish import publish_holds
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


def test_an_opt_out_storm_is_held_as_a_large_removal(sandbox: Sandbox) -> None:
    first = pipeline(config_path=CONFIG)
    assert not [p for p in first.publish if p.held]
    biggest = max(first.publish, key=lambda p: p.members)
    assert biggest.members >= 20, "the sample needs a list large enough for the removal guard"
    lake = sandbox.lake
    members = lake.read("gold/audience_members").filter(pl.col("segment") == biggest.segment)
    # A CRM mapping bug marks most of the list as opted out.
    storm = set(members["email"].head(members.height * 3 // 5))
    for contact in sandbox.crm.contacts():
        if (contact["properties"].get("email") or "").strip().lower() in storm:
            sandbox.crm.upsert_contact({"hs_email_optout": "true"}, id=contact["id"])

    second = pipeline(config_path=CONFIG)
    held = next(p for p in second.publish if p.segment == biggest.segment)
    assert held.held is not None and "large removal" in held.held, held
    assert held.sent == held.unsubscribed == 0
    assert second.transform.anomalies == []  # too little history: only the removal guard holds
    subscribed = [
        m for m in sandbox.mailchimp.members(biggest.audience).values()
        if m["status"] == "subscribed"
    ]  # fmt: skip
    assert len(subscribed) == biggest.members  # nobody was unsubscribed

    forced = publish(config_path=CONFIG, override_hold=True)
    sent = next(p for p in forced if p.segment == biggest.segment)
    assert sent.held is None and sent.unsubscribed >= len(storm) // 2

"""``land_events`` as a real Prefect flow run on the repository's ``pipeline.yaml``."""

from __future__ import annotations

import json

import httpx
import pytest

from flows.events import land_events
from tasks.connectors.sources.events import event_batch_id, landing_for
from tasks.connectors.webhook import WebhookReceiver
from tasks.core.config import load_pipeline
from tasks.core.config_events import EventSource
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow


def test_land_events_lands_only_event_sources_each_event_once(sandbox: Sandbox) -> None:
    landing = sandbox.data_dir / "drops" / "events"
    delivered = [
        json.loads(line)["event_id"]
        for path in sorted(landing.glob("*.ndjson"))
        for line in path.read_text().splitlines()
        if line
    ]
    assert len(delivered) > len(set(delivered))  # the sample re-delivers some events
    files = sorted(p.name for p in landing.glob("*.ndjson"))

    [report] = land_events(config_path=CONFIG)
    lake = sandbox.lake
    # no other source, no transform (ops/runs: the run audit)
    assert lake.tables() == ["bronze/web_events", "ops/runs"]
    bronze = lake.read("bronze/web_events")
    assert bronze.height == bronze["event_id"].n_unique() == len(set(delivered))
    assert report.source == "web_events" and report.batches == 1  # files_per_commit: 100
    assert all(lake.committed("bronze/web_events", event_batch_id("web_events", f)) for f in files)
    # Landed files move to archive/ once committed: the landing zone holds only pending ones.
    assert list(landing.glob("*.ndjson")) == []
    assert sorted(p.name for p in (landing / "archive").glob("*.ndjson")) == files

    # A new batch POSTed to the receiver (wired as `audience-lake receive-events` wires it)
    # reaches bronze on the next run; one of its events is a redelivery.
    source = load_pipeline(CONFIG).sources["web_events"]
    assert isinstance(source, EventSource)
    with WebhookReceiver(
        landing_for(source),
        source_name="web_events",
        event_id_field=source.event_id_column,
        allow_unsigned=True,
    ) as receiver:
        batch = [
            {"event_id": delivered[0], "event_type": "page_view", "occurred_at": "x"},
            {"event_id": "evt_new_1", "event_type": "click", "occurred_at": "2026-11-01T00:00Z"},
        ]
        assert httpx.post(receiver.url, json=batch).status_code == 200
    [again] = land_events(config_path=CONFIG)
    assert again.batches == 1
    bronze = lake.read("bronze/web_events")
    assert bronze.height == bronze["event_id"].n_unique() == len(set(delivered)) + 1
    [last] = land_events(config_path=CONFIG, sources=["web_events"])
    assert last.batches == 0


def test_only_event_sources_can_be_named() -> None:
    from flows.events import event_sources
    from tasks.errors import ConfigError

    config = load_pipeline(CONFIG, env={})
    assert event_sources(config) == ["web_events"]
    with pytest.raises(ConfigError, match=r"\['orders'\] are not event sources.*\['web_events'\]"):
        event_sources(config, ["orders"])

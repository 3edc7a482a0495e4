"""What a person sees in the Prefect UI after a pipeline run: artifacts, assets, the run form.

One real pipeline run against the stand-ins, then everything is read back through the Prefect
API of the test server (the same API the UI reads).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import Flow, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ReceivedEvent
from prefect.utilities.callables import parameter_schema

from flows.ingest import ingest
from flows.pipeline import PIPELINE_SUMMARY_KEY, PUBLISH_SUMMARY_KEY, pipeline
from flows.publish import publish
from flows.transform import transform
from tasks.core.config import load_pipeline
from tasks.lineage import destination_asset_key, lake_asset_key
from tasks.volume_charts import VOLUME_CHARTS_KEY
from tests.flows.conftest import CONFIG, ROOT, Sandbox

pytestmark = pytest.mark.flow

MATERIALIZED = "prefect.asset.materialization.succeeded"


def materialisations(
    keys: list[str], *, since: datetime, timeout: float = 20.0
) -> dict[str, ReceivedEvent]:
    """Each asset key's newest materialisation since ``since`` (events arrive asynchronously).

    Destination keys are shared by every test's run: only events of this run may count.
    """
    deadline = time.monotonic() + timeout
    found: dict[str, ReceivedEvent] = {}
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                EventFilter(
                    occurred=EventOccurredFilter(since=since),
                    event=EventNameFilter(name=[MATERIALIZED]),
                    resource=EventResourceFilter(id=keys),
                ),
                limit=50,
            )
            for event in sorted(page.events, key=lambda e: e.occurred):
                found[event.resource.id] = event
            if set(found) >= set(keys) or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def upstream(event: ReceivedEvent) -> set[str]:
    return {r.id for r in event.related if r.role == "asset"}


@pytest.mark.usefixtures("lake_env")
def test_a_pipeline_run_shows_its_summary_charts_and_lineage(
    sandbox: Sandbox, lake_env: str
) -> None:
    started = datetime.now(UTC)
    report = pipeline(config_path=CONFIG)
    run_id = UUID(report.run_id)
    config = load_pipeline(CONFIG)
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
            )
        )
        artifacts = {
            a.key: str(a.data)
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        }
    # The top-level run carries the summary, the charts and the publish summary.
    assert {PIPELINE_SUMMARY_KEY, VOLUME_CHARTS_KEY, PUBLISH_SUMMARY_KEY} <= set(artifacts)
    summary = artifacts[PIPELINE_SUMMARY_KEY]
    assert len(children) == 3
    for child in children:
        assert f"(/runs/flow-run/{child.id})" in summary, summary
    assert "| silver/contacts |" in summary and "| bronze/orders |" in summary
    rules = {(r["table"], r["rule"]) for r in report.transform.rule_counts}
    assert rules and all(f"| {t} | {rule} |" in summary for t, rule in rules)
    for p in report.publish:
        assert f"| {p.segment} | " in summary
    sent = sum(p.sent for p in report.publish if p.destination == "mailchimp")
    assert f"| mailchimp | {sent} |" in summary
    # Sub-flows stamp their rows with the pipeline's id (no run_id parameter passes it).
    lake = sandbox.lake
    stamped = set(lake.read("ops/volume_metrics")["run_id"])
    assert stamped == {report.run_id}, stamped
    charts = artifacts[VOLUME_CHARTS_KEY]
    assert charts.count("](data:image/svg+xml;base64,") >= len(report.ingest) > 0
    assert "| bronze/orders source=orders |" in charts

    # Lineage: bronze -> silver -> gold -> each destination list, as Prefect asset events.
    root = lake.root
    key: Callable[[str], str] = lambda table: lake_asset_key(root, table)  # noqa: E731
    bronze = {name: key(f"bronze/{name}") for name in config.sources}
    expected: dict[str, set[str]] = {
        **{b: set() for b in bronze.values()},
        key("silver/contacts"): {bronze["crm_contacts"], bronze["enrichment"]},
        key("silver/orders"): {bronze["orders"]},
        key("silver/events"): {bronze["web_events"]},
        key("gold/customer_features"): {
            key("silver/contacts"),
            key("silver/orders"),
            key("silver/events"),
        },
        key("gold/audience_members"): {key("gold/customer_features"), key("silver/contacts")},
    }
    for name, destination in config.destinations.items():
        for list_id in destination.list_ids():
            expected[destination_asset_key(destination.kind, name, list_id)] = {
                key("gold/audience_members")
            }
    events = materialisations(sorted(expected), since=started)
    assert set(events) == set(expected), sorted(set(expected) - set(events))
    assert {k: upstream(e) for k, e in events.items()} == expected
    orders = events[bronze["orders"]]
    assert orders.payload["rows"] == next(i.rows for i in report.ingest if i.source == "orders")
    assert orders.resource["prefect.resource.name"] == "bronze/orders"


def deployed_flows() -> list[Flow[Any, Any]]:
    """The flow behind each deployment in prefect.yaml (what the UI's run form is built from)."""
    flows = []
    for deployment in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        path, _, name = str(deployment["entrypoint"]).partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flows.append(getattr(module, name))
    return flows


def test_every_flow_run_by_the_pipeline_is_deployed() -> None:
    assert {pipeline, ingest, transform, publish} <= set(deployed_flows())


@pytest.mark.parametrize("flow", deployed_flows(), ids=lambda f: f.name)
def test_the_run_form_describes_every_parameter_and_hides_run_id(flow: Flow[Any, Any]) -> None:
    schema = parameter_schema(flow).model_dump_for_openapi()
    properties: dict[str, dict[str, Any]] = schema["properties"]
    assert "run_id" not in properties
    undocumented = [name for name, p in properties.items() if not p.get("description")]
    assert not undocumented, f"{flow.name}: no description for {undocumented}"

"""The event path end to end: receiver -> Prefect event -> trigger -> worker -> bronze.

Everything is real and separate, as in production: a ``prefect server start`` (SQLite in a
temporary ``PREFECT_HOME``, triggers and events services on, as they are by default), the
``land-events`` deployment of the repository's own ``prefect.yaml`` deployed with
``prefect deploy``, a process worker (``prefect worker start``), and the webhook receiver
(``audience-lake receive-events``) emitting ``audience-lake.events.landed``. The test POSTs signed
batches and reads bronze and the deployment's flow runs back from the lake and the Prefect API.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.workers.process import ProcessWorker

from tasks.connectors.lake import Lake
from tasks.connectors.webhook import sign
from tasks.core.config import load_pipeline
from tasks.core.config_events import EventSource
from tests.conftest import free_port
from tests.stack_harness import (
    BIN,
    ROOT,
    clean_environment,
    processes,
    wait_for,
    wait_for_prefect_server,
)

pytestmark = [pytest.mark.flow, pytest.mark.timeout(240)]

SOURCE = "web_events"
POOL = "audience-lake"  # the pool prefect.yaml names
SECRET = "e2e-signing-secret"


@dataclass
class Stack:
    """The running processes and how to reach them."""

    env: dict[str, str]
    api: httpx.Client
    receiver_url: str
    lake_uri: str
    logs: Path

    def deployment_runs(self, deployment_id: str) -> list[dict[str, Any]]:
        body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200}
        response = self.api.post("/flow_runs/filter", json=body)
        response.raise_for_status()
        runs: list[dict[str, Any]] = response.json()
        return runs

    def bronze_event_ids(self) -> set[str]:
        lake = Lake(self.lake_uri)
        if "bronze/web_events" not in lake.tables():
            return set()
        return set(lake.read("bronze/web_events")["event_id"].to_list())

    def post(self, events: list[dict[str, Any]]) -> None:
        body = json.dumps(events).encode()
        headers = {"Content-Type": "application/json"}
        options = self.receiver_options
        timestamp = str(int(time.time())) if options.timestamp_header else None
        headers[options.signature_header] = sign(SECRET.encode(), body, timestamp)
        if options.timestamp_header and timestamp:
            headers[options.timestamp_header] = timestamp
        response = httpx.post(self.receiver_url, content=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text

    @property
    def receiver_options(self) -> Any:
        source = load_pipeline(str(ROOT / "pipeline.yaml"), env=self.env).sources[SOURCE]
        assert isinstance(source, EventSource)
        return source.receiver


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port, receiver_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    (data_dir / "drops" / "events").mkdir(parents=True)
    lake_uri = str(tmp_path / "lake")
    env = clean_environment()
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="true",
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED="true",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="true",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        # A run triggered while another holds the deployment's slot waits this long before it
        # asks again (30 s by default); shorter keeps the test inside its time budget.
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="5",
        PREFECT_LOGGING_LEVEL="INFO",
        DO_NOT_TRACK="1",
        AUDIENCE_LAKE_HOME=str(ROOT),
        AUDIENCE_LAKE_SANDBOX_DIR=str(data_dir),
        AUDIENCE_LAKE_LAKE_URI=lake_uri,
        AUDIENCE_LAKE_EVENTS_PORT=str(receiver_port),
    )
    # The demo config's receiver may name a signing secret: give it ours (and sign with it).
    source = load_pipeline(str(ROOT / "pipeline.yaml"), env=env).sources[SOURCE]
    assert isinstance(source, EventSource)
    if source.receiver.signing_secret is not None:
        env[source.receiver.signing_secret.env_var] = SECRET
    logs = tmp_path / "logs"
    with processes(logs) as group:
        started = time.monotonic()
        group.start(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
        )
        # The receiver needs no server to start: it emits only when a batch lands.
        group.start(
            "receiver", [str(BIN / "audience-lake"), "receive-events", "--source", SOURCE], env
        )
        api = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=10)
        wait_for_prefect_server(group, api, 90)
        # The pool `prefect work-pool create --type process` would make, made directly so the
        # worker and `prefect deploy` can start side by side (each spends seconds importing).
        template = ProcessWorker.get_default_base_job_template()
        created = api.post(
            "/work_pools/", json={"name": POOL, "type": "process", "base_job_template": template}
        )
        assert created.status_code == 201, created.text
        group.start(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
            env,
            sigterms=2,
        )
        deploy = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "land-events"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        receiver_url = f"http://127.0.0.1:{receiver_port}{source.receiver.path}"
        wait_for("receiver ready", lambda: "prefect events: emitting" in group.log("receiver"), 30)
        wait_for("worker polling", lambda: "started!" in group.log("worker"), 30)
        print(f"stack up in {time.monotonic() - started:.1f}s")
        try:
            yield Stack(env, api, receiver_url, lake_uri, logs)
        finally:
            api.close()


def _event(label: str) -> dict[str, Any]:
    return {
        "event_id": f"e2e-{label}-{uuid.uuid4().hex[:8]}",
        "event_type": "page_view",
        "occurred_at": "2026-11-30T12:00:00Z",
        "user_email": f"{label}@example.com",
    }


TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def test_batches_land_through_the_trigger_in_few_runs_none_cancelled(stack: Stack) -> None:
    response = stack.api.get("/deployments/name/land-events/land-events")
    response.raise_for_status()
    deployment = response.json()
    assert deployment["schedules"] == []  # no per-minute fallback flooding the run history

    started = time.monotonic()
    first = [_event("first"), _event("first")]
    stack.post(first)
    landed = {e["event_id"] for e in first}
    wait_for("first batch in bronze", lambda: landed <= stack.bronze_event_ids(), 60)
    first_latency = time.monotonic() - started

    # A burst: six batches within a second. Every one lands within a minute.
    started = time.monotonic()
    burst = [[_event(f"burst{i}")] for i in range(6)]
    for batch in burst:
        stack.post(batch)
    burst_ids = {e["event_id"] for batch in burst for e in batch}
    wait_for("burst in bronze", lambda: burst_ids <= stack.bronze_event_ids(), 60)
    burst_latency = time.monotonic() - started

    def settled() -> list[dict[str, Any]]:
        runs = stack.deployment_runs(deployment["id"])
        return runs if all(r["state_type"] in TERMINAL for r in runs) else []

    runs = wait_for("every land-events run finished", settled, 45)
    states = sorted(f"{r['state_name']} ({(r.get('created_by') or {}).get('type')})" for r in runs)
    print(f"first batch {first_latency:.1f}s, burst {burst_latency:.1f}s; runs: {states}")
    assert [r["state_type"] for r in runs] == ["COMPLETED"] * len(runs), states
    # Seven batches, a handful of runs, each created by the trigger (none by a schedule).
    assert all((r.get("created_by") or {}).get("type") == "AUTOMATION" for r in runs), states
    assert 2 <= len(runs) <= 4, states
    assert stack.bronze_event_ids() == landed | burst_ids

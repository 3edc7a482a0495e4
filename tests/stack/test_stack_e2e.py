"""The compose stack's services, run natively with the same env file and the same commands.

No Docker engine runs here, so ``infra/docker-compose.yml``'s services start as processes:

* ``prefect server start`` on PostgreSQL (a fresh database on the local server, as compose's
  ``postgres`` service; SQLite only if no PostgreSQL answers and CI is not set);
* the S3 lake on the session's ``moto_server`` (compose: MinIO), its bucket made with boto3 (what
  ``infra/minio/init.sh`` does with ``mc``, which is not installed here);
* ``infra/bin/sandbox-data.sh`` and ``python -m infra.sandbox.serve`` (compose: ``sandbox-data``,
  ``sandbox-apis``), and ``audience-lake receive-events`` (``events-receiver``);
* ``infra/bin/worker.sh`` (``worker``): creates the pool, ``prefect deploy``s the repository's
  ``prefect.yaml``, starts a process worker with its health server.

The environment is ``infra/.env.example`` with compose's service names swapped for 127.0.0.1 and
free ports. The test then drives the stack the way the UI does: a run with custom parameters via
``POST /deployments/{id}/create_flow_run``, a run that fails while the vendors are down, and the
UI's Retry (``POST /flow_runs/{id}/set_state`` to Scheduled/AwaitingRetry), checking the lake and
the Mailchimp stand-in each time.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import psycopg
import pytest

from infra.sandbox.serve import config_list_ids
from tasks.connectors.lake import Lake
from tasks.source_runs import SOURCE_RUNS
from tests.conftest import S3Endpoint, free_port
from tests.stack_harness import (
    BIN,
    ROOT,
    Processes,
    clean_environment,
    processes,
    read_env_file,
    wait_for,
    wait_for_flow_run,
    wait_for_prefect_server,
)

pytestmark = [pytest.mark.flow, pytest.mark.s3, pytest.mark.timeout(420)]

POOL = "audience-lake"
DEPLOYMENT = "pipeline/pipeline-hourly"
ENV_EXAMPLE = ROOT / "infra" / ".env.example"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SAMPLE_CONTACTS = "300"
RUN_TIMEOUT_S = 150.0


@dataclass
class Stack:
    """The running stack: its API, the env every service got, and how to reach the lake."""

    api: httpx.Client
    env: dict[str, str]
    group: Processes
    lake: Lake
    database: str

    def deployment(self) -> dict[str, Any]:
        response = self.api.get(f"/deployments/name/{DEPLOYMENT}")
        response.raise_for_status()
        deployment: dict[str, Any] = response.json()
        return deployment

    def start_stand_ins(self) -> None:
        """compose's ``sandbox-apis`` command (ports and credentials from the env file)."""
        self.group.start(
            "sandbox-apis",
            [str(BIN / "python"), "-m", "infra.sandbox.serve", "--host", "127.0.0.1"],
            self.env,
        )
        wait_for(
            "stand-ins listening", lambda: "Press Ctrl-C" in self.group.log("sandbox-apis"), 30
        )

    def latest_source_status(self, source: str) -> str:
        """How the latest ingest of ``source`` ended, from the lake's ``ops/source_runs``."""
        runs = self.lake.read(SOURCE_RUNS).filter(pl.col("source") == source)
        status: str = runs.sort("finished_at")["status"][-1]
        return status

    def mailchimp_members(self) -> dict[str, int]:
        """Members per list, read from the Mailchimp stand-in over its API."""
        base = self.env["AUDIENCE_LAKE_MAILCHIMP_URL"]
        auth = ("any", self.env["AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY"])
        with httpx.Client(base_url=f"{base}/3.0", auth=auth, timeout=10) as client:
            counts: dict[str, int] = {}
            for list_id in config_list_ids(ROOT / "pipeline.yaml", kind="mailchimp"):
                members = client.get(f"/lists/{list_id}/members", params={"count": 1})
                members.raise_for_status()
                counts[list_id] = int(members.json()["total_items"])
        return counts


def _prefect_database(stack_id: str) -> tuple[str, str]:
    """A fresh PostgreSQL database for the Prefect server (URL, name); SQLite if none answers."""
    name = f"prefect_e2e_{stack_id}"
    try:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {PG_ADMIN_DSN} is needed under CI: {exc}", pytrace=False)
        print(f"PostgreSQL unavailable ({exc}); the Prefect server uses SQLite")
        return "", ""
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", name


def _drop_database(name: str) -> None:
    if not name:
        return
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _native_env(tmp_path: Path, s3: S3Endpoint, bucket: str, database_url: str) -> dict[str, str]:
    """``infra/.env.example`` as the worker gets it in compose, with local hosts and ports."""
    env = clean_environment(**read_env_file(ENV_EXAMPLE))
    api_port = free_port()
    env.update(
        # compose service names -> this machine (same variables, same meaning)
        AUDIENCE_LAKE_CRM_URL=f"http://127.0.0.1:{free_port()}",
        AUDIENCE_LAKE_MAILCHIMP_URL=f"http://127.0.0.1:{free_port()}",
        AUDIENCE_LAKE_KLAVIYO_URL=f"http://127.0.0.1:{free_port()}",
        AUDIENCE_LAKE_HUBSPOT_URL=f"http://127.0.0.1:{free_port()}",
        AUDIENCE_LAKE_SANDBOX_DIR=str(tmp_path / "sandbox"),
        AUDIENCE_LAKE_SANDBOX_CONTACTS=SAMPLE_CONTACTS,
        AUDIENCE_LAKE_EVENTS_PORT=str(free_port()),
        # the worker's compose environment
        AUDIENCE_LAKE_HOME=str(ROOT),
        AUDIENCE_LAKE_LAKE_URI=f"s3://{bucket}/lake",
        AUDIENCE_LAKE_S3_ENDPOINT=s3.url,
        AWS_ACCESS_KEY_ID=s3.access_key_id,
        AWS_SECRET_ACCESS_KEY=s3.secret_access_key,
        AWS_REGION=s3.region,
        PREFECT_API_URL=f"http://127.0.0.1:{api_port}/api",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_UI_ENABLED="false",
        # Scheduled runs of the hourly cron would race the runs this test makes; the schedule
        # itself is checked on the deployment.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
        PREFECT_WORKER_WEBSERVER_PORT=str(free_port()),
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="5",
        AUDIENCE_LAKE_DEPLOY="pipeline-hourly",
    )
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return env


@pytest.fixture
def stack(tmp_path: Path, s3_endpoint: S3Endpoint, s3_bucket: str) -> Iterator[Stack]:
    started = time.monotonic()
    database_url, database = _prefect_database(uuid.uuid4().hex[:12])
    env = _native_env(tmp_path, s3_endpoint, s3_bucket, database_url)
    port = env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/", 1)[0]
    try:
        with processes(tmp_path / "logs") as group:
            # compose: sandbox-data, then the stand-ins and the receiver; they need no server
            # to start, so they start while it migrates its database.
            group.start("sandbox-data", ["/bin/sh", "infra/bin/sandbox-data.sh"], env)
            # compose: prefect-server (after postgres is healthy)
            group.start(
                "prefect-server",
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                env,
            )
            assert group.running["sandbox-data"].wait(timeout=60) == 0, group.log("sandbox-data")
            lake = Lake(f"s3://{s3_bucket}/lake", s3_endpoint.storage_options())
            api = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=15)
            stack = Stack(api, env, group, lake, database)
            stack.start_stand_ins()
            group.start(
                "events-receiver",
                [str(BIN / "audience-lake"), "receive-events", "--source", "web_events"],
                env,
            )
            wait_for_prefect_server(group, api, 120)
            group.start("worker", ["/bin/sh", "infra/bin/worker.sh"], env, sigterms=2)
            health = f"http://127.0.0.1:{env['PREFECT_WORKER_WEBSERVER_PORT']}/health"

            def worker_healthy() -> bool:
                if not group.alive("worker"):
                    raise AssertionError("worker.sh exited:\n" + group.log("worker")[-3000:])
                return httpx.get(health, timeout=2).status_code == 200

            # compose: the worker's healthcheck
            wait_for("worker health", worker_healthy, 150, 1.0)
            # compose: the receiver's healthcheck (a TCP connect)
            receiver = ("127.0.0.1", int(env["AUDIENCE_LAKE_EVENTS_PORT"]))
            wait_for("receiver listening", lambda: socket.create_connection(receiver, 2), 30)
            print(f"stack up in {time.monotonic() - started:.1f}s")
            yield stack
            api.close()
    finally:
        with suppress(psycopg.OperationalError):
            _drop_database(database)


def _create_run(stack: Stack, deployment_id: str, parameters: dict[str, Any]) -> str:
    """What the UI's "Custom run" form sends."""
    response = stack.api.post(
        f"/deployments/{deployment_id}/create_flow_run",
        json={"parameters": parameters, "state": {"type": "SCHEDULED"}},
    )
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def _retry_from_ui(stack: Stack, flow_run_id: str) -> None:
    """What the UI's Retry button sends for a failed run."""
    response = stack.api.post(
        f"/flow_runs/{flow_run_id}/set_state",
        json={
            "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
            "force": True,
        },
    )
    assert response.status_code in (200, 201), response.text
    assert response.json()["status"] == "ACCEPT", response.text


def test_stack_deploys_runs_custom_parameters_and_recovers_a_failed_run_by_retry(
    stack: Stack,
) -> None:
    deployment = stack.deployment()
    # The hourly schedule prefect.yaml declares is there and active: the pipeline is scheduled.
    crons = [s["schedule"].get("cron") for s in deployment["schedules"] if s["active"]]
    assert crons == ["15 * * * *"], deployment["schedules"]
    assert deployment["work_pool_name"] == POOL
    # A live worker polls the pool (the server marks it READY after the first heartbeat).
    wait_for(
        "work pool READY",
        lambda: stack.api.get(f"/work_pools/{POOL}").json()["status"] == "READY",
        30,
    )

    # 1. A custom run from the UI form (full refresh) completes: the lake's gold tables have
    # rows and the Mailchimp stand-in got the members.
    parameters = {"full_refresh": True, "dry_run": False}
    run_id = _create_run(stack, deployment["id"], parameters)
    started = time.monotonic()
    run = wait_for_flow_run(stack.api, run_id, RUN_TIMEOUT_S)
    print(f"custom run: {run['state_name']} in {time.monotonic() - started:.1f}s")
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"] == {**deployment["parameters"], **parameters}
    members = stack.lake.read("gold/audience_members")
    assert members.height > 0, "gold/audience_members is empty after a completed run"
    sent = stack.mailchimp_members()
    assert sum(sent.values()) > 0, f"the Mailchimp stand-in got no members: {sent}"

    # 2. The vendors go down: the next run fails, naming the source that failed.
    stack.group.stop("sandbox-apis")
    failed_id = _create_run(stack, deployment["id"], {})
    started = time.monotonic()
    failed = wait_for_flow_run(stack.api, failed_id, RUN_TIMEOUT_S)
    print(f"run, vendors down: {failed['state_name']} in {time.monotonic() - started:.1f}s")
    assert failed["state_type"] == "FAILED", failed["state"]
    assert "crm_contacts" in (failed["state"]["message"] or ""), failed["state"]

    assert stack.latest_source_status("crm_contacts") == "failed"

    # 3. They are back; the UI's Retry reruns the same flow run and it completes: the CRM landed
    # again (which lifts the hold on its audiences) and gold is intact. (The restarted Mailchimp
    # stand-in is empty; the sync ledger already records those members as sent, and a retry
    # sends changes only, so nothing is resent.)
    stack.start_stand_ins()
    _retry_from_ui(stack, failed_id)
    started = time.monotonic()
    retried = wait_for_flow_run(stack.api, failed_id, RUN_TIMEOUT_S)
    print(f"retried run: {retried['state_name']} in {time.monotonic() - started:.1f}s")
    assert retried["state_type"] == "COMPLETED", retried["state"]
    assert retried["run_count"] >= 2, retried
    assert stack.lake.read("gold/audience_members").height == members.height
    assert stack.latest_source_status("crm_contacts") == "landed"

"""Real Prefect runs against real stand-ins: one Prefect test server per session.

Each test gets its own lake (a temp dir or a fresh S3 bucket), its own CRM, Mailchimp, Klaviyo
and HubSpot stand-ins on 127.0.0.1, and environment variables pointing the pipeline at them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_LOGGING_TO_API_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from infra.sandbox.crm import CrmStandIn
from infra.sandbox.generate import SampleManifest, generate
from infra.sandbox.hubspot_marketing import HubSpotMarketingStandIn
from infra.sandbox.klaviyo import KlaviyoStandIn
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.resources import open_lake
from tests.conftest import S3Endpoint
from tests.prefect_server import postgres_test_server

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "pipeline.yaml")
SAMPLE_CONTACTS = 300
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


# The test server writes received events to its database in batches, every 5 s by default; tests
# that read events back (anomalies, publish events, asset materialisations) would wait for the
# next flush. Half a second keeps the same path (the persister service, the same queries). The
# server is a subprocess: it reads this from the environment.
SERVER_ENV = {"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5"}
# A server usually answers within 20 s; on two cores shared with other heavy processes its
# imports alone have taken 47 s. A timeout here fails every test of the worker's session.
SERVER_STARTUP_TIMEOUT_S = 150


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in SERVER_ENV}
    os.environ.update(SERVER_ENV)
    # Runs here do not ship their logs to the API (every log line would be a POST the test
    # server, a process on the same cores, has to store); the one test that reads run logs back
    # (the canary scan) turns shipping on for its own runs.
    # Flow-run heartbeats (every 180 s by default) tell a server that a run on a vanished
    # worker crashed; an in-process run here never outlives its test, and the engine waits up
    # to a second for the heartbeat thread at the end of every flow and subflow run, which is
    # about a quarter of a pipeline run on the sample data.
    try:
        with (
            temporary_settings(
                {PREFECT_LOGGING_TO_API_ENABLED: False, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
            ),
            _test_server(),
        ):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _test_server() -> contextlib.AbstractContextManager[None]:
    """The Prefect test server on the machine's PostgreSQL (a database of its own, dropped at
    the end), as the deployed stack runs; SQLite (``prefect_test_harness``) only when no
    PostgreSQL answers and CI is not set. Flow-run creation and task-run state writes contend
    for SQLite's single writer, which made up a large part of every in-process pipeline run."""
    admin = os.environ.get("AUDIENCE_LAKE_TEST_POSTGRES_URL", POSTGRES_ADMIN_URL)
    try:
        psycopg.connect(admin, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {admin} is needed under CI: {exc}", pytrace=False)
        return prefect_test_harness(server_startup_timeout=SERVER_STARTUP_TIMEOUT_S)
    return postgres_test_server(admin, startup_timeout=SERVER_STARTUP_TIMEOUT_S)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> SampleManifest:
    return generate(tmp_path_factory.mktemp("sample"), contacts=SAMPLE_CONTACTS, seed=11)


@dataclass
class Sandbox:
    crm: CrmStandIn
    mailchimp: MailchimpStandIn
    data_dir: Path
    klaviyo: KlaviyoStandIn | None = None
    hubspot: HubSpotMarketingStandIn | None = None

    @property
    def lake(self) -> Lake:
        return open_lake()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)], ids=["local", "s3"])
def lake_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Point AUDIENCE_LAKE_LAKE_URI (and S3 settings) at a fresh lake; returns its kind."""
    if request.param == "local":
        monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
        return "local"
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{bucket}/lake")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", endpoint.secret_access_key)
    monkeypatch.setenv("AWS_REGION", endpoint.region)
    return "s3"


@pytest.fixture
def sandbox(
    sample_data: SampleManifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Sandbox]:
    """Stand-ins loaded with the sample data; a private copy of the file drops and database."""
    data_dir = tmp_path / "data"
    shutil.copytree(sample_data.out_dir, data_dir)
    monkeypatch.setenv("AUDIENCE_LAKE_SANDBOX_DIR", str(data_dir))
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET", "flow-secret")
    monkeypatch.setenv("AUDIENCE_LAKE_CRM_CLIENT_ID", "flow-client")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY", "flow-key-us1")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC", "flow-hmac-key")
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
    crm = CrmStandIn.from_file(
        data_dir / "crm_contacts.json", client_id="flow-client", client_secret="flow-secret"
    )
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_KLAVIYO_API_KEY", "flow-klaviyo-key")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN", "flow-hubspot-token")
    config = load_pipeline(CONFIG, env={})

    def lists(kind: str) -> list[str]:
        return [i for d in config.destinations.values() if d.kind == kind for i in d.list_ids()]

    with (
        crm,
        MailchimpStandIn(api_key="flow-key-us1", lists=lists("mailchimp")) as mailchimp,
        KlaviyoStandIn(api_key="flow-klaviyo-key", lists=lists("klaviyo")) as klaviyo,
        HubSpotMarketingStandIn(token="flow-hubspot-token", lists=lists("hubspot")) as hubspot,
    ):
        monkeypatch.setenv("AUDIENCE_LAKE_CRM_URL", crm.url)
        monkeypatch.setenv("AUDIENCE_LAKE_MAILCHIMP_URL", mailchimp.url)
        monkeypatch.setenv("AUDIENCE_LAKE_KLAVIYO_URL", klaviyo.url)
        monkeypatch.setenv("AUDIENCE_LAKE_HUBSPOT_URL", hubspot.url)
        yield Sandbox(crm=crm, mailchimp=mailchimp, data_dir=data_dir, klaviyo=klaviyo,
                      hubspot=hubspot)  # fmt: skip

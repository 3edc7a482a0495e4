"""Shared test harness: offline Prefect settings, a real S3 server, and a ``lake`` on local + S3.

S3 tests run against a real S3 HTTP server, never a mock in the same process:

* ``AUDIENCE_LAKE_TEST_S3_ENDPOINT`` set -> that server (e.g. MinIO from ``infra/``), with keys from
  ``AUDIENCE_LAKE_TEST_S3_ACCESS_KEY_ID`` / ``AUDIENCE_LAKE_TEST_S3_SECRET_ACCESS_KEY`` (default
  ``minioadmin``) and region ``AUDIENCE_LAKE_TEST_S3_REGION`` (default ``us-east-1``);
* otherwise ``moto_server`` from this virtualenv, started once per session as a separate process
  (in-process ``ThreadedMotoServer`` deadlocks some delta-rs calls: docs/architecture.md,
  *Facts the code relies on*).

If the server cannot start, the session fails: S3 tests are never silently skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config

from tasks.connectors.lake import Lake, s3_storage_options

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Set before any test module imports prefect (none of the imports above do): an offline run must
# not try to send telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

_STARTUP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class S3Endpoint:
    """Where the test S3 server listens and how to sign requests to it.

    ``managed`` is True for the moto server this session started (it accepts any credentials and
    never checks signatures), False for an external server named by the environment.
    """

    url: str
    access_key_id: str
    secret_access_key: str
    region: str
    managed: bool = False

    def storage_options(self) -> dict[str, str]:
        """deltalake/object_store options for this endpoint."""
        return s3_storage_options(
            endpoint=self.url,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
        )

    def client(self) -> S3Client:
        """A boto3 S3 client for fixtures and assertions (path-style, short timeouts)."""
        client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(
                connect_timeout=3,
                read_timeout=30,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )
        return client


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _moto_server_executable() -> str:
    # The console script lives next to the interpreter running the tests (the project venv);
    # PATH may point elsewhere or nowhere.
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("moto_server")
    if found is None:
        pytest.fail(
            "moto_server not found next to the interpreter or on PATH. It is a dev dependency: "
            "run `make test` (installs .[dev]) or set AUDIENCE_LAKE_TEST_S3_ENDPOINT to an S3 "
            "server. S3 tests are never skipped.",
            pytrace=False,
        )
    return found


def _wait_until_answers(
    url: str, process: subprocess.Popen[bytes] | None, log: Path | None
) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # any HTTP status means the server is up
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    output = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    ci = " (CI=true)" if os.environ.get("CI", "").lower() == "true" else ""
    pytest.fail(
        f"S3 test server at {url} did not answer within {_STARTUP_TIMEOUT_S:.0f}s{ci}: "
        f"{last_error}" + (f"\n--- server output ---\n{output}" if output else ""),
        pytrace=False,
    )


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """The S3 server for this session (external via environment, or a moto_server process)."""
    external = os.environ.get("AUDIENCE_LAKE_TEST_S3_ENDPOINT")
    if external:
        endpoint = S3Endpoint(
            url=external.rstrip("/"),
            access_key_id=os.environ.get("AUDIENCE_LAKE_TEST_S3_ACCESS_KEY_ID", "minioadmin"),
            secret_access_key=os.environ.get(
                "AUDIENCE_LAKE_TEST_S3_SECRET_ACCESS_KEY", "minioadmin"
            ),
            region=os.environ.get("AUDIENCE_LAKE_TEST_S3_REGION", "us-east-1"),
        )
        _wait_until_answers(endpoint.url, None, None)
        yield endpoint
        return

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [_moto_server_executable(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_answers(url, process, log)
        yield S3Endpoint(
            url=url,
            access_key_id="testing",
            secret_access_key="testing",
            region="us-east-1",
            managed=True,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    client = s3_endpoint.client()
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)], ids=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """A :class:`Lake` on a temporary directory, and on a fresh bucket of the S3 server."""
    if request.param == "local":
        return Lake(str(tmp_path / "lake"))
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    return Lake(f"s3://{bucket}/lake", endpoint.storage_options())

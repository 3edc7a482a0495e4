"""A custom CA bundle for TLS to the store, against a real HTTPS S3 server on 127.0.0.1.

The server is ``moto_server`` with a certificate signed by a CA made in the test. Without the
bundle every client refuses it (certificate verification is always on: deltalake, polars and
boto3 alike); with ``AUDIENCE_LAKE_S3_CA_BUNDLE`` (the ``aws_ca_bundle`` storage option) the lake
writes and reads tables, lands files, and the doctor reports the verified connection; a bundle of
another CA is refused like no bundle.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import certifi
import polars as pl
import pytest

from tasks.connectors.lake import Lake, s3_storage_options, settings_storage_options
from tasks.connectors.s3 import CA_BUNDLE_OPTION, s3_client
from tasks.connectors.storage import check_store
from tasks.connectors.webhook import open_landing
from tasks.core.settings import load_settings
from tasks.errors import LakeError
from tests.conftest import _moto_server_executable, free_port
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.s3

_STARTUP_S = 20.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("store-pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("other-pki"), common_name="Someone else's CA").ca_pem


@pytest.fixture(scope="module")
def https_store(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 server speaking only HTTPS, with the test CA's certificate."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto-tls") / "moto.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                _moto_server_executable(),
                *("-H", "127.0.0.1", "-p", str(port)),
                *("-c", str(pki.cert_pem), "-k", str(pki.key_pem)),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    try:
        deadline = time.monotonic() + _STARTUP_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=1.0, context=context).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"HTTPS moto server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(autouse=True)
def no_process_trust_store(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lake sets SSL_CERT_FILE for deltalake; start each test without it and restore after.
    monkeypatch.setenv("SSL_CERT_FILE", "unset-by-the-test")
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)


def _options(url: str, ca_bundle: Path | None) -> dict[str, str]:
    extra = {"max_retries": "0", "retry_timeout": "2s"}
    if ca_bundle is not None:
        extra[CA_BUNDLE_OPTION] = str(ca_bundle)
    return s3_storage_options(
        endpoint=url,
        access_key_id="testing",
        secret_access_key="testing",
        region="us-east-1",
        extra=extra,
    )


@pytest.fixture
def bucket(https_store: str, pki: Pki) -> str:
    name = f"tls-{time.monotonic_ns()}"
    s3_client(_options(https_store, pki.ca_pem)).create_bucket(Bucket=name)
    return name


def test_with_the_ca_bundle_the_lake_writes_reads_and_lands(
    https_store: str, pki: Pki, bucket: str
) -> None:
    options = _options(https_store, pki.ca_pem)
    lake = Lake(f"s3://{bucket}/lake", options)

    lake.append_once("bronze/tls", pl.DataFrame({"a": [1, 2]}), batch_id="b1")
    landing = open_landing(f"s3://{bucket}/landing", options)
    assert landing.put_if_absent("batch.ndjson", b"{}\n")

    assert lake.read("bronze/tls")["a"].to_list() == [1, 2]
    assert lake.tables() == ["bronze/tls"]
    assert [o.name for o in landing.list("*.ndjson")] == ["batch.ndjson"]


@pytest.mark.parametrize("trust", ["default store", "another CA"])
def test_without_the_right_ca_every_client_refuses_the_store(
    trust: str, https_store: str, other_ca: Path, bucket: str
) -> None:
    options = _options(https_store, other_ca if trust == "another CA" else None)
    lake = Lake(f"s3://{bucket}/lake", options)

    with pytest.raises(LakeError):
        lake.append_once("bronze/tls", pl.DataFrame({"a": [1]}), batch_id="b1")
    with pytest.raises(Exception, match="(?i)certificate verify failed|SSL"):
        open_landing(f"s3://{bucket}/landing", options).put_if_absent("x.ndjson", b"{}\n")
    [reachable, *rest] = check_store(f"s3://{bucket}/lake", options)
    assert not reachable.ok
    assert "TLS certificate verification failed" in reachable.detail
    assert "AUDIENCE_LAKE_S3_CA_BUNDLE" in reachable.detail
    assert all(r.detail.startswith("skipped:") for r in rest)


def test_the_doctor_reports_verified_tls_with_the_bundle(
    https_store: str, pki: Pki, bucket: str
) -> None:
    results = {
        r.name: r for r in check_store(f"s3://{bucket}/lake", _options(https_store, pki.ca_pem))
    }

    assert all(r.ok for r in results.values()), results
    assert (
        results["tls"].detail == f"HTTPS, certificate verified against the CA bundle {pki.ca_pem}"
    )
    assert not results["tls"].warn


def test_the_bundle_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, https_store: str, pki: Pki, bucket: str
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", https_store)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_CA_BUNDLE", str(pki.ca_pem))

    lake = Lake(f"s3://{bucket}/lake", settings_storage_options(load_settings()))
    lake.append_once("bronze/env", pl.DataFrame({"a": [1]}), batch_id="b1")

    assert lake.read("bronze/env")["a"].to_list() == [1]


def test_the_process_trust_store_keeps_the_default_cas(
    https_store: str, pki: Pki, bucket: str
) -> None:
    # httpx and Python's ssl read SSL_CERT_FILE too: a file holding only the private CA would
    # break every public HTTPS connection of the process (vendor APIs, Prefect).
    Lake(f"s3://{bucket}/lake", _options(https_store, pki.ca_pem))

    trusted = Path(os.environ["SSL_CERT_FILE"]).read_bytes()
    assert Path(certifi.where()).read_bytes().strip() in trusted
    assert pki.ca_pem.read_bytes().strip() in trusted
    Lake(f"s3://{bucket}/lake", _options(https_store, pki.ca_pem))  # idempotent
    assert Path(os.environ["SSL_CERT_FILE"]).read_bytes() == trusted


def test_an_existing_process_trust_store_is_extended(
    monkeypatch: pytest.MonkeyPatch, https_store: str, pki: Pki, other_ca: Path, bucket: str
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
    before = other_ca.read_bytes()

    lake = Lake(f"s3://{bucket}/lake", _options(https_store, pki.ca_pem))
    lake.append_once("bronze/extended", pl.DataFrame({"a": [1]}), batch_id="b1")

    trusted = Path(os.environ["SSL_CERT_FILE"]).read_bytes()
    assert other_ca.read_bytes().strip() in trusted
    assert pki.ca_pem.read_bytes().strip() in trusted
    assert other_ca.read_bytes() == before  # the user's file is not modified


def test_an_unreadable_bundle_is_named(https_store: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(LakeError, match="cannot load CA certificates from .*no-such-ca.pem"):
        Lake("s3://bucket/lake", _options(https_store, missing))
    [reachable, *_] = check_store("s3://bucket/lake", _options(https_store, missing))
    assert not reachable.ok
    assert "no-such-ca.pem" in reachable.detail

"""Server-side encryption as configuration, observed on the real S3 test server.

The lake and the landing zone are configured with SSE-S3 or SSE-KMS; a table is written (create,
append, merge), a publish lease is claimed, an event file is landed and archived, and then every
object under the bucket is read back with HEAD: the server's ``x-amz-server-side-encryption``
(and ``...-aws-kms-key-id``) headers must show the configured encryption on each one. The moto
server records what a PUT or COPY asked for and reports it in HEAD, as AWS does; without the
configuration it reports nothing, which the control test checks so the assertions can fail.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from tasks.connectors.lake import Lake
from tasks.connectors.leases import LeaseStore
from tasks.connectors.webhook import open_landing
from tasks.core.encryption import StoreEncryption, store_encryption
from tasks.core.settings import Settings, load_settings
from tasks.errors import ConfigError, LakeError
from tests.conftest import S3Endpoint

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1b2c3d4e-0000-4000-8000-audiencelake1"

MODES = {
    "sse-s3": StoreEncryption("AES256"),
    "sse-kms": StoreEncryption("aws:kms", KMS_KEY),
}


def _write_everything(endpoint: S3Endpoint, bucket: str, extra: dict[str, str]) -> None:
    """Every kind of object the project writes: Delta data and log files, leases, landed files."""
    options = {**endpoint.storage_options(), **extra}
    lake = Lake(f"s3://{bucket}/lake", options)
    first = pl.DataFrame({"contact_key": ["a", "b"], "score": [1, 2]})
    lake.append_once("bronze/encrypted", first, batch_id="batch-1")
    lake.upsert(
        "silver/encrypted",
        first,
        keys=["contact_key"],
    )
    lake.upsert(
        "silver/encrypted",
        pl.DataFrame({"contact_key": ["b", "c"], "score": [5, 3]}),
        keys=["contact_key"],
    )
    LeaseStore(lake).try_claim("mailchimp/list", "run-1", ttl=60, now=datetime.now(UTC))

    landing = open_landing(f"s3://{bucket}/landing/web_events", options)
    assert landing.put_if_absent("batch-0001.ndjson", b'{"event_id": "e1"}\n')
    assert landing.put_if_absent("batch-0002.ndjson", b'{"event_id": "e2"}\n')
    landing.archive("batch-0001.ndjson")  # a server-side COPY: it must ask for SSE again


def _encryption_of_every_object(
    endpoint: S3Endpoint, bucket: str
) -> dict[str, tuple[str | None, str | None]]:
    client = endpoint.client()
    seen: dict[str, tuple[str | None, str | None]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            key = item["Key"]
            head = client.head_object(Bucket=bucket, Key=key)
            seen[key] = (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId"))
    return seen


@pytest.mark.s3
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_object_written_gets_the_configured_encryption(
    mode: str, s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    encryption = MODES[mode]
    _write_everything(s3_endpoint, s3_bucket, encryption.storage_options())

    seen = _encryption_of_every_object(s3_endpoint, s3_bucket)

    kinds = {
        "parquet": [k for k in seen if k.endswith(".parquet")],
        "delta log": [k for k in seen if "/_delta_log/" in k],
        "lease": [k for k in seen if "ops/publish_leases/" in k],
        "landed": [k for k in seen if k.startswith("landing/") and "/archive/" not in k],
        "archived": [k for k in seen if k.startswith("landing/") and "/archive/" in k],
    }
    assert all(kinds.values()), f"some kind of object was not written: {kinds}"
    wanted = (encryption.algorithm, encryption.kms_key_id)
    wrong = {key: got for key, got in seen.items() if got != wanted}
    assert not wrong, f"objects without {encryption.describe()}: {wrong}"


@pytest.mark.s3
def test_without_configuration_the_server_reports_no_encryption(
    s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    # The control: the assertions above can only pass because the headers were sent.
    _write_everything(s3_endpoint, s3_bucket, {})

    seen = _encryption_of_every_object(s3_endpoint, s3_bucket)

    assert seen
    assert set(seen.values()) == {(None, None)}


@pytest.mark.s3
def test_settings_reach_the_lake_options(
    monkeypatch: pytest.MonkeyPatch, s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    from tasks.resources import lake_for

    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", s3_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    monkeypatch.setenv("AUDIENCE_LAKE_S3_SSE", "sse-kms")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_SSE_KMS_KEY_ID", KMS_KEY)

    lake = lake_for(load_settings())
    lake.append_once("bronze/from_settings", pl.DataFrame({"a": [1]}), batch_id="b1")

    seen = _encryption_of_every_object(s3_endpoint, s3_bucket)
    assert seen and set(seen.values()) == {("aws:kms", KMS_KEY)}


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "key", "expected"),
    [
        (None, None, None),
        ("none", None, None),
        ("sse-s3", None, StoreEncryption("AES256")),
        ("AES256", None, StoreEncryption("AES256")),
        ("sse-kms", "alias/lake", StoreEncryption("aws:kms", "alias/lake")),
        ("aws:kms", KMS_KEY, StoreEncryption("aws:kms", KMS_KEY)),
    ],
)
def test_encryption_modes_parse(
    mode: str | None, key: str | None, expected: StoreEncryption | None
) -> None:
    assert store_encryption(mode, key) == expected


@pytest.mark.parametrize(
    ("mode", "key", "message"),
    [
        ("sse-kms", None, "needs a KMS key id"),
        ("sse-kms", "  ", "needs a KMS key id"),
        ("sse-s3", "alias/lake", "a KMS key id is set but server-side encryption is 'sse-s3'"),
        (None, "alias/lake", "a KMS key id is set but server-side encryption is 'none'"),
        ("sse-c", None, "unknown server-side encryption 'sse-c'"),
        ("aes-256", None, "unknown server-side encryption 'aes-256'"),
    ],
)
def test_invalid_encryption_is_refused_with_a_clear_error(
    mode: str | None, key: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store_encryption(mode, key)


def test_settings_refuse_kms_without_a_key_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_S3_SSE", "sse-kms")
    monkeypatch.delenv("AUDIENCE_LAKE_S3_SSE_KMS_KEY_ID", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "environment: server-side encryption sse-kms needs a KMS key id (id, alias/name or ARN); "
        "set AUDIENCE_LAKE_S3_SSE_KMS_KEY_ID"
    )


def test_settings_name_a_bad_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_S3_SSE", "sse-kmz")
    with pytest.raises(ConfigError, match="unknown server-side encryption 'sse-kmz'"):
        load_settings()


def test_settings_default_to_no_encryption_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIENCE_LAKE_S3_SSE", raising=False)
    monkeypatch.delenv("AUDIENCE_LAKE_S3_SSE_KMS_KEY_ID", raising=False)
    assert Settings().store_encryption is None


def test_a_lake_with_invalid_encryption_options_fails_before_any_write() -> None:
    with pytest.raises(LakeError, match="lake s3://bucket/lake: .*needs a KMS key id"):
        Lake("s3://bucket/lake", {"aws_server_side_encryption": "aws:kms"})


# --- doctor --------------------------------------------------------------------------------------


@pytest.mark.s3
def test_doctor_prints_the_encryption_the_probe_object_got(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
) -> None:
    from flows.cli import main

    if not s3_endpoint.managed:
        pytest.skip("SSE-KMS needs a KMS on MinIO; the moto server stores what a PUT asks for")
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", s3_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    monkeypatch.setenv("AUDIENCE_LAKE_S3_SSE", "sse-kms")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_SSE_KMS_KEY_ID", KMS_KEY)

    assert main(["doctor", "--check", "lake"]) == 0

    out = capsys.readouterr().out
    assert (
        f"[ok] lake encryption: a probe object was stored with SSE-KMS (aws:kms, key {KMS_KEY})"
        in out
    )
    assert "[warn] lake tls: plain HTTP to http://127.0.0.1:" in out


@pytest.mark.parametrize(
    ("url", "bundle", "summary"),
    [
        ("https://api.example.com", None, "TLS verified (default trust store)"),
        ("https://api.example.com", "/etc/ca.pem", "TLS verified (CA bundle /etc/ca.pem)"),
        ("http://127.0.0.1:8711", None, "plain HTTP (not encrypted)"),
        (None, None, ""),
    ],
)
def test_doctor_names_how_each_api_is_reached(
    url: str | None, bundle: str | None, summary: str
) -> None:
    from tasks.connectors.doctor import tls_summary

    assert tls_summary(url, bundle) == summary

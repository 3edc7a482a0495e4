"""``audience-lake doctor`` storage checks against a local dir, the real S3 server, and bad stores.

"Bad stores" are a loopback HTTP proxy in front of the S3 server that either strips the
``If-None-Match`` header (a store that ignores conditional PUT, docs/architecture.md, *Safety
rules*) or refuses the credentials. Both are real HTTP, so the checks exercise the same code paths
as in production.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.connectors.lake import s3_storage_options
from tasks.connectors.storage import CheckResult, check_store
from tasks.core.encryption import StoreEncryption
from tests.conftest import S3Endpoint, free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}
_INVALID_KEY_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidAccessKeyId</Code>'
    b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>"
)


class _S3Proxy:
    """A loopback HTTP proxy in front of an S3 server that misbehaves on purpose.

    ``mode="strip-if-none-match"`` forwards everything but drops the ``If-None-Match`` header, so
    every conditional PUT succeeds: exactly a store that ignores conditional writes.
    ``mode="deny-signed"`` answers every signed request with 403 InvalidAccessKeyId.
    ``mode="strip-sse"`` drops the server-side encryption headers of requests: a store (or a
    gateway) that ignores the encryption the client asked for.
    """

    def __init__(self, upstream: str, *, mode: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._mode = mode
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._mode == "deny-signed" and "Authorization" in self.headers:
                    self._reply(403, {"Content-Type": "application/xml"}, _INVALID_KEY_BODY)
                    return
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in _HOP_BY_HOP
                    and not (
                        proxy._mode == "strip-if-none-match" and name.lower() == "if-none-match"
                    )
                    and not (
                        proxy._mode == "strip-sse"
                        and name.lower().startswith("x-amz-server-side-encryption")
                    )
                }
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                try:
                    # The original Host header is kept, so signatures still match upstream.
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    reply_headers = {
                        name: value
                        for name, value in response.getheaders()
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length"
                    }
                    if self.command == "HEAD":
                        reply_headers["Content-Length"] = response.getheader("Content-Length", "0")
                    self._reply(response.status, reply_headers, data)
                finally:
                    upstream.close()

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def strip_proxy(s3_endpoint: S3Endpoint) -> Iterator[_S3Proxy]:
    proxy = _S3Proxy(s3_endpoint.url, mode="strip-if-none-match")
    yield proxy
    proxy.close()


@pytest.fixture
def strip_sse_proxy(s3_endpoint: S3Endpoint) -> Iterator[_S3Proxy]:
    proxy = _S3Proxy(s3_endpoint.url, mode="strip-sse")
    yield proxy
    proxy.close()


@pytest.fixture
def deny_proxy(s3_endpoint: S3Endpoint) -> Iterator[_S3Proxy]:
    proxy = _S3Proxy(s3_endpoint.url, mode="deny-signed")
    yield proxy
    proxy.close()


def _options(
    endpoint: S3Endpoint, url: str | None = None, *, encryption: StoreEncryption | None = None
) -> dict[str, str]:
    return s3_storage_options(
        endpoint=url or endpoint.url,
        access_key_id=endpoint.access_key_id,
        secret_access_key=endpoint.secret_access_key,
        region=endpoint.region,
        extra=None if encryption is None else encryption.storage_options(),
    )


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def _no_secrets(results: list[CheckResult], secret: str) -> None:
    for result in results:
        assert secret not in result.detail


# --- local ---------------------------------------------------------------------------------------


def test_local_root_passes_every_check(tmp_path: Path) -> None:
    results = check_store(str(tmp_path / "new" / "lake"), {})

    assert [r.name for r in results] == ["directory", "writable", "atomic create"]
    assert all(r.ok for r in results), results
    assert list((tmp_path / "new" / "lake").iterdir()) == []  # probes cleaned up


def test_local_root_that_is_a_file_fails_and_skips_the_rest(tmp_path: Path) -> None:
    blocker = tmp_path / "lake"
    blocker.write_text("not a directory")

    results = _by_name(check_store(str(blocker), {}))

    assert not results["directory"].ok
    assert str(blocker) in results["directory"].detail
    for name in ("writable", "atomic create"):
        assert not results[name].ok
        assert results[name].detail.startswith("skipped:")


# --- S3 ------------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_store_passes_every_check_and_leaves_no_probe(
    s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    results = check_store(f"s3://{s3_bucket}/lake", _options(s3_endpoint))

    assert [r.name for r in results] == [
        "reachable",
        "tls",
        "credentials",
        "conditional put",
        "encryption",
    ]
    assert all(r.ok for r in results), results
    by_name = _by_name(results)
    assert "412" in by_name["conditional put"].detail
    if s3_endpoint.url.startswith("http://"):
        assert by_name["tls"].warn
        assert by_name["tls"].detail.startswith("plain HTTP")
    if s3_endpoint.managed:  # moto reports no encryption when none was asked for
        assert by_name["encryption"].warn
        assert "stored unencrypted" in by_name["encryption"].detail
    listing = s3_endpoint.client().list_objects_v2(Bucket=s3_bucket)
    assert listing.get("KeyCount", 0) == 0
    if len(s3_endpoint.secret_access_key) >= 6:  # a short secret could appear by accident
        _no_secrets(results, s3_endpoint.secret_access_key)


@pytest.mark.s3
@pytest.mark.parametrize(
    ("encryption", "reported"),
    [
        (StoreEncryption("AES256"), "SSE-S3 (AES256)"),
        (StoreEncryption("aws:kms", "alias/lake"), "SSE-KMS (aws:kms, key alias/lake)"),
    ],
    ids=["sse-s3", "sse-kms"],
)
def test_the_encryption_a_probe_object_got_is_reported(
    encryption: StoreEncryption, reported: str, s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    if not s3_endpoint.managed:
        pytest.skip("SSE needs a KMS on MinIO; the moto server stores what a PUT asks for")
    results = _by_name(
        check_store(f"s3://{s3_bucket}/lake", _options(s3_endpoint, encryption=encryption))
    )

    assert all(r.ok for r in results.values()), results
    assert results["encryption"].detail == f"a probe object was stored with {reported}"
    assert not results["encryption"].warn
    listing = s3_endpoint.client().list_objects_v2(Bucket=s3_bucket)
    assert listing.get("KeyCount", 0) == 0  # probes removed


@pytest.mark.s3
def test_a_store_that_drops_the_encryption_headers_fails_the_check(
    s3_endpoint: S3Endpoint, s3_bucket: str, strip_sse_proxy: _S3Proxy
) -> None:
    options = _options(s3_endpoint, strip_sse_proxy.url, encryption=StoreEncryption("AES256"))

    results = _by_name(check_store(f"s3://{s3_bucket}/lake", options))

    assert results["conditional put"].ok
    encryption = results["encryption"]
    assert not encryption.ok
    if s3_endpoint.managed:
        assert encryption.detail == (
            "configured SSE-S3 (AES256) but the store reports the probe object as "
            "no server-side encryption"
        )


@pytest.mark.s3
def test_unreachable_endpoint_fails_reachable_and_skips_the_rest(
    s3_endpoint: S3Endpoint,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"

    started = time.monotonic()
    results = _by_name(check_store("s3://any-bucket/lake", _options(s3_endpoint, closed)))

    assert time.monotonic() - started < 15
    assert not results["reachable"].ok
    assert "connection refused" in results["reachable"].detail
    for name in ("tls", "credentials", "conditional put", "encryption"):
        assert not results[name].ok
        assert results[name].detail.startswith("skipped:")


@pytest.mark.s3
def test_unknown_host_is_reported_as_dns_failure(s3_endpoint: S3Endpoint) -> None:
    results = _by_name(
        check_store("s3://b/lake", _options(s3_endpoint, "http://no-such-host.invalid:9000"))
    )

    assert not results["reachable"].ok
    assert "DNS" in results["reachable"].detail


@pytest.mark.s3
def test_missing_bucket_is_named(s3_endpoint: S3Endpoint) -> None:
    results = _by_name(check_store("s3://no-such-bucket-here/lake", _options(s3_endpoint)))

    assert results["reachable"].ok
    assert not results["credentials"].ok
    assert "no-such-bucket-here" in results["credentials"].detail
    assert results["conditional put"].detail.startswith("skipped:")


@pytest.mark.s3
def test_rejected_credentials_are_reported_with_the_reason(
    s3_endpoint: S3Endpoint, s3_bucket: str, deny_proxy: _S3Proxy
) -> None:
    # The proxy refuses every signed request, so these keys never reach a real store.
    secret = "doctor-must-never-print-this-secret"
    options = s3_storage_options(
        endpoint=deny_proxy.url,
        access_key_id="AKIDEXAMPLE",
        secret_access_key=secret,
        region=s3_endpoint.region,
    )
    results = check_store(f"s3://{s3_bucket}/lake", options)
    by_name = _by_name(results)

    assert by_name["reachable"].ok
    assert not by_name["credentials"].ok
    assert "InvalidAccessKeyId" in by_name["credentials"].detail
    assert by_name["conditional put"].detail.startswith("skipped:")
    _no_secrets(results, secret)


@pytest.mark.s3
def test_store_that_ignores_if_none_match_fails_conditional_put(
    s3_endpoint: S3Endpoint, s3_bucket: str, strip_proxy: _S3Proxy
) -> None:
    results = _by_name(
        check_store(f"s3://{s3_bucket}/lake", _options(s3_endpoint, strip_proxy.url))
    )

    assert results["reachable"].ok
    assert results["credentials"].ok
    conditional = results["conditional put"]
    assert not conditional.ok
    assert "If-None-Match" in conditional.detail
    if s3_endpoint.managed:
        # moto does not check signatures, so the stripped request reaches it and is accepted:
        # the exact failure that rule is about. (A signature-checking store such as MinIO instead
        # rejects the altered request, which fails the check too, with that reason.)
        assert "ACCEPTED" in conditional.detail
    listing = s3_endpoint.client().list_objects_v2(Bucket=s3_bucket)
    assert listing.get("KeyCount", 0) == 0  # the probe is deleted even when the check fails


@pytest.mark.parametrize("root", ["s3:/bucket/lake", "s3//bucket/lake", "s3://", "gs://bucket/x"])
def test_a_mistyped_lake_uri_fails_the_doctor_and_creates_nothing(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    [result] = check_store(root, {})
    assert (result.name, result.ok) == ("lake uri", False)
    assert repr(root) in result.detail
    assert list(tmp_path.iterdir()) == []  # not silently a local folder

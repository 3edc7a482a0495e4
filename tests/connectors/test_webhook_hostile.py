"""The webhook receiver under attack, on loopback over raw sockets (issue 12, defects 1-4; issue
7, defect 9): every read bounded, every request answered, a deadline per request, a cap on
connections, replays refused, and no receiver without a signature unless asked for."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.connectors.webhook import (
    LandedObject,
    LocalLanding,
    S3Landing,
    WebhookReceiver,
    batch_file_name,
    receiver_from_options,
    sign,
)
from tasks.core.config import parse_pipeline
from tasks.core.config_events import EventSource, WebhookReceiverOptions
from tasks.errors import ConfigError
from tests.conftest import S3Endpoint

SECRET = b"whsec-hostile-test"
EVENTS = [{"event_id": "e1", "event_type": "click"}]
BODY = json.dumps(EVENTS).encode()


def signature_headers(body: bytes, ts: str | None = None) -> bytes:
    ts = str(int(time.time())) if ts is None else ts
    return (
        f"X-Signature-SHA256: {sign(SECRET, body, ts)}\r\nX-Signature-Timestamp: {ts}\r\n"
    ).encode()


def post(body: bytes, *, target: str = "/events", extra: bytes = b"") -> bytes:
    """A complete, signed HTTP/1.1 POST of ``body``."""
    return (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + signature_headers(body)
        + extra
        + b"\r\n"
        + body
    )


def exchange(port: int, data: bytes, *, finish: bool = True, timeout: float = 5.0) -> bytes:
    """Send ``data`` (then half-close if ``finish``) and read until the server closes or goes
    quiet after a complete answer; ``b""`` if nothing came back within ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if finish:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have answered and closed
        return read_answer(sock, timeout)


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    received = b""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
        head, _, rest = received.partition(b"\r\n\r\n")
        if _ and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                break
    return received


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def message(answer: bytes) -> str:
    text: str = json.loads(answer.partition(b"\r\n\r\n")[2])["message"]
    return text


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    return tmp_path / "landing"


@pytest.fixture
def receiver(landing: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(
        LocalLanding(landing),
        source_name="web",
        secret=SECRET,
        timestamp_header="X-Signature-Timestamp",
    ) as server:
        yield server


def landed(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.ndjson"))


# --- defect 1: every read bounded before anything is buffered ---------------------------------


@pytest.mark.parametrize("size", [b"-1", b"-2", b"+5", b"0x5", b"5 5", b"", b"1" * 17])
def test_a_malformed_chunk_size_is_refused_at_once_without_reading_on(
    receiver: WebhookReceiver, landing: Path, size: bytes
) -> None:
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        # The connection stays open: a reader that reads "to EOF" would wait here forever.
        sock.sendall(head + signature_headers(BODY) + b"\r\n" + size + b"\r\n" + b"x" * 50_000)
        started = time.monotonic()
        answer = read_answer(sock, 4.0)
    assert status(answer) == 400 and "chunk size" in message(answer)
    assert time.monotonic() - started < 3
    assert landed(landing) == []


def test_a_declared_chunk_over_the_body_limit_is_refused_before_it_is_read(
    receiver: WebhookReceiver,
) -> None:
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(head + signature_headers(BODY) + b"\r\nFFFFFFFF\r\n")
        answer = read_answer(sock, 3.0)
    assert status(answer) == 413


def test_headers_are_bounded_in_total_size_and_count(receiver: WebhookReceiver) -> None:
    big = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))  # 40 KB
    assert status(exchange(receiver.port, post(BODY, extra=big))) == 431
    many = b"".join(b"X-N%d: 1\r\n" % i for i in range(200))
    assert status(exchange(receiver.port, post(BODY, extra=many))) == 431
    long_line = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"
    assert status(exchange(receiver.port, long_line)) == 414


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(
    receiver: WebhookReceiver,
) -> None:
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(head)
        assert status(read_answer(sock, 3.0)) == 413


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 12\r\nContent-Length: 13\r\n",
        b"Content-Length: -5\r\n",
        b"Content-Length: 1e3\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
    ],
)
def test_ambiguous_framing_is_refused(receiver: WebhookReceiver, headers: bytes) -> None:
    request = b"POST /events HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + b"0\r\n\r\n"
    assert status(exchange(receiver.port, request)) == 400


def test_concurrent_connections_are_capped_with_a_503(landing: Path) -> None:
    with WebhookReceiver(
        LocalLanding(landing), source_name="web", secret=SECRET, max_connections=2
    ) as server:
        holders = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            for sock in holders:
                sock.sendall(b"POST /events HTTP/1.1\r\n")  # and never finish
            time.sleep(0.3)  # both are being served now
            answer = exchange(server.port, post(BODY))
            assert status(answer) == 503 and b"Retry-After: 1" in answer
        finally:
            for sock in holders:
                sock.close()
        time.sleep(0.3)  # their workers notice the close and free their slots
        assert status(exchange(server.port, post(BODY))) == 200


# --- defect 2: every failure gets an HTTP answer, logged at WARNING -----------------------------


def _gzip_then(extra: bytes) -> bytes:
    return gzip.compress(BODY) + extra


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (b'[{"event_id": "e1", "x": "\\ud800"}]', None, "unpaired UTF-16 surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
        (b'[{"event_id": "e1", "deep": ' + b"[" * 70 + b"]" * 70 + b"}]", None, "nested deeper"),
        (b'[{"event_id": "e1", "n": ' + b"9" * 4300 + b"}]", None, "4300 digits"),
        (b'[{"event_id": "e1", "n": NaN}]', None, "NaN is not a JSON value"),
        (b'{"event_id": "e1", "n": -Infinity}', None, "-Infinity is not a JSON value"),
        (b'{"event_id": "e1", "n": 1e999}', None, "out of the float range"),
        (b'{"event_id": "e1"}\n{"event_id": "e2", "n": 1' + b"0" * 5000 + b"}", None, "line 2"),
        (gzip.compress(BODY)[:-12], "gzip", "gzip body is truncated"),
        (_gzip_then(b"garbage"), "gzip", "data after the end of the gzip body"),
        (_gzip_then(gzip.compress(BODY)), "gzip", "data after the end of the gzip body"),
        (b"not gzip at all", "gzip", "not valid gzip"),
    ],
    ids=[
        "lone-surrogate",
        "100k-nesting",
        "70-nesting",
        "4300-digit-int",
        "nan",
        "infinity",
        "huge-float",
        "ndjson-huge-int",
        "truncated-gzip",
        "gzip-trailing-garbage",
        "gzip-second-member",
        "bad-gzip",
    ],
)
def test_hostile_bodies_get_a_400_naming_the_reason_and_a_warning(
    receiver: WebhookReceiver,
    landing: Path,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    encoding: str | None,
    reason: str,
) -> None:
    extra = f"Content-Encoding: {encoding}\r\n".encode() if encoding else b""
    with caplog.at_level(logging.WARNING):
        answer = exchange(receiver.port, post(body, extra=extra))
    assert status(answer) == 400, answer[:300]
    assert reason in message(answer)
    assert landed(landing) == []
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert reason in record.getMessage() and "400" in record.getMessage()
    assert SECRET.decode() not in caplog.text
    assert receiver.rejected == 1


def test_a_bug_of_ours_answers_500_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenLanding(LocalLanding):
        """A landing with a programming error (not an IO failure, which answers 503)."""

        def put_if_absent(self, name: str, data: bytes) -> bool:
            raise KeyError(name)

        def list(self, pattern: str) -> list[LandedObject]:
            return []

    with (
        caplog.at_level(logging.WARNING),
        WebhookReceiver(BrokenLanding(tmp_path), source_name="web", secret=SECRET) as server,
    ):
        answer = exchange(server.port, post(BODY))
    assert status(answer) == 500 and message(answer) == "internal error"
    assert "internal error KeyError" in caplog.text
    assert batch_file_name(BODY) not in caplog.text  # the exception's text is not logged


def test_a_flood_of_bad_requests_does_not_flood_the_log(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        for _ in range(150):
            assert status(exchange(receiver.port, b"GET /nope HTTP/1.1\r\n\r\n")) == 404
    seconds = time.monotonic() - started
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= 20 * (int(seconds) + 2) < 150  # at most 20 lines a second


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /events\r\n\r\n",  # HTTP/0.9: still a status line
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # a TLS hello
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nshort",
        b"POST /events HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"POST /events HTTP/1.1\r\n folded: x\r\n\r\n",
        b"POST /events HTTP/2.0\r\n\r\n",
        b"POST /events HTTP/1.1\r\nHost: x\r\n",
        b"\r\n\r\n\r\n",
    ],
)
def test_broken_http_gets_a_4xx_or_5xx_status_line(
    receiver: WebhookReceiver, request_bytes: bytes
) -> None:
    answer = exchange(receiver.port, request_bytes)
    assert 400 <= status(answer) <= 505


def test_unicode_line_separators_inside_strings_stay_inside_one_landed_line(
    receiver: WebhookReceiver, landing: Path
) -> None:
    events = [{"event_id": "e1", "text": "a\u2028b\u2029c\x85d\x0be"}, {"event_id": "e2"}]
    body = json.dumps(events, ensure_ascii=False).encode()
    assert status(exchange(receiver.port, post(body))) == 200
    text = (landing / batch_file_name(body)).read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines()] == events


# --- defect 3: a deadline for the whole request; exact endpoint; 405 -------------------------


def test_a_request_dribbled_byte_by_byte_is_cut_at_the_request_deadline(landing: Path) -> None:
    with WebhookReceiver(
        LocalLanding(landing), source_name="web", secret=SECRET, request_timeout_seconds=1.0
    ) as server:
        request = post(BODY)
        answer = b""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.settimeout(0.2)
            for byte in request:  # one byte every 0.2 s: each read is quick, the request is not
                if answer or time.monotonic() - started > 6:
                    break
                try:
                    sock.sendall(bytes([byte]))
                    answer += sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
            answer += read_answer(sock, 1.0)
        elapsed = time.monotonic() - started
    assert status(answer) == 408
    assert elapsed < 3, elapsed
    assert landed(landing) == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_on_the_endpoint_get_405_with_allow(
    receiver: WebhookReceiver, method: str
) -> None:
    answer = exchange(receiver.port, f"{method} /events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status(answer) == 405
    assert b"\r\nAllow: POST\r\n" in answer
    assert b"application/json" in answer  # not an HTML error page


@pytest.mark.parametrize(
    "target", ["//events", "/events?x", "/events/", "/%65vents", "/events#x", "http://x/events"]
)
def test_lookalike_paths_are_not_the_endpoint(
    receiver: WebhookReceiver, landing: Path, target: str
) -> None:
    assert status(exchange(receiver.port, post(BODY, target=target))) == 404
    assert landed(landing) == []


def test_health_stays_and_keep_alive_still_works(receiver: WebhookReceiver) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = read_answer(sock, 3.0)
        sock.sendall(post(BODY))
        second = read_answer(sock, 3.0)
    assert status(first) == 200 and status(second) == 200


# --- defect 4: replay ---------------------------------------------------------------------------


def test_signed_receivers_require_a_fresh_timestamp_by_default(landing: Path) -> None:
    with WebhookReceiver(LocalLanding(landing), source_name="web", secret=SECRET) as server:
        body_only = (
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(BODY)
            + f"X-Signature-SHA256: {sign(SECRET, BODY)}\r\n\r\n".encode()
            + BODY
        )
        assert status(exchange(server.port, body_only)) == 401  # a capture of the body alone
        stale = str(int(time.time()) - 600)
        replay = (
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(BODY)
            + signature_headers(BODY, stale)
            + b"\r\n"
            + BODY
        )
        answer = exchange(server.port, replay)
        assert status(answer) == 401 and "s away from now (tolerance 300s)" in message(answer)
        assert landed(landing) == []
        assert status(exchange(server.port, post(BODY))) == 200


@pytest.mark.parametrize(
    "ts", ["nan", "NaN", "inf", "-inf", "Infinity", "1e9", "+1800000000", "-5", "0x6B", "", "١٢٣"]
)
def test_non_numeric_and_non_finite_timestamps_are_refused(
    receiver: WebhookReceiver, landing: Path, ts: str
) -> None:
    # Signed correctly over the bytes sent: only the timestamp's form is wrong.
    digest = hmac.new(SECRET, ts.encode() + b"." + BODY, hashlib.sha256).hexdigest()
    request = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(BODY)
        + f"X-Signature-SHA256: {digest}\r\n".encode()
        + b"X-Signature-Timestamp: "
        + ts.encode()
        + b"\r\n\r\n"
        + BODY
    )
    assert status(exchange(receiver.port, request)) == 401
    assert landed(landing) == []


def test_a_body_delivered_again_after_its_file_was_archived_does_not_land_again(
    receiver: WebhookReceiver, landing: Path
) -> None:
    assert status(exchange(receiver.port, post(BODY))) == 200
    name = batch_file_name(BODY)
    LocalLanding(landing).archive(name)  # what the events reader does once bronze has it
    answer = exchange(receiver.port, post(BODY))  # a replay with a fresh timestamp
    assert status(answer) == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["duplicate"] is True
    assert landed(landing) == []  # nothing new to land
    assert (landing / "archive" / name).exists()


@pytest.mark.s3
def test_on_s3_a_body_whose_file_was_archived_does_not_land_again(
    s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    landing = S3Landing(f"s3://{s3_bucket}/landing/web", s3_endpoint.client())
    with WebhookReceiver(landing, source_name="web", secret=SECRET) as server:
        assert status(exchange(server.port, post(BODY))) == 200
        [item] = landing.list("*.ndjson")
        landing.archive(item.name)
        answer = exchange(server.port, post(BODY))
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["duplicate"] is True
    assert landing.list("*.ndjson") == []
    assert landing.put_if_absent(item.name, b"x") is False  # archived counts as landed


# --- issue 7 defect 9: no receiver without a signature unless asked for ----------------------


def test_a_receiver_without_a_secret_must_be_asked_for_and_warns(
    landing: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="no signing secret"):
        WebhookReceiver(LocalLanding(landing), source_name="web")
    with (
        caplog.at_level(logging.WARNING),
        WebhookReceiver(LocalLanding(landing), source_name="web", allow_unsigned=True) as server,
    ):
        unsigned = b"POST /events HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
        assert status(exchange(server.port, unsigned)) == 200
    assert "ACCEPTS UNSIGNED BATCHES" in caplog.text


def _events_source(receiver: dict[str, object]) -> dict[str, object]:
    return {
        "sources": {
            "crm": {"kind": "files", "role": "contacts", "path": "x", "format": "csv"},
            "web_events": {"kind": "events", "landing": "/x", "receiver": receiver},
        }
    }


@pytest.mark.parametrize(
    ("receiver", "error"),
    [
        ({"port": 0}, "sources.web_events.receiver.signing_secret: a signing secret is required"),
        (
            {"signing": "none", "signing_secret": {"secret": "k"}},
            "sources.web_events.receiver.signing_secret: signing: none and a signing_secret",
        ),
        ({"signing": "off"}, "sources.web_events.receiver.signing: Input should be"),
        (
            {"signing_secret": {"secret": "k"}, "tolerance_seconds": ".nan"},
            "receiver.tolerance_seconds",
        ),
        (
            {"signing_secret": {"secret": "k"}, "request_timeout_seconds": 0},
            "receiver.request_timeout_seconds",
        ),
    ],
)
def test_config_refuses_a_receiver_with_neither_secret_nor_opt_out(
    receiver: dict[str, object], error: str
) -> None:
    text = json.dumps(_events_source(receiver)).replace('".nan"', ".nan")
    with pytest.raises(ConfigError, match=error):
        parse_pipeline(text)


def test_config_defaults_sign_with_a_timestamp_and_the_opt_out_is_explicit() -> None:
    signed = WebhookReceiverOptions.model_validate({"signing_secret": {"secret": "k"}})
    assert (signed.signing, signed.timestamp_header) == ("hmac_sha256", "X-Signature-Timestamp")
    unsigned = parse_pipeline(json.dumps(_events_source({"signing": "none"})))
    source = unsigned.sources["web_events"]
    assert isinstance(source, EventSource) and source.receiver is not None
    assert source.receiver.signing == "none"


def test_the_demo_config_verifies_signatures_with_the_demo_secret(tmp_path: Path) -> None:
    from flows.demo import EVENTS_SECRET_ENV, demo_events_secret
    from tasks.core.config import load_pipeline

    root = Path(__file__).resolve().parents[2]
    source = load_pipeline(root / "pipeline.yaml").sources["web_events"]
    assert isinstance(source, EventSource) and source.receiver is not None
    secret = demo_events_secret(tmp_path / "demo")
    assert demo_events_secret(tmp_path / "demo") == secret  # one key per data directory
    assert (
        len(secret) == 64
        and (tmp_path / "demo" / "web_events_hmac.secret").stat().st_mode & 0o077 == 0
    )
    with pytest.raises(ConfigError, match="AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC"):
        receiver_from_options(
            LocalLanding(tmp_path), source.receiver, source_name="web_events", env={}
        )
    with receiver_from_options(
        LocalLanding(tmp_path / "landing"),
        source.receiver,
        source_name="web_events",
        port=0,
        env={EVENTS_SECRET_ENV: secret},
    ) as server:
        unsigned = b"POST /events HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
        assert status(exchange(server.port, unsigned)) == 401


@pytest.mark.parametrize(
    ("receiver", "error"),
    [
        (None, "sources.web_events.receiver is not set"),
        ({"signing_secret": {"secret": "hostile_hmac"}}, "AUDIENCE_LAKE_SECRET_HOSTILE_HMAC"),
    ],
    ids=["no-receiver-section", "secret-not-exported"],
)
def test_receive_events_will_not_start_without_its_signing_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    receiver: dict[str, object] | None,
    error: str,
) -> None:
    from flows.cli import main

    monkeypatch.delenv("AUDIENCE_LAKE_SECRET_HOSTILE_HMAC", raising=False)
    raw = _events_source(receiver or {})
    if receiver is None:
        del raw["sources"]["web_events"]["receiver"]  # type: ignore[index]
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(raw), encoding="utf-8")
    assert main(["receive-events", "--config", str(config), "--port", "0"]) == 2
    assert error in capsys.readouterr().err

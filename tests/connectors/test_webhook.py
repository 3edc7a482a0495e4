"""The webhook receiver on loopback: signatures, formats, limits, idempotent landing, the CLI,
and the Prefect event that triggers the ``land-events`` deployment."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tasks.connectors.webhook import (
    LandedBatch,
    LocalLanding,
    S3Landing,
    WebhookReceiver,
    batch_file_name,
    sign,
)
from tests.conftest import S3Endpoint

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"whsec-test"
EVENTS = [
    {"event_id": "e1", "event_type": "page_view", "props": {"path": "/"}},
    {"event_id": "e2", "event_type": "click"},
]


def landed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.is_file())


def signed(body: bytes, *, at: float | None = None, **headers: str) -> dict[str, str]:
    """What a sender sends: a fresh timestamp and the signature over '<timestamp>.<body>'."""
    ts = str(int(time.time() if at is None else at))
    return {
        "X-Signature-SHA256": "sha256=" + sign(SECRET, body, ts),
        "X-Signature-Timestamp": ts,
        **headers,
    }


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    return tmp_path / "landing"


@pytest.fixture
def receiver(landing: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(LocalLanding(landing), source_name="web", secret=SECRET) as server:
        yield server


def test_a_signed_batch_lands_as_one_ndjson_file_and_a_redelivery_is_a_no_op(
    receiver: WebhookReceiver, landing: Path
) -> None:
    body = json.dumps(EVENTS).encode()
    first = httpx.post(receiver.url, content=body, headers=signed(body))
    assert first.status_code == 200
    assert first.json() == {
        "status": "ok",
        "batch": hashlib.sha256(body).hexdigest() + ".ndjson",
        "events": 2,
        "duplicate": False,
    }
    [path] = landed_files(landing)
    assert [json.loads(line) for line in path.read_text().splitlines()] == EVENTS
    stamp = path.stat().st_mtime_ns

    again = httpx.post(receiver.url, content=body, headers=signed(body))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert landed_files(landing) == [path]
    assert path.stat().st_mtime_ns == stamp  # immutable: never rewritten
    assert (receiver.accepted, receiver.redelivered, receiver.rejected) == (1, 1, 0)


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (b'{"event_id": "e1"}\n\n{"event_id": "e2", "n": 1}\n', {}),
        (json.dumps({"batch": EVENTS, "sentAt": "2026-11-01T00:00:00Z"}).encode(), {}),
        (json.dumps({"event_id": "solo"}).encode(), {}),
        (gzip.compress(json.dumps(EVENTS).encode()), {"Content-Encoding": "gzip"}),
    ],
    ids=["ndjson", "segment-batch", "single-event", "gzip"],
)
def test_accepted_formats(
    receiver: WebhookReceiver, landing: Path, payload: bytes, headers: dict[str, str]
) -> None:
    response = httpx.post(receiver.url, content=payload, headers=signed(payload, **headers))
    assert response.status_code == 200, response.text
    [path] = landed_files(landing)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == response.json()["events"] >= 1
    assert all("event_id" in row for row in rows)


def test_chunked_transfer_encoding_is_read(receiver: WebhookReceiver, landing: Path) -> None:
    body = json.dumps(EVENTS).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:7]
        yield body[7:]

    response = httpx.post(receiver.url, content=chunks(), headers=signed(body))
    assert response.status_code == 200, response.text
    assert len(landed_files(landing)) == 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing X-Signature-SHA256"),
        ({"X-Signature-SHA256": "sha256=" + "0" * 64}, "does not match"),
        ({"X-Signature-SHA256": sign(b"other-secret", json.dumps(EVENTS).encode())}, "not match"),
        ({"X-Signature-SHA256": sign(SECRET, json.dumps(EVENTS).encode())}, "not match"),
    ],
    ids=["missing", "wrong-digest", "wrong-secret", "body-only"],
)
def test_bad_signatures_are_refused_and_nothing_lands(
    receiver: WebhookReceiver, landing: Path, headers: dict[str, str], message: str
) -> None:
    headers = {"X-Signature-Timestamp": str(int(time.time())), **headers}
    response = httpx.post(receiver.url, content=json.dumps(EVENTS).encode(), headers=headers)
    assert response.status_code == 401
    assert message in response.json()["message"]
    assert landed_files(landing) == []


def test_a_tampered_body_fails_the_signature(receiver: WebhookReceiver, landing: Path) -> None:
    body = json.dumps(EVENTS).encode()
    response = httpx.post(receiver.url, content=body.replace(b"e2", b"e3"), headers=signed(body))
    assert response.status_code == 401
    assert landed_files(landing) == []


def test_timestamped_signatures_reject_replays_outside_the_window(landing: Path) -> None:
    now = 1_800_000_000.0
    with WebhookReceiver(
        LocalLanding(landing),
        source_name="web",
        secret=SECRET,
        tolerance_seconds=300,
        clock=lambda: now,
    ) as server:
        body = json.dumps(EVENTS).encode()
        for ts, status in [(str(int(now - 10)), 200), (str(int(now - 301)), 401), ("soon", 401)]:
            headers = {"X-Signature-SHA256": sign(SECRET, body, ts), "X-Signature-Timestamp": ts}
            response = httpx.post(server.url, content=body, headers=headers)
            assert response.status_code == status, (ts, response.text)
        # A signature over the body alone is not valid when timestamps are required.
        response = httpx.post(
            server.url,
            content=body,
            headers={"X-Signature-SHA256": sign(SECRET, body), "X-Signature-Timestamp": str(now)},
        )
        assert response.status_code == 401
    assert len(landed_files(landing)) == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"event_id": "e1"}\n{"event_id": \n', 400, "line 2 is not valid JSON"),
        (b'[{"event_id": "e1"}, {"type": "x"}]', 400, "event 1 has no 'event_id'"),
        (b'[{"event_id": ""}]', 400, "event 0 has no 'event_id'"),
        (b'[{"event_id": true}]', 400, "event 0 has no 'event_id'"),
        (b'[{"event_id": "e1"}, 7]', 400, "event 1 is a int, not an object"),
        (b"[]", 400, "empty batch"),
        (b"   ", 400, "empty batch"),
        (b'"hello"', 400, "expected a JSON array"),
        (b"\xff\xfe", 400, "not UTF-8"),
    ],
)
def test_invalid_batches_are_refused_whole_with_the_reason(
    receiver: WebhookReceiver, landing: Path, body: bytes, status: int, message: str
) -> None:
    response = httpx.post(receiver.url, content=body, headers=signed(body))
    assert response.status_code == status
    assert message in response.json()["message"]
    assert landed_files(landing) == []


def test_limits_answer_413(landing: Path) -> None:
    with WebhookReceiver(
        LocalLanding(landing),
        source_name="web",
        allow_unsigned=True,
        max_body_bytes=200,
        max_events=2,
    ) as server:
        big = json.dumps([{"event_id": f"e{i}", "pad": "x" * 50} for i in range(5)]).encode()
        assert httpx.post(server.url, content=big).status_code == 413
        many = json.dumps([{"event_id": f"e{i}"} for i in range(3)]).encode()
        response = httpx.post(server.url, content=many)
        assert response.status_code == 413 and "at most 2" in response.json()["message"]
        bomb = gzip.compress(b'[{"event_id": "e"}' + b" " * 10_000 + b"]")
        response = httpx.post(server.url, content=bomb, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 413
        response = httpx.post(server.url, content=b"[]", headers={"Content-Encoding": "br"})
        assert response.status_code == 415
    assert landed_files(landing) == []


def test_routes_methods_and_health(receiver: WebhookReceiver) -> None:
    base = receiver.url.removesuffix(receiver.path)
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "source": "web"}
    assert httpx.get(receiver.url).status_code == 405
    assert httpx.post(f"{base}/elsewhere", content=b"[]").status_code == 404


def test_a_landing_failure_answers_503_so_the_sender_retries(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the landing folder should be")
    with WebhookReceiver(
        LocalLanding(blocker / "landing"), source_name="web", allow_unsigned=True
    ) as server:
        response = httpx.post(server.url, content=json.dumps(EVENTS).encode())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def test_concurrent_redeliveries_of_one_body_land_exactly_one_file(
    receiver: WebhookReceiver, landing: Path
) -> None:
    body = json.dumps(EVENTS).encode()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def deliver() -> None:
        response = httpx.post(receiver.url, content=body, headers=signed(body), timeout=10)
        with lock:
            results.append(response.json())

    threads = [threading.Thread(target=deliver) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(results) == 12
    assert sum(1 for r in results if not r["duplicate"]) == 1
    assert [p.name for p in landed_files(landing)] == [batch_file_name(body)]
    assert not list((landing / ".incoming").iterdir())  # no temp files left behind


def test_on_landed_runs_after_the_reply_and_its_failure_is_not_the_senders(
    landing: Path,
) -> None:
    seen: list[LandedBatch] = []

    def hook(batch: LandedBatch) -> None:
        seen.append(batch)
        raise RuntimeError("event bus down")

    with WebhookReceiver(
        LocalLanding(landing), source_name="web", allow_unsigned=True, on_landed=hook
    ) as server:
        body = json.dumps(EVENTS).encode()
        assert httpx.post(server.url, content=body).status_code == 200
        assert httpx.post(server.url, content=body).status_code == 200
    assert [b.duplicate for b in seen] == [False, True]
    assert seen[0].events == 2 and seen[0].source == "web"
    assert seen[0].location == str(landing / batch_file_name(body))


def test_the_secret_is_never_shown(receiver: WebhookReceiver) -> None:
    assert "whsec" not in repr(receiver)
    with pytest.raises(ValueError, match="empty"):
        WebhookReceiver(LocalLanding("/tmp/x"), source_name="web", secret=b"")


@pytest.mark.s3
def test_s3_landing_is_create_if_absent(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    landing = S3Landing(f"s3://{s3_bucket}/landing/web", s3_endpoint.client())
    with WebhookReceiver(landing, source_name="web", secret=SECRET) as server:
        body = json.dumps(EVENTS).encode()
        first = httpx.post(server.url, content=body, headers=signed(body)).json()
        again = httpx.post(server.url, content=body, headers=signed(body)).json()
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    [item] = landing.list("*.ndjson")
    assert item.location == f"s3://{s3_bucket}/landing/web/{batch_file_name(body)}"
    assert [json.loads(x) for x in landing.read(item.name).splitlines()] == EVENTS
    assert landing.put_if_absent(item.name, b"overwrite attempt") is False
    assert [json.loads(x) for x in landing.read(item.name).splitlines()] == EVENTS


def test_receive_events_cli_lands_batches_until_sigterm(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "crm": {"kind": "files", "role": "contacts", "path": "x", "format": "csv"},
                    "web": {
                        "kind": "events",
                        "landing": str(landing),
                        "receiver": {"port": 0, "signing_secret": {"secret": "web_hmac"}},
                    },
                }
            }
        )
    )
    env = {**os.environ, "AUDIENCE_LAKE_SECRET_WEB_HMAC": SECRET.decode(), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "receive-events", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        # The banner's four lines (reads are bounded by the test timeout).
        banner = [process.stdout.readline() for _ in range(4)]
        assert banner[0].startswith("receiving 'web' events at POST http://127.0.0.1:"), banner
        url = banner[0].split("POST ", 1)[1].strip()
        body = json.dumps(EVENTS).encode()
        assert httpx.post(url, content=body, headers=signed(body)).status_code == 200
        assert httpx.post(url, content=body).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    output = "".join(banner) + process.stdout.read()
    assert process.returncode == 0, output
    assert "prefect events: off (no PREFECT_API_URL)" in output
    assert "1 batches landed, 0 redelivered, 1 rejected" in output
    assert [p.name for p in landed_files(landing)] == [batch_file_name(body)]


def test_landed_batches_emit_the_event_that_triggers_the_land_events_deployment(
    landing: Path,
) -> None:
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.events.schemas.events import Event, ResourceSpecification, matches
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.events import LANDED_EVENT, announce_landed

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    [deployment] = [d for d in deployments if d["name"] == "land-events"]
    assert deployment["entrypoint"] == "flows/events.py:land_events"
    assert deployment["schedules"] == []  # the hourly pipeline's ingest is the fallback
    # Prefect's own parser for prefect.yaml triggers, and its own matching rules.
    [trigger] = _initialize_deployment_triggers("land-events", deployment["triggers"])
    assert isinstance(trigger, DeploymentEventTrigger)
    assert trigger.posture == "Reactive" and trigger.threshold == 1
    match = ResourceSpecification.model_validate(trigger.match)

    def fires_on(event: Event) -> bool:
        return match.includes([event.resource]) and any(
            matches(expected, event.event) for expected in trigger.expect
        )

    # The worker also opens an API client (for run context, absent here): point it at a closed
    # port so that no temporary Prefect server is started for nothing.
    EventsWorker.set_client_override(AssertingEventsClient)
    try:
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            worker = EventsWorker.instance()
            with WebhookReceiver(
                LocalLanding(landing),
                source_name="web_events",
                allow_unsigned=True,
                on_landed=announce_landed,
            ) as server:
                body = json.dumps(EVENTS).encode()
                httpx.post(server.url, content=body)
                httpx.post(server.url, content=body)  # a redelivery: nothing new to announce
            worker.drain()
        assert AssertingEventsClient.last is not None
        emitted = AssertingEventsClient.last.events
    finally:
        EventsWorker.set_client_override(None)
        EventsWorker.drain_all()
    assert [e.event for e in emitted] == [LANDED_EVENT]
    event = emitted[0]
    assert event.resource.id == "audience-lake.source.web_events"
    assert event.payload == {
        "batch": batch_file_name(body),
        "events": 2,
        "location": str(landing / batch_file_name(body)),
    }
    assert fires_on(event)
    assert not fires_on(event.model_copy(update={"event": "audience-lake.something.else"}))

"""The Slack-compatible webhook notifier against a real loopback HTTP server."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any, get_args

import pytest

from infra.sandbox._http import Request, Response, StandInServer
from tasks.connectors.http import RetryPolicy, build_client
from tasks.connectors.notifiers import (
    NOTIFIERS,
    Notification,
    NotifierError,
    SlackWebhook,
    open_notifier,
)
from tasks.core.config_anomaly import Notifier as NotifierConfig
from tasks.core.config_anomaly import SlackWebhookNotifier
from tasks.errors import ConfigError

HOOK_PATH = "/services/T0001/B0002/s3cr3tT0k3n"
TEXT = "text/plain; charset=utf-8"


class SlackWebhookStandIn(StandInServer):
    """Slack incoming webhooks: ``POST /services/...`` with JSON ``{"text"}``; ``200 ok``.

    Errors follow Slack's documented plain-text bodies: ``400 invalid_payload``,
    ``404 no_service`` for an unknown hook; ``fail_next`` queues faults (e.g. 500, 429).
    """

    name = "slack"

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self._faults: deque[Response] = deque()
        self._lock = threading.Lock()

    def fail_next(self, status: int, body: str, *, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after else {}
        with self._lock:
            self._faults.append(Response(status, body.encode(), TEXT, headers))

    def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405, b"invalid_method", TEXT)
        with self._lock:
            if self._faults:
                return self._faults.popleft()
        if request.path != HOOK_PATH:
            return Response(404, b"no_service", TEXT)
        try:
            payload = json.loads(request.body)
        except ValueError:
            return Response(400, b"invalid_payload", TEXT)
        if not isinstance(payload, dict) or not payload.get("text"):
            return Response(400, b"no_text", TEXT)
        with self._lock:
            self.messages.append(payload)
        return Response(200, b"ok", TEXT)


@pytest.fixture
def slack() -> Iterator[SlackWebhookStandIn]:
    with SlackWebhookStandIn() as server:
        yield server


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def webhook(url: str, sleeps: Sleeps | None = None) -> SlackWebhook:
    policy = RetryPolicy(
        max_attempts=4, base=0.01, cap=0.05, sleep=Sleeps() if sleeps is None else sleeps
    )
    return SlackWebhook(build_client(""), url, name="ops_channel", policy=policy)


NOTE = Notification(
    subject="Audience Lake: 1 volume error(s), 0 warning(s) in run r1",
    body="• *ERROR* `bronze/crm_contacts source=crm_contacts`: 5 rows, expected ~300",
    severity="error",
)


def test_posts_the_message_as_slack_json(slack: SlackWebhookStandIn) -> None:
    notifier = webhook(slack.url + HOOK_PATH)
    try:
        notifier.notify(NOTE)
    finally:
        notifier.close()
    assert slack.messages == [
        {
            "text": "*Audience Lake: 1 volume error(s), 0 warning(s) in run r1*\n"
            "• *ERROR* `bronze/crm_contacts source=crm_contacts`: 5 rows, expected ~300"
        }
    ]


def test_a_500_is_retried_then_succeeds(slack: SlackWebhookStandIn) -> None:
    slack.fail_next(500, "rollup_error")
    sleeps = Sleeps()
    webhook(slack.url + HOOK_PATH, sleeps).notify(NOTE)
    assert [m for m, _ in slack.requests] == ["POST", "POST"]
    assert len(slack.messages) == 1 and len(sleeps) == 1


def test_a_429_waits_as_long_as_retry_after_asks(slack: SlackWebhookStandIn) -> None:
    slack.fail_next(429, "rate_limited", retry_after="3")
    sleeps = Sleeps()
    webhook(slack.url + HOOK_PATH, sleeps).notify(NOTE)
    assert sleeps == [3.0] and len(slack.messages) == 1


def test_persistent_5xx_fails_after_the_retry_budget(slack: SlackWebhookStandIn) -> None:
    for _ in range(4):
        slack.fail_next(503, "service_unavailable")
    with pytest.raises(NotifierError, match=r"'ops_channel': webhook answered 503"):
        webhook(slack.url + HOOK_PATH).notify(NOTE)
    assert len(slack.requests) == 4 and not slack.messages


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, "no_service"), (410, "channel_is_archived"), (403, "action_prohibited")],
)
def test_a_refusal_fails_at_once_naming_the_notifier_not_the_url(
    slack: SlackWebhookStandIn, status: int, body: str
) -> None:
    slack.fail_next(status, body)
    url = slack.url + HOOK_PATH
    with pytest.raises(NotifierError) as failure:
        webhook(url).notify(NOTE)
    message = str(failure.value)
    assert message == f"notifier 'ops_channel': webhook answered {status}: {body}"
    assert "s3cr3t" not in message
    assert len(slack.requests) == 1  # 4xx other than 429 is not retried


def test_an_unreachable_webhook_fails_without_leaking_the_url() -> None:
    with SlackWebhookStandIn() as closed:
        url = closed.url + HOOK_PATH
    sleeps = Sleeps()
    with pytest.raises(NotifierError, match="'ops_channel': webhook unreachable") as failure:
        webhook(url, sleeps).notify(NOTE)
    assert "s3cr3t" not in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__
    assert len(sleeps) == 3  # four attempts


def test_open_notifier_reads_the_url_from_its_secret(
    slack: SlackWebhookStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SlackWebhookNotifier.model_validate(
        {"kind": "slack_webhook", "url": {"secret": "slack_webhook_url"}}
    )
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_SLACK_WEBHOOK_URL", slack.url + HOOK_PATH)
    notifier = open_notifier("ops_channel", config)
    try:
        notifier.notify(NOTE)
    finally:
        notifier.close()
    assert len(slack.messages) == 1

    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_SLACK_WEBHOOK_URL", "hooks.example.com/x")
    with pytest.raises(ConfigError, match="volume.notifiers.ops_channel: secret .* not an http"):
        open_notifier("ops_channel", config)
    monkeypatch.delenv("AUDIENCE_LAKE_SECRET_SLACK_WEBHOOK_URL")
    with pytest.raises(ConfigError, match="AUDIENCE_LAKE_SECRET_SLACK_WEBHOOK_URL"):
        open_notifier("ops_channel", config)


def test_registry_covers_every_configured_notifier_kind() -> None:
    kinds = {get_args(NotifierConfig)[0].model_fields["kind"].annotation.__args__[0]}
    assert kinds == set(NOTIFIERS)

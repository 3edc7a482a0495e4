"""Alert notifiers, selected by the ``kind`` of an entry in ``volume.notifiers``.

Adding a notifier kind = one class with ``notify``/``close``, one config model, one line in
:data:`NOTIFIERS`. Prefect-side channels (events, artifacts) are emitted by the task wrapper in
:mod:`tasks.anomaly`, since connectors never import Prefect.

Slack-compatible incoming webhooks (Slack, Mattermost, Rocket.Chat, Zulip's Slack endpoint)
take ``POST <url>`` with a JSON body ``{"text": "..."}`` and answer ``200 ok``; failures are
``400 invalid_payload``, ``403 action_prohibited``, ``404 channel_not_found``/``no_service``,
``410 channel_is_archived``, ``429`` with ``Retry-After``, ``500 rollup_error``. Transient
failures are retried by :func:`tasks.connectors.http.send_with_retries`.

The webhook URL is a credential (anyone holding it can post): it comes from a secret and never
appears in an error message or log line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from tasks.connectors.http import RetryPolicy, build_client, send_with_retries
from tasks.connectors.redact import redact, register_secret
from tasks.core.config_anomaly import Notifier as NotifierConfig
from tasks.core.config_anomaly import SlackWebhookNotifier
from tasks.core.settings import resolve_secret
from tasks.core.transport import insecure_http_problem
from tasks.errors import AudienceLakeError, ConfigError

__all__ = [
    "NOTIFIERS",
    "Notification",
    "Notifier",
    "NotifierError",
    "SlackWebhook",
    "open_notifier",
]

Severity = Literal["warning", "error"]
# Alerts should arrive while they matter and never stall a run for minutes: fewer attempts and
# a shorter total budget than the data-moving clients.
ALERT_RETRY_POLICY = RetryPolicy(max_attempts=5, cap=10.0, deadline=60.0, max_server_wait=60.0)


class NotifierError(AudienceLakeError):
    """A notifier could not deliver an alert. Names the notifier, never its secret URL."""


@dataclass(frozen=True)
class Notification:
    """What a notifier sends: a one-line subject, a body, and the worst severity in it."""

    subject: str
    body: str
    severity: Severity


class Notifier(Protocol):
    """Delivers notifications somewhere people look."""

    name: str

    def notify(self, notification: Notification) -> None: ...

    def close(self) -> None: ...


class SlackWebhook:
    """Posts notifications to a Slack-compatible incoming webhook.

    Args:
        client: an HTTP client (from :func:`build_client`; tests point it at a loopback server).
        url: the webhook URL (secret).
        name: the notifier's name in ``pipeline.yaml``, used in errors.
        policy: retry/backoff parameters.
    """

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        *,
        name: str,
        policy: RetryPolicy = ALERT_RETRY_POLICY,
    ) -> None:
        self.name = name
        self._client = client
        self._url = url
        self._policy = policy

    def payload(self, notification: Notification) -> dict[str, Any]:
        """The JSON body: ``text`` is all every Slack-compatible receiver understands."""
        return {"text": f"*{notification.subject}*\n{notification.body}".strip()}

    def notify(self, notification: Notification) -> None:
        """Post one message; raise :class:`NotifierError` unless the webhook accepted it."""
        request = self._client.build_request("POST", self._url, json=self.payload(notification))
        try:
            # Resending after an ambiguous failure may post the message twice; a duplicate alert
            # is harmless, a lost one is not, so the post counts as idempotent.
            response = send_with_retries(
                self._client, request, idempotent=True, policy=self._policy
            )
        except httpx.HTTPError as exc:
            raise NotifierError(
                f"notifier {self.name!r}: webhook unreachable: {self._redact(str(exc))}"
            ) from None  # the chained exception would print the secret URL
        body = response.read().decode("utf-8", "replace").strip()
        if response.status_code != 200:
            raise NotifierError(
                f"notifier {self.name!r}: webhook answered {response.status_code}: "
                f"{self._redact(body)[:200] or '(empty body)'}"
            )

    def close(self) -> None:
        self._client.close()

    def _redact(self, text: str) -> str:
        return redact(text.replace(self._url, "<webhook url>"))


def _open_slack_webhook(name: str, config: SlackWebhookNotifier) -> Notifier:
    url = resolve_secret(config.url).get_secret_value().strip()
    if not url.startswith(("https://", "http://")):
        raise ConfigError(
            f"volume.notifiers.{name}: secret {config.url.secret!r} is not an http(s) URL"
        )
    if insecure_http_problem(url, allow_insecure_http=config.allow_insecure_http) is not None:
        # The URL is the credential: name the secret, never its value.
        raise ConfigError(
            f"volume.notifiers.{name}.url: secret {config.url.secret!r} is a plain http URL to "
            "a non-loopback host; use https, or set allow_insecure_http: true"
        )
    register_secret(url)  # httpx logs every request URL: this one must be masked
    register_secret(str(httpx.URL(url)))
    client = build_client(
        "",
        timeout=httpx.Timeout(config.timeout_seconds),
        max_connections=2,
        allow_insecure_http=config.allow_insecure_http,
        ca_bundle=config.ca_bundle,
        owner=f"volume.notifiers.{name}",
    )
    return SlackWebhook(client, url, name=name)


NOTIFIERS: dict[str, Callable[[str, Any], Notifier]] = {"slack_webhook": _open_slack_webhook}


def open_notifier(name: str, config: NotifierConfig) -> Notifier:
    """The notifier for a configured ``volume.notifiers`` entry."""
    return NOTIFIERS[config.kind](name, config)

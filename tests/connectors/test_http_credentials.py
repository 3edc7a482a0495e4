"""Credentials on the wire and in logs, against real loopback servers: a query-string API key
and a webhook URL never reach a log record or an error, token-endpoint errors never echo the
body, a token reply cannot send the access token to a foreign instance URL, and no client sends
plain http to a non-loopback host unless its config allows it."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import pytest

from infra.sandbox._http import Request, Response, StandInServer, json_response
from tasks.connectors.http import InsecureTransportRefused, build_client
from tasks.connectors.notifiers import Notification, open_notifier
from tasks.connectors.redact import redact, register_secret, register_secret_param
from tasks.connectors.sources.rest import RestReader
from tasks.core.config_anomaly import SlackWebhookNotifier
from tasks.core.config_rest import RestSource
from tasks.errors import ConfigError, SourceError

API_KEY = "hk-CANARY-7d1f0a93"
CLIENT_SECRET = "cs-CANARY-91b2e4c7"
REFRESH_TOKEN = "rt-CANARY-40aa17de"
ACCESS_TOKEN = "at-CANARY-5c3e9b21"
WEBHOOK_PATH = "/services/T0001/B0001/wh-CANARY-8f2d6e"
CANARIES = (API_KEY, CLIENT_SECRET, REFRESH_TOKEN, ACCESS_TOKEN, WEBHOOK_PATH)


class KeyedApi(StandInServer):
    """An API that takes ``hapikey`` in the query string, plus an OAuth token endpoint whose
    replies are chosen per test (some echo what the client submitted, as careless servers do)."""

    name = "keyed-api"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Request] = []
        self.token_reply: Response = json_response(200, {"access_token": ACCESS_TOKEN})

    def handle(self, request: Request) -> Response:
        self.seen.append(request)
        target = f"{request.path}?{urlencode(request.query, doseq=True)}"
        if request.path == "/oauth/token":
            reply = self.token_reply  # {FORM} becomes the submitted form, url-encoded
            return Response(
                reply.status,
                reply.body.replace(b"{FORM}", request.body),
                reply.content_type,
                reply.headers,
            )
        authorised = request.query_value("hapikey") == API_KEY or (
            request.header("authorization") == f"Bearer {ACCESS_TOKEN}"
        )
        if not authorised:
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": "bad credentials"})
        if request.path == "/items":
            return json_response(
                200,
                {"records": [{"id": 1}, {"id": 2}], "next": f"/items/2?hapikey={API_KEY}"},
            )
        if request.path == "/items/2":
            return json_response(200, {"records": [{"id": 3}], "next": None})
        # An error page that echoes the request target, query string (and key) included.
        return json_response(HTTPStatus.BAD_REQUEST, {"message": f"cannot serve {target}"})


@pytest.fixture
def api() -> Iterator[KeyedApi]:
    with KeyedApi() as server:
        yield server


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_API_KEY", API_KEY)
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_REFRESH_TOKEN", REFRESH_TOKEN)


QUERY_KEY = {
    "type": "api_key",
    "key": {"secret": "api_key"},
    "name": "hapikey",
    "location": "query",
}
CLIENT_CREDENTIALS = {
    "type": "oauth2_client_credentials",
    "token_url": "/oauth/token",
    "client_id": "crm-client",
    "client_secret": {"secret": "client_secret"},
    "client_auth": "body",
}


def source(url: str, **overrides: Any) -> RestSource:
    data: dict[str, Any] = {
        "kind": "rest",
        "role": "enrichment",
        "base_url": url,
        "path": "/items",
        "records_path": "records",
        "paginator": {"type": "next_url", "next_url_path": "next"},
        "auth": QUERY_KEY,
        "retry": {"max_attempts": 2, "base_seconds": 0, "cap_seconds": 0},
        **overrides,
    }
    return RestSource.model_validate(data)


def read(config: RestSource) -> int:
    reader = RestReader(config, source_name="crm")
    try:
        return sum(b.frame.height for b in reader.batches(since=None, is_committed=lambda _: False))
    finally:
        reader.close()


def error_text(failure: pytest.ExceptionInfo[BaseException]) -> str:
    """Everything a traceback of the error would print, chained exceptions included."""
    return "".join(traceback.format_exception(failure.value))


def assert_no_canary(text: str) -> None:
    leaked = [c for c in CANARIES if c in text]
    assert not leaked, f"{leaked} in {text!r}"


# --- 1. redaction of logged URLs and raised errors ------------------------------------------


def test_a_query_string_api_key_is_in_no_log_record_and_no_error(
    api: KeyedApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert read(source(api.url)) == 3
    assert all(r.query_value("hapikey") == API_KEY for r in api.seen)  # the key was sent
    requests = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert len(requests) == 2 and all("HTTP Request: GET" in m for m in requests)
    assert "hapikey=***" in requests[0]

    with pytest.raises(SourceError, match=r"source 'crm': GET .*/broken answered 400") as failure:
        read(source(api.url, path="/broken", paginator={"type": "single"}))
    assert "cannot serve /broken?hapikey=***" in str(failure.value)
    assert_no_canary(error_text(failure))
    assert_no_canary(caplog.text)
    assert_no_canary("\n".join(r.getMessage() for r in caplog.records))


def test_a_secret_webhook_url_is_in_no_log_record(caplog: pytest.LogCaptureFixture) -> None:
    class Hook(StandInServer):
        def handle(self, request: Request) -> Response:
            return Response(200, b"ok", "text/plain")

    caplog.set_level(logging.DEBUG)
    with Hook() as hook, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIENCE_LAKE_SECRET_HOOK", hook.url + WEBHOOK_PATH)
        config = SlackWebhookNotifier.model_validate(
            {"kind": "slack_webhook", "url": {"secret": "hook"}}
        )
        notifier = open_notifier("ops", config)
        try:
            notifier.notify(Notification("volume drop", "orders -80%", "error"))
        finally:
            notifier.close()
        assert hook.requests == [("POST", WEBHOOK_PATH)]
    assert any(r.name == "httpx" and "HTTP Request: POST" in r.getMessage() for r in caplog.records)
    assert_no_canary(caplog.text)


# --- 2. token endpoint errors ---------------------------------------------------------------

ECHOING_REPLIES = {
    "json-401-echo": json_response(
        401,
        {
            "error": "invalid_client",
            "error_description": f"client_secret {CLIENT_SECRET} is wrong",
            "request": "{FORM}",
        },
    ),
    "json-400-safe": json_response(
        400, {"error": "invalid_grant", "error_description": "refresh token expired", "x": "{FORM}"}
    ),
    "text-400-echo": Response(400, b"bad request: {FORM}", "text/plain"),
    "json-503-echo": json_response(503, {"error": "temporarily_unavailable", "got": "{FORM}"}),
    "json-200-no-token": json_response(200, {"echo": "{FORM}"}),
}


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
@pytest.mark.parametrize("reply", list(ECHOING_REPLIES))
def test_token_endpoint_errors_never_echo_the_body(
    api: KeyedApi, caplog: pytest.LogCaptureFixture, reply: str, grant: str
) -> None:
    caplog.set_level(logging.DEBUG)
    api.token_reply = ECHOING_REPLIES[reply]
    auth: dict[str, Any] = dict(CLIENT_CREDENTIALS)
    if grant == "refresh_token":
        auth.update(type="oauth2_refresh_token", refresh_token={"secret": "refresh_token"})
        auth["token_store"] = {
            "kind": "env",
            "name": "AUDIENCE_LAKE_TEST_UNUSED_RT",
            "process_only": True,
        }
    with pytest.raises(SourceError) as failure:
        read(source(api.url, auth=auth, paginator={"type": "single"}))
    form = parse_qs(next(r for r in api.seen if r.path == "/oauth/token").body.decode())
    assert form["client_secret"] == [CLIENT_SECRET]  # the server did get (and echo) it
    message = str(failure.value)
    assert "token endpoint http://127.0.0.1:" in message
    status = ECHOING_REPLIES[reply].status
    if status != 200:
        assert f"answered {status}" in message
    if reply == "json-401-echo":
        assert "answered 401: invalid_client" in message and "is wrong" not in message
    if reply == "json-400-safe":
        assert "answered 400: invalid_grant (refresh token expired)" in message
    if reply == "text-400-echo":
        assert "answered 400 (body not shown)" in message
    assert "grant_type" not in message  # no trace of the echoed form
    assert_no_canary(error_text(failure))
    assert_no_canary(caplog.text)


# --- 3. instance_url pinning ----------------------------------------------------------------


class Recorder(StandInServer):
    """A foreign host: records every request and the credentials it carried."""

    def __init__(self) -> None:
        super().__init__()
        self.authorizations: list[str | None] = []

    def handle(self, request: Request) -> Response:
        self.authorizations.append(request.header("authorization"))
        return json_response(200, {"records": [{"id": 9}], "next": None})


INSTANCE_AUTH = {**CLIENT_CREDENTIALS, "instance_url_field": "instance_url"}


def test_a_token_reply_cannot_send_the_token_to_a_foreign_instance_url(api: KeyedApi) -> None:
    with Recorder() as foreign:
        api.token_reply = json_response(
            200,
            {"access_token": ACCESS_TOKEN, "instance_url": foreign.url + "/?sid=" + ACCESS_TOKEN},
        )
        config = source(api.url, auth=INSTANCE_AUTH, paginator={"type": "single"})
        with pytest.raises(SourceError) as failure:
            read(config)
        message = str(failure.value)
        assert message.startswith("source 'crm': token endpoint ")
        assert (
            f"returned instance_url '{foreign.url}/', which is not on an allowed domain" in message
        )
        assert "the access token was not sent there" in message
        assert_no_canary(error_text(failure))
        assert foreign.requests == []

        # Listed explicitly (host:port), the same instance is used: every API call goes there.
        allowed = {**INSTANCE_AUTH, "instance_url_domains": [f"127.0.0.1:{foreign.port}"]}
        assert read(source(api.url, auth=allowed, paginator={"type": "single"})) == 1
        assert foreign.authorizations == [f"Bearer {ACCESS_TOKEN}"]


@pytest.mark.parametrize(
    ("instance_url", "problem"),
    [
        ("https://attacker.example.com", "is not on an allowed domain"),
        ("http://acme.my.salesforce.com", "is not https"),
        ("https://acme.my.salesforce.com.attacker.example.com", "is not on an allowed domain"),
        ("http://127.0.0.1:1", "is not on an allowed domain"),
    ],
)
def test_instance_url_must_be_https_on_an_allowed_domain(
    api: KeyedApi, instance_url: str, problem: str
) -> None:
    api.token_reply = json_response(
        200, {"access_token": ACCESS_TOKEN, "instance_url": instance_url}
    )
    started = time.monotonic()
    with pytest.raises(SourceError, match=f"instance_url '{instance_url}', which {problem}"):
        read(source(api.url, auth=INSTANCE_AUTH, paginator={"type": "single"}))
    assert time.monotonic() - started < 5  # refused before any connection attempt
    assert [r.path for r in api.seen] == ["/oauth/token"]


# --- 4. plain http to non-loopback hosts ----------------------------------------------------


def test_the_client_refuses_plain_http_to_a_remote_host_before_connecting() -> None:
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there, so a connection attempt would hang.
    with build_client("http://192.0.2.1", owner="sources.crm") as client:
        started = time.monotonic()
        with pytest.raises(InsecureTransportRefused, match=r"sources.crm: refusing to send GET"):
            client.get("/contacts", params={"hapikey": API_KEY})
        assert time.monotonic() - started < 1
    with build_client("https://192.0.2.1", owner="x", timeout=httpx.Timeout(0.2)) as client:
        with pytest.raises(httpx.TransportError) as failure:
            client.get("/")
        assert not isinstance(failure.value, InsecureTransportRefused)  # https: it tried


def test_a_plain_http_webhook_secret_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_HOOK", "http://hooks.example.com" + WEBHOOK_PATH)
    config = SlackWebhookNotifier.model_validate(
        {"kind": "slack_webhook", "url": {"secret": "hook"}}
    )
    with pytest.raises(
        ConfigError, match=r"volume.notifiers.ops.url: secret 'hook' is a plain"
    ) as failure:
        open_notifier("ops", config)
    assert_no_canary(error_text(failure))
    insecure = SlackWebhookNotifier.model_validate(
        {"kind": "slack_webhook", "url": {"secret": "hook"}, "allow_insecure_http": True}
    )
    open_notifier("ops", insecure).close()


def test_redact_masks_registered_values_user_info_and_secret_named_parameters() -> None:
    register_secret("pa ss/w0rd+x")
    text = (
        "GET https://reader:pa%20ss%2Fw0rd%2Bx@api.example.com/v1?page=2&access_token=abc"
        "&X-Amz-Signature=f00d&limit=5 failed: echoed pa ss/w0rd+x and pa+ss%2Fw0rd%2Bx"
    )
    assert redact(text) == (
        "GET https://***@api.example.com/v1?page=2&access_token=***"
        "&X-Amz-Signature=***&limit=5 failed: echoed *** and ***"
    )
    register_secret_param("apiCode")
    assert redact("/v1/items?apicode=zz&q=1") == "/v1/items?apicode=***&q=1"
    register_secret("abc")  # too short to mask everywhere: only by parameter name
    assert redact("abc?key=abc") == "abc?key=***"

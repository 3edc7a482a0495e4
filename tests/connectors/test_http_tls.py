"""``ca_bundle`` against a real TLS server on 127.0.0.1 whose certificate is signed by a CA made
in the test: refused without the bundle (verification is on by default), accepted with it, for a
REST source (token endpoint included), the Mailchimp destination and a webhook notifier."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from infra.sandbox._http import Request, Response, StandInServer, json_response
from tasks.connectors.destinations import MemberChange, open_destination
from tasks.connectors.http import RetryPolicy
from tasks.connectors.notifiers import Notification, NotifierError, open_notifier
from tasks.connectors.sources.rest import RestReader
from tasks.core.config import MailchimpDestination
from tasks.core.config_anomaly import SlackWebhookNotifier
from tasks.core.config_rest import RestSource
from tasks.errors import ConfigError, PublishError, SourceError
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsApi(StandInServer):
    """One HTTPS server playing a REST API with a token endpoint, Mailchimp and a webhook."""

    name = "tls-api"

    def __init__(self, pki: Pki) -> None:
        super().__init__()
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(pki.cert_pem, pki.key_pem)

    @property
    def url(self) -> str:
        return super().url.replace("http://", "https://")

    def _build_server(self) -> ThreadingHTTPServer:
        server = super()._build_server()
        server.socket = self._context.wrap_socket(server.socket, server_side=True)
        return server

    def handle(self, request: Request) -> Response:
        if request.path == "/oauth/token":
            return json_response(200, {"access_token": "tls-access-token", "expires_in": 3600})
        if request.path == "/items":
            if request.header("authorization") != "Bearer tls-access-token":
                return json_response(401, {"error": "no token"})
            return json_response(200, {"records": [{"id": 1}, {"id": 2}]})
        if request.path.startswith("/3.0/lists/"):
            return json_response(200, {"new_members": [], "updated_members": [], "errors": []})
        if request.path == "/hook":
            return Response(200, b"ok", "text/plain")
        return json_response(404, {"error": request.path})


@pytest.fixture(scope="module")
def tls_api(pki: Pki) -> Iterator[TlsApi]:
    with TlsApi(pki) as server:
        yield server


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch, tls_api: TlsApi) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_TLS_CLIENT_SECRET", "tls-client-secret")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_TLS_MC_KEY", "tls-mailchimp-key-us6")
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_TLS_HOOK", tls_api.url + "/hook")
    # The process-wide trust settings must not be what makes the test pass.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def rest_source(url: str, **extra: Any) -> RestSource:
    return RestSource.model_validate(
        {
            "kind": "rest",
            "role": "enrichment",
            "base_url": url,
            "path": "/items",
            "records_path": "records",
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "/oauth/token",
                "client_id": "tls-client",
                "client_secret": {"secret": "tls_client_secret"},
            },
            "retry": {"max_attempts": 1},
            **extra,
        }
    )


def read(config: RestSource, policy: RetryPolicy | None = None) -> int:
    reader = RestReader(config, source_name="crm", policy=policy)
    try:
        return sum(b.frame.height for b in reader.batches(since=None, is_committed=lambda _: False))
    finally:
        reader.close()


def test_rest_source_and_its_token_endpoint_trust_only_the_configured_ca(
    tls_api: TlsApi, pki: Pki
) -> None:
    sleeps: list[float] = []
    with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
        read(rest_source(tls_api.url), RetryPolicy(sleep=sleeps.append))
    assert sleeps == []  # a certificate that does not verify is not retried
    assert read(rest_source(tls_api.url, ca_bundle=str(pki.ca_pem))) == 2
    # Another CA does not do: the server certificate is checked against the bundle.
    with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
        read(rest_source(tls_api.url, ca_bundle=str(pki.cert_pem)))


def test_an_unreadable_ca_bundle_fails_naming_the_key(tls_api: TlsApi, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"sources\.crm\.ca_bundle: cannot load CA certificates"):
        read(rest_source(tls_api.url, ca_bundle=str(missing)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"sources\.crm\.ca_bundle"):
        read(rest_source(tls_api.url, ca_bundle=str(garbage)))


def mailchimp(url: str, **extra: Any) -> MailchimpDestination:
    return MailchimpDestination.model_validate(
        {
            "kind": "mailchimp",
            "base_url": url,
            "api_key": {"secret": "tls_mc_key"},
            "audiences": {"all": "list1"},
            **extra,
        }
    )


CHANGE = MemberChange("k1", "a@example.com", "subscribe", "A", "B")


def test_mailchimp_destination_uses_its_ca_bundle(tls_api: TlsApi, pki: Pki) -> None:
    sink = open_destination(mailchimp(tls_api.url))
    try:
        with pytest.raises(PublishError, match="CERTIFICATE_VERIFY_FAILED"):
            list(sink.send("list1", [CHANGE]))
    finally:
        sink.close()
    sink = open_destination(mailchimp(tls_api.url, ca_bundle=str(pki.ca_pem)))
    try:
        assert [r.ok for r in sink.send("list1", [CHANGE])] == [True]
    finally:
        sink.close()


def test_webhook_notifier_uses_its_ca_bundle(tls_api: TlsApi, pki: Pki) -> None:
    note = Notification("volume drop", "orders -80%", "error")
    plain = {"kind": "slack_webhook", "url": {"secret": "tls_hook"}}
    notifier = open_notifier("ops", SlackWebhookNotifier.model_validate(plain))
    try:
        with pytest.raises(NotifierError, match="unreachable"):
            notifier.notify(note)
    finally:
        notifier.close()
    trusted = {**plain, "ca_bundle": str(pki.ca_pem)}
    notifier = open_notifier("ops", SlackWebhookNotifier.model_validate(trusted))
    try:
        notifier.notify(note)
    finally:
        notifier.close()

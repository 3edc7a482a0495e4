"""Authentication for REST sources, selected by ``auth.type`` in ``pipeline.yaml``.

Static credentials (bearer token, API key in a header or query parameter, HTTP basic) and the two
OAuth2 grants we use (docs/platforms.md, *HTTP client* and *OAuth2 token endpoints*): client
credentials (token cached until shortly before expiry, refreshed once on a 401) and the
refresh-token grant, whose *rotated* refresh token is saved through a :class:`TokenStore` before it
is used. Stores are selected by kind from :data:`TOKEN_STORES`; the Prefect Secret block store
registers itself from the task layer (``tasks/token_stores.py``), since connectors never import
Prefect.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin

import httpx

from tasks.connectors.http import ClientAuthMethod, OAuth2ClientCredentials
from tasks.connectors.redact import redact, register_secret, register_secret_param
from tasks.core.config_rest_auth import (
    RestApiKeyAuth,
    RestAuth,
    RestBasicAuth,
    RestBearerAuth,
    RestOAuth2ClientCredentials,
    RestOAuth2RefreshToken,
    TokenStoreRef,
)
from tasks.core.settings import resolve_secret
from tasks.errors import ConfigError, SourceError

# --- token stores ---------------------------------------------------------------------------


class TokenStore(Protocol):
    """Durable home of one secret value that changes over time (a rotating refresh token)."""

    @property
    def description(self) -> str: ...

    def load(self) -> str | None: ...

    def save(self, value: str) -> None: ...


class MemoryTokenStore:
    """This process only: for tests and for providers that do not rotate."""

    _shared: dict[str, str] = {}
    _shared_lock = threading.Lock()

    def __init__(self, name: str, initial: str | None = None) -> None:
        self.name = name
        self.saves = 0
        if initial is not None:
            self.save(initial)
            self.saves = 0

    @property
    def description(self) -> str:
        return f"memory store {self.name!r}"

    def load(self) -> str | None:
        with self._shared_lock:
            return self._shared.get(self.name)

    def save(self, value: str) -> None:
        with self._shared_lock:
            self._shared[self.name] = value
        self.saves += 1


class EnvTokenStore:
    """An environment variable of this process (and of the subprocesses it starts)."""

    def __init__(self, variable: str) -> None:
        self.variable = variable

    @property
    def description(self) -> str:
        return f"environment variable {self.variable}"

    def load(self) -> str | None:
        return os.environ.get(self.variable) or None

    def save(self, value: str) -> None:
        os.environ[self.variable] = value


TOKEN_STORES: dict[str, Callable[[str], TokenStore]] = {
    "memory": MemoryTokenStore,
    "env": EnvTokenStore,
}


def register_token_store(kind: str, factory: Callable[[str], TokenStore]) -> None:
    """Make ``token_store.kind: <kind>`` available (the task layer registers Prefect's)."""
    TOKEN_STORES[kind] = factory


def open_token_store(ref: TokenStoreRef, source_name: str) -> TokenStore:
    factory = TOKEN_STORES.get(ref.kind)
    if factory is None:
        raise ConfigError(
            f"source {source_name!r}: auth.token_store.kind {ref.kind!r} is not available in "
            f"this process (known: {sorted(TOKEN_STORES)}); the prefect_secret store is "
            "registered by importing tasks.token_stores"
        )
    return factory(ref.name)


# --- static credentials ---------------------------------------------------------------------


class HeaderAuth(httpx.Auth):
    """A fixed header on every request (``Authorization: Bearer ...``, ``api-key: ...``)."""

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._name] = self._value
        yield request


class QueryKeyAuth(httpx.Auth):
    """A key in a query parameter (added to every request, next-page URLs included)."""

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value
        # The key is part of the URL httpx logs: mask the parameter in every log line.
        register_secret_param(name)
        register_secret(value)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # A new request, so the key never shows up in the caller's request.url (error messages).
        yield httpx.Request(
            request.method,
            request.url.copy_merge_params({self._name: self._value}),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )


# --- OAuth2 refresh-token grant -------------------------------------------------------------


class OAuth2RefreshToken(OAuth2ClientCredentials):
    """RFC 6749 §6 refresh-token grant with rotation.

    The refresh token in ``store`` wins over ``initial_refresh_token`` (which is only the first
    one ever issued). Whenever a token reply carries a new refresh token it is saved to the
    store *before* the access token is used: the old one is already void, so losing the new one
    would lock the source out until someone re-consents.
    """

    grant_type = "refresh_token"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None,
        *,
        initial_refresh_token: str,
        store: TokenStore,
        **kwargs: Any,
    ) -> None:
        super().__init__(token_url, client_id, client_secret, **kwargs)
        self._store_ref = store
        self._refresh_token = store.load() or initial_refresh_token
        register_secret(self._refresh_token)
        self.rotations = 0

    def _credentials(self) -> list[str]:
        return [*super()._credentials(), self._refresh_token]

    @property
    def refresh_token(self) -> str:
        return self._refresh_token

    def _grant_data(self) -> dict[str, str]:
        data = super()._grant_data()
        data["refresh_token"] = self._refresh_token
        return data

    def _on_token_reply(self, body: dict[str, Any]) -> None:
        rotated = body.get("refresh_token")
        if not isinstance(rotated, str) or not rotated or rotated == self._refresh_token:
            return
        register_secret(rotated)
        try:
            self._store_ref.save(rotated)
        except Exception as exc:  # any store failure must stop the run loudly
            raise SourceError(
                redact(
                    f"{self._endpoint()} rotated the refresh token but saving it to "
                    f"the {self._store_ref.description} failed: {exc}"
                )
            ) from exc
        self._refresh_token = rotated
        self.rotations += 1


# --- building from config -------------------------------------------------------------------


@dataclass(frozen=True)
class AuthContext:
    """What an auth builder knows besides its ``auth`` block: the source it signs in for."""

    base_url: str
    source_name: str
    allow_insecure_http: bool = False


def _secret(ref: Any) -> str:
    value = resolve_secret(ref).get_secret_value()
    register_secret(value)  # masked in every log line and error from here on
    return value


def _token_url(base_url: str, token_url: str) -> str:
    if "://" in token_url:
        return token_url
    return urljoin(base_url.rstrip("/") + "/", token_url.lstrip("/"))


def _oauth_kwargs(
    config: RestOAuth2ClientCredentials | RestOAuth2RefreshToken, context: AuthContext
) -> dict[str, Any]:
    client_auth: ClientAuthMethod = config.client_auth
    return {
        "scope": config.scope,
        "margin": config.refresh_margin_seconds,
        "client_auth": client_auth,
        "header": config.header,
        "prefix": config.prefix,
        "instance_url_field": config.instance_url_field,
        "instance_url_domains": config.instance_url_domains,
        "base_url": context.base_url,
        "allow_insecure_http": context.allow_insecure_http,
        "owner": f"source {context.source_name!r}",
    }


def _bearer(config: RestBearerAuth, context: AuthContext) -> httpx.Auth:
    return HeaderAuth("Authorization", f"Bearer {_secret(config.token)}")


def _api_key(config: RestApiKeyAuth, context: AuthContext) -> httpx.Auth:
    value = f"{config.prefix}{_secret(config.key)}"
    if config.location == "query":
        return QueryKeyAuth(config.name, value)
    return HeaderAuth(config.name, value)


def _basic(config: RestBasicAuth, context: AuthContext) -> httpx.Auth:
    return httpx.BasicAuth(config.username, _secret(config.password))


def _client_credentials(config: RestOAuth2ClientCredentials, context: AuthContext) -> httpx.Auth:
    return OAuth2ClientCredentials(
        _token_url(context.base_url, config.token_url),
        config.client_id,
        _secret(config.client_secret),
        **_oauth_kwargs(config, context),
    )


def _refresh_token(config: RestOAuth2RefreshToken, context: AuthContext) -> httpx.Auth:
    source = context.source_name
    store: TokenStore = (
        open_token_store(config.token_store, source)
        if config.token_store is not None
        else MemoryTokenStore(f"{source}:refresh_token")
    )
    return OAuth2RefreshToken(
        _token_url(context.base_url, config.token_url),
        config.client_id,
        None if config.client_secret is None else _secret(config.client_secret),
        initial_refresh_token=_secret(config.refresh_token),
        store=store,
        **_oauth_kwargs(config, context),
    )


AUTH_BUILDERS: dict[str, Callable[[Any, AuthContext], httpx.Auth]] = {
    "bearer": _bearer,
    "api_key": _api_key,
    "basic": _basic,
    "oauth2_client_credentials": _client_credentials,
    "oauth2_refresh_token": _refresh_token,
}


def build_auth(
    config: RestAuth | None,
    *,
    base_url: str,
    source_name: str,
    allow_insecure_http: bool = False,
) -> httpx.Auth | None:
    """The ``httpx.Auth`` for a source's ``auth`` block (``None``: no authentication).

    Every secret it resolves is registered for log and error redaction.
    """
    if config is None:
        return None
    context = AuthContext(base_url, source_name, allow_insecure_http=allow_insecure_http)
    return AUTH_BUILDERS[config.type](config, context)

"""The ``auth`` block of a ``kind: rest`` source: how a request signs in.

Static credentials (a bearer token, an API key in a header or query parameter, HTTP basic) and
the two OAuth2 grants: client credentials, and a refresh token kept in a token store that outlives
the process (:class:`TokenStoreRef`). :data:`RestAuth` is their discriminated union, used by
:class:`tasks.core.config_rest.RestSource`; :mod:`tasks.connectors.auth` turns it into requests.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.config_base import Model, SecretRef
from tasks.core.transport import SALESFORCE_DOMAINS, check_domain_entries


class RestBearerAuth(Model):
    """``Authorization: Bearer <token>`` with a static token (Stripe secret key, private app)."""

    type: Literal["bearer"]
    token: SecretRef


class RestApiKeyAuth(Model):
    """A static key in a header (``X-Shopify-Access-Token``, ``api-key``) or a query parameter."""

    type: Literal["api_key"]
    key: SecretRef
    name: str = Field(description="Header or query parameter that carries the key.")
    location: Literal["header", "query"] = "header"
    prefix: str = Field(default="", description="Text before the key, e.g. 'Token '.")


class RestBasicAuth(Model):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str
    password: SecretRef


class RestOAuth2Common(Model):
    """What both OAuth2 grants share: the token endpoint, the client, and where the token goes."""

    token_url: str = Field(description="Absolute URL, or a path relative to the source base_url.")
    client_id: str
    scope: str | None = None
    refresh_margin_seconds: float = Field(
        default=60, ge=0, description="Refresh this long before the token expires."
    )
    client_auth: Literal["basic", "body"] = Field(
        default="basic", description="Send client id/secret as HTTP Basic or in the form body."
    )
    header: str = Field(default="Authorization", description="Header that carries the token.")
    prefix: str = Field(default="Bearer ", description="Text before the token in that header.")
    instance_url_field: str | None = Field(
        default=None,
        description="Token-reply field holding the API host to use (Salesforce: instance_url).",
    )
    instance_url_domains: tuple[str, ...] = Field(
        default=SALESFORCE_DOMAINS,
        description="Hosts the instance URL may name: 'example.com' (and its subdomains) or "
        "'host:port'. It must also be https (http only to loopback while base_url is loopback, "
        "or with allow_insecure_http). The base_url and token_url origins are always allowed. "
        "Default: Salesforce's domains.",
    )

    @field_validator("instance_url_domains")
    @classmethod
    def _domains_are_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = check_domain_entries(value)
        if bad:
            raise ValueError(f"not a host, .suffix or host:port (lower case): {bad}")
        return value


class RestOAuth2ClientCredentials(RestOAuth2Common):
    """OAuth2 client credentials (RFC 6749 §4.4); cached until shortly before expiry."""

    type: Literal["oauth2_client_credentials"]
    client_secret: SecretRef


# Token stores that outlive the process. `env` and `memory` forget a rotated token at exit.
DURABLE_TOKEN_STORES = frozenset({"prefect_secret"})


class TokenStoreRef(Model):
    """Where a rotated refresh token is persisted between runs (never a file in the repo)."""

    kind: Literal["prefect_secret", "env", "memory"] = Field(
        description="prefect_secret: a Prefect Secret block (production); env / memory: this "
        "process only (tests, one-off runs; needs process_only: true)."
    )
    name: str = Field(description="Block name, environment variable or key.")
    process_only: bool = Field(
        default=False,
        description="Acknowledge that an env/memory store forgets a rotated refresh token when "
        "the process exits (the next run then sends a revoked token): for tests, or a provider "
        "that never rotates refresh tokens.",
    )

    @model_validator(mode="after")
    def _durable_unless_acknowledged(self) -> TokenStoreRef:
        if self.kind not in DURABLE_TOKEN_STORES and not self.process_only:
            raise ValueError(
                f"kind {self.kind!r} keeps a rotated refresh token only in this "
                "process, so the next run would present a revoked token (invalid_grant) and be "
                f"locked out; use one of {sorted(DURABLE_TOKEN_STORES)}, or set "
                "process_only: true for tests or a provider that never rotates refresh tokens"
            )
        return self


class RestOAuth2RefreshToken(RestOAuth2Common):
    """OAuth2 refresh-token grant; a rotated refresh token is saved to ``token_store``."""

    type: Literal["oauth2_refresh_token"]
    client_secret: SecretRef | None = None
    refresh_token: SecretRef = Field(
        description="The first refresh token; the store's copy wins once it holds one."
    )
    token_store: TokenStoreRef | None = Field(
        default=None,
        description="Where the rotated refresh token is kept between runs; required (Shopify "
        "rotates on every refresh, Salesforce and others can): kind prefect_secret, or an "
        "env/memory store with process_only: true.",
    )

    @model_validator(mode="after")
    def _token_store_required(self) -> RestOAuth2RefreshToken:
        if self.token_store is None:
            raise ValueError(
                "token_store: required for oauth2_refresh_token: a provider that rotates refresh "
                "tokens revokes the old one on every refresh, and a token kept only in memory is "
                "lost when the run ends; e.g. token_store: {kind: prefect_secret, name: "
                "my-source-refresh-token}"
            )
        return self


RestAuth = Annotated[
    RestBearerAuth
    | RestApiKeyAuth
    | RestBasicAuth
    | RestOAuth2ClientCredentials
    | RestOAuth2RefreshToken,
    Field(discriminator="type"),
]

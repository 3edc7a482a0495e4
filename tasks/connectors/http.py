"""HTTP client factory: timeouts, OAuth2 client credentials, and retries with full jitter.

Retries live here, in one place, not in every adapter (docs/platforms.md, *Retries*): connection
errors are always retried; read/write errors only for idempotent calls; 408/425/429/5xx with
full-jitter exponential backoff, honouring ``Retry-After`` (seconds, Shopify's float seconds, or
HTTP date), bounded in attempts and in total time. Stripe's ``Stripe-Should-Retry`` overrides the
status rule. An optional :class:`RequestBudget` paces every attempt (see ``ratelimit.py``).

Transport security lives here too (rules in :mod:`tasks.core.transport`): every client refuses
to send a request over plain http to a non-loopback host unless its owner allowed it, verifies
certificates (against ``ca_bundle`` when one is configured), and logs through the redacting
filter of :mod:`tasks.connectors.redact`.
"""

from __future__ import annotations

import base64
import email.utils
import json
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from tasks.connectors.redact import install_log_redaction, redact, register_secret
from tasks.core.transport import (
    SALESFORCE_DOMAINS,
    display_url,
    insecure_http_problem,
    instance_url_problem,
    is_loopback_host,
)
from tasks.errors import ConfigError, SourceError

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Statuses that say the server did not act on the request, so even a non-idempotent one may be
# resent; a 500/502/504 may have half-happened and is only retried for idempotent calls.
NOT_PROCESSED_STATUS = frozenset({408, 425, 429, 503})
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=10.0)


class RetryBudgetExceeded(httpx.TransportError):
    """Retries ran out of attempts or of total time; the last failure is chained."""


class TokenEndpointUnavailable(httpx.ConnectError):
    """The token endpoint answered a transient status (429/5xx), so the API request itself was
    never sent: as safe to resend as a refused connection, and retried like one."""


class InsecureTransportRefused(httpx.TransportError):
    """A request would have gone over plain http to a non-loopback host; it was not sent."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters (defaults: docs/platforms.md, *Retries*)."""

    max_attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    deadline: float = 120.0
    max_server_wait: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def backoff(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))


class RequestBudget(Protocol):
    """Paces requests: ``with budget.slot(): send`` waits for rate and concurrency budget."""

    def slot(self) -> AbstractContextManager[None]: ...


def should_retry(response: httpx.Response, *, idempotent: bool = True) -> bool:
    """Whether a response deserves another attempt; ``Stripe-Should-Retry`` wins if present."""
    verdict = response.headers.get("Stripe-Should-Retry")
    if verdict is not None:
        return str(verdict).strip().lower() == "true"
    if not idempotent:
        return response.status_code in NOT_PROCESSED_STATUS
    return response.status_code in RETRY_STATUS


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait, from ``Retry-After`` (delay or HTTP date)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def caused_by(
    exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    """Whether ``exc`` or what it was raised from (its cause or context chain) is of ``kinds``."""
    seen: BaseException | None = exc
    for _ in range(10):  # chains are short; a bound keeps a cyclic one from looping
        if seen is None:
            break
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_certificate_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a failed certificate verification."""
    return caused_by(exc, ssl.SSLCertVerificationError)


def send_with_retries(
    client: httpx.Client,
    request: httpx.Request,
    *,
    idempotent: bool,
    policy: RetryPolicy | None = None,
    budget: RequestBudget | None = None,
) -> httpx.Response:
    """Send ``request``; retry transient failures; return the final response.

    A retryable status that survives every attempt is returned (the caller raises with its
    body); transport failures that survive are raised as :class:`RetryBudgetExceeded`.
    Every attempt, retries included, first takes a slot from ``budget`` when one is given.
    """
    policy = policy or RetryPolicy()
    # A request carrying an Idempotency-Key may be replayed: the server dedupes it
    # (docs/platforms.md, *Idempotency*).
    idempotent = idempotent or "Idempotency-Key" in request.headers
    started = time.monotonic()
    last_error: Exception | None = None
    for attempt in range(policy.max_attempts):
        response: httpx.Response | None = None
        try:
            if budget is None:
                response = client.send(request)
            else:
                with budget.slot():
                    response = client.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            if is_certificate_error(exc):
                raise  # a certificate that does not verify will not verify on a retry
            last_error = exc  # never reached the server: always safe to resend
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError) as exc:
            if not idempotent:
                raise  # the server may have acted; the caller must reconcile first
            last_error = exc
        if response is not None and not should_retry(response, idempotent=idempotent):
            return response
        if attempt == policy.max_attempts - 1:
            break
        wait = policy.backoff(attempt)
        if response is not None:
            asked = retry_after_seconds(response)
            if asked is not None:
                if asked > policy.max_server_wait:
                    return response  # park: do not sleep for minutes inside a task
                wait = max(wait, asked)
            response.read()
            response.close()
        if time.monotonic() - started + wait > policy.deadline:
            if response is not None:
                return response
            break
        policy.sleep(wait)
    if response is not None:
        return response
    raise RetryBudgetExceeded(
        redact(
            f"{request.method} {request.url}: gave up after {attempt + 1} attempt(s): {last_error}"
        )
    ) from last_error


ClientAuthMethod = Literal["basic", "body"]

# RFC 6749 §5.2 error codes are short ASCII words; anything else in ``error`` is not shown.
_OAUTH_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_ERROR_DESCRIPTION = 200


def oauth_error_summary(response: httpx.Response, credentials: Iterable[str] = ()) -> str:
    """What a failed token reply may safely say: ``answered <status>`` and, when present and
    harmless, the OAuth ``error`` code and a short ``error_description``.

    The raw body is never shown: some servers echo the submitted form (``client_secret``,
    ``refresh_token``) or a half-issued token in it. A description is dropped when it is long,
    not printable, or contains any of ``credentials`` or any registered secret.
    """
    summary = f"answered {response.status_code}"
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    code = body.get("error") if isinstance(body, dict) else None
    if not isinstance(code, str) or not _OAUTH_ERROR_CODE.match(code):
        return f"{summary} (body not shown)"
    summary = f"{summary}: {code}"
    description = body.get("error_description") if isinstance(body, dict) else None
    if (
        isinstance(description, str)
        and 0 < len(description) <= MAX_ERROR_DESCRIPTION
        and description.isprintable()
        and not any(c and c in description for c in credentials)
        and redact(description) == description
    ):
        summary = f"{summary} ({description})"
    return summary


class OAuth2ClientCredentials(httpx.Auth):
    """RFC 6749 §4.4 client credentials; caches the token and refreshes it once on a 401.

    The token is reused until ``margin`` seconds before it expires. Overrides
    ``sync_auth_flow`` so a lock can serialise refreshes across threads; with that override
    httpx does not read bodies for us, so responses are read explicitly.

    Extension points (used by the refresh-token grant in ``auth.py``): :meth:`_grant_data`
    (the form fields of the grant) and :meth:`_on_token_reply` (what else a reply carries).
    ``header``/``prefix`` place the token (``X-Shopify-Access-Token`` takes no ``Bearer``);
    ``instance_url_field`` names a token-reply field whose URL becomes the API host
    (Salesforce's ``instance_url``). That URL is pinned (see
    :func:`tasks.core.transport.instance_url_problem`): https on ``instance_url_domains`` or on
    the origin of ``base_url``/``token_url``; anything else stops the run with a
    :class:`SourceError` naming ``owner`` before the token is sent anywhere.

    Error messages never carry a response body, only :func:`oauth_error_summary`; the client
    secret and every issued token are registered for log redaction.
    """

    grant_type = "client_credentials"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None,
        *,
        scope: str | None = None,
        margin: float = 60.0,
        clock: Callable[[], float] = time.time,
        client_auth: ClientAuthMethod = "basic",
        header: str = "Authorization",
        prefix: str = "Bearer ",
        instance_url_field: str | None = None,
        instance_url_domains: Iterable[str] = SALESFORCE_DOMAINS,
        base_url: str | None = None,
        allow_insecure_http: bool = False,
        owner: str = "token endpoint",
    ) -> None:
        self.token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._margin = margin
        self._clock = clock
        self._client_auth = client_auth
        self._header = header
        self._prefix = prefix
        self._instance_url_field = instance_url_field
        self._instance_url_domains = tuple(instance_url_domains)
        self._trusted_urls = tuple(u for u in (base_url, token_url) if u and "://" in u)
        self._base_is_loopback = is_loopback_host(httpx.URL(base_url or token_url).host)
        self._allow_insecure_http = allow_insecure_http
        self._owner = owner
        self._token: str | None = None
        self._expires_at = 0.0
        self._instance: httpx.URL | None = None
        self._lock = threading.Lock()
        self.refreshes = 0
        register_secret(client_secret)

    def _credentials(self) -> list[str]:
        """Secrets this grant submits (never to appear in an error message)."""
        return [c for c in (self._client_secret, self._token) if c]

    def _grant_data(self) -> dict[str, str]:
        data = {"grant_type": self.grant_type}
        if self._scope:
            data["scope"] = self._scope
        return data

    def _token_request(self) -> httpx.Request:
        data = self._grant_data()
        headers = {"Accept": "application/json"}
        if self._client_auth == "basic" and self._client_secret is not None:
            credentials = f"{self._client_id}:{self._client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
        else:
            data["client_id"] = self._client_id
            if self._client_secret is not None:
                data["client_secret"] = self._client_secret
        return httpx.Request("POST", self.token_url, data=data, headers=headers)

    def _on_token_reply(self, body: dict[str, Any]) -> None:
        """Hook for subclasses: called with every successful token reply."""

    def _endpoint(self) -> str:
        return f"token endpoint {display_url(self.token_url)}"

    def _store(self, response: httpx.Response) -> str:
        response.read()
        if response.status_code in RETRY_STATUS:
            raise TokenEndpointUnavailable(
                f"{self._endpoint()} {oauth_error_summary(response, self._credentials())}",
                request=response.request,
            )
        if response.status_code != 200:
            raise httpx.HTTPStatusError(
                f"{self._endpoint()} {oauth_error_summary(response, self._credentials())}",
                request=response.request,
                response=response,
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise httpx.DecodingError(
                f"{self._endpoint()} returned non-JSON "
                f"({response.headers.get('content-type')}; body not shown)",
                request=response.request,
            ) from exc
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise httpx.DecodingError(
                f"{self._endpoint()}: no access_token in reply", request=response.request
            )
        register_secret(token)
        self._on_token_reply(body)
        instance = self._instance_from(body)
        self._token = token
        # Salesforce omits expires_in: assume an hour and rely on the refresh-on-401.
        self._expires_at = self._clock() + float(body.get("expires_in") or 3600)
        if instance is not None:
            self._instance = instance
        self.refreshes += 1
        return token

    def _instance_from(self, body: dict[str, Any]) -> httpx.URL | None:
        """The pinned API host named by the reply, or ``None`` (keep the configured one)."""
        if not self._instance_url_field:
            return None
        value = body.get(self._instance_url_field)
        if not isinstance(value, str):
            return None
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            url = httpx.URL()
        # Judge exactly what _apply will use (httpx's parse), so no parser can disagree.
        host = f"[{url.host}]" if ":" in url.host else url.host
        port = "" if url.port is None else f":{url.port}"
        problem = instance_url_problem(
            f"{url.scheme}://{host}{port}",
            domains=self._instance_url_domains,
            trusted_urls=self._trusted_urls,
            allow_insecure_http=self._allow_insecure_http,
            base_is_loopback=self._base_is_loopback,
        )
        if problem is not None:
            raise SourceError(
                redact(
                    f"{self._owner}: {self._endpoint()} returned {self._instance_url_field} "
                    f"{display_url(value)!r}, which {problem}; the access token was not sent "
                    f"there (allowed: https on {list(self._instance_url_domains)} or the "
                    "base_url/token_url origin; see auth.instance_url_domains)"
                )
            )
        return url

    def _apply(self, request: httpx.Request, token: str) -> None:
        request.headers[self._header] = f"{self._prefix}{token}"
        if self._instance is not None:
            request.url = request.url.copy_with(
                scheme=self._instance.scheme, host=self._instance.host, port=self._instance.port
            )
            request.headers["Host"] = request.url.netloc.decode("ascii")

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            token = self._token
            if token is None or self._clock() > self._expires_at - self._margin:
                token = self._store((yield self._token_request()))
        self._apply(request, token)
        response = yield request
        if response.status_code == 401:  # revoked or expired early: refresh once, resend once
            response.read()
            with self._lock:
                current = self._token
                if current is None or current == token:
                    token = self._store((yield self._token_request()))
                else:
                    token = current  # another thread refreshed while we were waiting
            self._apply(request, token)
            yield request


def tls_verification(ca_bundle: str | None, *, owner: str) -> ssl.SSLContext | bool:
    """httpx ``verify=``: the default trust store, or only the CAs in ``ca_bundle``.

    Never ``False``: certificate verification cannot be turned off from config. A bundle that
    cannot be read raises :class:`ConfigError` naming ``<owner>.ca_bundle``.
    """
    if ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{owner}.ca_bundle: cannot load CA certificates from {ca_bundle!r}: {exc}"
        ) from exc


def refuse_insecure_http(
    *, allow_insecure_http: bool, owner: str
) -> Callable[[httpx.Request], None]:
    """A request hook that refuses plain http to non-loopback hosts (unless allowed).

    Runs for every request the client sends, token-endpoint calls and pinned instance URLs
    included, so no URL learned at run time can take credentials off an encrypted channel.
    """

    def check(request: httpx.Request) -> None:
        problem = insecure_http_problem(str(request.url), allow_insecure_http=allow_insecure_http)
        if problem is not None:
            raise InsecureTransportRefused(
                f"{owner}: refusing to send {request.method} {display_url(str(request.url))}: "
                f"the URL {problem}",
                request=request,
            )

    return check


def build_client(
    base_url: str,
    *,
    auth: httpx.Auth | None = None,
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    max_connections: int = 10,
    transport: httpx.BaseTransport | None = None,
    allow_insecure_http: bool = False,
    ca_bundle: str | None = None,
    owner: str = "http client",
) -> httpx.Client:
    """The one place HTTP clients are made (tests pass ``transport`` or a loopback base_url).

    Every client verifies certificates (against ``ca_bundle`` when given), refuses plain http to
    non-loopback hosts unless ``allow_insecure_http``, and logs through the redacting filter.
    ``owner`` names the config block in errors (``sources.crm``).
    """
    install_log_redaction()
    return httpx.Client(
        base_url=base_url,
        auth=auth,
        headers=headers,
        timeout=timeout,
        # Keep every connection alive: a destination sends on all of them at once (Mailchimp's
        # 10), and with fewer kept alive every batch past the fifth opened a new connection.
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
        verify=tls_verification(ca_bundle, owner=owner),
        event_hooks={
            "request": [refuse_insecure_http(allow_insecure_http=allow_insecure_http, owner=owner)]
        },
    )

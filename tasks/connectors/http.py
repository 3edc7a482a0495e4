"""HTTP client factory: timeouts, OAuth2 client credentials, and retries with full jitter.

Retries live here, in one place, not in every adapter (API_NOTES §1.1): connection errors are
always retried; read/write errors only for idempotent calls; 408/425/429/5xx with full-jitter
exponential backoff, honouring ``Retry-After`` (seconds, Shopify's float seconds, or HTTP date),
bounded in attempts and in total time. Stripe's ``Stripe-Should-Retry`` overrides the status
rule. An optional :class:`RequestBudget` paces every attempt (see ``ratelimit.py``).
"""

from __future__ import annotations

import base64
import email.utils
import random
import threading
import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

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


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters (defaults from API_NOTES §1.1)."""

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
    # A request carrying an Idempotency-Key may be replayed: the server dedupes it (§1.2).
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
        f"{request.method} {request.url}: gave up after {attempt + 1} attempt(s): {last_error}"
    ) from last_error


ClientAuthMethod = Literal["basic", "body"]


class OAuth2ClientCredentials(httpx.Auth):
    """RFC 6749 §4.4 client credentials; caches the token and refreshes it once on a 401.

    The token is reused until ``margin`` seconds before it expires. Overrides
    ``sync_auth_flow`` so a lock can serialise refreshes across threads; with that override
    httpx does not read bodies for us, so responses are read explicitly.

    Extension points (used by the refresh-token grant in ``auth.py``): :meth:`_grant_data`
    (the form fields of the grant) and :meth:`_on_token_reply` (what else a reply carries).
    ``header``/``prefix`` place the token (``X-Shopify-Access-Token`` takes no ``Bearer``);
    ``instance_url_field`` names a token-reply field whose URL becomes the API host
    (Salesforce's ``instance_url``).
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
        self._token: str | None = None
        self._expires_at = 0.0
        self._instance: httpx.URL | None = None
        self._lock = threading.Lock()
        self.refreshes = 0

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

    def _store(self, response: httpx.Response) -> str:
        response.read()
        if response.status_code in RETRY_STATUS:
            raise TokenEndpointUnavailable(
                f"token endpoint {self.token_url} answered {response.status_code}: "
                f"{response.text[:300]}",
                request=response.request,
            )
        if response.status_code != 200:
            raise httpx.HTTPStatusError(
                f"token endpoint {self.token_url} answered {response.status_code}: "
                f"{response.text[:300]}",
                request=response.request,
                response=response,
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise httpx.DecodingError(
                f"token endpoint {self.token_url} returned non-JSON: {response.text[:120]!r}"
            ) from exc
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise httpx.DecodingError(f"token endpoint {self.token_url}: no access_token in reply")
        self._on_token_reply(body)
        self._token = token
        # Salesforce omits expires_in: assume an hour and rely on the refresh-on-401.
        self._expires_at = self._clock() + float(body.get("expires_in") or 3600)
        if self._instance_url_field and isinstance(body.get(self._instance_url_field), str):
            self._instance = httpx.URL(body[self._instance_url_field])
        self.refreshes += 1
        return token

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


def build_client(
    base_url: str,
    *,
    auth: httpx.Auth | None = None,
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    max_connections: int = 10,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """The one place HTTP clients are made (tests pass ``transport`` or a loopback base_url)."""
    return httpx.Client(
        base_url=base_url,
        auth=auth,
        headers=headers,
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=5),
        transport=transport,
    )

"""HTTP client factory: timeouts, OAuth2 client credentials, and retries with full jitter.

Retries live here, in one place, not in every adapter (API_NOTES §1.1): connection errors are
always retried; read/write errors only for idempotent calls; 408/425/429/5xx with full-jitter
exponential backoff, honouring ``Retry-After`` (seconds or HTTP date), bounded in attempts and
in total time.
"""

from __future__ import annotations

import base64
import email.utils
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import httpx

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=10.0)


class RetryBudgetExceeded(httpx.TransportError):
    """Retries ran out of attempts or of total time; the last failure is chained."""


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
) -> httpx.Response:
    """Send ``request``; retry transient failures; return the final response.

    A retryable status that survives every attempt is returned (the caller raises with its
    body); transport failures that survive are raised as :class:`RetryBudgetExceeded`.
    """
    policy = policy or RetryPolicy()
    started = time.monotonic()
    last_error: Exception | None = None
    for attempt in range(policy.max_attempts):
        response: httpx.Response | None = None
        try:
            response = client.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            last_error = exc  # never reached the server: always safe to resend
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError) as exc:
            if not idempotent:
                raise  # the server may have acted; the caller must reconcile first
            last_error = exc
        if response is not None and response.status_code not in RETRY_STATUS:
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


class OAuth2ClientCredentials(httpx.Auth):
    """RFC 6749 §4.4 client credentials; caches the token and refreshes it once on a 401.

    Overrides ``sync_auth_flow`` so a lock can serialise refreshes across threads; with that
    override httpx does not read bodies for us, so responses are read explicitly.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        margin: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._margin = margin
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.refreshes = 0

    def _token_request(self) -> httpx.Request:
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        credentials = f"{self._client_id}:{self._client_secret}".encode()
        return httpx.Request(
            "POST",
            self.token_url,
            data=data,
            headers={
                "Accept": "application/json",
                "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
            },
        )

    def _store(self, response: httpx.Response) -> str:
        response.read()
        if response.status_code != 200:
            raise httpx.HTTPStatusError(
                f"token endpoint {self.token_url} answered {response.status_code}: "
                f"{response.text[:300]}",
                request=response.request,
                response=response,
            )
        body = response.json()
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise httpx.DecodingError(f"token endpoint {self.token_url}: no access_token in reply")
        self._token = token
        self._expires_at = self._clock() + float(body.get("expires_in") or 3600)
        self.refreshes += 1
        return token

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            if self._token is None or self._clock() > self._expires_at - self._margin:
                self._store((yield self._token_request()))
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: refresh once, resend once
            response.read()
            with self._lock:
                token = self._store((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {token}"
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

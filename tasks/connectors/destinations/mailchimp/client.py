"""The Mailchimp adapter's base: construction, the bounded pool, and every HTTP call.

:class:`MailchimpClient` holds what every part of the adapter shares (the HTTP client, the pool
of at most ``max_connections`` threads, the stop flag a write call sets when its retries run
out); the parts that speak to one Mailchimp API build on it (:mod:`.fields`, :mod:`.members`,
:mod:`.suppressions`, :mod:`.erasure`) and :class:`.adapter.Mailchimp` joins them.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import httpx

from tasks.connectors.destinations.mailchimp.responses import _short
from tasks.connectors.destinations.protocol import PlannedOperation
from tasks.connectors.destinations.wire import chunks
from tasks.connectors.http import (
    InsecureTransportRefused,
    RetryPolicy,
    is_certificate_error,
    send_with_retries,
)
from tasks.connectors.redact import redact
from tasks.core.send_budget import CallCount, RateBudget, RateWindow
from tasks.errors import PublishError

MAX_BATCH = 500
"""Members per batch subscribe call (the spec's ``members`` description)."""
MAX_CONNECTIONS = 10
"""Simultaneous connections Mailchimp allows per account (spec ``info.description``)."""
RATE_BUDGET = RateBudget("mailchimp", (RateWindow(MAX_CONNECTIONS, 1.0),))
"""For the send-budget planner: Mailchimp documents a connection cap, not a rate; at about one
second per call (a 500-member batch takes that) 10 connections give 10 calls a second."""
PAGE_SIZE = 1000
"""Members per read (``count`` maximum)."""
MAX_PAGES = 10_000
"""Bound on the pages one suppression read may take (10 M members at 1,000 a page)."""

T = TypeVar("T")
R = TypeVar("R")


def subscriber_hash(email_address: str) -> str:
    """Mailchimp's member key: ``md5(email.strip().lower())`` as hex."""
    return hashlib.md5(email_address.strip().lower().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Transient:
    """A call that still failed transiently when its retry budget ran out (``error``: the
    transport error, when there was one, so a caller can tell an unreachable platform)."""

    reason: str
    error: BaseException | None = field(default=None, compare=False)


class MailchimpClient:
    """What every part of the Mailchimp adapter shares: the client, the pool, the stop flag."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        batch_size: int = MAX_BATCH,
        max_connections: int = MAX_CONNECTIONS,
        page_size: int = PAGE_SIZE,
        policy: RetryPolicy | None = None,
        erase_lists: Sequence[str] = (),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        if not 1 <= max_connections <= MAX_CONNECTIONS:
            raise ValueError(f"max_connections must be 1..{MAX_CONNECTIONS}, got {max_connections}")
        if not 2 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 2..{PAGE_SIZE}, got {page_size}")
        self._client = client
        self._batch_size = batch_size
        self._max_connections = max_connections
        self._page_size = page_size
        self._policy = policy
        self._erase_lists = tuple(erase_lists)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._pool = ThreadPoolExecutor(max_connections, thread_name_prefix="mailchimp")
        # Set once a write call exhausted its retries; every later write call on this adapter
        # (the publish engine opens one per audience publish and sends batch by batch) then
        # fails its members retryably without a request.
        self._stopped = threading.Event()
        self._count_lock = threading.Lock()
        self.requests_sent = 0
        """HTTP requests that got an answer (retries included), for tests and the planner."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def planned_calls(
        self, operation: PlannedOperation, members: int, *, retagged: int = 0
    ) -> list[CallCount]:
        """Batch subscribe calls of ``batch_size`` (upserts and unsubscribes), one tag call per
        retagged member (tags ride in the batch only for new members), one archive per removal,
        one merge-field read for the field check."""
        batches = math.ceil(members / self._batch_size)
        if operation == "fields":
            return [CallCount("merge-field read", 1, RATE_BUDGET)]
        if operation == "upsert":
            return [CallCount("batch subscribe", batches, RATE_BUDGET),
                    CallCount("tag update", retagged, RATE_BUDGET)]  # fmt: skip
        if operation == "unsubscribe":
            return [CallCount("batch subscribe", batches, RATE_BUDGET)]
        return [CallCount("member archive", members, RATE_BUDGET)]

    # -- batches and the bounded pool ------------------------------------------------------------
    def _batches(self, members: Sequence[T]) -> Iterator[Sequence[T]]:
        return chunks(members, self._batch_size)

    def _bounded(self, work: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``work`` over ``items`` on at most ``max_connections`` threads, results in order."""
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(self._pool.submit(work, item))
                if len(pending) >= self._max_connections:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    # -- HTTP -----------------------------------------------------------------------------------
    def _get(
        self,
        path: str,
        *,
        what: str,
        params: Mapping[str, str | int] | None = None,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        request = self._client.build_request("GET", path, params=params)
        response = self._send(request, what, policy=policy)
        if isinstance(response, _Transient):
            message = redact(f"mailchimp {what!r}: GET {request.url}: {response.reason}")
            raise PublishError(message) from response.error
        if response.status_code != 200:
            raise PublishError(
                redact(
                    f"mailchimp {what!r}: GET {request.url} answered {response.status_code}: "
                    f"{response.text[:200]}"
                )
            )
        return response

    def _send(
        self,
        request: httpx.Request,
        what: str,
        *,
        idempotent: bool = True,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response | _Transient:
        try:
            response = send_with_retries(
                self._client, request, idempotent=idempotent, policy=policy or self._policy
            )
        except httpx.HTTPError as exc:
            permanent = isinstance(exc, InsecureTransportRefused) or is_certificate_error(exc)
            if isinstance(exc, httpx.TransportError) and not permanent:
                return _Transient(redact(f"{request.method} {request.url}: {exc}"), exc)
            raise PublishError(redact(f"mailchimp list {what!r}: {exc}")) from exc
        with self._count_lock:
            self.requests_sent += 1
        return response

    @staticmethod
    def _raise_unless_member_error(response: httpx.Response, audience: str) -> None:
        """A 401/403 is the account, not the member: stop the run."""
        if response.status_code in (401, 403):
            raise PublishError(redact(f"mailchimp list {audience!r}: {_short(response)}"))

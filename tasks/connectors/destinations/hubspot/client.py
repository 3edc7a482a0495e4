"""The HubSpot adapter's base: construction, paced and retried requests, batches in flight.

:class:`HubSpotClient` holds what every part of the adapter shares (the HTTP client, the request
budget, the pool of batches in flight); the parts that speak to one HubSpot API build on it
(:mod:`.contacts`, :mod:`.consent`, :mod:`.erasure`) and :class:`.adapter.HubSpot` joins them.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import httpx

from tasks.connectors.destinations.hubspot.pacing import (
    BURST_PER_WINDOW,
    MAX_BATCH,
    MAX_IN_FLIGHT,
    RATE_BUDGET,
    WINDOW_SECONDS,
    WINDOW_SLACK_SECONDS,
    RollingWindowBudget,
)
from tasks.connectors.destinations.hubspot.responses import _error_message
from tasks.connectors.destinations.protocol import PlannedOperation
from tasks.connectors.http import RequestBudget, RetryPolicy, send_with_retries
from tasks.connectors.redact import redact
from tasks.core.send_budget import CallCount
from tasks.errors import PublishError

DEFAULT_PROPERTY_GROUP = "contactinformation"
UnsubscribeScope = Literal["subscription", "all"]
_Batch = TypeVar("_Batch")
_Result = TypeVar("_Result")


class HubSpotClient:
    """What every part of the HubSpot adapter shares: the client, pacing, batches in flight."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        subscription_id: int,
        unsubscribe_scope: UnsubscribeScope = "subscription",
        property_group: str = DEFAULT_PROPERTY_GROUP,
        batch_size: int = MAX_BATCH,
        policy: RetryPolicy | None = None,
        budget: RequestBudget | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._client = client
        self._subscription_id = subscription_id
        self._unsubscribe_scope = unsubscribe_scope
        self._property_group = property_group
        self._batch_size = batch_size
        self._policy = policy
        self._budget = budget or RollingWindowBudget(
            BURST_PER_WINDOW, WINDOW_SECONDS + WINDOW_SLACK_SECONDS
        )
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._sent_lock = threading.Lock()
        self.requests_sent = 0

    def close(self) -> None:
        self._client.close()

    def planned_calls(
        self, operation: PlannedOperation, members: int, *, retagged: int = 0
    ) -> list[CallCount]:
        """Per batch of ``batch_size``: an upsert and a list add; a status write; or a batch
        read and a list remove. One properties read for the field check. (A batch that repeats
        an email is split; the planner does not foresee that.)"""
        if operation == "fields":
            return [CallCount("properties read", 1, RATE_BUDGET)]
        batches = math.ceil(members / self._batch_size)
        if operation == "upsert":
            return [CallCount("batch upsert", batches, RATE_BUDGET),
                    CallCount("list add", batches, RATE_BUDGET)]  # fmt: skip
        if operation == "unsubscribe":
            return [CallCount("status write", batches, RATE_BUDGET)]
        return [CallCount("batch read", batches, RATE_BUDGET),
                CallCount("list remove", batches, RATE_BUDGET)]  # fmt: skip

    def _pipelined(
        self,
        batches: Iterable[_Batch],
        send: Callable[[_Batch], list[_Result]],
        keys: Callable[[_Batch], set[str]] = lambda _: set(),
    ) -> Iterator[_Result]:
        """``send`` each batch, up to ``max_in_flight`` at once; results in batch order.

        A batch that shares a key (an email) with one still in flight waits for it, so two
        writes about one person reach HubSpot in order. The pool is left only when every
        batch sent has finished, also when the caller stops early or a batch fails.
        """
        with ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="hubspot") as pool:
            pending: deque[tuple[Future[list[_Result]], set[str]]] = deque()
            for batch in batches:
                batch_keys = keys(batch)
                while pending and (
                    len(pending) >= self._max_in_flight
                    or any(batch_keys & waiting for _, waiting in pending)
                ):
                    yield from pending.popleft()[0].result()
                pending.append((pool.submit(send, batch), batch_keys))
            while pending:
                yield from pending.popleft()[0].result()

    # -- HTTP ---------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        ok: tuple[int, ...] = (200,),
        what: str,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        """Send one request (paced, retried); a status outside ``ok`` is a :class:`PublishError`
        naming ``what``, the request and HubSpot's own message (the token never shown)."""
        request = self._client.build_request(method, path, json=json, params=params)
        try:
            # Every call here is safe to repeat: upserts by email, set-like membership changes,
            # absolute status writes, and erasure.
            response = send_with_retries(
                self._client,
                request,
                idempotent=True,
                policy=policy or self._policy,
                budget=self._budget,
            )
        except httpx.HTTPError as exc:
            raise PublishError(redact(f"hubspot: {what}: {method} {request.url}: {exc}")) from exc
        with self._sent_lock:
            self.requests_sent += 1
        if response.status_code not in ok:
            raise PublishError(
                redact(
                    f"hubspot: {what}: {method} {request.url.path} answered "
                    f"{response.status_code}: {_error_message(response)}"
                )
            )
        return response

    @staticmethod
    def _body(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise PublishError(
                redact(f"hubspot: {what}: unreadable response {response.text[:200]!r}")
            ) from exc
        if not isinstance(body, dict):
            raise PublishError(redact(f"hubspot: {what}: expected an object, got {body!r:.200}"))
        return body

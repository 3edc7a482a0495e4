"""The Klaviyo adapter's base: construction, pacing, and every HTTP call (paged reads too).

:class:`KlaviyoClient` holds what every part of the adapter shares (the HTTP client, one pacer
per rate class, the call counter); the parts that speak to one Klaviyo API build on it
(:mod:`.profiles`, :mod:`.consent`, :mod:`.erasure`) and :class:`.adapter.Klaviyo` joins them.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from tasks.connectors.destinations.klaviyo.pacing import (
    RATE_BUDGETS,
    RATE_CLASSES,
    RatePacer,
    rate_class,
)
from tasks.connectors.destinations.klaviyo.responses import _error_text
from tasks.connectors.destinations.protocol import PlannedOperation
from tasks.connectors.http import RetryPolicy, send_with_retries
from tasks.connectors.redact import redact
from tasks.core.send_budget import CallCount
from tasks.errors import PublishError

REVISION = "2026-07-15"
JSONAPI = "application/vnd.api+json"
IMPORT_MAX_PROFILES = 10_000
IMPORT_MAX_BYTES = 5 * 1024 * 1024
IMPORT_BUDGET_BYTES = 4_500_000
"""Batches are cut below the 5 MB payload limit, leaving room for the JSON:API envelope."""
PROFILE_MAX_BYTES = 100 * 1024
UNSUBSCRIBE_MAX = 100
LIST_WRITE_MAX = 1000
LOOKUP_MAX = 100
PAGE_SIZE = 100
MAX_PAGES = 10_000
FINAL_OK = "complete"
RUNNING = frozenset({"queued", "processing"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KlaviyoClient:
    """What every part of the Klaviyo adapter shares: the client, the pacers, the call count."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        policy: RetryPolicy | None = None,
        batch_size: int = IMPORT_MAX_PROFILES,
        poll_interval: float = 2.0,
        poll_timeout: float = 900.0,
        tags_property: str = "tags",
        page_size: int = PAGE_SIZE,
        pace: bool = True,
        time_scale: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= batch_size <= IMPORT_MAX_PROFILES:
            raise ValueError(f"batch_size must be 1..{IMPORT_MAX_PROFILES}, got {batch_size}")
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}, got {page_size}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self._client = client
        self._policy = policy
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._poll_timeout = poll_timeout
        self._tags_property = tags_property
        self._page_size = page_size
        self._sleep = sleep
        self._origin = urlsplit(str(client.base_url))[:2]
        self._pacers = (
            {
                name: RatePacer(f"klaviyo-{name}", *limits, time_scale=time_scale)
                for name, limits in RATE_CLASSES.items()
            }
            if pace
            else {}
        )
        self._sent_lock = threading.Lock()
        self.requests_sent = 0
        """HTTP calls made (retries included); the publish engine calls from several threads."""

    @property
    def paced_seconds(self) -> float:
        """Seconds spent waiting for the client-side rate budget."""
        return sum(pacer.waited for pacer in self._pacers.values())

    def planned_calls(
        self, operation: PlannedOperation, members: int, *, retagged: int = 0
    ) -> list[CallCount]:
        """Per import job of ``batch_size`` profiles: the job and one poll (a job that takes
        longer is polled again every ``poll_interval``; one that reports failed profiles costs
        an import-error read as well, not foreseen: the plan assumes none). Unsubscribes:
        one job per 100. Removals: one profile lookup per 100, one list delete per 1,000. No
        field check (Klaviyo has no field catalogue). Tags are a property: ``retagged`` is free.
        Jobs cut early by the 4.5 MB payload budget are not foreseen."""
        if operation == "upsert":
            jobs = math.ceil(members / self._batch_size)
            return [CallCount("import job", jobs, RATE_BUDGETS["import"]),
                    CallCount("import job poll", jobs, RATE_BUDGETS["import"])]  # fmt: skip
        if operation == "unsubscribe":
            calls = math.ceil(members / UNSUBSCRIBE_MAX)
            return [CallCount("unsubscribe job", calls, RATE_BUDGETS["consent"])]
        if operation == "remove":
            return [CallCount("profile lookup", math.ceil(members / LOOKUP_MAX),
                              RATE_BUDGETS["reads"]),
                    CallCount("list remove", math.ceil(members / LIST_WRITE_MAX),
                              RATE_BUDGETS["list_writes"])]  # fmt: skip
        return []

    def close(self) -> None:
        for pacer in self._pacers.values():
            pacer.close()
        self._client.close()

    # -- HTTP ------------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        expect: tuple[int, ...] = (200,),
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        """One API call with retries; a final answer outside ``expect`` is a PublishError.

        Every call here is safe to repeat (imports and consent jobs are keyed by email, list
        writes and deletions converge), so retries treat them all as idempotent.
        """
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": JSONAPI} if content is not None else None
        request = self._client.build_request(
            method, url, params=dict(params) if params else None, content=content, headers=headers
        )
        budget = self._pacers.get(rate_class(method, request.url.path))
        try:
            response = send_with_retries(
                self._client,
                request,
                idempotent=True,
                policy=policy or self._policy,
                budget=budget,
            )
        except httpx.HTTPError as exc:
            raise PublishError(redact(f"klaviyo: {method} {request.url.path}: {exc}")) from exc
        finally:
            with self._sent_lock:
                self.requests_sent += 1
        if response.status_code not in expect:
            raise PublishError(
                redact(
                    f"klaviyo: {method} {request.url.path} answered {response.status_code}: "
                    f"{_error_text(response)}"
                )
            )
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise PublishError(
                redact(f"klaviyo: {response.request.url.path}: unreadable JSON response")
            ) from exc
        if not isinstance(body, dict):
            raise PublishError(f"klaviyo: {response.request.url.path}: expected a JSON object")
        return body

    def _pages(self, path: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Every ``data`` item of a collection, following ``links.next`` (bounded)."""
        url: str | None = path
        query: Mapping[str, str] | None = params
        for _ in range(MAX_PAGES):
            if url is None:
                return
            body = self._json(self._send("GET", url, params=query))
            yield from body.get("data") or []
            url, query = self._next_link(body), None
        raise PublishError(f"klaviyo: {path}: more than {MAX_PAGES} pages; stopped")

    def _next_link(self, body: Mapping[str, Any]) -> str | None:
        links = body.get("links")
        nxt = links.get("next") if isinstance(links, dict) else None
        if not nxt:
            return None
        if urlsplit(str(nxt))[:2] != self._origin:
            raise PublishError(
                f"klaviyo: links.next points to {urlsplit(str(nxt)).netloc!r}, not the "
                "configured base_url; not following it (the API key would go along)"
            )
        return str(nxt)

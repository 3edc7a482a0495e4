"""``kind: rest``: any JSON REST API, driven by its ``pipeline.yaml`` block (no code per API).

The reader renders the request template (``{since}`` = watermark minus overlap), sends each page
through the shared resilient client (retries with full jitter, ``Retry-After``,
``Stripe-Should-Retry``; a proactive :class:`~tasks.connectors.ratelimit.RateBudget`), picks the
records out of the reply, flattens them into string columns and hands batches to the ingest task,
which merges them on the primary key. Wire formats: docs/platforms.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from tasks.connectors.auth import build_auth
from tasks.connectors.http import RetryPolicy, build_client, send_with_retries
from tasks.connectors.ratelimit import RateBudget
from tasks.connectors.redact import redact
from tasks.connectors.sources.base import SourceBatch, WriteMode, strings_frame
from tasks.connectors.sources.paginators import (
    Page,
    PageRequest,
    PaginationError,
    cursor_millis,
    dig,
    make_paginator,
)
from tasks.core.config_rest import Incremental, RestSource
from tasks.core.config_rest_presets import SINCE
from tasks.errors import SourceError

__all__ = ["ExtractStats", "RestReader", "cursor_millis", "open_rest_source", "render_since"]

_NOT_FOUND = object()


# --- cursor values --------------------------------------------------------------------------


def render_since(millis: int, fmt: str) -> str:
    """A time as the API expects it in ``{since}`` (floored: the merge absorbs the extra)."""
    millis = max(0, millis)
    if fmt == "epoch_ms":
        return str(millis)
    if fmt == "epoch_s":
        return str(millis // 1000)
    return datetime.fromtimestamp(millis // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def since_millis(incremental: Incremental, watermark: str | None) -> int:
    """Where a run starts: the watermark minus the overlap, or ``start`` on the first run."""
    if watermark is None:
        start = cursor_millis(incremental.start)
        if start is None:
            raise SourceError(f"incremental.start {incremental.start!r} is not a time")
        return start
    millis = cursor_millis(watermark)
    if millis is None:
        raise SourceError(
            f"watermark {watermark!r} of {incremental.cursor_field!r} is not a time "
            "(ISO-8601 or epoch seconds/milliseconds)"
        )
    return max(0, millis - int(incremental.overlap_seconds * 1000))


def _sort_millis(value: Any) -> int:
    """Sort key of a cursor value; a row without a readable time sorts first (never lifts)."""
    millis = cursor_millis(value)
    return -1 if millis is None else millis


def _substitute(value: Any, since: str) -> Any:
    if isinstance(value, str):
        return value.replace(SINCE, since)
    if isinstance(value, dict):
        return {k: _substitute(v, since) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, since) for v in value]
    return value


# --- records --------------------------------------------------------------------------------


def as_text(value: Any) -> str | None:
    """A JSON value as bronze text: strings as is, JSON spelling for the rest, None as null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def flatten_record(record: dict[str, Any], lift: list[str], exclude: list[str]) -> dict[str, Any]:
    """One row: top-level keys, plus the keys of each lifted object (top-level keys win)."""
    lifted_roots = {path for path in lift if "." not in path}
    row = {k: v for k, v in record.items() if k not in exclude and k not in lifted_roots}
    for path in lift:
        nested = dig(record, path)
        if isinstance(nested, dict):
            for key, value in nested.items():
                row.setdefault(key, value)
    return row


@dataclass
class ExtractStats:
    """What one reader did: pages and rows read."""

    pages: int = 0
    rows: int = 0


class RestReader:
    """A configured ``kind: rest`` source (see :class:`tasks.core.config_rest.RestSource`)."""

    write_mode: WriteMode = "merge"

    def __init__(
        self,
        config: RestSource,
        *,
        source_name: str,
        client: httpx.Client | None = None,
        policy: RetryPolicy | None = None,
        budget: RateBudget | None = None,
    ) -> None:
        self._config = config
        self._name = source_name
        self.primary_key: str | None = config.primary_key
        self.cursor_field: str | None = config.cursor_field
        self._paginator = make_paginator(config.paginator)
        self.budget = budget or RateBudget(
            requests_per_second=config.budget.requests_per_second,
            max_concurrency=config.budget.max_concurrency,
            name=source_name,
        )
        retry = config.retry
        self._policy = policy or RetryPolicy(
            max_attempts=retry.max_attempts,
            base=retry.base_seconds,
            cap=retry.cap_seconds,
            deadline=retry.deadline_seconds,
            max_server_wait=retry.max_server_wait_seconds,
        )
        self._client = client or build_client(
            config.base_url,
            auth=build_auth(
                config.auth,
                base_url=config.base_url,
                source_name=source_name,
                allow_insecure_http=config.allow_insecure_http,
            ),
            headers=dict(config.headers),
            timeout=httpx.Timeout(config.timeout_seconds, connect=10.0, pool=60.0),
            max_connections=config.budget.max_concurrency,
            allow_insecure_http=config.allow_insecure_http,
            ca_bundle=config.ca_bundle,
            owner=f"sources.{source_name}",
        )
        self._base = httpx.URL(config.base_url)
        self.stats = ExtractStats()

    def close(self) -> None:
        self._client.close()
        self.budget.close()

    def probe(self) -> int:
        """One authenticated read of the first page (as configured; nothing is stored): the
        number of records it held. ``audience-lake doctor`` calls this; it never writes."""
        incremental = self._config.incremental
        window = since_millis(incremental, None) if incremental is not None else None
        page = self._fetch(self._paginator.first(self._template(window)))
        return len(page.records)

    # -- batches ----------------------------------------------------------------------------
    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        """Rows since the watermark, in batches of ``rows_per_batch`` (merged on the key)."""
        del is_committed  # entity source: idempotent by merge, not by batch
        incremental = self._config.incremental
        held = incremental is not None and incremental.order != "ascending"
        buffer: dict[str, dict[str, Any]] = {}
        for rows in self._pages(since):
            for row in rows:
                buffer[row[self._config.primary_key]] = row  # a re-read row: last copy wins
            # Only an ascending listing may commit part-way: the watermark is the max cursor
            # in bronze, so a committed batch must not hold a cursor above an unread record.
            if not held and len(buffer) >= self._config.rows_per_batch:
                yield self._batch(list(buffer.values()))
                buffer = {}
        values = list(buffer.values())
        if held and incremental is not None:
            # The pull is complete; commit it oldest first, so a stop between two of these
            # batches leaves a watermark below every row still to be written.
            values.sort(key=lambda row: _sort_millis(row.get(incremental.cursor_field)))
        for start in range(0, len(values), self._config.rows_per_batch):
            yield self._batch(values[start : start + self._config.rows_per_batch])

    def _batch(self, rows: list[dict[str, Any]]) -> SourceBatch:
        self.stats.rows += len(rows)
        return SourceBatch(strings_frame(rows, self._columns(rows)), origin=self._config.path)

    def _columns(self, rows: list[dict[str, Any]]) -> list[str]:
        if self._config.columns is not None:
            return list(self._config.columns)
        key = self._config.primary_key
        seen: dict[str, None] = {key: None}
        for row in rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    # -- pages ------------------------------------------------------------------------------
    def _pages(self, watermark: str | None) -> Iterator[list[dict[str, Any]]]:
        incremental = self._config.incremental
        window = since_millis(incremental, watermark) if incremental is not None else None
        request = self._paginator.first(self._template(window))
        for _ in range(self._config.paginator.max_pages):
            page = self._fetch(request)
            yield [self._row(record, page) for record in page.records]
            try:
                following = self._paginator.next(page)
            except PaginationError as exc:
                raise SourceError(
                    f"source {self._name!r}: {self._label(page.request)}: {exc}"
                ) from exc
            if following is None:
                return
            request = following
        raise SourceError(
            f"source {self._name!r}: stopped after paginator.max_pages="
            f"{self._config.paginator.max_pages} pages without reaching the end"
        )

    def _template(self, window: int | None) -> PageRequest:
        """The first request of a (re)started query, with ``{since}`` filled in."""
        config = self._config
        request = PageRequest(
            config.method,
            config.path,
            dict(config.params),
            None if config.body is None else dict(config.body),
        )
        incremental = config.incremental
        if incremental is None or window is None:
            return request
        since = render_since(window, incremental.format)
        request = PageRequest(
            request.method,
            _substitute(request.url, since),
            _substitute(request.params, since),
            _substitute(request.body, since),
        )
        if incremental.param is not None:
            request = request.with_param(incremental.location, incremental.param, since)
        return request

    def _label(self, request: PageRequest) -> str:
        return redact(f"{request.method} {request.url}")  # a next-page URL may hold a key

    def _http_request(self, request: PageRequest) -> httpx.Request:
        if request.verbatim:
            url = httpx.URL(request.url)
            if url.is_absolute_url and (url.scheme, url.host, url.port) != (
                self._base.scheme,
                self._base.host,
                self._base.port,
            ):
                raise SourceError(
                    f"source {self._name!r}: refusing to follow next-page URL {request.url!r}: "
                    f"it leaves {self._base.host} (credentials would go with it)"
                )
            return self._client.build_request("GET", request.url)
        return self._client.build_request(
            request.method, request.url, params=request.params or None, json=request.body
        )

    def _idempotent(self, request: PageRequest) -> bool:
        if request.verbatim or request.method == "GET":
            return True
        return bool(self._config.idempotent)

    def _fetch(self, request: PageRequest) -> Page:
        try:
            return self._fetch_page(request)
        except SourceError as exc:
            # URLs and response bodies may carry credentials (a next-page URL with the key,
            # a server echoing the request): mask them before the message goes anywhere.
            exc.args = (redact(str(exc)),)
            raise

    def _fetch_page(self, request: PageRequest) -> Page:
        http_request = self._http_request(request)
        label = f"{http_request.method} {http_request.url}"  # before auth can touch the URL
        try:
            response = send_with_retries(
                self._client,
                http_request,
                idempotent=self._idempotent(request),
                policy=self._policy,
                budget=self.budget,
            )
        except httpx.HTTPError as exc:
            raise SourceError(f"source {self._name!r}: {label} failed: {exc}") from exc
        self.stats.pages += 1
        text = response.text
        if response.status_code == 403 and "REQUEST_LIMIT_EXCEEDED" in text:
            raise SourceError(
                f"source {self._name!r}: {label}: the API's daily request limit is exhausted "
                f"(REQUEST_LIMIT_EXCEEDED); not retried, run again after the quota resets: "
                f"{text[:300]}"
            )
        if not 200 <= response.status_code < 300:
            raise SourceError(
                f"source {self._name!r}: {label} answered {response.status_code}: {text[:300]}"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceError(
                f"source {self._name!r}: {label} returned non-JSON "
                f"({response.headers.get('content-type')}): {text[:120]!r}"
            ) from exc
        records = dig(body, self._config.records_path, _NOT_FOUND)
        where = self._config.records_path or "the top level"
        if not isinstance(records, list):
            raise SourceError(
                f"source {self._name!r}: {label}: expected a list of records at {where!r}, "
                f"got {str(body)[:120]!r}"
            )
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise SourceError(
                    f"source {self._name!r}: {label}: record {index} at {where!r} is not an "
                    f"object: {str(record)[:120]!r}"
                )
        return Page(request, response, body, records)

    def _row(self, record: dict[str, Any], page: Page) -> dict[str, Any]:
        flat = flatten_record(record, self._config.flatten.lift, self._config.flatten.exclude)
        row = {key: as_text(value) for key, value in flat.items()}
        if row.get(self._config.primary_key) in (None, ""):
            raise SourceError(
                f"source {self._name!r}: {self._label(page.request)}: record without "
                f"primary key {self._config.primary_key!r}: {str(record)[:160]!r}"
            )
        return row


def open_rest_source(name: str, config: RestSource) -> RestReader:
    """The reader for a ``kind: rest`` source (registered in ``SOURCE_READERS``)."""
    return RestReader(config, source_name=name)

"""How a REST source turns the page, selected by ``paginator.type`` in ``pipeline.yaml``.

A paginator sees each page (request, response, parsed body, records) and returns the next
request, :data:`REWINDOW` (restart the query at the last cursor value seen, for APIs whose query
window is capped, e.g. HubSpot search at 10,000 results), or ``None`` when the listing is done.
The REST reader bounds every paginator by ``max_pages``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx

from tasks.core.config_rest import (
    JsonCursorPaginator,
    LinkHeaderPaginator,
    Location,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    SinglePage,
    StartingAfterPaginator,
)
from tasks.core.config_rest import Paginator as PaginatorSpec


class PaginationError(ValueError):
    """A reply does not carry what its paginator needs; the reader adds the source name."""


@dataclass(frozen=True)
class PageRequest:
    """One request of a listing. ``verbatim``: the URL came from the API and is used as given."""

    method: str
    url: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    verbatim: bool = False

    def with_param(self, location: Location, name: str, value: Any) -> PageRequest:
        if location == "body":
            return replace(self, body={**(self.body or {}), name: value})
        return replace(self, params={**self.params, name: value})


@dataclass(frozen=True)
class Page:
    """One page as read: what was asked, what came back, and the records in it."""

    request: PageRequest
    response: httpx.Response
    body: Any
    records: list[dict[str, Any]]


class _Rewindow:
    def __repr__(self) -> str:
        return "REWINDOW"


REWINDOW = _Rewindow()
Next = PageRequest | _Rewindow | None

_MISSING = object()


def dig(data: Any, path: str, default: Any = None) -> Any:
    """The value at a dotted ``path`` (``paging.next.after``; list items by index); '' = data."""
    if not path:
        return data
    current = data
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part, _MISSING)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else _MISSING
        else:
            current = _MISSING
        if current is _MISSING:
            return default
    return current


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


class Paginator(Protocol):
    def first(self, request: PageRequest) -> PageRequest: ...

    def next(self, page: Page) -> Next: ...


class SinglePager:
    def __init__(self, spec: SinglePage) -> None:
        del spec

    def first(self, request: PageRequest) -> PageRequest:
        return request

    def next(self, page: Page) -> Next:
        return None


class JsonCursorPager:
    """``paging.next.after`` style; with ``max_results``, re-window before the cap."""

    def __init__(self, spec: JsonCursorPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        return request

    def next(self, page: Page) -> Next:
        cursor = dig(page.body, self.spec.cursor_path)
        if cursor is None or cursor == "":
            return None
        if self.spec.max_results is not None and self.spec.page_size is not None:
            try:
                offset = int(str(cursor))
            except ValueError as exc:
                raise PaginationError(
                    f"paginator.max_results needs a numeric cursor at "
                    f"{self.spec.cursor_path!r}, got {cursor!r}"
                ) from exc
            if offset + self.spec.page_size > self.spec.max_results:
                return REWINDOW
        return page.request.with_param(self.spec.location, self.spec.param, str(cursor))


def _follow(url: str) -> PageRequest:
    """A next-page URL from the API: fetched with GET exactly as given."""
    return PageRequest("GET", url, verbatim=True)


class NextUrlPager:
    """Salesforce ``nextRecordsUrl`` until ``done``; the URL takes no parameters."""

    def __init__(self, spec: NextUrlPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        return request

    def next(self, page: Page) -> Next:
        if self.spec.done_path is not None and _truthy(dig(page.body, self.spec.done_path)):
            return None
        url = dig(page.body, self.spec.next_url_path)
        if not url:
            if self.spec.done_path is not None:
                raise PaginationError(
                    f"{self.spec.done_path!r} is not true but there is no "
                    f"{self.spec.next_url_path!r} to follow"
                )
            return None
        return _follow(str(url))


class LinkHeaderPager:
    """``Link: <...>; rel="next"``; no such link means the last page."""

    def __init__(self, spec: LinkHeaderPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        return request

    def next(self, page: Page) -> Next:
        url = page.response.links.get(self.spec.rel, {}).get("url")
        return None if not url else _follow(url)


class OffsetPager:
    """``offset``/``limit``: advance by the records received, stop at the end."""

    def __init__(self, spec: OffsetPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        s = self.spec
        return request.with_param(s.location, s.offset_param, 0).with_param(
            s.location, s.limit_param, s.limit
        )

    def next(self, page: Page) -> Next:
        s = self.spec
        received = len(page.records)
        if received == 0:
            return None
        current = page.request.body if s.location == "body" else page.request.params
        offset = int((current or {}).get(s.offset_param, 0)) + received
        if s.has_more_path is not None:
            if not _truthy(dig(page.body, s.has_more_path)):
                return None
        elif s.total_path is not None:
            total = dig(page.body, s.total_path)
            if total is None:
                raise PaginationError(f"no total at {s.total_path!r}")
            if offset >= int(total):
                return None
        elif received < s.limit:
            return None
        return page.request.with_param(s.location, s.offset_param, offset)


class PageNumberPager:
    """``page=1,2,...``: stop at ``total_pages``, on an empty page or on a short page."""

    def __init__(self, spec: PageNumberPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        s = self.spec
        request = request.with_param(s.location, s.page_param, s.start)
        if s.size_param is not None and s.size is not None:
            request = request.with_param(s.location, s.size_param, s.size)
        return request

    def next(self, page: Page) -> Next:
        s = self.spec
        if not page.records:
            return None
        current = page.request.body if s.location == "body" else page.request.params
        number = int((current or {}).get(s.page_param, s.start))
        if s.total_pages_path is not None:
            total = dig(page.body, s.total_pages_path)
            if total is None:
                raise PaginationError(f"no page count at {s.total_pages_path!r}")
            if number - s.start + 1 >= int(total):
                return None
        elif s.size is not None and len(page.records) < s.size:
            return None
        return page.request.with_param(s.location, s.page_param, number + 1)


class StartingAfterPager:
    """Stripe: ``starting_after=<last id>`` while ``has_more``."""

    def __init__(self, spec: StartingAfterPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        return request

    def next(self, page: Page) -> Next:
        s = self.spec
        if not _truthy(dig(page.body, s.has_more_path)) or not page.records:
            return None
        last = page.records[-1].get(s.id_field)
        if last is None:
            raise PaginationError(f"the last record has no {s.id_field!r} to continue after")
        return page.request.with_param("query", s.param, str(last))


PAGINATORS: dict[str, Callable[[Any], Paginator]] = {
    "single": SinglePager,
    "json_cursor": JsonCursorPager,
    "next_url": NextUrlPager,
    "link_header": LinkHeaderPager,
    "offset": OffsetPager,
    "page_number": PageNumberPager,
    "starting_after": StartingAfterPager,
}


def make_paginator(spec: PaginatorSpec) -> Paginator:
    """The paginator for a ``paginator`` config block."""
    return PAGINATORS[spec.type](spec)

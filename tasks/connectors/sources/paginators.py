"""How a REST source turns the page, selected by ``paginator.type`` in ``pipeline.yaml``.

A paginator sees each page (request, response, parsed body, records) and returns the next
request, or ``None`` when the listing is done. The REST reader bounds every paginator by
``max_pages``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx

from tasks.core.config_rest_paging import (
    JsonCursorPaginator,
    LinkHeaderPaginator,
    Location,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    SearchKeysetPaginator,
    SinglePage,
    StartingAfterPaginator,
)
from tasks.core.config_rest_paging import Paginator as PaginatorSpec


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


Next = PageRequest | None

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
    """``paging.next.after`` style: the reply's cursor is sent back as given."""

    def __init__(self, spec: JsonCursorPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        return request

    def next(self, page: Page) -> Next:
        cursor = dig(page.body, self.spec.cursor_path)
        if cursor is None or cursor == "":
            return None
        return page.request.with_param(self.spec.location, self.spec.param, str(cursor))


def cursor_millis(value: Any) -> int | None:
    """Epoch milliseconds of a cursor value: ISO-8601 text, or epoch seconds / milliseconds.

    Digits are read as milliseconds from 12 digits on (epoch seconds reach 12 digits only in
    the year 5138), as seconds below. ``None`` when the value is empty or not a time.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        return int(number if abs(number) >= 1e11 else number * 1000)
    text = str(value).strip()
    if not text:
        return None
    if text.lstrip("-").replace(".", "", 1).isdigit():
        return cursor_millis(float(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


Bound = Literal["GTE", "GT", "EQ"]


class SearchKeysetPager:
    """HubSpot-style search paged by keyset (see :class:`SearchKeysetPaginator`).

    The phase lives in the request itself, so the pager keeps no state: a request sorted by
    ``cursor_property`` is the main keyset (``cursor >= t`` or ``cursor > t``), one sorted by
    ``tie_property`` drains the records sharing one cursor value ``t`` (``cursor == t AND
    tie > last id``). Every request asks for the search's first page.
    """

    def __init__(self, spec: SearchKeysetPaginator) -> None:
        self.spec = spec

    def first(self, request: PageRequest) -> PageRequest:
        return request

    def next(self, page: Page) -> Next:
        s = self.spec
        more = dig(page.body, s.more_path) not in (None, "")
        if more and not page.records:
            raise PaginationError(f"{s.more_path!r} says more remain but the page is empty")
        body = page.request.body or {}
        sorts = body.get("sorts") or []
        if sorts and _sort_property(sorts[0]) == s.tie_property:  # draining one cursor value
            value = self._bound(body, s.cursor_property, "EQ")
            if not more:
                return self._query(page.request, ("GT", value))  # that value is done
            last_tie = max(self._tie(record) for record in page.records)
            return self._query(page.request, ("EQ", value), tie_after=last_tie)
        if not more:
            return None  # nothing at or after the bound remains
        operator, bound = self._main_bound(body)
        highest = max(self._cursor(record) for record in page.records)
        if highest > bound:
            return self._query(page.request, ("GTE", highest))
        if operator == "GTE" and highest == bound:
            # A whole page shares the lower bound: asking again would return the same page.
            return self._query(page.request, ("EQ", bound))
        raise PaginationError(
            f"the search answered {s.cursor_property} {highest} for a query "
            f"{s.cursor_property} {operator} {bound}"
        )

    # -- request building -------------------------------------------------------------------
    def _query(
        self, request: PageRequest, bound: tuple[Bound, int], *, tie_after: int | None = None
    ) -> PageRequest:
        s = self.spec
        operator, value = bound
        managed = {s.cursor_property, s.tie_property}
        mine = [{"propertyName": s.cursor_property, "operator": operator, "value": str(value)}]
        if tie_after is not None:
            mine.append({"propertyName": s.tie_property, "operator": "GT", "value": str(tie_after)})
        body = dict(request.body or {})
        groups = body.get("filterGroups") or [{"filters": []}]
        body["filterGroups"] = [
            {
                **group,
                "filters": [
                    f for f in group.get("filters", []) if f.get("propertyName") not in managed
                ]
                + mine,
            }
            for group in groups
        ]
        order = s.tie_property if operator == "EQ" else s.cursor_property
        body["sorts"] = [{"propertyName": order, "direction": "ASCENDING"}]
        return replace(request, body=body)

    def _main_bound(self, body: dict[str, Any]) -> tuple[Bound, int]:
        """The cursor's lower bound of a main-keyset request (``-1`` when there is none)."""
        for operator in ("GT", "GTE"):
            try:
                return operator, self._bound(body, self.spec.cursor_property, operator)
            except PaginationError:
                continue
        return "GTE", -1  # not incremental: the first query has no lower bound

    def _bound(self, body: dict[str, Any], prop: str, operator: str) -> int:
        for group in body.get("filterGroups") or []:
            for f in group.get("filters", []):
                if f.get("propertyName") == prop and f.get("operator") == operator:
                    millis = cursor_millis(f.get("value"))
                    if millis is not None:
                        return millis
        raise PaginationError(f"the request has no {prop} {operator} filter")

    def _cursor(self, record: dict[str, Any]) -> int:
        value = dig(record, self.spec.cursor_path)
        millis = cursor_millis(value)
        if millis is None:
            raise PaginationError(
                f"record {dig(record, self.spec.tie_path)!r} has no time at "
                f"{self.spec.cursor_path!r} (got {value!r})"
            )
        return millis

    def _tie(self, record: dict[str, Any]) -> int:
        value = dig(record, self.spec.tie_path)
        try:
            return int(str(value))
        except ValueError as exc:
            raise PaginationError(
                f"record tie-breaker {self.spec.tie_path!r} is not numeric: {value!r}"
            ) from exc


def _sort_property(sort: Any) -> str | None:
    """The property of one ``sorts`` entry (an object, or a bare name as the spec types it)."""
    if isinstance(sort, dict):
        name = sort.get("propertyName")
        return None if name is None else str(name)
    return None if sort is None else str(sort).lstrip("-")


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
    "search_keyset": SearchKeysetPager,
    "next_url": NextUrlPager,
    "link_header": LinkHeaderPager,
    "offset": OffsetPager,
    "page_number": PageNumberPager,
    "starting_after": StartingAfterPager,
}


def make_paginator(spec: PaginatorSpec) -> Paginator:
    """The paginator for a ``paginator`` config block."""
    return PAGINATORS[spec.type](spec)

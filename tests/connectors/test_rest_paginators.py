"""The declarative REST source against a generic loopback API: every paginator, static auth
types, record flattening, and a new API added with YAML only (through ``open_source``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import httpx
import polars as pl
import pytest

from infra.sandbox._http import Request, Response, StandInServer, json_response
from tasks.connectors.sources import open_source
from tasks.connectors.sources.paginators import Page, PageRequest, PaginationError, make_paginator
from tasks.connectors.sources.rest import (
    RestReader,
    cursor_millis,
    flatten_record,
    render_since,
)
from tasks.core.config import parse_pipeline
from tasks.core.config_rest import RestSource
from tasks.core.config_rest_paging import SearchKeysetPaginator
from tasks.errors import SourceError

START = datetime(2026, 1, 1, tzinfo=UTC)
API_KEY = "k-123"


def item(number: int) -> dict[str, Any]:
    return {
        "id": number,
        "name": f"Item {number}",
        "active": number % 2 == 0,
        "score": number / 4,
        "updated_at": (START + timedelta(minutes=number)).isoformat().replace("+00:00", "Z"),
        "profile": {"city": f"City {number % 3}", "name": "nested loses to top level"},
        "tags": ["a", str(number)],
        "note": None,
    }


class CatalogStandIn(StandInServer):
    """A small JSON API with one route per pagination style; auth chosen per test."""

    name = "catalog"

    def __init__(self, count: int = 23, *, auth: str = "header") -> None:
        super().__init__()
        self.items = [item(n) for n in range(1, count + 1)]
        self.auth = auth
        self.seen: list[Request] = []

    def _authorised(self, request: Request) -> bool:
        if self.auth == "header":
            return request.header("x-api-key") == API_KEY
        if self.auth == "query":
            return request.query_value("api_key") == API_KEY
        if self.auth == "basic":
            expected = base64.b64encode(b"reader:pw").decode()
            return request.header("authorization") == f"Basic {expected}"
        return True

    def _rows(self, request: Request, since: str | None = None) -> list[dict[str, Any]]:
        since = since or request.query_value("updated_since")
        if not since:
            return self.items
        floor = datetime.fromisoformat(since.replace("Z", "+00:00"))
        return [
            r
            for r in self.items
            if datetime.fromisoformat(r["updated_at"].replace("Z", "+00:00")) >= floor
        ]

    def handle(self, request: Request) -> Response:
        self.seen.append(request)
        if not self._authorised(request):
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": "bad credentials"})
        q = request.query_value
        if request.path == "/offset":
            rows = self._rows(request)
            offset, limit = int(q("offset") or 0), int(q("limit") or 5)
            page = rows[offset : offset + limit]
            return json_response(
                200,
                {"items": page, "total": len(rows), "has_more": offset + limit < len(rows)},
            )
        if request.path == "/search" and request.method == "POST":
            body = json.loads(request.body)
            rows = self._rows(request, body.get("since"))
            offset, limit = int(body.get("offset", 0)), int(body.get("limit", 5))
            return json_response(200, {"result": {"items": rows[offset : offset + limit]}})
        if request.path == "/pages":
            rows = self._rows(request)
            page, size = int(q("page") or 1), int(q("per_page") or 5)
            chunk = rows[(page - 1) * size : page * size]
            pages = -(-len(rows) // size)
            return json_response(200, {"data": {"items": chunk}, "meta": {"total_pages": pages}})
        if request.path == "/cursor":
            rows = self._rows(request)
            start = int(q("cursor") or 0)
            chunk = rows[start : start + 6]
            following = str(start + 6) if start + 6 < len(rows) else None
            return json_response(200, {"items": chunk, "paging": {"next": following}})
        if request.path == "/link":
            rows = self._rows(request)
            start = int(q("from") or 0)
            headers = {}
            if start + 8 < len(rows):
                query = urlencode({"from": start + 8, "updated_since": q("updated_since") or ""})
                headers["Link"] = f'<{self.url}/link?{query}>; rel="next"'
            return json_response(200, rows[start : start + 8], headers=headers)
        if request.path.startswith("/nexturl"):
            rows = self._rows(request)
            start = int(request.path.rsplit("/", 1)[1]) if request.path != "/nexturl" else 0
            end = min(start + 10, len(rows))
            body: dict[str, Any] = {"done": end >= len(rows), "records": rows[start:end]}
            if end < len(rows):
                body["nextRecordsUrl"] = f"/nexturl/{end}"
            return json_response(200, body)
        if request.path == "/after":  # newest first, Stripe style
            rows = sorted(self.items, key=lambda r: r["id"], reverse=True)
            start = 0
            if q("starting_after"):
                start = [str(r["id"]) for r in rows].index(q("starting_after") or "") + 1
            chunk = rows[start : start + 4]
            return json_response(200, {"data": chunk, "has_more": start + 4 < len(rows)})
        if request.path == "/all":
            return json_response(200, {"items": self.items})
        return json_response(HTTPStatus.NOT_FOUND, {"error": request.path})


@pytest.fixture
def catalog() -> Iterator[CatalogStandIn]:
    with CatalogStandIn() as server:
        yield server


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CATALOG_KEY", API_KEY)
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CATALOG_PW", "pw")


def source(url: str, **overrides: Any) -> RestSource:
    data: dict[str, Any] = {
        "kind": "rest",
        "role": "enrichment",
        "base_url": url,
        "auth": {"type": "api_key", "key": {"secret": "catalog_key"}, "name": "X-Api-Key"},
        "records_path": "items",
        **overrides,
    }
    return RestSource.model_validate(data)


def read(config: RestSource, since: str | None = None) -> tuple[pl.DataFrame, RestReader]:
    reader = RestReader(config, source_name="catalog")
    try:
        frames = [b.frame for b in reader.batches(since=since, is_committed=lambda _b: False)]
    finally:
        reader.close()
    return pl.concat(frames, how="diagonal"), reader


def ids(frame: pl.DataFrame) -> list[int]:
    return sorted(int(v) for v in frame["id"])


ALL = list(range(1, 24))


@pytest.mark.parametrize(
    ("paginator", "pages"),
    [
        ({"type": "offset", "limit": 5, "total_path": "total"}, 5),
        ({"type": "offset", "limit": 5, "has_more_path": "has_more"}, 5),
        ({"type": "offset", "limit": 5}, 5),  # stops on the short page
    ],
    ids=["total", "has_more", "short-page"],
)
def test_offset_paginator(catalog: CatalogStandIn, paginator: dict[str, Any], pages: int) -> None:
    frame, reader = read(source(catalog.url, path="/offset", paginator=paginator))
    assert ids(frame) == ALL
    assert reader.stats.pages == pages


def test_offset_paginator_in_a_post_body(catalog: CatalogStandIn) -> None:
    config = source(
        catalog.url,
        path="/search",
        method="POST",
        idempotent=True,
        body={"since": "{since}"},
        records_path="result.items",
        incremental={"cursor_field": "updated_at"},
        paginator={"type": "offset", "limit": 5, "location": "body"},
    )
    frame, _ = read(config, since="2026-01-01T00:10:00Z")
    assert ids(frame) == list(range(10, 24))
    bodies = [json.loads(r.body) for r in catalog.seen]
    assert [(b["offset"], b["limit"]) for b in bodies] == [(0, 5), (5, 5), (10, 5)]
    assert all(b["since"] == "2026-01-01T00:10:00Z" for b in bodies)


@pytest.mark.parametrize(
    "paginator",
    [
        {"type": "page_number", "size": 5, "total_pages_path": "meta.total_pages"},
        {"type": "page_number", "size": 5},
    ],
    ids=["total-pages", "short-page"],
)
def test_page_number_paginator(catalog: CatalogStandIn, paginator: dict[str, Any]) -> None:
    frame, reader = read(
        source(catalog.url, path="/pages", records_path="data.items", paginator=paginator)
    )
    assert ids(frame) == ALL
    assert reader.stats.pages == 5
    assert [r.query_value("page") for r in catalog.seen] == ["1", "2", "3", "4", "5"]


def test_page_number_paginator_stops_on_an_empty_page() -> None:
    with CatalogStandIn(count=10) as catalog:  # 10 = 2 full pages, then an empty one
        frame, reader = read(
            source(
                catalog.url,
                path="/pages",
                records_path="data.items",
                paginator={"type": "page_number", "size": 5},
            )
        )
    assert ids(frame) == list(range(1, 11))
    assert reader.stats.pages == 3


def test_json_cursor_paginator_in_the_query(catalog: CatalogStandIn) -> None:
    config = source(
        catalog.url,
        path="/cursor",
        paginator={"type": "json_cursor", "cursor_path": "paging.next", "param": "cursor"},
    )
    frame, reader = read(config)
    assert ids(frame) == ALL
    assert reader.stats.pages == 4


def test_link_header_paginator_follows_urls_as_given(catalog: CatalogStandIn) -> None:
    config = source(
        catalog.url,
        path="/link",
        records_path="",
        incremental={"cursor_field": "updated_at", "param": "updated_since"},
        paginator={"type": "link_header"},
    )
    frame, reader = read(config, since="2026-01-01T00:03:00Z")
    assert ids(frame) == list(range(3, 24))
    assert reader.stats.pages == 3
    assert all(r.query_value("updated_since") == "2026-01-01T00:03:00Z" for r in catalog.seen)


def test_next_url_paginator_until_done(catalog: CatalogStandIn) -> None:
    config = source(
        catalog.url,
        path="/nexturl",
        records_path="records",
        paginator={"type": "next_url", "next_url_path": "nextRecordsUrl", "done_path": "done"},
    )
    frame, _ = read(config)
    assert ids(frame) == ALL
    assert [r.path for r in catalog.seen] == ["/nexturl", "/nexturl/10", "/nexturl/20"]


def test_starting_after_paginator_commits_a_newest_first_listing_after_the_pass(
    catalog: CatalogStandIn,
) -> None:
    config = source(
        catalog.url,
        path="/after",
        records_path="data",
        rows_per_batch=10,
        incremental={"cursor_field": "updated_at", "param": "ignored", "order": "descending"},
        paginator={"type": "starting_after"},
    )
    reader = RestReader(config, source_name="catalog")
    batches = reader.batches(since=None, is_committed=lambda _b: False)
    first = next(batches)
    # Nothing is handed over before the whole listing was read (a crash mid-pass commits none).
    assert reader.stats.pages == 6
    rest = list(batches)
    reader.close()
    assert first.frame.height == 10
    assert sorted(int(i) for b in [first, *rest] for i in b.frame["id"]) == ALL
    assert [r.query_value("starting_after") for r in catalog.seen][:3] == [None, "20", "16"]


def test_every_paginator_is_bounded_by_max_pages(catalog: CatalogStandIn) -> None:
    config = source(
        catalog.url, path="/offset", paginator={"type": "offset", "limit": 2, "max_pages": 3}
    )
    with pytest.raises(SourceError, match=r"source 'catalog'.*max_pages=3"):
        read(config)
    assert len(catalog.seen) == 3


def test_a_next_url_on_another_host_is_not_followed(catalog: CatalogStandIn) -> None:
    config = source(
        catalog.url,
        path="/nexturl",
        records_path="records",
        paginator={"type": "next_url", "next_url_path": "records.0.name"},
    )
    with CatalogStandIn() as other:
        config = config.model_copy(update={"base_url": other.url})
        other.items[0]["name"] = f"{catalog.url}/nexturl/0"
        with pytest.raises(SourceError, match="refusing to follow"):
            read(config)
    assert catalog.seen == []


def test_flattening_keeps_every_value_as_text(catalog: CatalogStandIn) -> None:
    config = source(catalog.url, path="/all", flatten={"lift": ["profile"], "exclude": ["note"]})
    frame, _ = read(config)
    row = frame.filter(pl.col("id") == "2").row(0, named=True)
    assert frame.schema == dict.fromkeys(frame.columns, pl.String)
    assert row["active"] == "true" and row["score"] == "0.5"
    assert row["tags"] == '["a","2"]'
    assert row["city"] == "City 2"
    assert row["name"] == "Item 2"  # top-level wins over a lifted key
    assert "note" not in frame.columns and "profile" not in frame.columns


def test_flatten_record_and_cursor_helpers() -> None:
    record = {"id": 1, "properties": {"email": "a@x", "id": "shadow"}, "x": None}
    assert flatten_record(record, ["properties"], ["x"]) == {"id": 1, "email": "a@x"}
    assert cursor_millis("2024-05-01T00:00:00Z") == 1_714_521_600_000
    assert cursor_millis("2024-05-01T02:00:00+02:00") == 1_714_521_600_000
    assert cursor_millis("1714521600") == 1_714_521_600_000
    assert cursor_millis("1714521600000") == 1_714_521_600_000
    assert cursor_millis("not a time") is None
    assert render_since(1_714_521_600_999, "iso") == "2024-05-01T00:00:00Z"
    assert render_since(1_714_521_600_999, "epoch_s") == "1714521600"
    assert render_since(1_714_521_600_999, "epoch_ms") == "1714521600999"
    assert render_since(-5, "epoch_ms") == "0"


@pytest.mark.parametrize(
    ("auth_mode", "auth"),
    [
        ("header", {"type": "api_key", "key": {"secret": "catalog_key"}, "name": "X-Api-Key"}),
        (
            "query",
            {
                "type": "api_key",
                "key": {"secret": "catalog_key"},
                "name": "api_key",
                "location": "query",
            },
        ),
        ("basic", {"type": "basic", "username": "reader", "password": {"secret": "catalog_pw"}}),
    ],
)
def test_static_auth_types(auth_mode: str, auth: dict[str, Any]) -> None:
    with CatalogStandIn(auth=auth_mode) as catalog:
        config = source(
            catalog.url,
            path="/cursor",
            auth=auth,
            paginator={"type": "json_cursor", "cursor_path": "paging.next", "param": "cursor"},
        )
        frame, _ = read(config)
        assert ids(frame) == ALL
        # The wrong key is refused, and the error never shows the key.
        wrong = source(catalog.url, path="/all", auth=auth)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AUDIENCE_LAKE_SECRET_CATALOG_KEY", "wrong-key")
            mp.setenv("AUDIENCE_LAKE_SECRET_CATALOG_PW", "wrong-pw")
            with pytest.raises(SourceError, match="answered 401") as failure:
                read(wrong)
        assert "wrong-key" not in str(failure.value)


def test_a_new_api_needs_yaml_only(catalog: CatalogStandIn) -> None:
    """A pipeline.yaml snippet describing an API nobody coded for, ingested via open_source."""
    text = f"""
version: 1
sources:
  crm:
    kind: rest
    role: contacts
    base_url: {catalog.url}
    path: /pages
    auth: {{type: api_key, key: {{secret: catalog_key}}, name: X-Api-Key}}
    records_path: data.items
    primary_key: id
    paginator: {{type: page_number, size: 5, total_pages_path: meta.total_pages}}
    incremental: {{cursor_field: updated_at, param: updated_since, format: iso,
                   overlap_seconds: 60}}
    flatten: {{lift: [profile]}}
    fields: {{source_id: id, email: name}}
"""
    config = parse_pipeline(text, env={})
    reader = open_source("crm", config.sources["crm"])
    assert reader.primary_key == "id" and reader.cursor_field == "updated_at"
    try:
        batches = list(reader.batches(since="2026-01-01T00:11:30Z", is_committed=lambda _b: False))
    finally:
        reader.close()
    frame = pl.concat([b.frame for b in batches])
    # The overlap (60 s) re-reads item 11 (updated 00:11:00); the merge absorbs it.
    assert ids(frame) == list(range(11, 24))
    assert {"city", "updated_at", "name"} <= set(frame.columns)
    assert catalog.seen[0].query_value("updated_since") == "2026-01-01T00:10:30Z"


# --- search keyset (HubSpot search), step by step -------------------------------------------

T0 = 1_767_225_600_000  # epoch ms
LMD = "lastmodifieddate"


def _contact(contact_id: int, millis: int) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")
    return {"id": str(contact_id), "properties": {"lastmodifieddate": stamp.replace("+00:00", "Z")}}


def _page(request: PageRequest, records: list[dict[str, Any]], *, more: bool) -> Page:
    body: dict[str, Any] = {"total": 99, "results": records}
    if more:
        body["paging"] = {"next": {"after": str(len(records))}}
    return Page(request, httpx.Response(200, json=body), body, records)


def _filters(request: PageRequest | None) -> list[tuple[str, str, str | None]]:
    assert request is not None and request.body is not None
    (group,) = request.body["filterGroups"]
    return [(f["propertyName"], f["operator"], f.get("value")) for f in group["filters"]]


def _sorted_by(request: PageRequest | None) -> str:
    assert request is not None and request.body is not None
    return str(request.body["sorts"][0]["propertyName"])


def test_search_keyset_moves_its_bound_drains_a_tie_then_continues_past_it() -> None:
    pager = make_paginator(
        SearchKeysetPaginator(
            type="search_keyset",
            cursor_property="lastmodifieddate",
            cursor_path="properties.lastmodifieddate",
        )
    )
    first = PageRequest(
        "POST",
        "/search",
        body={
            "filterGroups": [
                {
                    "filters": [
                        {"propertyName": "email", "operator": "HAS_PROPERTY"},
                        {"propertyName": "lastmodifieddate", "operator": "GTE", "value": str(T0)},
                    ]
                }
            ],
            "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            "limit": 3,
            "after": "0",
        },
    )
    keep = ("email", "HAS_PROPERTY", None)
    # A page spanning several values: the next query starts at the highest (GTE, re-read).
    second = pager.next(
        _page(first, [_contact(1, T0), _contact(2, T0 + 5), _contact(3, T0 + 9)], more=True)
    )
    assert _filters(second) == [keep, ("lastmodifieddate", "GTE", str(T0 + 9))]
    assert second is not None and second.body is not None and second.body["after"] == "0"
    # A full page on one value: asking again would repeat it, so drain that value by id.
    third = pager.next(
        _page(second, [_contact(3, T0 + 9), _contact(4, T0 + 9), _contact(7, T0 + 9)], more=True)
    )
    assert _filters(third) == [keep, ("lastmodifieddate", "EQ", str(T0 + 9))]
    assert _sorted_by(third) == "hs_object_id"
    fourth = pager.next(
        _page(third, [_contact(3, T0 + 9), _contact(4, T0 + 9), _contact(7, T0 + 9)], more=True)
    )
    assert _filters(fourth) == [
        keep,
        ("lastmodifieddate", "EQ", str(T0 + 9)),
        ("hs_object_id", "GT", "7"),
    ]
    # The value is drained: continue strictly after it, sorted by the cursor again.
    fifth = pager.next(_page(fourth, [_contact(8, T0 + 9)], more=False))
    assert _filters(fifth) == [keep, ("lastmodifieddate", "GT", str(T0 + 9))]
    assert _sorted_by(fifth) == "lastmodifieddate"
    assert fifth is not None
    assert pager.next(_page(fifth, [_contact(9, T0 + 20)], more=False)) is None


def test_search_keyset_refuses_replies_it_cannot_trust() -> None:
    pager = make_paginator(
        SearchKeysetPaginator(
            type="search_keyset",
            cursor_property="lastmodifieddate",
            cursor_path="properties.lastmodifieddate",
        )
    )
    request = PageRequest(
        "POST",
        "/search",
        body={
            "filterGroups": [
                {
                    "filters": [
                        {"propertyName": "lastmodifieddate", "operator": "GT", "value": str(T0)}
                    ]
                }
            ],
            "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            "limit": 2,
        },
    )
    with pytest.raises(PaginationError, match="says more remain but the page is empty"):
        pager.next(_page(request, [], more=True))
    with pytest.raises(PaginationError, match=r"answered lastmodifieddate .* GT"):
        pager.next(_page(request, [_contact(1, T0), _contact(2, T0)], more=True))
    with pytest.raises(PaginationError, match="has no time at 'properties.lastmodifieddate'"):
        pager.next(_page(request, [{"id": "5", "properties": {}}], more=True))

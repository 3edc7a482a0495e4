"""Request validation against the Klaviyo spec (query parameters, JSON:API bodies, related
lists, filters) and cursor pagination, shared by every resource family.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.klaviyo.filters import _Condition, parse_filter
from infra.sandbox.klaviyo.records import _List
from infra.sandbox.klaviyo.state import KlaviyoState
from infra.sandbox.klaviyo.wire import JSONAPI, KlaviyoError, _invalid, _iso


class KlaviyoParsing(KlaviyoState):
    """Query, body and pagination handling common to the Klaviyo routes."""

    # -- request parsing -------------------------------------------------------------------------
    @staticmethod
    def _query(request: Request, allowed: Iterable[str]) -> dict[str, str]:
        """The query parameters, each at most once; unknown ones are a 400."""
        known = set(allowed)
        values: dict[str, str] = {}
        for name, given in request.query.items():
            if name not in known:
                raise _invalid(f"'{name}' is not a valid query parameter.", parameter=name)
            if len(given) != 1:
                raise _invalid(f"'{name}' was given more than once.", parameter=name)
            values[name] = given[0]
        return values

    @staticmethod
    def _csv(values: Mapping[str, str], name: str, allowed: Iterable[str]) -> list[str]:
        raw = values.get(name)
        if raw is None:
            return []
        items = [item.strip() for item in raw.split(",")]
        known = set(allowed)
        for item in items:
            if item not in known:
                raise _invalid(f"'{item}' is not a valid value for {name}.", parameter=name)
        return items

    @staticmethod
    def _page_size(values: Mapping[str, str], default: int, high: int) -> int:
        raw = values.get("page[size]")
        if raw is None:
            return default
        if not raw.isdigit() or not 1 <= int(raw) <= high:
            raise _invalid(
                f"page[size] must be an integer between 1 and {high}, got {raw!r}.",
                parameter="page[size]",
            )
        return int(raw)

    @staticmethod
    def _body(request: Request, max_bytes: int | None = None) -> Any:
        media = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if media != JSONAPI:
            raise KlaviyoError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type.",
                f"Content-Type must be {JSONAPI}, got {media or 'none'!r}.",
            )
        if max_bytes is not None and len(request.body) > max_bytes:
            raise KlaviyoError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "payload_too_large",
                "Payload too large.",
                f"The payload is {len(request.body)} bytes; the maximum is {max_bytes}.",
            )
        try:
            return json.loads(request.body)
        except ValueError as exc:
            raise _invalid(f"The request body is not JSON: {exc}.", pointer="/") from exc

    @staticmethod
    def _resource(body: Any, resource_type: str) -> dict[str, Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise _invalid("'data' must be an object.", pointer="/data")
        if data.get("type") != resource_type:
            raise _invalid(
                f"'type' must be {resource_type!r}, got {data.get('type')!r}.",
                pointer="/data/type",
            )
        attributes = data.get("attributes")
        if not isinstance(attributes, dict):
            raise _invalid("'attributes' must be an object.", pointer="/data/attributes")
        return data

    @staticmethod
    def _profiles_of(data: Mapping[str, Any], high: int) -> list[Any]:
        profiles = data["attributes"].get("profiles")
        items = profiles.get("data") if isinstance(profiles, dict) else None
        if not isinstance(items, list):
            raise _invalid(
                "'profiles.data' must be an array.", pointer="/data/attributes/profiles/data"
            )
        if len(items) > high:
            raise _invalid(
                f"At most {high} profiles per request; got {len(items)}.",
                pointer="/data/attributes/profiles/data",
            )
        return items

    def _related_list(self, data: Mapping[str, Any], *, many: bool) -> list[str]:
        relationships = data.get("relationships") or {}
        if not isinstance(relationships, dict):
            raise _invalid("'relationships' must be an object.", pointer="/data/relationships")
        key = "lists" if many else "list"
        related = relationships.get(key)
        if related is None:
            return []
        items = related.get("data") if isinstance(related, dict) else None
        items = items if many else [items]
        if not isinstance(items, list):
            raise _invalid(f"'{key}.data' is malformed.", pointer=f"/data/relationships/{key}")
        ids: list[str] = []
        for index, item in enumerate(items):
            pointer = f"/data/relationships/{key}/data" + (f"/{index}" if many else "")
            if not isinstance(item, dict) or item.get("type") != "list" or not item.get("id"):
                raise _invalid("Each related list is {type: 'list', id}.", pointer=pointer)
            if item["id"] not in self._lists:
                raise _invalid(f"List {item['id']!r} does not exist.", pointer=f"{pointer}/id")
            ids.append(str(item["id"]))
        return ids

    def _base(self, request: Request) -> str:
        return f"http://{request.header('host') or f'{self.host}:{self.port}'}"

    # -- pagination ------------------------------------------------------------------------------
    def _page(
        self,
        request: Request,
        items: list[dict[str, Any]],
        size: int,
        values: Mapping[str, str],
        scope: str,
    ) -> Response:
        """One page of ``items``; the cursor is opaque and only valid for the same query."""
        query_key = hashlib.sha256(
            json.dumps(
                [scope, sorted((k, v) for k, v in values.items() if k != "page[cursor]")]
            ).encode()
        ).hexdigest()[:16]
        offset = 0
        cursor = values.get("page[cursor]")
        if cursor is not None:
            offset = self._decode_cursor(cursor, query_key)
        page = items[offset : offset + size]
        base = self._base(request) + request.path
        plain = {k: v for k, v in values.items() if k != "page[cursor]"}
        links: dict[str, str] = {"self": f"{base}?{urlencode(values)}" if values else base}
        if offset + size < len(items):
            token = self._encode_cursor(offset + size, query_key)
            links["next"] = f"{base}?{urlencode({**plain, 'page[cursor]': token})}"
        if offset > 0:
            token = self._encode_cursor(max(0, offset - size), query_key)
            links["prev"] = f"{base}?{urlencode({**plain, 'page[cursor]': token})}"
        return json_response(HTTPStatus.OK, {"data": page, "links": links}, content_type=JSONAPI)

    @staticmethod
    def _encode_cursor(offset: int, query_key: str) -> str:
        raw = json.dumps({"o": offset, "q": query_key}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _decode_cursor(cursor: str, query_key: str) -> int:
        try:
            raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            offset, key = int(raw["o"]), str(raw["q"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise _invalid("Invalid page cursor.", parameter="page[cursor]") from exc
        if key != query_key or offset < 0:
            raise _invalid(
                "This page cursor belongs to a different query.", parameter="page[cursor]"
            )
        return offset

    @staticmethod
    def _filter(
        values: Mapping[str, str], allowed: Mapping[str, frozenset[str]]
    ) -> list[_Condition]:
        raw = values.get("filter")
        if raw is None:
            return []
        try:
            return parse_filter(raw, allowed)
        except ValueError as exc:
            raise _invalid(f"Invalid filter provided: {exc}.", parameter="filter") from exc

    # -- lists -----------------------------------------------------------------------------------
    @staticmethod
    def _list_wire(found: _List, base: str) -> dict[str, Any]:
        return {
            "type": "list",
            "id": found.id,
            "attributes": {
                "name": found.name,
                "created": _iso(found.created),
                "updated": _iso(found.updated),
                "opt_in_process": found.opt_in_process,
            },
            "links": {"self": f"{base}/api/lists/{found.id}/"},
        }

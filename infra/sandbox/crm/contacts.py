"""The CRM contacts API: listing with cursors, reading one contact, and search with
filters, sorts and the 10,000-result cap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.crm.store import CrmStore
from infra.sandbox.crm.validation import (
    SEARCH_REQUEST_SCHEMA,
    _bad_request,
    _comparable,
    _Filter,
    _matches_groups,
    _parse_int,
    _parse_sort,
    _requested_properties,
    parse_filter_groups,
    schema_problem,
)
from infra.sandbox.crm.wire import (
    ALWAYS_RETURNED,
    CONTACTS_PATH,
    LIST_DEFAULT_LIMIT,
    LIST_MAX_LIMIT,
    SEARCH_MAX_LIMIT,
    SEARCH_RESULT_CAP,
    CrmRequestError,
    _id_key,
    decode_cursor,
    encode_cursor,
)


class ContactReads(CrmStore):
    """Contact list, get and search endpoints."""

    # -- API endpoints ----------------------------------------------------------------------
    def _render(self, contact: dict[str, Any], properties: Iterable[str]) -> dict[str, Any]:
        """A contact as returned by the API: only the requested properties (plus defaults)."""
        props = contact["properties"]
        names = dict.fromkeys([*properties, *ALWAYS_RETURNED])
        rendered = {
            "id": contact["id"],
            "properties": {name: props.get(name) for name in names},
            "createdAt": contact.get("createdAt"),
            "updatedAt": contact.get("updatedAt"),
            "archived": bool(contact.get("archived", False)),
        }
        if contact.get("archivedAt"):
            rendered["archivedAt"] = contact["archivedAt"]
        return rendered

    def _list(self, request: Request) -> Response:
        limit = _parse_int(
            request.query_value("limit"),
            "limit",
            default=LIST_DEFAULT_LIMIT,
            low=1,
            high=LIST_MAX_LIMIT,
        )
        archived = (request.query_value("archived") or "false").lower() == "true"
        properties = _requested_properties(request.query.get("properties"))
        cursor = request.query_value("after")
        start = _id_key(decode_cursor(cursor)) if cursor else None
        with self._lock:
            ids = [
                k
                for k in self._sorted_ids()
                if bool(self._contacts[k].get("archived")) == archived
                and (start is None or _id_key(k) >= start)
            ]
            page = [self._render(self._contacts[k], properties) for k in ids[:limit]]
        body: dict[str, Any] = {"results": page}
        if len(ids) > limit:
            body["paging"] = {"next": self._next_link(request, ids[limit])}
        return json_response(HTTPStatus.OK, body)

    def _next_link(self, request: Request, next_id: str) -> dict[str, str]:
        after = encode_cursor(next_id)
        query = [(k, v) for k, values in request.query.items() if k != "after" for v in values]
        link = f"{self.url}{CONTACTS_PATH}?{urlencode(query)}&after={after}".replace("?&", "?")
        return {"after": after, "link": link}

    def _get_one(self, request: Request, contact_id: str) -> Response:
        properties = _requested_properties(request.query.get("properties"))
        with self._lock:
            contact = self._contacts.get(contact_id)
            if contact is None or contact.get("archived"):
                raise CrmRequestError(
                    HTTPStatus.NOT_FOUND, "OBJECT_NOT_FOUND", f"No contact with id {contact_id!r}"
                )
            return json_response(HTTPStatus.OK, self._render(contact, properties))

    def _search(self, request: Request) -> Response:
        body = self._json_body(request)
        problem = schema_problem(body, SEARCH_REQUEST_SCHEMA)
        if problem is not None:
            raise _bad_request(f"Invalid input JSON: {problem}")
        limit = _parse_int(
            body.get("limit"), "limit", default=LIST_DEFAULT_LIMIT, low=1, high=SEARCH_MAX_LIMIT
        )
        after = _parse_int(body.get("after"), "after", default=0, low=0, high=None)
        if after + limit > SEARCH_RESULT_CAP:
            raise _bad_request(
                f"Search paging past the {SEARCH_RESULT_CAP} result window is not allowed: "
                f"after={after} + limit={limit} > {SEARCH_RESULT_CAP}. Restart the search "
                "with a narrower filter (e.g. lastmodifieddate GTE the last value seen)."
            )
        groups = parse_filter_groups(body.get("filterGroups"))
        sort = _parse_sort(body.get("sorts"))
        properties = _requested_properties(body.get("properties"))
        with self._lock:
            matched = self._matching(groups, sort)
            page = [self._render(c, properties) for c in matched[after : after + limit]]
            self.search_pages += 1
            number = self.search_pages
        payload: dict[str, Any] = {"total": len(matched), "results": page}
        if after + len(page) < len(matched):
            payload["paging"] = {"next": {"after": str(after + len(page))}}
        if self.on_search_page is not None:
            self.on_search_page(number, body)
        return json_response(HTTPStatus.OK, payload)

    @staticmethod
    def _json_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad_request(f"Invalid input JSON on line {getattr(exc, 'lineno', 1)}") from exc
        if not isinstance(body, dict):
            raise _bad_request("the search body must be a JSON object")
        return body

    def _matching(
        self, groups: list[list[_Filter]], sort: tuple[str, bool] | None
    ) -> list[dict[str, Any]]:
        """Non-archived contacts matching any filter group, sorted (ties by ascending id)."""
        contacts = [
            contact
            for contact in (self._contacts[k] for k in self._sorted_ids())
            if not contact.get("archived") and _matches_groups(contact["properties"], groups)
        ]
        if sort is None:
            return contacts
        prop, descending = sort
        keyed = [(_comparable(prop, c["properties"].get(prop)), c) for c in contacts]
        present = [pair for pair in keyed if pair[0] is not None]
        missing = [c for value, c in keyed if value is None]
        present.sort(key=lambda pair: pair[0], reverse=descending)  # stable: ids stay ascending
        return [c for _, c in present] + missing

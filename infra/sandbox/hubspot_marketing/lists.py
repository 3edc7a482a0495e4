"""Lists and memberships: creating lists, finding one by name, paging and changing its
members.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.hubspot_marketing.parsing import HubSpotParsing
from infra.sandbox.hubspot_marketing.records import _List
from infra.sandbox.hubspot_marketing.schemas import LIST_CREATE_BODY, RECORD_IDS_BODY
from infra.sandbox.hubspot_marketing.wire import (
    CONTACTS_OBJECT_TYPE_ID,
    MEMBERSHIPS_DEFAULT_LIMIT,
    MEMBERSHIPS_MAX_LIMIT,
    HubSpotApiError,
    _not_found,
    _validation,
    iso_now,
)


def _decode_after(after: str) -> int:
    if not after.isdigit():
        raise _validation(f"after {after!r} is not a valid cursor")
    return int(after)


class ListRoutes(HubSpotParsing):
    """List operations."""

    # -- lists ----------------------------------------------------------------------------------
    def _list(self, list_id: str) -> _List:
        hub_list = self._lists.get(list_id)
        if hub_list is None:
            raise _not_found(f"List {list_id} does not exist.")
        return hub_list

    def _create_list(self, request: Request, match: re.Match[str]) -> Response:
        body = self._json(request, LIST_CREATE_BODY)
        if body["objectTypeId"] != CONTACTS_OBJECT_TYPE_ID:
            raise _validation(f"objectTypeId {body['objectTypeId']!r}: this stand-in serves 0-1")
        if body["processingType"] not in ("MANUAL", "SNAPSHOT"):
            raise _validation(
                f"processingType {body['processingType']!r}: DYNAMIC lists need a filterBranch, "
                "which this stand-in does not evaluate; use MANUAL or SNAPSHOT"
            )
        with self._lock:
            if any(lst.name == body["name"] for lst in self._lists.values()):
                raise HubSpotApiError(
                    HTTPStatus.CONFLICT,
                    "OBJECT_ALREADY_EXISTS",
                    f"A list named {body['name']!r} already exists.",
                )
            list_id = str(self._next_list_id)
            self.add_list(list_id, name=body["name"], processing=body["processingType"])
            return json_response(HTTPStatus.OK, {"list": self._lists[list_id].to_wire()})

    def _list_by_name(self, request: Request, match: re.Match[str]) -> Response:
        name = unquote(match["name"])
        with self._lock:
            for hub_list in self._lists.values():
                if hub_list.name == name and match["object"] == CONTACTS_OBJECT_TYPE_ID:
                    return json_response(HTTPStatus.OK, {"list": hub_list.to_wire()})
        raise _not_found(f"List with name {name!r} does not exist.")

    def _memberships(self, request: Request, match: re.Match[str]) -> Response:
        limit = int(request.query_value("limit") or MEMBERSHIPS_DEFAULT_LIMIT)
        if not 1 <= limit <= MEMBERSHIPS_MAX_LIMIT:
            raise _validation(f"limit must be between 1 and {MEMBERSHIPS_MAX_LIMIT}, got {limit}")
        after = request.query_value("after")
        with self._lock:
            members = sorted(self._list(match["list"]).members.items(), key=lambda m: int(m[0]))
        if after:
            members = [m for m in members if int(m[0]) > _decode_after(after)]
        page = members[:limit]
        body: dict[str, Any] = {
            "results": [{"recordId": rid, "membershipTimestamp": ts} for rid, ts in page],
            "total": len(members),
        }
        if len(members) > limit:
            body["paging"] = {"next": {"after": page[-1][0]}}
        return json_response(HTTPStatus.OK, body)

    def _update_memberships(self, request: Request, match: re.Match[str]) -> Response:
        record_ids = self._json(request, RECORD_IDS_BODY)
        with self._lock:
            hub_list = self._list(match["list"])
            if hub_list.processing_type not in ("MANUAL", "SNAPSHOT"):
                raise _validation(
                    f"List {hub_list.list_id} is {hub_list.processing_type}; memberships can be "
                    "changed only on MANUAL or SNAPSHOT lists"
                )
            changed, missing = [], []
            for record_id in dict.fromkeys(record_ids):
                if record_id not in self._contacts:
                    missing.append(record_id)
                elif match["action"] == "add" and record_id not in hub_list.members:
                    hub_list.members[record_id] = iso_now()
                    changed.append(record_id)
                elif match["action"] == "remove" and record_id in hub_list.members:
                    del hub_list.members[record_id]
                    changed.append(record_id)
            if changed:
                hub_list.version += 1
        body = {
            "recordsIdsAdded": changed if match["action"] == "add" else [],
            "recordIdsRemoved": changed if match["action"] == "remove" else [],
            "recordIdsMissing": missing,
        }
        return json_response(HTTPStatus.OK, body)

"""The list, member, tag and merge-field resources: reads with views and paging, ``PUT``,
``PATCH``, archiving and permanent deletion.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, empty_response, json_response
from infra.sandbox.mailchimp.parsing import (
    _field_matches,
    _member_order,
    _object,
    _parse_member,
    _parse_time,
    _query_bool,
    _query_int,
    _timestamp,
    _view,
)
from infra.sandbox.mailchimp.records import _Member
from infra.sandbox.mailchimp.upserts import MemberUpserts, _check_status_change
from infra.sandbox.mailchimp.wire import (
    MEMBERS_DEFAULT_COUNT,
    MEMBERS_MAX_COUNT,
    STATUSES,
    MemberError,
    _invalid,
    _not_found,
    subscriber_hash,
)
from infra.sandbox.mailchimp_merge import MERGE_FIELDS_MAX_COUNT, new_merge_field


class MemberRoutes(MemberUpserts):
    """List, member, tag and merge-field resources."""

    def _merge_fields_resource(self, request: Request, list_id: str) -> Response:
        self._require(request, "GET", "POST")
        with self._lock:
            fields = self._merge_fields[list_id]
            if request.method == "POST":
                created = new_merge_field(_object(self._json(request)), fields)
                if isinstance(created, str):
                    raise _invalid(created, created.split(":")[0], created)
                fields[created.tag] = created
                body = {
                    **created.to_wire(list_id),
                    "merge_field_limit": 30,
                    "total_items": len(fields),
                }
                return json_response(HTTPStatus.OK, body)
            selected = [f.to_wire(list_id) for f in fields.values() if _field_matches(request, f)]
        count = _query_int(request, "count", MEMBERS_DEFAULT_COUNT, MERGE_FIELDS_MAX_COUNT)
        offset = _query_int(request, "offset", 0, None)
        body = {
            "merge_fields": selected[offset : offset + count],
            "list_id": list_id,
            "total_items": len(selected),
            "merge_field_limit": 30,
            "_links": [],
        }
        return json_response(HTTPStatus.OK, _view(request, body))

    def _member_tags(self, request: Request, list_id: str, member_hash: str) -> Response:
        with self._lock:
            member = self._store(list_id).get(member_hash)
            if member is None:
                raise _not_found(f"Member {member_hash} is not on list {list_id!r}.")
            tags = [{"id": self._tag_ids[t], "name": t} for t in member.tags]
        count = _query_int(request, "count", MEMBERS_DEFAULT_COUNT, MEMBERS_MAX_COUNT)
        offset = _query_int(request, "offset", 0, None)
        body = {"tags": tags[offset : offset + count], "total_items": len(tags), "_links": []}
        return json_response(HTTPStatus.OK, _view(request, body))

    def _list_resource(self, request: Request, list_id: str) -> Response:
        self._require(request, "GET", "POST")
        if request.method == "POST":
            return self._batch(request, list_id)
        with self._lock:
            store = self._store(list_id)
            counts = {
                "member_count": sum(m.status == "subscribed" for m in store.values()),
                "unsubscribe_count": sum(m.status == "unsubscribed" for m in store.values()),
            }
        body = {"id": list_id, "name": list_id, "stats": counts}
        return json_response(HTTPStatus.OK, _view(request, body))

    def _members_collection(self, request: Request, list_id: str) -> Response:
        self._require(request, "GET", "POST")
        if request.method == "POST":
            payload = _parse_member(self._json(request), "", email_required=True)
            payload.skip_merge_validation = _query_bool(request, "skip_merge_validation")
            with self._lock:
                if self._is_member(list_id, subscriber_hash(payload.email or "")):
                    raise MemberError(
                        "Member Exists",
                        f"{payload.email} is already a list member. Use PUT to insert or update "
                        "list members.",
                    )
                member, _ = self._apply(list_id, payload, update_existing=True, sync_tags=False)
                return json_response(HTTPStatus.OK, self._wire(list_id, member))
        return self._list_members(request, list_id)

    def _list_members(self, request: Request, list_id: str) -> Response:
        count = _query_int(request, "count", MEMBERS_DEFAULT_COUNT, MEMBERS_MAX_COUNT)
        offset = _query_int(request, "offset", 0, None)
        status = request.query_value("status")
        if status is not None and status not in STATUSES | {"archived"}:
            raise _invalid(f"status {status!r} is not a member status.", "status", "invalid")
        since = _parse_time(request, "since_last_changed")
        before = _parse_time(request, "before_last_changed")
        order = _member_order(request)
        with self._lock:
            chosen = [
                m
                for m in self._store(list_id).values()
                if (m.status == status if status else not m.archived)
                and (since is None or _timestamp(m.last_changed) > since)
                and (before is None or _timestamp(m.last_changed) < before)
            ]
            chosen.sort(key=order[0], reverse=order[1])
            page = [self._wire(list_id, m) for m in chosen[offset : offset + count]]
        body = {"members": page, "list_id": list_id, "total_items": len(chosen), "_links": []}
        hook = self.on_members_page
        if hook is not None:
            hook(list_id, offset)
        return json_response(HTTPStatus.OK, _view(request, body))

    def _member_resource(self, request: Request, list_id: str, member_hash: str) -> Response:
        self._require(request, "GET", "PUT", "PATCH", "DELETE")
        with self._lock:
            member = self._store(list_id).get(member_hash)
            if request.method == "PUT":
                return self._put(request, list_id, member_hash)
            if member is None:
                raise _not_found(
                    f"The requested resource could not be found: member {member_hash} of "
                    f"list {list_id!r}."
                )
            if request.method == "GET":
                return json_response(HTTPStatus.OK, _view(request, self._wire(list_id, member)))
            if request.method == "DELETE":
                if not member.archived:
                    member.status_before_archive = member.status
                    member.status, member.last_changed = "archived", self._stamp()
                return empty_response()
            return self._patch(request, list_id, member)

    def _put(self, request: Request, list_id: str, member_hash: str) -> Response:
        payload = _parse_member(self._json(request), "", email_required=False)
        payload.skip_merge_validation = _query_bool(request, "skip_merge_validation")
        existing = self._store(list_id).get(member_hash)
        if payload.email is None and existing is not None:
            payload.email = existing.email_address
        if payload.email is None:
            raise _invalid(
                "The resource submitted could not be validated.",
                "email_address",
                "This value should not be blank.",
            )
        if subscriber_hash(payload.email) != member_hash:
            raise _invalid(
                f"The subscriber hash {member_hash} in the path does not match "
                f"md5({payload.email.strip().lower()!r}).",
                "email_address",
                "does not match the subscriber hash",
            )
        member, _ = self._apply(list_id, payload, update_existing=True, sync_tags=False)
        return json_response(HTTPStatus.OK, self._wire(list_id, member))

    def _patch(self, request: Request, list_id: str, member: _Member) -> Response:
        payload = _parse_member(self._json(request), "", email_required=False)
        if payload.email is not None and subscriber_hash(payload.email) != subscriber_hash(
            member.email_address
        ):
            raise _invalid(
                "Changing a member's email address is not supported by the stand-in.",
                "email_address",
                "must match the existing member",
            )
        values = self._merge_values(list_id, payload)
        if payload.status is not None:
            _check_status_change(member, payload.status)
            if payload.status != member.status:
                member.status = payload.status
        member.merge_fields.update(values)
        member.last_changed = self._stamp()
        return json_response(HTTPStatus.OK, self._wire(list_id, member))

    def _update_tags(self, list_id: str, member_hash: str, body: Any) -> Response:
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in tags
        ):
            raise _invalid("tags must be a list of {name, status}.", "tags", "invalid")
        with self._lock:
            member = self._store(list_id).get(member_hash)
            if member is None:
                raise _not_found(f"Member {member_hash} is not on list {list_id!r}.")
            for tag in tags:
                name = tag["name"]
                if tag.get("status", "active") == "inactive":
                    member.tags = [t for t in member.tags if t != name]
                elif name not in member.tags:
                    self._tag_ids.setdefault(name, len(self._tag_ids) + 1)
                    member.tags.append(name)
            member.last_changed = self._stamp()
        return empty_response()

    def _delete_permanent(self, list_id: str, member_hash: str) -> Response:
        with self._lock:
            store = self._store(list_id)
            if member_hash not in store:
                raise _not_found(f"Member {member_hash} is not on list {list_id!r}.")
            del store[member_hash]
            self._forgotten[list_id].add(member_hash)
        return empty_response()

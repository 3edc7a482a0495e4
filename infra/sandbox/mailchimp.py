"""A Mailchimp Marketing API v3 style list-members API on loopback.

Wire facts: ``docs/platforms.md``, *Mailchimp*.

Routes (base path ``/3.0``):

* ``GET  /3.0/ping``
* ``GET  /3.0/lists/{list_id}``
* ``POST /3.0/lists/{list_id}`` — batch subscribe/update, ≤ 500 members, always 200 with
  per-member ``errors[]`` (``ERROR_CONTACT_EXISTS`` / ``ERROR_GENERIC``).
* ``GET  /3.0/lists/{list_id}/members?count=&offset=&status=&since_last_changed=`` (count ≤ 1000;
  archived members only with ``status=archived``; ``since_last_changed`` is inclusive).
* ``POST /3.0/lists/{list_id}/members`` — add one member (400 "Member Exists" if present).
* ``GET|PUT|PATCH|DELETE /3.0/lists/{list_id}/members/{subscriber_hash}`` — the path key may
  also be the raw email address. PUT is an idempotent upsert (``status_if_new`` only on create;
  ``tags`` only on create, as in Mailchimp); PATCH is partial; DELETE archives (204).
* ``POST /3.0/lists/{list_id}/members/{hash}/tags`` — ``{"tags":[{"name","status"}]}`` → 204.
* ``POST /3.0/lists/{list_id}/members/{hash}/actions/delete-permanent`` → 204; the address is
  then "forgotten" and can never be re-added.

Auth is HTTP Basic (any user, API key as password) or ``Bearer <api key>``. Errors are RFC 7807
problem documents (``type,title,status,detail,instance`` and sometimes ``errors[]``). More than
``max_connections`` requests in flight at once get 429 without ``Retry-After``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, StandInServer, empty_response, json_response

BASE_PATH = "/3.0"
BATCH_MAX_MEMBERS = 500
MEMBERS_DEFAULT_COUNT = 10
MEMBERS_MAX_COUNT = 1000
PROBLEM_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
PROBLEM_CONTENT_TYPE = "application/problem+json; charset=utf-8"
STATUSES = frozenset({"subscribed", "unsubscribed", "cleaned", "pending", "transactional"})
COMPLIANCE_STATUSES = frozenset({"unsubscribed", "cleaned"})
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_MEMBER_PATH = re.compile(
    r"^/3\.0/lists/(?P<list>[^/]+)(?P<members>/members(?:/(?P<key>[^/]+)"
    r"(?P<rest>/tags|/actions/delete-permanent)?)?)?/?$"
)
_OFFSET_WITHOUT_PLUS = re.compile(r" (\d{2}:?\d{2})$")


def subscriber_hash(email: str) -> str:
    """Mailchimp's member key: ``md5(email.strip().lower())`` as hex."""
    return hashlib.md5(email.strip().lower().encode("utf-8")).hexdigest()


def is_valid_email(email: str) -> bool:
    """True when Mailchimp would accept the address (``local@domain.tld``, no spaces)."""
    return bool(_EMAIL.match(email.strip())) and ".." not in email


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class MailchimpError(Exception):
    """A request the stand-in rejects with a problem document."""

    def __init__(
        self, status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors


class MemberError(Exception):
    """A per-member failure (a batch ``errors[]`` entry, or a 400 on single-member calls)."""

    def __init__(self, title: str, message: str, code: str = "ERROR_GENERIC") -> None:
        super().__init__(message)
        self.title = title
        self.message = message
        self.code = code


def problem(
    status: int, title: str, detail: str, *, errors: list[dict[str, str]] | None = None
) -> Response:
    """An RFC 7807 problem response in Mailchimp's shape."""
    payload: dict[str, Any] = {
        "type": PROBLEM_TYPE,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(uuid.uuid4()),
    }
    if errors is not None:
        payload["errors"] = errors
    return json_response(status, payload, content_type=PROBLEM_CONTENT_TYPE)


def _invalid(detail: str, field_name: str, message: str) -> MailchimpError:
    return MailchimpError(
        HTTPStatus.BAD_REQUEST,
        "Invalid Resource",
        detail,
        [{"field": field_name, "message": message}],
    )


def _not_found(detail: str) -> MailchimpError:
    return MailchimpError(HTTPStatus.NOT_FOUND, "Resource Not Found", detail)


@dataclass
class _Member:
    """One list member as stored by the stand-in."""

    email_address: str
    status: str
    merge_fields: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    last_changed: str = field(default_factory=_now)
    status_before_archive: str | None = None

    @property
    def archived(self) -> bool:
        return self.status == "archived"

    def to_wire(self, list_id: str, tag_ids: Mapping[str, int]) -> dict[str, Any]:
        """The member as the API returns it."""
        member_hash = subscriber_hash(self.email_address)
        return {
            "id": member_hash,
            "email_address": self.email_address,
            "unique_email_id": member_hash[:10],
            "status": self.status,
            "merge_fields": copy.deepcopy(self.merge_fields),
            "tags": [{"id": tag_ids[name], "name": name} for name in self.tags],
            "tags_count": len(self.tags),
            "last_changed": self.last_changed,
            "list_id": list_id,
        }


@dataclass(frozen=True)
class _Fault:
    status: int
    body: bytes | None


@dataclass
class _MemberInput:
    """Validated fields of one member payload."""

    email: str | None
    status: str | None
    status_if_new: str | None
    merge_fields: dict[str, Any]
    tags: list[str] | None


def _parse_member(raw: Any, where: str, *, email_required: bool) -> _MemberInput:
    """Validate a member payload's shape (email validity is checked per member later)."""
    if not isinstance(raw, dict):
        raise _invalid("The resource submitted could not be validated.", where, "must be object")
    email = raw.get("email_address")
    if (email_required or email is not None) and not isinstance(email, str):
        raise _invalid(
            "The resource submitted could not be validated.",
            f"{where}.email_address" if where else "email_address",
            "This value should be a string.",
        )
    for key in ("status", "status_if_new"):
        value = raw.get(key)
        if value is not None and value not in STATUSES:
            raise _invalid(
                f"{key} {value!r} is not one of {sorted(STATUSES)}.",
                f"{where}.{key}" if where else key,
                "Value is not a valid choice.",
            )
    merge_fields = raw.get("merge_fields") or {}
    tags = raw.get("tags")
    if not isinstance(merge_fields, dict):
        raise _invalid("merge_fields must be an object.", f"{where}.merge_fields", "object")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _invalid("tags must be a list of strings.", f"{where}.tags", "array of strings")
    return _MemberInput(email, raw.get("status"), raw.get("status_if_new"), merge_fields, tags)


class MailchimpStandIn(StandInServer):
    """Mailchimp Marketing v3 list-members API served on loopback.

    ``response_delay`` (seconds) keeps each request in flight a little longer, which makes the
    ``max_connections`` limit easy to exercise from tests.
    """

    name = "mailchimp"

    def __init__(
        self,
        *,
        api_key: str = "demo-key-us1",
        lists: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 10,
        response_delay: float = 0.0,
    ) -> None:
        super().__init__(host=host, port=port)
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.api_key = api_key
        self.max_connections = max_connections
        self.response_delay = response_delay
        self.max_in_flight = 0
        self._lock = threading.RLock()
        self._lists: dict[str, dict[str, _Member]] = {}
        self._forgotten: dict[str, set[str]] = {}
        self._tag_ids: dict[str, int] = {}
        self._faults: deque[_Fault] = deque()
        self._in_flight = 0
        self._member_log: list[tuple[str, str, str | None]] = []
        for list_id in lists:
            self.add_list(list_id)

    # -- introspection and test helpers -------------------------------------------------------
    def add_list(self, list_id: str) -> None:
        """Create an empty audience (no-op if it exists)."""
        if not list_id or "/" in list_id:
            raise ValueError(f"list id {list_id!r} must be non-empty and contain no '/'")
        with self._lock:
            self._lists.setdefault(list_id, {})
            self._forgotten.setdefault(list_id, set())

    @property
    def list_ids(self) -> list[str]:
        """Ids of all audiences, in creation order."""
        with self._lock:
            return list(self._lists)

    def members(self, list_id: str) -> dict[str, dict[str, Any]]:
        """All members of ``list_id`` (archived included) in wire shape, keyed by hash."""
        with self._lock:
            store = self._store(list_id)
            return {h: m.to_wire(list_id, self._tag_ids) for h, m in store.items()}

    def member_unsubscribes(self, list_id: str, email: str) -> None:
        """Simulate the person clicking "unsubscribe" in the platform."""
        with self._lock:
            member = self._store(list_id).get(subscriber_hash(email))
            if member is None:
                raise KeyError(f"{email!r} is not a member of Mailchimp list {list_id!r}")
            member.status, member.last_changed = "unsubscribed", _now()

    def member_requests(self, list_id: str) -> list[tuple[str, str | None]]:
        """Every ``(email, status)`` the batch endpoint received for ``list_id``, in order.

        Includes members the batch refused (the payload reached the platform either way), so
        tests can count how often each contact was sent.
        """
        with self._lock:
            return [(email, status) for lst, email, status in self._member_log if lst == list_id]

    def sends_per_member(self, list_id: str) -> Counter[str]:
        """How many batch payloads named each (normalised) email in ``list_id``."""
        return Counter(email for email, _ in self.member_requests(list_id))

    def fail_next(self, count: int, *, status: int, body: bytes | None = None) -> None:
        """Make the next ``count`` requests fail with ``status`` (problem JSON unless ``body``)."""
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        with self._lock:
            self._faults.extend(_Fault(status, body) for _ in range(count))

    def _store(self, list_id: str) -> dict[str, _Member]:
        store = self._lists.get(list_id)
        if store is None:
            raise _not_found(f"The requested resource could not be found: list {list_id!r}.")
        return store

    def _wire(self, list_id: str, member: _Member) -> dict[str, Any]:
        return member.to_wire(list_id, self._tag_ids)

    # -- HTTP -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Concurrency check, faults, auth, then routing; errors become problem JSON."""
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
            self.max_in_flight = max(self.max_in_flight, in_flight)
        try:
            if in_flight > self.max_connections:
                return problem(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    f"You have exceeded the limit of {self.max_connections} simultaneous "
                    "connections.",
                )
            if self.response_delay > 0:
                time.sleep(self.response_delay)
            return self._handle_admitted(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handle_admitted(self, request: Request) -> Response:
        fault = self._take_fault()
        if fault is not None:
            return fault
        rejection = self._authenticate(request)
        if rejection is not None:
            return rejection
        try:
            return self._route(request)
        except MailchimpError as exc:
            return problem(exc.status, exc.title, exc.detail, errors=exc.errors)
        except MemberError as exc:
            return problem(HTTPStatus.BAD_REQUEST, exc.title, exc.message)

    def _take_fault(self) -> Response | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults.popleft()
        if fault.body is not None:
            return Response(fault.status, fault.body, "application/json", {})
        try:
            phrase = HTTPStatus(fault.status).phrase
        except ValueError:
            phrase = "Error"
        return problem(fault.status, phrase, f"Injected failure: HTTP {fault.status}.")

    def _authenticate(self, request: Request) -> Response | None:
        header = request.header("authorization") or ""
        scheme, _, credentials = header.partition(" ")
        presented: str | None = None
        if scheme.lower() == "bearer":
            presented = credentials.strip()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            presented = decoded.partition(":")[2]
        if not presented:
            return problem(
                HTTPStatus.UNAUTHORIZED,
                "API Key Missing",
                "Your request did not include an API key (HTTP Basic password or Bearer).",
            )
        if not secrets.compare_digest(presented, self.api_key):
            return problem(
                HTTPStatus.UNAUTHORIZED,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )
        return None

    def _route(self, request: Request) -> Response:
        if request.path.rstrip("/") == f"{BASE_PATH}/ping":
            return json_response(HTTPStatus.OK, {"health_status": "Everything's Chimpy!"})
        match = _MEMBER_PATH.match(request.path)
        if match is None:
            raise _not_found(f"No Mailchimp stand-in resource at {request.path!r}.")
        list_id, key, rest = match["list"], match["key"], match["rest"]
        with self._lock:
            self._store(list_id)  # 404 for unknown lists before anything else
        if match["members"] is None:
            return self._list_resource(request, list_id)
        if key is None:
            return self._members_collection(request, list_id)
        member_hash = subscriber_hash(key) if "@" in key else key.lower()
        if rest == "/tags":
            self._require(request, "POST")
            return self._update_tags(list_id, member_hash, self._json(request))
        if rest == "/actions/delete-permanent":
            self._require(request, "POST")
            return self._delete_permanent(list_id, member_hash)
        return self._member_resource(request, list_id, member_hash)

    @staticmethod
    def _require(request: Request, *methods: str) -> None:
        if request.method not in methods:
            raise MailchimpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                f"{request.method} is not allowed on {request.path}; use {' or '.join(methods)}.",
            )

    @staticmethod
    def _json(request: Request) -> Any:
        try:
            return json.loads(request.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _invalid(
                "The resource submitted could not be validated.",
                "",
                f"We encountered an unspecified JSON parsing error: {exc}",
            ) from exc

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
        return json_response(HTTPStatus.OK, {"id": list_id, "name": list_id, "stats": counts})

    def _members_collection(self, request: Request, list_id: str) -> Response:
        self._require(request, "GET", "POST")
        if request.method == "POST":
            payload = _parse_member(self._json(request), "", email_required=True)
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

    def _is_member(self, list_id: str, member_hash: str) -> bool:
        """True when ``member_hash`` is on the list and not archived."""
        member = self._store(list_id).get(member_hash)
        return member is not None and not member.archived

    def _list_members(self, request: Request, list_id: str) -> Response:
        count = _query_int(request, "count", MEMBERS_DEFAULT_COUNT, MEMBERS_MAX_COUNT)
        offset = _query_int(request, "offset", 0, None)
        status = request.query_value("status")
        if status is not None and status not in STATUSES | {"archived"}:
            raise _invalid(f"status {status!r} is not a member status.", "status", "invalid")
        since = _parse_since(request.query_value("since_last_changed"))
        with self._lock:
            selected = [
                self._wire(list_id, m)
                for m in self._store(list_id).values()
                if (m.status == status if status else not m.archived)
                and (since is None or _timestamp(m.last_changed) >= since)
            ]
        body = {
            "members": selected[offset : offset + count],
            "list_id": list_id,
            "total_items": len(selected),
        }
        return json_response(HTTPStatus.OK, body)

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
                return json_response(HTTPStatus.OK, self._wire(list_id, member))
            if request.method == "DELETE":
                if not member.archived:
                    member.status_before_archive = member.status
                    member.status, member.last_changed = "archived", _now()
                return empty_response()
            return self._patch(request, list_id, member)

    def _put(self, request: Request, list_id: str, member_hash: str) -> Response:
        payload = _parse_member(self._json(request), "", email_required=False)
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
        if payload.status is not None:
            _check_status_change(member, payload.status)
            if payload.status != member.status:
                member.status = payload.status
        member.merge_fields.update(payload.merge_fields)
        member.last_changed = _now()
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
            member.last_changed = _now()
        return empty_response()

    def _delete_permanent(self, list_id: str, member_hash: str) -> Response:
        with self._lock:
            store = self._store(list_id)
            if member_hash not in store:
                raise _not_found(f"Member {member_hash} is not on list {list_id!r}.")
            del store[member_hash]
            self._forgotten[list_id].add(member_hash)
        return empty_response()

    # -- batch and the shared upsert logic --------------------------------------------------
    def _batch(self, request: Request, list_id: str) -> Response:
        body = self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            raise _invalid(
                "The resource submitted could not be validated.",
                "members",
                "Schema describes array, but 'members' is missing or not an array.",
            )
        raw_members = body["members"]
        if len(raw_members) > BATCH_MAX_MEMBERS:
            raise _invalid(
                f"A batch may contain at most {BATCH_MAX_MEMBERS} members; got {len(raw_members)}.",
                "members",
                f"at most {BATCH_MAX_MEMBERS} items",
            )
        flags = {k: body.get(k, False) for k in ("update_existing", "sync_tags")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise _invalid(f"{name} must be a boolean.", name, "Value must be a boolean.")
        inputs = [
            _parse_member(raw, f"members.{i}", email_required=True)
            for i, raw in enumerate(raw_members)
        ]
        skip_duplicates = (request.query_value("skip_duplicate_check") or "").lower() == "true"
        with self._lock:
            self._store(list_id)  # an unknown list is a 404, and logs nothing
            self._member_log.extend(
                (list_id, (m.email or "").strip().lower(), m.status) for m in inputs
            )
            result = self._apply_batch(list_id, inputs, flags, skip_duplicates=skip_duplicates)
        return json_response(HTTPStatus.OK, result)

    def _apply_batch(
        self,
        list_id: str,
        inputs: list[_MemberInput],
        flags: Mapping[str, bool],
        *,
        skip_duplicates: bool,
    ) -> dict[str, Any]:
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        seen: set[str] = set()
        for payload in inputs:
            email = (payload.email or "").strip()
            key = subscriber_hash(email)
            if key in seen:
                if not skip_duplicates:
                    errors.append(_batch_error(email, f"{email} appears more than once."))
                continue
            seen.add(key)
            try:
                if self._is_member(list_id, key) and not flags["update_existing"]:
                    raise MemberError(
                        "Member Exists",
                        f"{email} is already a list member; set update_existing to update it.",
                        code="ERROR_CONTACT_EXISTS",
                    )
                member, is_new = self._apply(
                    list_id,
                    payload,
                    update_existing=flags["update_existing"],
                    sync_tags=flags["sync_tags"],
                )
            except MemberError as exc:
                errors.append(_batch_error(email, exc.message, exc.code))
                continue
            (created if is_new else updated).append(self._wire(list_id, member))
        return {
            "new_members": created,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(created),
            "total_updated": len(updated),
            "error_count": len(errors),
            "_links": [],
        }

    def _apply(
        self,
        list_id: str,
        payload: _MemberInput,
        *,
        update_existing: bool,
        sync_tags: bool,
    ) -> tuple[_Member, bool]:
        """Create or update one member; raises :class:`MemberError` for per-member failures.

        Returns ``(member, created)``. An archived member is revived (counts as created) but
        keeps its unsubscribe history for the compliance check.
        """
        email = (payload.email or "").strip()
        if not is_valid_email(email):
            raise MemberError(
                "Invalid Resource",
                f"{email or '(blank)'} looks fake or invalid, please enter a real email address.",
            )
        key = subscriber_hash(email)
        if key in self._forgotten[list_id]:
            raise MemberError(
                "Forgotten Email Not Subscribed",
                f"{email} was permanently deleted and cannot be re-imported. The contact must "
                "re-subscribe to get back on the list.",
            )
        store = self._store(list_id)
        member = store.get(key)
        if member is None or member.archived:
            return self._create(list_id, email, payload, previous=member), True
        if payload.status is not None and update_existing:
            _check_status_change(member, payload.status)
            member.status = payload.status
        member.merge_fields.update(payload.merge_fields)
        if payload.tags is not None and sync_tags:
            member.tags = []
        self._add_tags(member, payload.tags)
        member.last_changed = _now()
        return member, False

    def _create(
        self, list_id: str, email: str, payload: _MemberInput, *, previous: _Member | None
    ) -> _Member:
        status = payload.status or payload.status_if_new
        if status is None:
            raise MemberError(
                "Invalid Resource", f"{email}: provide status or status_if_new for a new member."
            )
        if previous is not None:
            _check_status_change(previous, status)
        member = _Member(email_address=email, status=status)
        member.merge_fields.update(payload.merge_fields)
        self._add_tags(member, payload.tags)
        self._store(list_id)[subscriber_hash(email)] = member
        return member

    def _add_tags(self, member: _Member, tags: list[str] | None) -> None:
        for name in tags or ():
            self._tag_ids.setdefault(name, len(self._tag_ids) + 1)
            if name not in member.tags:
                member.tags.append(name)


def _check_status_change(member: _Member, new_status: str) -> None:
    """Refuse to re-subscribe someone who unsubscribed (Mailchimp's compliance state).

    Archiving does not wipe that history: an archived member is judged by its status before
    archiving.
    """
    current = member.status_before_archive if member.archived else member.status
    if new_status == "subscribed" and current in COMPLIANCE_STATUSES:
        raise MemberError(
            "Member In Compliance State",
            f"{member.email_address} is in a compliance state due to unsubscribe, bounce, or "
            "compliance review and cannot be subscribed.",
        )


def _batch_error(email: str, message: str, code: str = "ERROR_GENERIC") -> dict[str, str]:
    return {
        "email_address": email,
        "error": message,
        "error_code": code,
        "field": "",
        "field_message": "",
    }


def _query_int(request: Request, name: str, default: int, high: int | None) -> int:
    raw = request.query_value(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise _invalid(f"{name} must be a non-negative integer, got {raw!r}.", name, "integer")
    value = int(raw)
    if high is not None and value > high:
        raise _invalid(f"{name} must be at most {high}, got {value}.", name, f"max {high}")
    return value


def _timestamp(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    text = _OFFSET_WITHOUT_PLUS.sub(r"+\1", raw.strip())  # an unencoded "+" arrives as " "
    try:
        return _timestamp(text)
    except ValueError as exc:
        raise _invalid(
            f"since_last_changed {raw!r} is not an ISO 8601 timestamp.",
            "since_last_changed",
            "invalid date",
        ) from exc

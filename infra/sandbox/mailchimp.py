"""A Mailchimp Marketing API v3 style audience API on loopback.

Wire facts: ``docs/platforms.md``, *Mailchimp*.

Follows the trimmed vendor OpenAPI document of the Mailchimp Marketing API (the operations an
audience sync calls), not any one adapter. Routes (base path ``/3.0``):

* ``GET  /3.0/ping``
* ``GET  /3.0/lists/{list_id}``
* ``POST /3.0/lists/{list_id}`` — batch subscribe/update, ≤ 500 members, always 200 with
  per-member ``errors[]`` (``ERROR_CONTACT_EXISTS`` / ``ERROR_GENERIC``, with ``field`` and
  ``field_message`` for a refused merge field).
* ``GET  /3.0/lists/{list_id}/members`` with ``count`` (≤ 1000, default 10), ``offset``,
  ``status``, ``since_last_changed`` / ``before_last_changed`` (strictly after / before, as the
  spec words it), ``sort_field`` / ``sort_dir``, ``fields`` / ``exclude_fields``. Archived
  members only with ``status=archived``. Without ``sort_field`` members come in creation order;
  with ``sort_field=last_changed`` an edit moves a member to its new place, so offset paging
  over a changing audience shifts exactly as the real one does. ``on_members_page`` lets a test
  edit the audience between two pages.
* ``POST /3.0/lists/{list_id}/members`` — add one member (400 "Member Exists" if present).
* ``GET|PUT|PATCH|DELETE /3.0/lists/{list_id}/members/{subscriber_hash}`` — the path key may
  also be the raw email address. PUT is an idempotent upsert (``status_if_new`` only on create;
  ``tags`` only on create, as in Mailchimp); PATCH is partial; DELETE archives (204).
* ``GET|POST /3.0/lists/{list_id}/members/{hash}/tags`` — POST ``{"tags":[{"name","status"}]}``
  → 204.
* ``POST /3.0/lists/{list_id}/members/{hash}/actions/delete-permanent`` → 204; the address is
  then "forgotten" and can never be re-added.
* ``GET|POST /3.0/lists/{list_id}/merge-fields`` — the audience's merge fields (``FNAME``,
  ``LNAME``, ``ADDRESS``, ``PHONE``, ``BIRTHDAY`` from the start); a member value for a tag the
  audience lacks, or of the wrong type, is refused for that member.

Query parameters an operation does not declare are rejected (400), and so are declared ones
the stand-in does not implement, rather than silently ignored. Auth is HTTP Basic (any user, API
key as password) or ``Bearer <api key>``. Errors are RFC 7807 problem documents
(``type,title,status,detail,instance`` and sometimes ``errors[]``). More than
``max_connections`` (10) requests in flight at once get 429 without ``Retry-After``.
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, StandInServer, empty_response, json_response
from infra.sandbox.mailchimp_merge import (
    MERGE_FIELDS_MAX_COUNT,
    MergeField,
    MergeValueError,
    check_merge_values,
    default_merge_fields,
    missing_required,
    new_merge_field,
    select_fields,
)

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
    r"^/3\.0/lists/(?P<list>[^/]+)(?:(?P<members>/members(?:/(?P<key>[^/]+)"
    r"(?P<rest>/tags|/actions/delete-permanent)?)?)|(?P<merge>/merge-fields))?/?$"
)
SORT_FIELDS = frozenset({"last_changed", "timestamp_opt", "timestamp_signup"})
_VIEW = frozenset({"fields", "exclude_fields"})
_PAGE = frozenset({"count", "offset"})
MEMBERS_QUERY = (
    _VIEW
    | _PAGE
    | {
        "status",
        "since_last_changed",
        "before_last_changed",
        "sort_field",
        "sort_dir",
    }
)
"""``GET …/members`` parameters the stand-in implements."""
MEMBERS_QUERY_NOT_IMPLEMENTED = frozenset(
    {
        "email_type",
        "since_timestamp_opt",
        "before_timestamp_opt",
        "unique_email_id",
        "vip_only",
        "interest_category_id",
        "interest_ids",
        "interest_match",
        "since_last_campaign",
        "unsubscribed_since",
    }
)
"""Declared by the spec for ``GET …/members`` but not implemented: refused, never ignored."""
ABUSE_REASON = "N/A (Abuse Complaint)"
"""``unsubscribe_reason`` of a member unsubscribed by a spam complaint."""
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

    def __init__(
        self,
        title: str,
        message: str,
        code: str = "ERROR_GENERIC",
        *,
        field_name: str = "",
        field_message: str = "",
    ) -> None:
        super().__init__(message)
        self.title = title
        self.message = message
        self.code = code
        self.field_name = field_name
        self.field_message = field_message


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
    seq: int = 0
    """Creation order: the default order of reads, and the tie-break of sorted ones."""
    timestamp_signup: str = field(default_factory=_now)
    unsubscribe_reason: str | None = None

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
            # Real timestamps, never "" (the spec types them date-time; see the specs README).
            "timestamp_signup": self.timestamp_signup,
            "timestamp_opt": self.timestamp_signup,
            "list_id": list_id,
            **({"unsubscribe_reason": self.unsubscribe_reason} if self.unsubscribe_reason else {}),
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
    skip_merge_validation: bool = False


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

    ``response_delay`` (seconds) is the least time each request stays in flight (the platform's
    time per call, the stand-in's own work included), which makes the ``max_connections`` limit
    easy to exercise from tests and lets a benchmark give each batch call a realistic duration.
    ``clock`` stamps ``last_changed`` (Mailchimp's resolution: whole seconds).
    ``on_members_page(list_id, offset)``, when set, runs after each ``GET …/members`` page is
    built and before it is sent: a test edits the audience there, as a marketer or a recipient
    would between two pages of a read.
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
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.api_key = api_key
        self.max_connections = max_connections
        self.response_delay = response_delay
        self.max_in_flight = 0
        self.rejected_over_ceiling = 0
        """Requests answered 429 because ``max_connections`` were already in flight."""
        self._lock = threading.RLock()
        self._lists: dict[str, dict[str, _Member]] = {}
        self._forgotten: dict[str, set[str]] = {}
        self._tag_ids: dict[str, int] = {}
        self._faults: deque[_Fault] = deque()
        self._refusals: Counter[tuple[str, str]] = Counter()
        self._in_flight = 0
        self._member_log: list[tuple[str, str, str | None]] = []
        self._merge_fields: dict[str, dict[str, MergeField]] = {}
        self._seq = 0
        self._clock = clock or (lambda: datetime.now(UTC))
        self.on_members_page: Callable[[str, int], None] | None = None
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
            self._merge_fields.setdefault(list_id, default_merge_fields())

    def merge_fields(self, list_id: str) -> dict[str, dict[str, Any]]:
        """The merge fields of ``list_id`` in wire shape, keyed by tag."""
        with self._lock:
            self._store(list_id)
            return {t: f.to_wire(list_id) for t, f in self._merge_fields[list_id].items()}

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

    def member_unsubscribes(self, list_id: str, email: str, *, reason: str | None = None) -> None:
        """Simulate the person clicking "unsubscribe" in the platform."""
        with self._lock:
            member = self._existing(list_id, email)
            member.status, member.last_changed = "unsubscribed", self._stamp()
            member.unsubscribe_reason = reason

    def member_reports_spam(self, list_id: str, email: str) -> None:
        """Simulate a spam complaint: Mailchimp unsubscribes the member (abuse reason)."""
        self.member_unsubscribes(list_id, email, reason=ABUSE_REASON)

    def member_bounces(self, list_id: str, email: str) -> None:
        """Simulate a hard bounce: the address is cleaned."""
        with self._lock:
            member = self._existing(list_id, email)
            member.status, member.last_changed = "cleaned", self._stamp()

    def marketer_edits(self, list_id: str, email: str, **merge_fields: Any) -> None:
        """Simulate an edit in the Mailchimp UI: new merge values, a new ``last_changed``."""
        with self._lock:
            member = self._existing(list_id, email)
            member.merge_fields.update(merge_fields)
            member.last_changed = self._stamp()

    def _existing(self, list_id: str, email: str) -> _Member:
        member = self._store(list_id).get(subscriber_hash(email))
        if member is None:
            raise KeyError(f"{email!r} is not a member of Mailchimp list {list_id!r}")
        return member

    def _stamp(self) -> str:
        return self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")

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

    def refuse_in_batch(self, list_id: str, email: str, *, times: int = 1) -> None:
        """Make the next ``times`` batch inputs for ``email`` on ``list_id`` fail for that member
        only: an ``errors[]`` entry (``ERROR_GENERIC``) in the 200 answer, the rest applied."""
        if times < 1:
            raise ValueError(f"refuse_in_batch(times=...) must be >= 1, got {times}")
        with self._lock:
            self._refusals[(list_id, subscriber_hash(email))] += times

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
            self.rejected_over_ceiling += in_flight > self.max_connections
        try:
            if in_flight > self.max_connections:
                return problem(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    f"You have exceeded the limit of {self.max_connections} simultaneous "
                    "connections.",
                )
            started = time.monotonic()
            response = self._handle_admitted(request)
            # The platform's time per call: the stand-in's own work counts towards it, so ten
            # concurrent calls cost one delay, not one delay plus ten turns at the store lock.
            rest = self.response_delay - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
            return response
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
            errors = (
                [{"field": exc.field_name, "message": exc.field_message}]
                if exc.field_name
                else None
            )
            return problem(HTTPStatus.BAD_REQUEST, exc.title, exc.message, errors=errors)

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
            _check_query(request, frozenset())
            return json_response(HTTPStatus.OK, {"health_status": "Everything's Chimpy!"})
        match = _MEMBER_PATH.match(request.path)
        if match is None:
            raise _not_found(f"No Mailchimp stand-in resource at {request.path!r}.")
        list_id, key, rest = match["list"], match["key"], match["rest"]
        _check_query(request, _allowed_query(request.method, match))
        with self._lock:
            self._store(list_id)  # 404 for unknown lists before anything else
        if match["merge"] is not None:
            return self._merge_fields_resource(request, list_id)
        if match["members"] is None:
            return self._list_resource(request, list_id)
        if key is None:
            return self._members_collection(request, list_id)
        member_hash = subscriber_hash(key) if "@" in key else key.lower()
        if rest == "/tags":
            self._require(request, "GET", "POST")
            if request.method == "GET":
                return self._member_tags(request, list_id, member_hash)
            return self._update_tags(list_id, member_hash, self._json(request))
        if rest == "/actions/delete-permanent":
            self._require(request, "POST")
            return self._delete_permanent(list_id, member_hash)
        return self._member_resource(request, list_id, member_hash)

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
        skip_duplicates = _query_bool(request, "skip_duplicate_check")
        skip_merge_validation = _query_bool(request, "skip_merge_validation")
        for payload in inputs:
            payload.skip_merge_validation = skip_merge_validation
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
            if self._refusals[(list_id, key)] > 0:
                self._refusals[(list_id, key)] -= 1
                errors.append(_batch_error(email, f"{email} could not be processed; try again."))
                continue
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
                errors.append(
                    _batch_error(email, exc.message, exc.code, exc.field_name, exc.field_message)
                )
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
        values = self._merge_values(list_id, payload)
        if member is None or member.archived:
            return self._create(list_id, email, payload, values, previous=member), True
        if payload.status is not None and update_existing:
            _check_status_change(member, payload.status)
            member.status = payload.status
        member.merge_fields.update(values)
        if payload.tags is not None and sync_tags:
            member.tags = []
        self._add_tags(member, payload.tags)
        member.last_changed = self._stamp()
        return member, False

    def _merge_values(self, list_id: str, payload: _MemberInput) -> dict[str, Any]:
        """``payload``'s merge values checked against the audience's fields."""
        try:
            return check_merge_values(payload.merge_fields, self._merge_fields[list_id])
        except MergeValueError as exc:
            raise MemberError(
                "Invalid Resource",
                f"{payload.email}: Your merge fields were invalid. {exc.tag}: {exc.message}",
                field_name=exc.tag,
                field_message=exc.message,
            ) from exc

    def _create(
        self,
        list_id: str,
        email: str,
        payload: _MemberInput,
        values: dict[str, Any],
        *,
        previous: _Member | None,
    ) -> _Member:
        status = payload.status or payload.status_if_new
        if status is None:
            raise MemberError(
                "Invalid Resource", f"{email}: provide status or status_if_new for a new member."
            )
        if previous is not None:
            _check_status_change(previous, status)
        missing = missing_required(values, self._merge_fields[list_id])
        if missing and not payload.skip_merge_validation:
            raise MemberError(
                "Invalid Resource",
                f"{email}: Your merge fields were invalid. {missing[0]}: Please enter a value",
                field_name=missing[0],
                field_message="Please enter a value",
            )
        if previous is None:
            self._seq += 1
        stamp = self._stamp()
        member = _Member(
            email_address=email,
            status=status,
            last_changed=stamp,
            seq=previous.seq if previous is not None else self._seq,
            timestamp_signup=stamp,
        )
        member.merge_fields.update(values)
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


def _batch_error(
    email: str,
    message: str,
    code: str = "ERROR_GENERIC",
    field_name: str = "",
    field_message: str = "",
) -> dict[str, str]:
    return {
        "email_address": email,
        "error": message,
        "error_code": code,
        "field": field_name,
        "field_message": field_message,
    }


_QUERY_BY_ROUTE: dict[tuple[str, str], frozenset[str]] = {
    ("list", "GET"): _VIEW | {"include_total_contacts"},
    ("list", "POST"): frozenset({"skip_merge_validation", "skip_duplicate_check"}),
    ("members", "GET"): MEMBERS_QUERY,
    ("members", "POST"): frozenset({"skip_merge_validation"}),
    ("member", "GET"): _VIEW,
    ("member", "PUT"): frozenset({"skip_merge_validation"}),
    ("member", "PATCH"): frozenset({"skip_merge_validation"}),
    ("tags", "GET"): _VIEW | _PAGE,
    ("merge", "GET"): _VIEW | _PAGE | {"type", "required"},
}


def _allowed_query(method: str, match: re.Match[str]) -> frozenset[str]:
    """The query parameters the spec declares for this operation (and the stand-in serves)."""
    if match["merge"] is not None:
        route = "merge"
    elif match["members"] is None:
        route = "list"
    elif match["key"] is None:
        route = "members"
    elif match["rest"] == "/tags":
        route = "tags"
    elif match["rest"] is None:
        route = "member"
    else:
        route = "action"
    return _QUERY_BY_ROUTE.get((route, method), frozenset())


def _check_query(request: Request, allowed: frozenset[str]) -> None:
    for name in sorted(request.query):
        if name in MEMBERS_QUERY_NOT_IMPLEMENTED and "members" in request.path:
            raise _invalid(
                f"The stand-in does not implement the query parameter {name!r}.",
                name,
                "not implemented by the stand-in",
            )
        if name not in allowed:
            raise _invalid(
                f"Unknown query parameter {name!r} for {request.method} {request.path}.",
                name,
                "unknown query parameter",
            )


def _query_bool(request: Request, name: str) -> bool:
    raw = request.query_value(name)
    if raw is None or raw == "":
        return False
    if raw.lower() not in {"true", "false"}:
        raise _invalid(f"{name} must be true or false, got {raw!r}.", name, "boolean")
    return raw.lower() == "true"


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("The resource submitted could not be validated.", "", "must be object")
    return body


def _field_matches(request: Request, definition: MergeField) -> bool:
    kind = request.query_value("type")
    required = request.query_value("required")
    if required is not None:
        wanted = _query_bool(request, "required")
        if definition.required != wanted:
            return False
    return kind is None or definition.type == kind


def _view(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Apply ``fields`` / ``exclude_fields`` (comma-separated, dot notation)."""
    fields = request.query_value("fields")
    exclude = request.query_value("exclude_fields")
    return select_fields(
        body,
        fields.split(",") if fields else None,
        exclude.split(",") if exclude else None,
    )


def _member_order(request: Request) -> tuple[Callable[[_Member], Any], bool]:
    """Sort key and ``reverse`` for a members read; creation order when unsorted."""
    sort_field = request.query_value("sort_field")
    sort_dir = (request.query_value("sort_dir") or "ASC").upper()
    if sort_dir not in {"ASC", "DESC"}:
        raise _invalid(f"sort_dir {sort_dir!r} is not ASC or DESC.", "sort_dir", "invalid")
    if sort_field is None:
        return (lambda m: m.seq), sort_dir == "DESC"
    if sort_field not in SORT_FIELDS:
        raise _invalid(f"sort_field {sort_field!r} is not sortable.", "sort_field", "invalid")
    attribute = "timestamp_signup" if sort_field == "timestamp_opt" else sort_field

    def key(member: _Member) -> tuple[datetime, int]:
        return _timestamp(getattr(member, attribute)), member.seq

    return key, sort_dir == "DESC"


def _parse_time(request: Request, name: str) -> datetime | None:
    raw = request.query_value(name)
    if not raw:
        return None
    text = _OFFSET_WITHOUT_PLUS.sub(r"+\1", raw.strip())  # an unencoded "+" arrives as " "
    try:
        return _timestamp(text)
    except ValueError as exc:
        problem_text = f"{name} {raw!r} is not an ISO 8601 timestamp."
        raise _invalid(problem_text, name, "invalid date") from exc


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

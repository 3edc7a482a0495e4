"""A Klaviyo API (revision ``2026-07-15``) stand-in on loopback: the audience-sync operations.

Routes (JSON:API bodies, ``application/vnd.api+json`` both ways):

* ``POST /api/profile-bulk-import-jobs`` - an asynchronous import of up to 10,000 profiles
  (payload <= 5 MB, <= 100 KB per profile), optionally adding them to lists; 202 + job document.
* ``GET  /api/profile-bulk-import-jobs/{job_id}`` - the job; every read moves it on
  (``queued`` -> ``processing`` -> ``complete``, or ``cancelled`` when the platform fails it).
  Profiles change only when the job completes.
* ``GET  /api/profile-bulk-import-jobs/{id}/import-errors`` - one error per rejected profile,
  ``source.pointer`` naming its index and ``original_payload`` echoing it; cursor pages.
* ``POST /api/profile-subscription-bulk-create-jobs`` (<= 1000) and
  ``POST /api/profile-subscription-bulk-delete-jobs`` (<= 100) - consent jobs, 202 without a
  body and without a job id; they take effect shortly after (before the next request is
  served). Subscribing clears ``UNSUBSCRIBE``/``SPAM_COMPLAINT``/``USER_SUPPRESSED``
  suppressions; unsubscribing with a list removes list members from that list (a list
  suppression), and unsubscribes everyone else **globally**.
* ``POST /api/profile-suppression-bulk-create-jobs`` (<= 100 emails) - ``USER_SUPPRESSED``.
* ``GET  /api/profiles`` - ``filter`` (the operators the spec lists per field, ``and(...)``),
  ``sort``, ``page[size]`` <= 100, ``page[cursor]`` bound to its query, ``links.next``;
  ``subscriptions`` only with ``additional-fields[profile]=subscriptions``.
* ``GET  /api/lists`` (``page[size]`` <= 10), ``GET|POST|DELETE
  /api/lists/{id}/relationships/profiles`` (<= 1000 ids per write; membership, not consent).
* ``POST /api/data-privacy-deletion-jobs`` - exactly one of email / phone_number / id; 202,
  the profile disappears shortly after.

Every request needs ``Authorization: Klaviyo-API-Key <key>`` (401 otherwise) and the
``revision`` header (400 when missing or not a known revision). Unknown query parameters, bad
filters, wrong resource types and oversized batches are 400s in Klaviyo's error shape
``{"errors": [{id, code, title, detail, source}]}``. Each operation has the spec's burst (per
second) and steady (per minute) limits, per account; over either: 429 with ``Retry-After``
(whole seconds) and no ``RateLimit-*`` headers, which every other response carries.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import itertools
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from infra.sandbox._http import Request, Response, StandInServer, empty_response, json_response

REVISION = "2026-07-15"
KNOWN_REVISIONS = frozenset({"2026-07-15", "2026-04-15", "2026-01-15", "2025-10-15"})
JSONAPI = "application/vnd.api+json"
IMPORT_MAX_PROFILES = 10_000
IMPORT_MAX_BYTES = 5 * 1024 * 1024
PROFILE_MAX_BYTES = 100 * 1024
SUBSCRIBE_MAX = 1000
UNSUBSCRIBE_MAX = 100
SUPPRESS_MAX = 100
LIST_WRITE_MAX = 1000
PAGE_MAX = 100
LISTS_PAGE_MAX = 10
CLEARED_BY_SUBSCRIBE = frozenset({"UNSUBSCRIBE", "SPAM_COMPLAINT", "USER_SUPPRESSED"})
SUPPRESSION_REASONS = frozenset(
    {"HARD_BOUNCE", "INVALID_EMAIL", "SPAM_COMPLAINT", "UNSUBSCRIBE", "USER_SUPPRESSED"}
)
# latitude/longitude are left out when unknown: the spec types them `nullable` beside a `oneOf`
# of string/number, and validators read that as "null is not allowed".
LOCATION_KEYS = ("address1", "address2", "city", "country", "region", "zip", "timezone", "ip")
PROFILE_ATTRIBUTES = (
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)

# (burst per second, steady per minute), from each operation's x-klaviyo-ratelimit.
RATE_LIMITS: dict[str, tuple[int, int]] = {
    "import": (10, 150),
    "subscriptions": (75, 750),
    "reads": (75, 750),
    "list_writes": (10, 150),
    "deletion": (3, 60),
}

# Filterable fields and their operators, from the spec's `filter` parameter descriptions.
PROFILE_FILTERS: dict[str, frozenset[str]] = {
    "id": frozenset({"any", "equals"}),
    "email": frozenset({"any", "equals"}),
    "phone_number": frozenset({"any", "equals"}),
    "external_id": frozenset({"any", "equals"}),
    "_kx": frozenset({"equals"}),
    "created": frozenset({"greater-than", "less-than"}),
    "updated": frozenset({"greater-than", "less-than"}),
    "subscriptions.email.marketing.list_suppressions.reason": frozenset({"equals"}),
    "subscriptions.email.marketing.list_suppressions.timestamp": frozenset(
        {"greater-or-equal", "greater-than", "less-or-equal", "less-than"}
    ),
    "subscriptions.email.marketing.list_suppressions.list_id": frozenset({"equals"}),
    "subscriptions.email.marketing.suppression.reason": frozenset({"equals"}),
    "subscriptions.email.marketing.suppression.timestamp": frozenset(
        {"greater-or-equal", "greater-than", "less-or-equal", "less-than"}
    ),
}
LIST_FILTERS: dict[str, frozenset[str]] = {
    "name": frozenset({"any", "equals"}),
    "id": frozenset({"any", "equals"}),
    "created": frozenset({"greater-than"}),
    "updated": frozenset({"greater-than"}),
}
MEMBER_FILTERS: dict[str, frozenset[str]] = {
    "email": frozenset({"any", "equals"}),
    "phone_number": frozenset({"any", "equals"}),
    "push_token": frozenset({"any", "equals"}),
    "_kx": frozenset({"equals"}),
    "joined_group_at": frozenset(
        {"greater-or-equal", "greater-than", "less-or-equal", "less-than"}
    ),
}
DATE_FIELDS = frozenset(
    {
        "created",
        "updated",
        "joined_group_at",
        "subscriptions.email.marketing.list_suppressions.timestamp",
        "subscriptions.email.marketing.suppression.timestamp",
    }
)
IMPORT_JOB_FIELDS = frozenset(
    {
        "completed_at",
        "completed_count",
        "created_at",
        "expires_at",
        "failed_count",
        "id",
        "started_at",
        "status",
        "total_count",
    }
)
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_datetime(raw: str) -> datetime:
    """An ISO 8601 timestamp with a zone (``Z`` or an offset); naive ones are refused."""
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{raw!r} has no time zone")
    return moment


def is_valid_email(email: str) -> bool:
    """True when the address looks deliverable to Klaviyo (``local@domain.tld``)."""
    return bool(_EMAIL.match(email)) and ".." not in email


class KlaviyoError(Exception):
    """A request the stand-in rejects with a JSON:API error document."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        pointer: str | None = None,
        parameter: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.pointer = pointer
        self.parameter = parameter
        self.headers = dict(headers or {})

    def response(self) -> Response:
        error: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
        }
        source = {
            key: value
            for key, value in (("pointer", self.pointer), ("parameter", self.parameter))
            if value is not None
        }
        if source:
            error["source"] = source
        return json_response(
            self.status, {"errors": [error]}, content_type=JSONAPI, headers=self.headers
        )


def _invalid(
    detail: str, *, pointer: str | None = None, parameter: str | None = None
) -> KlaviyoError:
    return KlaviyoError(
        HTTPStatus.BAD_REQUEST,
        "invalid",
        "Invalid input.",
        detail,
        pointer=pointer,
        parameter=parameter,
    )


def _not_found(detail: str) -> KlaviyoError:
    return KlaviyoError(HTTPStatus.NOT_FOUND, "not_found", "Not found.", detail)


# --- the account's state ------------------------------------------------------------------------
@dataclass
class _Profile:
    id: str
    email: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    location: dict[str, Any] | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    created: datetime = field(default_factory=_now)
    updated: datetime = field(default_factory=_now)
    consent: str = "NEVER_SUBSCRIBED"
    consent_timestamp: datetime | None = None
    consent_method: str | None = None
    suppressions: list[tuple[str, datetime]] = field(default_factory=list)
    list_suppressions: list[tuple[str, str, datetime]] = field(default_factory=list)

    def touch(self) -> None:
        self.updated = _now()

    def suppress(self, reason: str, at: datetime | None = None) -> None:
        if all(existing != reason for existing, _ in self.suppressions):
            self.suppressions.append((reason, at or _now()))
        self.touch()

    def subscriptions(self) -> dict[str, Any]:
        last = max(
            [self.updated, *(t for _, t in self.suppressions)],
            default=self.updated,
        )
        return {
            "email": {
                "marketing": {
                    "can_receive_email_marketing": not self.suppressions
                    and self.consent != "UNSUBSCRIBED",
                    "consent": self.consent,
                    "consent_timestamp": _iso(self.consent_timestamp)
                    if self.consent_timestamp
                    else None,
                    "last_updated": _iso(last),
                    "method": self.consent_method,
                    "method_detail": "",
                    "custom_method_detail": None,
                    "double_optin": None,
                    "suppression": [
                        {"reason": reason, "timestamp": _iso(at)}
                        for reason, at in self.suppressions
                    ],
                    "list_suppressions": [
                        {"list_id": list_id, "reason": reason, "timestamp": _iso(at)}
                        for list_id, reason, at in self.list_suppressions
                    ],
                }
            }
        }

    def to_wire(self, base_url: str, *, with_subscriptions: bool) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            name: self.attributes.get(name) for name in PROFILE_ATTRIBUTES
        }
        attributes["email"] = self.email
        attributes.update(
            {
                "created": _iso(self.created),
                "updated": _iso(self.updated),
                "last_event_date": None,
                # Klaviyo sends an object of nulls when no location is known (the spec's
                # nullable beside a $ref is ignored under OpenAPI 3.0, so null is invalid).
                "location": {**dict.fromkeys(LOCATION_KEYS), **copy.deepcopy(self.location or {})},
                "properties": copy.deepcopy(self.properties),
            }
        )
        if with_subscriptions:
            attributes["subscriptions"] = self.subscriptions()
        return {
            "type": "profile",
            "id": self.id,
            "attributes": attributes,
            "links": {"self": f"{base_url}/api/profiles/{self.id}/"},
        }


@dataclass
class _List:
    id: str
    name: str
    opt_in_process: str = "single_opt_in"
    created: datetime = field(default_factory=_now)
    updated: datetime = field(default_factory=_now)
    members: dict[str, datetime] = field(default_factory=dict)


@dataclass
class _ImportJob:
    id: str
    profiles: list[Any]
    list_ids: list[str]
    created_at: datetime = field(default_factory=_now)
    status: str = "queued"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    completed_count: int = 0
    failed_count: int = 0
    reads: int = 0
    fail_as: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status not in {"queued", "processing"}


@dataclass(frozen=True)
class _Fault:
    status: int
    retry_after: int | None


@dataclass(frozen=True)
class RecordedExchange:
    """One request the stand-in received and the response it sent (for contract tests)."""

    request: Request
    response: Response


@dataclass
class _Window:
    """Fixed per-second and per-minute windows of one operation class."""

    second: int = -1
    minute: int = -1
    in_second: int = 0
    in_minute: int = 0


class _Condition:
    """One ``op(field,value)`` of a filter."""

    def __init__(self, op: str, name: str, value: Any) -> None:
        self.op = op
        self.name = name
        # `any` lists of strings become sets: a lookup of 100 emails scans each profile once.
        self.value = (
            frozenset(value) if op == "any" and all(isinstance(v, str) for v in value) else value
        )

    def test(self, actual: Any) -> bool:
        if actual is None:
            return False
        if self.op == "equals":
            return bool(actual == self.value)
        if self.op == "any":
            return actual in self.value
        compare: dict[str, Callable[[Any, Any], bool]] = {
            "greater-than": lambda a, b: a > b,
            "greater-or-equal": lambda a, b: a >= b,
            "less-than": lambda a, b: a < b,
            "less-or-equal": lambda a, b: a <= b,
        }
        return compare[self.op](actual, self.value)


_CALL = re.compile(r"^\s*([a-z-]+)\((.*)\)\s*$", re.DOTALL)


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside quotes, brackets or parentheses."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if quote or depth:
        raise ValueError("unbalanced quotes or brackets")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _literal(raw: str, name: str) -> Any:
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        inner = raw[1:-1].strip()
        return [_literal(item, name) for item in _split_top(inner)] if inner else []
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        raw = raw[1:-1]
        if name not in DATE_FIELDS:
            return raw
    if name in DATE_FIELDS:
        return _parse_datetime(raw)
    if raw in {"true", "false"}:
        return raw == "true"
    if raw == "null":
        return None
    raise ValueError(f"value {raw!r} for {name!r} must be quoted")


def parse_filter(text: str, allowed: Mapping[str, frozenset[str]]) -> list[_Condition]:
    """Klaviyo's filter syntax: ``op(field,value)``, joined by ``and(...)`` or commas."""
    conditions: list[_Condition] = []
    for part in _split_top(text):
        match = _CALL.match(part)
        if match is None:
            raise ValueError(f"cannot parse {part!r}")
        op, args = match.group(1), match.group(2)
        if op == "and":
            conditions.extend(parse_filter(args, allowed))
            continue
        pieces = _split_top(args)
        if len(pieces) != 2:
            raise ValueError(f"{op}(...) takes a field and a value, got {args!r}")
        name = pieces[0]
        if name not in allowed:
            raise ValueError(f"{name!r} is not a filterable field")
        if op not in allowed[name]:
            raise ValueError(f"operator {op!r} is not allowed for {name!r}")
        value = _literal(pieces[1], name)
        if (op == "any") != isinstance(value, list):
            raise ValueError(f"{op}({name},...) needs {'a list' if op == 'any' else 'one value'}")
        conditions.append(_Condition(op, name, value))
    if not conditions:
        raise ValueError("empty filter")
    return conditions


# --- the server -------------------------------------------------------------------------------
class KlaviyoStandIn(StandInServer):
    """Klaviyo's audience-sync operations, strict about the wire contract.

    ``polls_to_finish``: how many reads of an import job it takes to finish (the first read
    shows ``processing``). ``rate_limits`` overrides :data:`RATE_LIMITS` per operation class
    (``import``, ``subscriptions``, ``reads``, ``list_writes``, ``deletion``). ``time_scale``
    runs the rate windows that many times faster than the wall clock (a 1-second burst window
    lasts ``1 / time_scale`` s; ``Retry-After`` still counts real seconds), so a benchmark can
    meet the documented limits without waiting for real minutes.
    """

    name = "klaviyo"

    def __init__(
        self,
        *,
        api_key: str = "pk_demo_klaviyo",
        lists: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        polls_to_finish: int = 2,
        rate_limits: Mapping[str, tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__(host=host, port=port)
        if polls_to_finish < 1:
            raise ValueError(f"polls_to_finish must be at least 1, got {polls_to_finish}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = time_scale
        self.api_key = api_key
        self.polls_to_finish = polls_to_finish
        self.rate_limits = {**RATE_LIMITS, **(rate_limits or {})}
        self.exchanges: list[RecordedExchange] = []
        self.rate_limited = 0
        self._clock = clock
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._profiles: dict[str, _Profile] = {}
        self._email_index: dict[str, str] = {}
        self._lists: dict[str, _List] = {}
        self._jobs: dict[str, _ImportJob] = {}
        self._pending: deque[Callable[[], None]] = deque()
        self._faults: deque[_Fault] = deque()
        self._job_failures: deque[str] = deque()
        self._import_rejections: dict[str, tuple[str, int | None]] = {}
        self._windows: dict[str, _Window] = {}
        self.deletions: list[str] = []
        for list_id in lists:
            self.add_list(list_id)

    # -- test helpers ----------------------------------------------------------------------------
    def add_list(self, list_id: str, *, name: str | None = None) -> None:
        """Create a list (no-op when it exists)."""
        if not list_id or "/" in list_id:
            raise ValueError(f"list id {list_id!r} must be non-empty and contain no '/'")
        with self._lock:
            self._lists.setdefault(list_id, _List(list_id, name or list_id))

    @property
    def list_ids(self) -> list[str]:
        with self._lock:
            return list(self._lists)

    def settle(self) -> None:
        """Let every accepted consent/deletion job take effect (the platform catching up)."""
        with self._lock:
            while self._pending:
                self._pending.popleft()()

    def profile(self, email: str) -> dict[str, Any] | None:
        """The profile with ``email`` in wire shape (subscriptions included), or ``None``."""
        with self._lock:
            self.settle()
            found = self._by_email(email)
            return None if found is None else found.to_wire("", with_subscriptions=True)

    def list_members(self, list_id: str) -> set[str]:
        """Emails of the members of ``list_id``."""
        with self._lock:
            self.settle()
            members = self._list(list_id).members
            return {self._profiles[pid].email or pid for pid in members if pid in self._profiles}

    def person_unsubscribes(self, email: str) -> None:
        """Simulate the person clicking "unsubscribe" in a Klaviyo email."""
        self._suppress_person(email, "UNSUBSCRIBE")

    def person_bounces(self, email: str) -> None:
        """Simulate a hard bounce."""
        self._suppress_person(email, "HARD_BOUNCE")

    def person_complains(self, email: str) -> None:
        """Simulate a spam complaint."""
        self._suppress_person(email, "SPAM_COMPLAINT")

    def person_leaves_list(self, email: str, list_id: str) -> None:
        """Simulate an unsubscribe from one list only (a list suppression)."""
        with self._lock:
            self.settle()
            found = self._by_email(email)
            if found is None:
                raise KeyError(f"no Klaviyo profile with email {email!r}")
            self._list(list_id).members.pop(found.id, None)
            found.list_suppressions.append((list_id, "UNSUBSCRIBE", _now()))
            found.touch()

    def _suppress_person(self, email: str, reason: str) -> None:
        with self._lock:
            self.settle()
            found = self._by_email(email)
            if found is None:
                raise KeyError(f"no Klaviyo profile with email {email!r}")
            if reason == "UNSUBSCRIBE":
                found.consent, found.consent_timestamp = "UNSUBSCRIBED", _now()
            found.suppress(reason)

    def fail_next(self, count: int, *, status: int, retry_after: int | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (429s carry ``Retry-After``)."""
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        if status == HTTPStatus.TOO_MANY_REQUESTS and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.extend(_Fault(status, retry_after) for _ in range(count))

    def fail_next_import_job(self, status: str = "cancelled") -> None:
        """The next import job accepted ends in ``status`` without importing anything.

        ``cancelled`` is what the spec can express; ``failed`` is outside its enum and exists
        to check that an adapter treats an unknown final state as a failure.
        """
        with self._lock:
            self._job_failures.append(status)

    def reject_on_import(
        self, email: str, detail: str = "Invalid email address.", *, times: int | None = None
    ) -> None:
        """Make every import of ``email`` (or the next ``times`` ones) fail for that profile
        only: an import error, the rest of the job imported."""
        if times is not None and times < 1:
            raise ValueError(f"reject_on_import(times=...) must be >= 1, got {times}")
        with self._lock:
            self._import_rejections[email.strip().lower()] = (detail, times)

    # -- request plumbing ------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        response = super().dispatch(request)
        with self._lock:
            self.exchanges.append(RecordedExchange(request, response))
        return response

    def handle(self, request: Request) -> Response:
        with self._lock:
            self.settle()
        try:
            self._take_fault()
            self._authenticate(request)
            self._check_revision(request)
            route, handler = self._route(request)
            headers = self._admit(route)
            response = handler(request)
        except KlaviyoError as exc:
            return exc.response()
        response.headers.update(headers)
        return response

    def _take_fault(self) -> None:
        with self._lock:
            if not self._faults:
                return
            fault = self._faults.popleft()
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
            raise KlaviyoError(
                fault.status,
                "throttled",
                "Request was throttled.",
                f"Request was throttled. Expected available in {fault.retry_after} second.",
                headers=headers,
            )
        raise KlaviyoError(
            fault.status, "error", "A server error occurred.", "Injected failure.", headers=headers
        )

    def _authenticate(self, request: Request) -> None:
        header = request.header("authorization") or ""
        scheme, _, key = header.partition(" ")
        if scheme != "Klaviyo-API-Key" or not key.strip():
            raise KlaviyoError(
                HTTPStatus.UNAUTHORIZED,
                "not_authenticated",
                "Authentication credentials were not provided.",
                "Missing or invalid Authorization header: send 'Klaviyo-API-Key <private key>'.",
            )
        if not secrets.compare_digest(key.strip(), self.api_key):
            raise KlaviyoError(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "Incorrect authentication credentials.",
                "Incorrect authentication credentials.",
            )

    @staticmethod
    def _check_revision(request: Request) -> None:
        revision = request.header("revision")
        if revision is None:
            raise _invalid(
                "The 'revision' header is required (format YYYY-MM-DD).", parameter="revision"
            )
        if revision.split(".", 1)[0] not in KNOWN_REVISIONS:
            raise _invalid(f"Invalid revision {revision!r}.", parameter="revision")

    def _admit(self, route: str) -> dict[str, str]:
        """Count the request in its operation's windows; 429 when either is full."""
        burst, steady = self.rate_limits[route]
        now = self._clock() * self.time_scale
        second, minute = math.floor(now), math.floor(now / 60)
        with self._lock:
            window = self._windows.setdefault(route, _Window())
            if window.second != second:
                window.second, window.in_second = second, 0
            if window.minute != minute:
                window.minute, window.in_minute = minute, 0
            if window.in_second >= burst or window.in_minute >= steady:
                self.rate_limited += 1
                wait = (second + 1 - now) if window.in_minute < steady else (minute + 1) * 60 - now
                wait /= self.time_scale  # real seconds
                raise KlaviyoError(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "throttled",
                    "Request was throttled.",
                    f"Request was throttled. Expected available in {math.ceil(wait)} second.",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            window.in_second += 1
            window.in_minute += 1
            remaining = steady - window.in_minute
        return {
            "RateLimit-Limit": str(steady),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(max(0, math.ceil(((minute + 1) * 60 - now) / self.time_scale))),
        }

    def _route(self, request: Request) -> tuple[str, Callable[[Request], Response]]:
        path = request.path.rstrip("/")
        parts = path.split("/")[1:]
        if parts[:1] != ["api"] or len(parts) < 2:
            raise _not_found(f"No route for {request.method} {request.path}.")
        routes: dict[tuple[str, ...], tuple[str, dict[str, Callable[[Request], Response]]]] = {
            ("profile-bulk-import-jobs",): ("import", {"POST": self._create_import}),
            ("profile-subscription-bulk-create-jobs",): (
                "subscriptions",
                {"POST": self._subscribe},
            ),
            ("profile-subscription-bulk-delete-jobs",): (
                "subscriptions",
                {"POST": self._unsubscribe},
            ),
            ("profile-suppression-bulk-create-jobs",): ("subscriptions", {"POST": self._suppress}),
            ("profiles",): ("reads", {"GET": self._get_profiles}),
            ("lists",): ("reads", {"GET": self._get_lists}),
            ("data-privacy-deletion-jobs",): ("deletion", {"POST": self._delete_profile}),
        }
        rest = tuple(parts[1:])
        if rest in routes:
            route, methods = routes[rest]
        elif len(rest) == 2 and rest[0] == "profile-bulk-import-jobs":
            route, methods = "import", {"GET": lambda r: self._get_import(r, rest[1])}
        elif (
            len(rest) == 3 and rest[0] == "profile-bulk-import-jobs" and rest[2] == "import-errors"
        ):
            route, methods = "import", {"GET": lambda r: self._import_errors(r, rest[1])}
        elif len(rest) == 4 and rest[0] == "lists" and rest[2:] == ("relationships", "profiles"):
            list_id = rest[1]
            route = "reads" if request.method == "GET" else "list_writes"
            methods = {
                "GET": lambda r: self._get_members(r, list_id),
                "POST": lambda r: self._change_members(r, list_id, add=True),
                "DELETE": lambda r: self._change_members(r, list_id, add=False),
            }
        else:
            raise _not_found(f"No route for {request.method} {request.path}.")
        handler = methods.get(request.method)
        if handler is None:
            raise KlaviyoError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed.",
                f'Method "{request.method}" not allowed.',
            )
        return route, handler

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

    # -- ids and lookups -------------------------------------------------------------------------
    def _new_id(self) -> str:
        number = next(self._ids)
        digits = "".join(_CROCKFORD[(number >> (5 * i)) & 31] for i in reversed(range(16)))
        return "01K" + "0" * 7 + digits

    def _by_email(self, email: str) -> _Profile | None:
        profile_id = self._email_index.get(email.strip().lower())
        return None if profile_id is None else self._profiles.get(profile_id)

    def _find_or_create(self, email: str) -> _Profile:
        found = self._by_email(email)
        if found is None:
            found = _Profile(self._new_id(), email=email.strip())
            self._profiles[found.id] = found
            self._email_index[email.strip().lower()] = found.id
        return found

    def _list(self, list_id: str) -> _List:
        found = self._lists.get(list_id)
        if found is None:
            raise _not_found(f"A list with id {list_id!r} does not exist.")
        return found

    def _base(self, request: Request) -> str:
        return f"http://{request.header('host') or f'{self.host}:{self.port}'}"

    # -- bulk import -----------------------------------------------------------------------------
    def _create_import(self, request: Request) -> Response:
        values = self._query(request, {"fields[profile-bulk-import-job]"})
        self._csv(values, "fields[profile-bulk-import-job]", IMPORT_JOB_FIELDS)
        data = self._resource(self._body(request, IMPORT_MAX_BYTES), "profile-bulk-import-job")
        profiles = self._profiles_of(data, IMPORT_MAX_PROFILES)
        with self._lock:
            list_ids = self._related_list(data, many=True)
            job = _ImportJob(f"job-{uuid.uuid4().hex[:20]}", copy.deepcopy(profiles), list_ids)
            if self._job_failures:
                job.fail_as = self._job_failures.popleft()
            self._jobs[job.id] = job
            return json_response(
                HTTPStatus.ACCEPTED,
                {"data": self._job_wire(job, self._base(request))},
                content_type=JSONAPI,
            )

    def _job_wire(self, job: _ImportJob, base: str) -> dict[str, Any]:
        link = f"{base}/api/profile-bulk-import-jobs/{job.id}"
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": job.status,
                "created_at": _iso(job.created_at),
                "total_count": len(job.profiles),
                "completed_count": job.completed_count,
                "failed_count": job.failed_count,
                "completed_at": _iso(job.completed_at) if job.completed_at else None,
                "expires_at": _iso(job.created_at + timedelta(days=7)),
                "started_at": _iso(job.started_at) if job.started_at else None,
            },
            "relationships": {
                "lists": {
                    "data": [{"type": "list", "id": list_id} for list_id in job.list_ids],
                    "links": {"self": f"{link}/relationships/lists", "related": f"{link}/lists"},
                },
                "profiles": {
                    "data": [{"type": "profile", "id": pid} for pid in job.profile_ids],
                    "links": {
                        "self": f"{link}/relationships/profiles",
                        "related": f"{link}/profiles",
                    },
                },
                "import-errors": {"links": {"related": f"{link}/import-errors"}},
            },
            "links": {"self": link},
        }

    def _get_import(self, request: Request, job_id: str) -> Response:
        values = self._query(
            request, {"fields[list]", "fields[profile-bulk-import-job]", "include"}
        )
        self._csv(values, "fields[profile-bulk-import-job]", IMPORT_JOB_FIELDS)
        self._csv(values, "fields[list]", {"created", "id", "name", "opt_in_process", "updated"})
        include = self._csv(values, "include", {"lists"})
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise _not_found(f"A profile bulk import job with id {job_id!r} does not exist.")
            self._advance(job)
            base = self._base(request)
            body: dict[str, Any] = {"data": self._job_wire(job, base)}
            if include:
                body["included"] = [self._list_wire(self._lists[i], base) for i in job.list_ids]
            return json_response(HTTPStatus.OK, body, content_type=JSONAPI)

    def _advance(self, job: _ImportJob) -> None:
        """Each read moves a job on; it finishes on the ``polls_to_finish``-th read."""
        if job.done:
            return
        job.reads += 1
        if job.status == "queued":
            job.status, job.started_at = "processing", _now()
        if job.reads < self.polls_to_finish:
            return
        if job.fail_as is not None:
            job.status, job.completed_at = job.fail_as, _now()
            job.failed_count = len(job.profiles)
            return
        for index, raw in enumerate(job.profiles):
            problem = self._import_one(raw, job.list_ids)
            if isinstance(problem, str):
                job.profile_ids.append(problem)
                job.completed_count += 1
            else:
                pointer, detail = problem
                job.failed_count += 1
                job.errors.append(
                    {
                        "type": "import-error",
                        "id": str(uuid.uuid4()),
                        "attributes": {
                            "code": "invalid",
                            "title": "Invalid input.",
                            "detail": detail,
                            "source": {
                                "pointer": f"/data/attributes/profiles/data/{index}{pointer}"
                            },
                            "original_payload": raw if isinstance(raw, dict) else {"value": raw},
                        },
                    }
                )
        job.status, job.completed_at = "complete", _now()

    def _import_one(self, raw: Any, list_ids: list[str]) -> str | tuple[str, str]:
        """Apply one profile of an import; its id, or ``(pointer, detail)`` when rejected."""
        if not isinstance(raw, dict) or raw.get("type") != "profile":
            return "", "Each profile is {type: 'profile', attributes: {...}}."
        attributes = raw.get("attributes")
        if not isinstance(attributes, dict):
            return "/attributes", "'attributes' must be an object."
        if len(json.dumps(raw).encode()) > PROFILE_MAX_BYTES:
            return "", f"A profile may be at most {PROFILE_MAX_BYTES} bytes."
        email = attributes.get("email")
        identifiers = [attributes.get(k) for k in ("email", "phone_number", "external_id", "_kx")]
        if not any(isinstance(value, str) and value for value in identifiers):
            return "/attributes", "A profile needs an email, phone_number, external_id or _kx."
        if email is not None and (not isinstance(email, str) or not is_valid_email(email.strip())):
            return "/attributes/email", f"Invalid email address {email!r}."
        rejection = self._take_rejection(str(email or "").strip().lower())
        if rejection is not None:
            return "/attributes/email", rejection
        phone = attributes.get("phone_number")
        if phone is not None and (not isinstance(phone, str) or not _E164.match(phone)):
            return "/attributes/phone_number", f"Invalid phone number {phone!r} (use E.164)."
        properties = attributes.get("properties")
        if properties is not None and not isinstance(properties, dict):
            return "/attributes/properties", "'properties' must be an object."
        if email is None:
            return "/attributes/email", "The stand-in imports profiles by email only."
        profile = self._find_or_create(email)
        for name in PROFILE_ATTRIBUTES[1:]:
            if name in attributes:
                profile.attributes[name] = attributes[name]
        if "location" in attributes:
            profile.location = attributes["location"]
        for key, value in (properties or {}).items():
            if value is None:
                profile.properties.pop(key, None)
            else:
                profile.properties[key] = value
        self._patch_properties(profile, raw.get("meta"))
        profile.touch()
        for list_id in list_ids:
            self._lists[list_id].members.setdefault(profile.id, _now())
        return profile.id

    def _take_rejection(self, email: str) -> str | None:
        """The import error set for ``email`` by :meth:`reject_on_import`, counting it down."""
        if email not in self._import_rejections:
            return None
        detail, left = self._import_rejections[email]
        if left is not None:
            if left <= 1:
                del self._import_rejections[email]
            else:
                self._import_rejections[email] = (detail, left - 1)
        return detail

    @staticmethod
    def _patch_properties(profile: _Profile, meta: Any) -> None:
        patch = meta.get("patch_properties") if isinstance(meta, dict) else None
        if not isinstance(patch, dict):
            return
        unset = patch.get("unset")
        for key in [unset] if isinstance(unset, str) else unset or []:
            profile.properties.pop(key, None)
        for key, value in (patch.get("append") or {}).items():
            current = profile.properties.get(key)
            items = current if isinstance(current, list) else ([] if current is None else [current])
            profile.properties[key] = [*items, value]
        for key, value in (patch.get("unappend") or {}).items():
            current = profile.properties.get(key)
            if isinstance(current, list):
                profile.properties[key] = [item for item in current if item != value]

    def _import_errors(self, request: Request, job_id: str) -> Response:
        values = self._query(request, {"fields[import-error]", "page[cursor]", "page[size]"})
        self._csv(
            values,
            "fields[import-error]",
            {"code", "detail", "id", "original_payload", "source", "source.pointer", "title"},
        )
        size = self._page_size(values, 20, PAGE_MAX)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise _not_found(f"A profile bulk import job with id {job_id!r} does not exist.")
            return self._page(request, job.errors, size, values, f"import-errors:{job_id}")

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

    # -- profiles --------------------------------------------------------------------------------
    _PROFILE_FIELDS = frozenset(
        {
            *PROFILE_ATTRIBUTES,
            "created",
            "updated",
            "id",
            "last_event_date",
            "location",
            "properties",
            "subscriptions",
            "subscriptions.email",
            "subscriptions.email.marketing",
            "subscriptions.email.marketing.consent",
            "subscriptions.email.marketing.suppression",
            "subscriptions.email.marketing.list_suppressions",
            "subscriptions.email.marketing.can_receive_email_marketing",
            "subscriptions.email.marketing.consent_timestamp",
            "subscriptions.email.marketing.last_updated",
            "subscriptions.email.marketing.method",
            "subscriptions.email.marketing.method_detail",
            "subscriptions.email.marketing.custom_method_detail",
            "subscriptions.email.marketing.double_optin",
            "predictive_analytics",
            *(f"location.{part}" for part in (*LOCATION_KEYS, "latitude", "longitude")),
        }
    )
    _PROFILE_SORTS = frozenset(
        {
            "created",
            "email",
            "id",
            "updated",
            "subscriptions.email.marketing.suppression.timestamp",
            "subscriptions.email.marketing.list_suppressions.timestamp",
        }
    )

    def _get_profiles(self, request: Request) -> Response:
        values = self._query(
            request,
            {
                "additional-fields[profile]",
                "fields[conversation]",
                "fields[profile]",
                "fields[push-token]",
                "filter",
                "include",
                "page[cursor]",
                "page[size]",
                "sort",
            },
        )
        extra = self._csv(
            values, "additional-fields[profile]", {"subscriptions", "predictive_analytics"}
        )
        sparse = self._csv(values, "fields[profile]", self._PROFILE_FIELDS)
        self._csv(values, "include", {"conversations", "push-tokens"})
        size = self._page_size(values, 20, PAGE_MAX)
        conditions = self._filter(values, PROFILE_FILTERS)
        sort = values.get("sort", "id")
        if sort.lstrip("-") not in self._PROFILE_SORTS:
            raise _invalid(f"'{sort}' is not a valid sort field.", parameter="sort")
        with self._lock:
            chosen = [p for p in self._candidates(conditions) if self._matches(p, conditions)]
            chosen.sort(key=lambda p: self._sort_key(p, sort.lstrip("-")), reverse=sort[0] == "-")
            base = self._base(request)
            wire = [
                self._sparse(p.to_wire(base, with_subscriptions="subscriptions" in extra), sparse)
                for p in chosen
            ]
            return self._page(request, wire, size, values, "profiles")

    def _candidates(self, conditions: list[_Condition]) -> Iterable[_Profile]:
        """Profiles an email condition can match (through the email index), else all."""
        for condition in conditions:
            if condition.name == "email":
                wanted = [condition.value] if condition.op == "equals" else condition.value
                found = (self._by_email(str(email)) for email in wanted)
                return sorted(
                    {p.id: p for p in found if p is not None}.values(), key=lambda p: p.id
                )
        return list(self._profiles.values())

    @staticmethod
    def _sparse(profile: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        if not fields:
            return profile
        roots = {name.split(".", 1)[0] for name in fields}
        profile["attributes"] = {k: v for k, v in profile["attributes"].items() if k in roots}
        return profile

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

    @staticmethod
    def _sort_key(profile: _Profile, name: str) -> Any:
        if name == "email":
            return profile.email or ""
        if name in {"created", "updated"}:
            return getattr(profile, name)
        if name.endswith("suppression.timestamp"):
            return max(
                (t for _, t in profile.suppressions), default=datetime.min.replace(tzinfo=UTC)
            )
        if name.endswith("list_suppressions.timestamp"):
            return max(
                (t for _, _, t in profile.list_suppressions),
                default=datetime.min.replace(tzinfo=UTC),
            )
        return profile.id

    @staticmethod
    def _matches(profile: _Profile, conditions: list[_Condition]) -> bool:
        """All conditions hold; conditions on one suppression array hold for one entry."""
        prefix_global = "subscriptions.email.marketing.suppression."
        prefix_list = "subscriptions.email.marketing.list_suppressions."
        on_global = [c for c in conditions if c.name.startswith(prefix_global)]
        on_lists = [c for c in conditions if c.name.startswith(prefix_list)]
        plain = [c for c in conditions if c not in on_global and c not in on_lists]
        simple = {
            "id": profile.id,
            "email": profile.email,
            "phone_number": profile.attributes.get("phone_number"),
            "external_id": profile.attributes.get("external_id"),
            "_kx": None,
            "created": profile.created,
            "updated": profile.updated,
        }
        if not all(c.test(simple[c.name]) for c in plain):
            return False
        if on_global and not any(
            all(
                c.test({"reason": reason, "timestamp": at}[c.name.removeprefix(prefix_global)])
                for c in on_global
            )
            for reason, at in profile.suppressions
        ):
            return False
        return not on_lists or any(
            all(
                c.test(
                    {"list_id": list_id, "reason": reason, "timestamp": at}[
                        c.name.removeprefix(prefix_list)
                    ]
                )
                for c in on_lists
            )
            for list_id, reason, at in profile.list_suppressions
        )

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

    def _get_lists(self, request: Request) -> Response:
        values = self._query(
            request,
            {
                "fields[flow]",
                "fields[list]",
                "fields[tag]",
                "filter",
                "include",
                "page[cursor]",
                "page[size]",
                "sort",
            },
        )
        self._csv(values, "include", {"flow-triggers", "tags"})
        self._csv(values, "fields[list]", {"created", "id", "name", "opt_in_process", "updated"})
        size = self._page_size(values, LISTS_PAGE_MAX, LISTS_PAGE_MAX)
        conditions = self._filter(values, LIST_FILTERS)
        sort = values.get("sort", "id")
        if sort.lstrip("-") not in {"created", "id", "name", "updated"}:
            raise _invalid(f"'{sort}' is not a valid sort field.", parameter="sort")
        with self._lock:
            chosen = [
                found
                for found in self._lists.values()
                if all(
                    c.test(
                        {
                            "id": found.id,
                            "name": found.name,
                            "created": found.created,
                            "updated": found.updated,
                        }[c.name]
                    )
                    for c in conditions
                )
            ]
            chosen.sort(key=lambda f: getattr(f, sort.lstrip("-")), reverse=sort[0] == "-")
            base = self._base(request)
            return self._page(
                request, [self._list_wire(f, base) for f in chosen], size, values, "lists"
            )

    def _get_members(self, request: Request, list_id: str) -> Response:
        values = self._query(request, {"filter", "page[cursor]", "page[size]", "sort"})
        size = self._page_size(values, 20, PAGE_MAX)
        conditions = self._filter(values, MEMBER_FILTERS)
        sort = values.get("sort", "joined_group_at")
        if sort.lstrip("-") != "joined_group_at":
            raise _invalid(f"'{sort}' is not a valid sort field.", parameter="sort")
        with self._lock:
            found = self._list(list_id)
            rows = []
            for pid, joined in sorted(
                found.members.items(), key=lambda item: item[1], reverse=sort[0] == "-"
            ):
                profile = self._profiles.get(pid)
                if profile is None:
                    continue
                facts = {
                    "email": profile.email,
                    "phone_number": profile.attributes.get("phone_number"),
                    "push_token": None,
                    "_kx": None,
                    "joined_group_at": joined,
                }
                if all(c.test(facts[c.name]) for c in conditions):
                    rows.append({"type": "profile", "id": pid})
            return self._page(request, rows, size, values, f"members:{list_id}")

    def _change_members(self, request: Request, list_id: str, *, add: bool) -> Response:
        self._query(request, ())
        body = self._body(request)
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise _invalid("'data' must be a non-empty array of profiles.", pointer="/data")
        if len(items) > LIST_WRITE_MAX:
            raise _invalid(
                f"At most {LIST_WRITE_MAX} profiles per call; got {len(items)}.", pointer="/data"
            )
        with self._lock:
            found = self._list(list_id)
            ids: list[str] = []
            for index, item in enumerate(items):
                if not isinstance(item, dict) or item.get("type") != "profile":
                    raise _invalid("Each item is {type: 'profile', id}.", pointer=f"/data/{index}")
                pid = item.get("id")
                if pid not in self._profiles:
                    raise _invalid(f"Profile {pid!r} does not exist.", pointer=f"/data/{index}/id")
                ids.append(str(pid))
            for pid in ids:
                if add:
                    found.members.setdefault(pid, _now())
                else:
                    found.members.pop(pid, None)
            found.updated = _now()
        return empty_response()

    # -- consent jobs ----------------------------------------------------------------------------
    def _subscribe(self, request: Request) -> Response:
        self._query(request, ())
        data = self._resource(self._body(request), "profile-subscription-bulk-create-job")
        attributes = data["attributes"]
        historical = attributes.get("historical_import") is True
        profiles = self._profiles_of(data, SUBSCRIBE_MAX)
        work: list[tuple[str, datetime | None]] = []
        for index, raw in enumerate(profiles):
            where = f"/data/attributes/profiles/data/{index}"
            email, marketing = self._consent_entry(raw, where, "SUBSCRIBED")
            consented_at = marketing.get("consented_at")
            moment = None
            if consented_at is not None:
                if not historical:
                    raise _invalid(
                        "consented_at may only be sent with historical_import.",
                        pointer=f"{where}/attributes/subscriptions/email/marketing/consented_at",
                    )
                moment = _parse_datetime(str(consented_at))
                if moment > _now():
                    raise _invalid(
                        "consented_at must be in the past.",
                        pointer=f"{where}/attributes/subscriptions/email/marketing/consented_at",
                    )
            elif historical:
                raise _invalid(
                    "consented_at is required when historical_import is true.",
                    pointer=f"{where}/attributes/subscriptions/email/marketing",
                )
            work.append((email, moment))
        with self._lock:
            list_ids = self._related_list(data, many=False)
            self._pending.append(lambda: self._apply_subscribe(work, list_ids))
        return empty_response(HTTPStatus.ACCEPTED)

    def _apply_subscribe(
        self, work: list[tuple[str, datetime | None]], list_ids: list[str]
    ) -> None:
        for email, moment in work:
            profile = self._find_or_create(email)
            profile.consent, profile.consent_timestamp = "SUBSCRIBED", moment or _now()
            profile.consent_method = "API"
            profile.suppressions = [
                (r, t) for r, t in profile.suppressions if r not in CLEARED_BY_SUBSCRIBE
            ]
            profile.list_suppressions = [
                entry for entry in profile.list_suppressions if entry[0] not in list_ids
            ]
            for list_id in list_ids:
                self._lists[list_id].members.setdefault(profile.id, _now())
            profile.touch()

    def _unsubscribe(self, request: Request) -> Response:
        self._query(request, ())
        data = self._resource(self._body(request), "profile-subscription-bulk-delete-job")
        profiles = self._profiles_of(data, UNSUBSCRIBE_MAX)
        emails = [
            self._consent_entry(raw, f"/data/attributes/profiles/data/{i}", "UNSUBSCRIBED")[0]
            for i, raw in enumerate(profiles)
        ]
        with self._lock:
            list_ids = self._related_list(data, many=False)
            self._pending.append(lambda: self._apply_unsubscribe(emails, list_ids))
        return empty_response(HTTPStatus.ACCEPTED)

    def _apply_unsubscribe(self, emails: list[str], list_ids: list[str]) -> None:
        for email in emails:
            profile = self._find_or_create(email)
            at = _now()
            in_list = [i for i in list_ids if profile.id in self._lists[i].members]
            if in_list:
                for list_id in in_list:
                    self._lists[list_id].members.pop(profile.id, None)
                    profile.list_suppressions.append((list_id, "UNSUBSCRIBE", at))
                profile.touch()
            else:  # not in the given list (or no list): unsubscribed globally
                profile.consent, profile.consent_timestamp = "UNSUBSCRIBED", at
                profile.consent_method = "API"
                profile.suppress("UNSUBSCRIBE", at)

    @staticmethod
    def _consent_entry(raw: Any, where: str, consent: str) -> tuple[str, dict[str, Any]]:
        """``(email, marketing object)`` of one consent-job profile; 400 when malformed."""
        if not isinstance(raw, dict) or raw.get("type") != "profile":
            raise _invalid("Each profile is {type: 'profile', attributes: {...}}.", pointer=where)
        attributes = raw.get("attributes")
        if not isinstance(attributes, dict):
            raise _invalid("'attributes' must be an object.", pointer=f"{where}/attributes")
        email = attributes.get("email")
        if not isinstance(email, str) or not is_valid_email(email.strip()):
            raise _invalid(
                f"A valid email is required, got {email!r}.", pointer=f"{where}/attributes/email"
            )
        channels = attributes.get("subscriptions")
        marketing = (
            (channels.get("email") or {}).get("marketing") if isinstance(channels, dict) else None
        )
        if not isinstance(marketing, dict) or marketing.get("consent") != consent:
            raise _invalid(
                f"subscriptions.email.marketing.consent must be {consent!r}.",
                pointer=f"{where}/attributes/subscriptions/email/marketing/consent",
            )
        return email.strip(), marketing

    def _suppress(self, request: Request) -> Response:
        self._query(request, {"fields[profile-suppression-bulk-create-job]"})
        data = self._resource(self._body(request), "profile-suppression-bulk-create-job")
        profiles = self._profiles_of(data, SUPPRESS_MAX)
        emails: list[str] = []
        for index, raw in enumerate(profiles):
            attributes = raw.get("attributes") if isinstance(raw, dict) else None
            email = attributes.get("email") if isinstance(attributes, dict) else None
            if not isinstance(email, str) or not is_valid_email(email.strip()):
                raise _invalid(
                    f"A valid email is required, got {email!r}.",
                    pointer=f"/data/attributes/profiles/data/{index}/attributes/email",
                )
            emails.append(email.strip())
        job_id = f"sup-{uuid.uuid4().hex[:20]}"
        with self._lock:
            self._pending.append(lambda: self._apply_suppression(emails))
        link = f"{self._base(request)}/api/profile-suppression-bulk-create-jobs/{job_id}"
        body = {
            "data": {
                "type": "profile-suppression-bulk-create-job",
                "id": job_id,
                "attributes": {
                    "status": "queued",
                    "created_at": _iso(_now()),
                    "total_count": len(emails),
                    "completed_count": 0,
                    "completed_at": None,
                    "skipped_count": 0,
                },
                "links": {"self": link},
            },
            "links": {"self": link},
        }
        return json_response(HTTPStatus.ACCEPTED, body, content_type=JSONAPI)

    def _apply_suppression(self, emails: list[str]) -> None:
        for email in emails:
            self._find_or_create(email).suppress("USER_SUPPRESSED")

    # -- deletion --------------------------------------------------------------------------------
    def _delete_profile(self, request: Request) -> Response:
        self._query(request, ())
        data = self._resource(self._body(request), "data-privacy-deletion-job")
        profile = data["attributes"].get("profile")
        inner = profile.get("data") if isinstance(profile, dict) else None
        if not isinstance(inner, dict) or inner.get("type") != "profile":
            raise _invalid(
                "'profile.data' must be {type: 'profile', ...}.",
                pointer="/data/attributes/profile/data",
            )
        given = dict(inner.get("attributes") or {})
        if inner.get("id"):
            given["id"] = inner["id"]
        identifiers = {k: v for k, v in given.items() if k in {"email", "phone_number", "id"} and v}
        if len(identifiers) != 1:
            raise _invalid(
                "Exactly one of email, phone_number or id is required; got "
                f"{sorted(identifiers) or 'none'}.",
                pointer="/data/attributes/profile/data",
            )
        ((kind, value),) = identifiers.items()
        with self._lock:
            self._pending.append(lambda: self._apply_deletion(kind, str(value)))
        return empty_response(HTTPStatus.ACCEPTED)

    def _apply_deletion(self, kind: str, value: str) -> None:
        for profile in list(self._profiles.values()):
            hit = (
                (kind == "email" and (profile.email or "").lower() == value.strip().lower())
                or (kind == "id" and profile.id == value)
                or (kind == "phone_number" and profile.attributes.get("phone_number") == value)
            )
            if hit:
                del self._profiles[profile.id]
                self._email_index.pop((profile.email or "").lower(), None)
                for found in self._lists.values():
                    found.members.pop(profile.id, None)
                self.deletions.append(profile.email or profile.id)

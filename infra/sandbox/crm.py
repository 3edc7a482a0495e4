"""A HubSpot-style CRM contacts API on loopback, for tests and the demo.

Wire formats follow ``docs/platforms.md`` (*OAuth2 token endpoints*, *HubSpot CRM contacts*):

* ``POST /oauth/v1/token`` — form-encoded ``grant_type=client_credentials``; client id/secret in
  the body or via HTTP Basic. 200 ``{"access_token","token_type":"bearer","expires_in"}``;
  401 ``invalid_client``; 400 ``unsupported_grant_type`` / ``invalid_request``.
* ``GET /crm/v3/objects/contacts`` — cursor paging (``paging.next.after`` is an opaque,
  percent-encoded base64 cursor such as ``MTAwMQo%3D``; numeric ids are accepted too). Max
  ``limit`` 100.
* ``GET /crm/v3/objects/contacts/{id}`` — one contact.
* ``POST /crm/v3/objects/contacts/search`` — filterGroups (OR of ANDed filters), one sort
  (ties broken by ascending numeric id), ``limit`` ≤ 200, numeric-offset ``after``. The body is
  checked against the vendor's ``PublicObjectSearchRequest`` schema (:data:`SEARCH_REQUEST_SCHEMA`):
  an unknown field anywhere, or a value of the wrong JSON type, is a 400 naming it, as HubSpot's
  JSON binding answers. Two documented deviations from that schema, both the real API's
  behaviour: ``sorts`` entries may be objects ``{"propertyName","direction"}`` (the vendor's
  guide; the spec types them as strings, a bare name sorting ascending), and the fields the
  schema lists as required may be left out (the guide's own examples omit ``after``).

Search results are live: ``after`` is an offset into the result set as it is sorted *at the
time of each request*, so modifying a contact between two pages moves it (sorted by
``lastmodifieddate``, to the end) and shifts every later offset by one — the behaviour that
makes offset paging lose records. ``on_search_page`` lets a test act between two pages.

Search window: HubSpot returns at most 10,000 results per query. This stand-in rejects any
search whose ``after + limit`` exceeds 10,000 with 400 ``VALIDATION_ERROR`` (the message names
the cap), while ``total`` and ``paging.next`` still report the full result count — so a client
that blindly follows ``paging.next`` past the window gets the 400, exactly as it should expect
from the real API, and must restart with ``GTE`` the last ``lastmodifieddate`` it saw.

Every API error body is HubSpot-shaped: ``{"status":"error","message","correlationId",
"category"}``. Expired and unknown tokens both get 401 with category
``INVALID_AUTHENTICATION`` (real HubSpot may say ``EXPIRED_AUTHENTICATION`` for the former;
clients should branch on the status code only).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlencode

from infra.sandbox._http import Request, Response, StandInServer, json_response
from infra.sandbox.generate import iso_millis

TOKEN_PATH = "/oauth/v1/token"
CONTACTS_PATH = "/crm/v3/objects/contacts"
SEARCH_PATH = "/crm/v3/objects/contacts/search"

LIST_DEFAULT_LIMIT = 10
LIST_MAX_LIMIT = 100
SEARCH_MAX_LIMIT = 200
SEARCH_RESULT_CAP = 10_000
MAX_FILTER_GROUPS = 5
MAX_FILTERS_PER_GROUP = 10
MAX_FILTERS_TOTAL = 25

ALWAYS_RETURNED = ("hs_object_id", "lastmodifieddate", "createdate")
DEFAULT_PROPERTIES: tuple[str, ...] = (
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
)
DATE_PROPERTIES = frozenset({"lastmodifieddate", "createdate", "marketing_opt_in_at"})
NUMERIC_PROPERTIES = frozenset({"hs_object_id"})
RATE_LIMIT_BODY = {
    "status": "error",
    "message": "You have reached your secondly limit.",
    "errorType": "RATE_LIMIT",
    "policyName": "SECONDLY",
}


class CrmRequestError(Exception):
    """A request the stand-in rejects; carries the HTTP status and HubSpot category."""

    def __init__(self, status: int, category: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.category = category
        self.message = message


@dataclass(frozen=True)
class _Fault:
    """One injected failure (see :meth:`CrmStandIn.fail_next`)."""

    status: int
    retry_after: str | None
    body: bytes | None


def hubspot_error(status: int, category: str, message: str) -> Response:
    """A HubSpot-shaped error response."""
    payload = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return json_response(status, payload)


def _oauth_error(status: int, error: str, description: str) -> Response:
    """An RFC 6749 token-endpoint error response."""
    return json_response(status, {"error": error, "error_description": description})


@lru_cache(maxsize=131_072)
def _parse_iso_millis(value: str) -> int:
    """Epoch milliseconds of an ISO-8601 timestamp (``Z`` suffix allowed)."""
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _id_key(contact_id: str) -> tuple[int, int, str]:
    """Sort key for ids: numeric ids in numeric order, anything else after them."""
    return (0, int(contact_id), "") if contact_id.isdigit() else (1, 0, contact_id)


def _hubspot_string(value: Any) -> str | None:
    """Coerce a property value to HubSpot's string representation."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_millis(value)
    return str(value)


# -- cursors for the list endpoint ------------------------------------------------------------
def encode_cursor(contact_id: str) -> str:
    """HubSpot-style opaque cursor: percent-encoded base64 of ``"<id>\\n"``."""
    return quote(base64.b64encode(f"{contact_id}\n".encode()).decode(), safe="")


def decode_cursor(cursor: str) -> str:
    """Return the contact id a list cursor points at (accepts raw numeric ids too)."""
    text = unquote(cursor) if "%" in cursor else cursor
    if text.isdigit():
        return text
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CrmRequestError(
            HTTPStatus.BAD_REQUEST, "VALIDATION_ERROR", f"after={cursor!r} is not a paging cursor"
        ) from exc
    if not decoded:
        raise CrmRequestError(
            HTTPStatus.BAD_REQUEST, "VALIDATION_ERROR", f"after={cursor!r} is an empty cursor"
        )
    return decoded


# -- search filters -----------------------------------------------------------------------------
def _comparable(prop: str, value: Any) -> Any:
    """Turn a property or filter value into something orderable for ``prop``."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if prop in DATE_PROPERTIES:
        return int(text) if text.lstrip("-").isdigit() else _parse_iso_millis(text)
    if prop in NUMERIC_PROPERTIES:
        return int(text)
    return text.lower()


_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": lambda have, want: have == want,
    "NEQ": lambda have, want: have != want,
    "LT": lambda have, want: have is not None and have < want,
    "LTE": lambda have, want: have is not None and have <= want,
    "GT": lambda have, want: have is not None and have > want,
    "GTE": lambda have, want: have is not None and have >= want,
}
_OPERATORS = frozenset(
    {
        *_COMPARATORS,
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    }
)

# The vendor's search request schema (CRM contacts v3, PublicObjectSearchRequest, FilterGroup,
# Filter), as data. ``sorts`` also takes the object form the vendor documents and accepts.
_STRING: dict[str, Any] = {"type": "string"}
_STRINGS: dict[str, Any] = {"type": "array", "items": _STRING}
_FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["operator", "propertyName"],
    "properties": {
        "highValue": _STRING,
        "operator": {"type": "string", "enum": sorted(_OPERATORS)},
        "propertyName": _STRING,
        "value": _STRING,
        "values": _STRINGS,
    },
}
_SORT_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["propertyName"],
    "properties": {
        "propertyName": _STRING,
        "direction": {"type": "string", "enum": ["ASCENDING", "DESCENDING"]},
    },
}
SEARCH_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "after": _STRING,
        "filterGroups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["filters"],
                "properties": {"filters": {"type": "array", "items": _FILTER_SCHEMA}},
            },
        },
        "limit": {"type": "integer"},
        "properties": _STRINGS,
        "query": _STRING,
        "sorts": {"type": "array", "items": {"anyOf": [_STRING, _SORT_OBJECT]}},
    },
}
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
}


def schema_problem(value: Any, schema: Mapping[str, Any], where: str = "body") -> str | None:
    """The first way ``value`` breaks ``schema`` (a small JSON-schema subset), or None.

    Objects are closed: a field the schema does not declare is a problem, as it is for
    HubSpot's JSON binding ("Unrecognized field").
    """
    if "anyOf" in schema:
        problems = [schema_problem(value, option, where) for option in schema["anyOf"]]
        return None if any(p is None for p in problems) else problems[-1]
    kind = schema.get("type")
    if kind is not None and not _JSON_TYPES[kind](value):
        return f"{where}: expected {kind}, got {json.dumps(value)[:60]}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {list(schema['enum'])}"
    if kind == "object":
        declared = schema.get("properties", {})
        for name in value:
            if name not in declared:
                return f'Unrecognized field "{name}" at {where} (not marked as ignorable)'
        for name in schema.get("required", []):
            if name not in value:
                return f"{where}: missing required field {name!r}"
        for name, sub in declared.items():
            if name in value:
                problem = schema_problem(value[name], sub, f"{where}.{name}")
                if problem is not None:
                    return problem
    if kind == "array":
        for index, item in enumerate(value):
            problem = schema_problem(item, schema.get("items", {}), f"{where}[{index}]")
            if problem is not None:
                return problem
    return None


@dataclass(frozen=True)
class _Filter:
    """One validated search filter."""

    prop: str
    operator: str
    value: Any = None
    high_value: Any = None
    values: tuple[Any, ...] = ()

    def matches(self, properties: Mapping[str, Any]) -> bool:
        """True when the contact's properties satisfy this filter."""
        have = _comparable(self.prop, properties.get(self.prop))
        if self.operator == "HAS_PROPERTY":
            return have is not None
        if self.operator == "NOT_HAS_PROPERTY":
            return have is None
        if self.operator == "BETWEEN":
            return have is not None and self.value <= have <= self.high_value
        if self.operator == "IN":
            return have in self.values
        if self.operator == "NOT_IN":
            return have not in self.values
        if self.operator in {"CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}:
            found = have is not None and str(self.value) in str(have).split()
            return found == (self.operator == "CONTAINS_TOKEN")
        return _COMPARATORS[self.operator](have, self.value)


def _matches_groups(properties: Mapping[str, Any], groups: list[list[_Filter]]) -> bool:
    """OR across filter groups, AND within a group; no groups matches everything."""
    return not groups or any(all(f.matches(properties) for f in group) for group in groups)


def _bad_request(message: str) -> CrmRequestError:
    return CrmRequestError(HTTPStatus.BAD_REQUEST, "VALIDATION_ERROR", message)


def _parse_filter(raw: Any, where: str) -> _Filter:
    """Validate one filter dict from a search body."""
    if not isinstance(raw, dict) or not isinstance(raw.get("propertyName"), str):
        raise _bad_request(f"{where}: a filter needs a string 'propertyName'")
    prop, operator = raw["propertyName"], raw.get("operator", "EQ")
    if operator not in _OPERATORS:
        raise _bad_request(f"{where}: operator {operator!r} is not supported")
    try:
        if operator in {"IN", "NOT_IN"}:
            values = raw.get("values")
            if not isinstance(values, list):
                raise _bad_request(f"{where}: operator {operator} needs a 'values' list")
            return _Filter(prop, operator, values=tuple(_comparable(prop, v) for v in values))
        if operator in {"HAS_PROPERTY", "NOT_HAS_PROPERTY"}:
            return _Filter(prop, operator)
        if raw.get("value") is None:
            raise _bad_request(f"{where}: operator {operator} needs a 'value'")
        high = _comparable(prop, raw.get("highValue")) if operator == "BETWEEN" else None
        if operator == "BETWEEN" and high is None:
            raise _bad_request(f"{where}: operator BETWEEN needs a 'highValue'")
        return _Filter(prop, operator, value=_comparable(prop, raw["value"]), high_value=high)
    except ValueError as exc:
        raise _bad_request(f"{where}: value for {prop!r} cannot be parsed ({exc})") from exc


def parse_filter_groups(raw: Any) -> list[list[_Filter]]:
    """Validate ``filterGroups`` and enforce HubSpot's 5 / 10 / 25 caps."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad_request("filterGroups must be a list")
    if len(raw) > MAX_FILTER_GROUPS:
        raise _bad_request(f"at most {MAX_FILTER_GROUPS} filterGroups allowed, got {len(raw)}")
    groups: list[list[_Filter]] = []
    for g, group in enumerate(raw):
        filters = group.get("filters", []) if isinstance(group, dict) else None
        if not isinstance(filters, list):
            raise _bad_request(f"filterGroups[{g}].filters must be a list")
        if len(filters) > MAX_FILTERS_PER_GROUP:
            raise _bad_request(
                f"filterGroups[{g}] has {len(filters)} filters; at most "
                f"{MAX_FILTERS_PER_GROUP} are allowed per group"
            )
        groups.append(
            [_parse_filter(f, f"filterGroups[{g}].filters[{i}]") for i, f in enumerate(filters)]
        )
    total = sum(len(group) for group in groups)
    if total > MAX_FILTERS_TOTAL:
        raise _bad_request(f"at most {MAX_FILTERS_TOTAL} filters allowed in total, got {total}")
    return groups


def _parse_sort(raw: Any) -> tuple[str, bool] | None:
    """Validate ``sorts``; returns (property, descending) or None for id order.

    The search API applies one sort rule only; a second one is refused here rather than
    silently ignored, so a client cannot believe it has a tie-breaking secondary sort.
    """
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list) or len(raw) != 1:
        raise _bad_request("sorts must be a list with exactly one {propertyName, direction}")
    if isinstance(raw[0], str):
        raw = [{"propertyName": raw[0], "direction": "ASCENDING"}]
    if not isinstance(raw[0], dict):
        raise _bad_request("sorts must be a list with exactly one {propertyName, direction}")
    prop, direction = raw[0].get("propertyName"), raw[0].get("direction", "ASCENDING")
    if not isinstance(prop, str):
        raise _bad_request("sorts[0].propertyName must be a string")
    if direction not in {"ASCENDING", "DESCENDING"}:
        raise _bad_request(f"sorts[0].direction must be ASCENDING or DESCENDING, not {direction!r}")
    return prop, direction == "DESCENDING"


def _parse_int(raw: Any, name: str, *, default: int, low: int, high: int | None) -> int:
    """Parse an integer parameter (int or numeric string) within ``[low, high]``."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not str(raw).strip().isdigit():
        raise _bad_request(f"{name} must be a non-negative integer, got {raw!r}")
    value = int(str(raw).strip())
    if value < low or (high is not None and value > high):
        upper = f" and {high}" if high is not None else ""
        raise _bad_request(f"{name} must be between {low}{upper}, got {value}")
    return value


def _requested_properties(raw: Iterable[str] | None) -> tuple[str, ...]:
    """Requested property names (comma lists and repeats both allowed); default set if none."""
    names = [name.strip() for item in raw or () for name in str(item).split(",") if name.strip()]
    return tuple(dict.fromkeys(names)) if names else DEFAULT_PROPERTIES


class CrmStandIn(StandInServer):
    """HubSpot-style CRM contacts API served on loopback (see module docstring for routes).

    ``contacts`` are HubSpot contact objects (``{"id", "properties", "createdAt",
    "updatedAt", "archived"}``), e.g. ``crm_contacts.json`` from :mod:`infra.sandbox.generate`.
    The store is copied and guarded by a lock, so tests may mutate it while clients page.
    """

    name = "crm"

    def __init__(
        self,
        contacts: list[dict[str, Any]],
        *,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",
        token_ttl: float = 1800,
        host: str = "127.0.0.1",
        port: int = 0,
        requests_per_second: float | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.requests_per_second = requests_per_second
        self.token_requests = 0
        self._lock = threading.RLock()
        self._contacts: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, float] = {}
        self._faults: deque[_Fault] = deque()
        self._recent: deque[float] = deque()
        self.search_pages = 0
        self.on_search_page: Callable[[int, dict[str, Any]], None] | None = None
        """Called after each search page is computed, before it is sent, with the page's
        number (from 1) and the request body: a test's hook to change contacts "between two
        pages" of a client's run."""
        for index, contact in enumerate(contacts):
            self._load(contact, index)

    @classmethod
    def from_file(cls, path: Path | str, **kwargs: Any) -> CrmStandIn:
        """Build a stand-in from a JSON file holding a list of contact objects."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read CRM contacts from {path}: {exc}") from exc
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of contacts, found {type(data)}")
        return cls(data, **kwargs)

    # -- store ------------------------------------------------------------------------------
    def _load(self, contact: Any, index: int) -> None:
        """Validate and store one input contact (normalising the always-present props)."""
        if not isinstance(contact, dict) or not isinstance(contact.get("properties"), dict):
            raise ValueError(f"contacts[{index}] must be an object with a 'properties' object")
        contact_id = str(contact.get("id", "")).strip()
        if not contact_id:
            raise ValueError(f"contacts[{index}] has no 'id'")
        if contact_id in self._contacts:
            raise ValueError(f"contacts[{index}] repeats id {contact_id!r}")
        stored = copy.deepcopy(contact)
        props = stored["properties"]
        stored["id"] = contact_id
        stored.setdefault("archived", False)
        props["hs_object_id"] = contact_id
        props.setdefault("lastmodifieddate", stored.get("updatedAt"))
        props.setdefault("createdate", stored.get("createdAt"))
        stored.setdefault("updatedAt", props["lastmodifieddate"])
        stored.setdefault("createdAt", props["createdate"])
        self._contacts[contact_id] = stored

    def _next_modification_time(self) -> datetime:
        """Wall-clock now, but never earlier than 1 ms after the newest lastmodifieddate."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        stamps = [c["properties"].get("lastmodifieddate") for c in self._contacts.values()]
        latest = max((_parse_iso_millis(s) for s in stamps if s), default=None)
        if latest is None:
            return now
        floor = datetime.fromtimestamp(latest / 1000, UTC) + timedelta(milliseconds=1)
        return max(now, floor)

    def upsert_contact(
        self,
        properties: Mapping[str, Any],
        *,
        id: str | None = None,
        modified_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Create or update a contact and bump its lastmodifieddate; returns a copy.

        With ``id=None`` a new contact gets the next numeric id. ``modified_at`` defaults to
        now, but never earlier than just after the newest lastmodifieddate in the store, so an
        incremental pull with a ``GTE`` watermark always sees the change. Values are coerced
        to HubSpot strings (``True`` -> ``"true"``).
        """
        with self._lock:
            stamp = iso_millis(modified_at or self._next_modification_time())
            contact_id = id if id is not None else self._next_id()
            contact = self._contacts.get(contact_id)
            if contact is None:
                contact = {
                    "id": contact_id,
                    "properties": {"hs_object_id": contact_id, "createdate": stamp},
                    "createdAt": stamp,
                    "archived": False,
                }
                self._contacts[contact_id] = contact
            contact["properties"].update({k: _hubspot_string(v) for k, v in properties.items()})
            contact["properties"].update(hs_object_id=contact_id, lastmodifieddate=stamp)
            contact["updatedAt"] = stamp
            return copy.deepcopy(contact)

    def archive_contact(self, contact_id: str) -> None:
        """Archive a contact (it disappears from search and from ``archived=false`` lists)."""
        with self._lock:
            if contact_id not in self._contacts:
                raise KeyError(f"CRM stand-in has no contact with id {contact_id!r}")
            stamp = iso_millis(self._next_modification_time())
            contact = self._contacts[contact_id]
            contact.update(archived=True, archivedAt=stamp, updatedAt=stamp)

    def contacts(self) -> list[dict[str, Any]]:
        """A deep copy of every stored contact, in id order."""
        with self._lock:
            return [copy.deepcopy(self._contacts[k]) for k in self._sorted_ids()]

    def _next_id(self) -> str:
        numeric = [int(k) for k in self._contacts if k.isdigit()]
        return str(max(numeric, default=1000) + 1)

    def _sorted_ids(self) -> list[str]:
        return sorted(self._contacts, key=_id_key)

    # -- fault injection --------------------------------------------------------------------
    def fail_next(
        self,
        count: int,
        *,
        status: int,
        retry_after: str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Make the next ``count`` API requests (not token requests) fail with ``status``.

        ``retry_after`` becomes a ``Retry-After`` header; ``body`` replaces the default
        HubSpot-shaped error body.
        """
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        with self._lock:
            self._faults.extend(_Fault(status, retry_after, body) for _ in range(count))

    def expire_tokens(self) -> None:
        """Expire every access token issued so far (simulates expiry mid-run)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = {token: min(expiry, now) for token, expiry in self._tokens.items()}

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Route one request (token endpoint, then faults, rate limit, auth, API)."""
        if request.path == TOKEN_PATH:
            return self._token(request)
        for check in (self._take_fault, self._rate_limit, self._authenticate):
            rejection = check(request)
            if rejection is not None:
                return rejection
        try:
            return self._route(request)
        except CrmRequestError as exc:
            return hubspot_error(exc.status, exc.category, exc.message)

    def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path == SEARCH_PATH:
            self._require_method(request, "POST")
            return self._search(request)
        if path == CONTACTS_PATH:
            self._require_method(request, "GET")
            return self._list(request)
        if path.startswith(CONTACTS_PATH + "/") and path.count("/") == 5:
            self._require_method(request, "GET")
            return self._get_one(request, path.rsplit("/", 1)[1])
        raise CrmRequestError(
            HTTPStatus.NOT_FOUND, "OBJECT_NOT_FOUND", f"No CRM stand-in route for {path!r}"
        )

    @staticmethod
    def _require_method(request: Request, method: str) -> None:
        if request.method != method:
            raise CrmRequestError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "VALIDATION_ERROR",
                f"{request.method} is not allowed on {request.path}; use {method}",
            )

    def _take_fault(self, request: Request) -> Response | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults.popleft()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.body is not None:
            return Response(fault.status, fault.body, "application/json", headers)
        if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
            payload = {**RATE_LIMIT_BODY, "correlationId": str(uuid.uuid4())}
            return json_response(fault.status, payload, headers=headers)
        payload = {
            "status": "error",
            "message": f"Injected failure: HTTP {fault.status} for {request.method} {request.path}",
            "correlationId": str(uuid.uuid4()),
            "category": "INTERNAL_ERROR" if fault.status >= 500 else "VALIDATION_ERROR",
        }
        return json_response(fault.status, payload, headers=headers)

    def _rate_limit(self, request: Request) -> Response | None:
        """Sliding one-second window; rejected requests do not consume budget."""
        if self.requests_per_second is None:
            return None
        budget = max(1, int(self.requests_per_second))
        with self._lock:
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= budget:
                payload = {**RATE_LIMIT_BODY, "correlationId": str(uuid.uuid4())}
                return json_response(HTTPStatus.TOO_MANY_REQUESTS, payload)
            self._recent.append(now)
        return None

    def _authenticate(self, request: Request) -> Response | None:
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication: send 'Authorization: Bearer <access token>'.",
            )
        with self._lock:
            expiry = self._tokens.get(token.strip())
        if expiry is None:
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "The OAuth token used to make this call is not valid.",
            )
        remaining = expiry - time.monotonic()
        if remaining <= 0:
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                f"The OAuth token used to make this call expired {int(-remaining)} second(s) ago.",
            )
        return None

    # -- token endpoint ---------------------------------------------------------------------
    def _client_credentials(self, request: Request, form: dict[str, list[str]]) -> tuple[str, str]:
        """Client id and secret from HTTP Basic (preferred) or the form body."""
        scheme, _, encoded = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "basic" and encoded:
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return "", ""
            client_id, _, secret = decoded.partition(":")
            return unquote_plus(client_id), unquote_plus(secret)
        first = {key: values[0] for key, values in form.items() if values}
        return first.get("client_id", ""), first.get("client_secret", "")

    def _token(self, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
        if request.method != "POST":
            return _oauth_error(
                HTTPStatus.METHOD_NOT_ALLOWED, "invalid_request", f"use POST on {TOKEN_PATH}"
            )
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _oauth_error(
                HTTPStatus.BAD_REQUEST,
                "invalid_request",
                f"Content-Type must be application/x-www-form-urlencoded, got {content_type!r}",
            )
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        client_id, secret = self._client_credentials(request, form)
        if not (
            secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(secret, self.client_secret)
        ):
            return _oauth_error(
                HTTPStatus.UNAUTHORIZED,
                "invalid_client",
                f"client authentication failed for client_id {client_id!r}",
            )
        grant = (form.get("grant_type") or [""])[0]
        if not grant:
            return _oauth_error(HTTPStatus.BAD_REQUEST, "invalid_request", "grant_type is missing")
        if grant != "client_credentials":
            return _oauth_error(
                HTTPStatus.BAD_REQUEST,
                "unsupported_grant_type",
                f"grant_type {grant!r} is not supported; use client_credentials",
            )
        return self._issue_token()

    def _issue_token(self) -> Response:
        token = f"sandbox-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl
        payload = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": max(0, round(self.token_ttl)),
        }
        return json_response(HTTPStatus.OK, payload, headers={"Cache-Control": "no-store"})

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

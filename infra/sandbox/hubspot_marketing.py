"""HubSpot as an email *destination* on loopback: contacts, properties, lists, subscriptions.

Separate from :mod:`infra.sandbox.crm`, which plays HubSpot as a CRM *source* (token endpoint and
contact search). This stand-in follows the vendor's OpenAPI documents for the operations a
destination adapter calls (``docs/platforms.md``, *HubSpot*):

* ``POST /crm/v3/objects/contacts/batch/upsert`` - ``idProperty: "email"``, at most 100 inputs.
  Answers 200 when every input succeeded, else **207** with one ``StandardError`` per failed
  input (``context.id`` = the email, ``context.objectWriteTraceId`` when sent). Results come back
  in a different order than the inputs (as HubSpot's do), so clients must match them by
  ``objectWriteTraceId`` or email, never by position. Per-input failures turn into a 207 only
  when *every* input carries an ``objectWriteTraceId``; otherwise the first one fails the whole
  batch with 400 (``docs/platforms.md``, *HubSpot*). Two inputs with the same id fail the batch
  with 400.
* ``POST /crm/v3/objects/contacts/batch/read`` - by id or ``idProperty``; unknown ids are a 207
  ``OBJECT_NOT_FOUND`` error listing them.
* ``POST /crm/v3/objects/contacts/gdpr-delete`` - 204; the email is blocklisted afterwards (also
  when no contact had it), so a later upsert of it fails per input.
* ``GET|POST /crm/v3/properties/contacts`` - properties with types; a duplicate name is 409.
  Values written to a property are checked against its type: numbers must parse, ``date``
  values must be ``YYYY-MM-DD`` or epoch milliseconds at midnight UTC, ``bool`` values
  ``true``/``false``, enumerations one of their options; ``""`` clears any property. Unknown
  and read-only properties are per-input errors.
* ``POST /crm/v3/lists`` (``MANUAL`` or ``SNAPSHOT`` only), ``GET
  /crm/v3/lists/object-type-id/0-1/name/{name}``, ``GET /crm/v3/lists/{id}/memberships``
  (``limit`` ≤ 250, ``after`` cursor), ``PUT /crm/v3/lists/{id}/memberships/add|remove`` (a bare
  array of record ids; unknown ids come back in ``recordIdsMissing``).
* Communication preferences v4: ``GET /definitions``, ``POST /statuses/batch/read``,
  ``/statuses/batch/write``, ``/statuses/batch/unsubscribe-all`` and
  ``/statuses/batch/unsubscribe-all/read`` (``channel=EMAIL`` required, at most 100 inputs).
  Opting out of all sets every subscription type to ``UNSUBSCRIBED`` as well.

Strictness: ``Authorization: Bearer <private-app token>``; unknown query parameters and unknown
JSON fields are 400 ``VALIDATION_ERROR`` naming them; bodies are checked against the spec's
types, enums and ``required`` lists. Errors are HubSpot's ``{status, message, correlationId
(uuid), category}``.

Rate limit: a rolling ``window_seconds`` window (10 s, as HubSpot's ``TEN_SECONDLY_ROLLING``)
admits ``burst`` requests (100, the Free/Starter private-app figure) and a daily quota. Every
answer carries ``X-HubSpot-RateLimit-Max``, ``-Remaining``, ``-Interval-Milliseconds``,
``-Daily`` and ``-Daily-Remaining``; over the limit is 429 with the body HubSpot documents
(``errorType: RATE_LIMIT``, ``policyName``) and no ``Retry-After``. Rejected requests do not
use up the window.

Known spec deviations kept on purpose (the vendor's live behaviour, which the spec misses): the
429 body has no ``category`` (the spec's ``Error`` requires one); unset properties are left out
of ``properties`` rather than sent as ``null`` (the spec types every value as a string).
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from infra.sandbox._http import Request, Response, StandInServer, empty_response, json_response

BATCH_MAX_INPUTS = 100
MEMBERSHIPS_DEFAULT_LIMIT = 100
MEMBERSHIPS_MAX_LIMIT = 250
DEFAULT_BURST = 100
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_DAILY_LIMIT = 250_000
CONTACTS_OBJECT_TYPE_ID = "0-1"
DEFAULT_SUBSCRIPTION_ID = 1001
DEFAULT_PROPERTY_GROUP = "contactinformation"
LEGAL_BASES = (
    "CONSENT_WITH_NOTICE",
    "LEGITIMATE_INTEREST_CLIENT",
    "LEGITIMATE_INTEREST_OTHER",
    "LEGITIMATE_INTEREST_PQL",
    "NON_GDPR",
    "PERFORMANCE_OF_CONTRACT",
    "PROCESS_AND_STORE",
)
STATUS_STATES = ("NOT_SPECIFIED", "SUBSCRIBED", "UNSUBSCRIBED")
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LIST_ID = re.compile(r"^[1-9][0-9]{0,18}$")

# -- the spec's request schemas, transcribed (types, enums, required; objects are closed) ----------
_S: dict[str, Any] = {"type": "string"}
_STRINGS: dict[str, Any] = {"type": "array", "items": _S}
_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": _S}
_LEGAL_BASIS: dict[str, Any] = {"type": "string", "enum": list(LEGAL_BASES)}
UPSERT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "properties"],
                "properties": {
                    "id": _S,
                    "idProperty": _S,
                    "objectWriteTraceId": _S,
                    "properties": _STRING_MAP,
                },
            },
        }
    },
}
BATCH_READ_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs", "properties", "propertiesWithHistory"],
    "properties": {
        "idProperty": _S,
        "inputs": {
            "type": "array",
            "items": {"type": "object", "required": ["id"], "properties": {"id": _S}},
        },
        "properties": _STRINGS,
        "propertiesWithHistory": _STRINGS,
    },
}
GDPR_DELETE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["objectId"],
    "properties": {"idProperty": _S, "objectId": _S},
}
_OPTION: dict[str, Any] = {
    "type": "object",
    "required": ["hidden", "label", "value"],
    "properties": {
        "displayOrder": {"type": "integer"},
        "hidden": {"type": "boolean"},
        "label": _S,
        "value": _S,
    },
}
PROPERTY_TYPES = ("bool", "date", "datetime", "enumeration", "number", "phone_number", "string")
PROPERTY_CREATE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["fieldType", "groupName", "label", "name", "type"],
    "properties": {
        "calculationFormula": _S,
        "currencyPropertyName": _S,
        "dataSensitivity": {
            "type": "string",
            "enum": ["highly_sensitive", "non_sensitive", "sensitive"],
        },
        "description": _S,
        "displayOrder": {"type": "integer"},
        "externalOptions": {"type": "boolean"},
        "fieldType": {
            "type": "string",
            "enum": [
                "booleancheckbox",
                "calculation_equation",
                "checkbox",
                "date",
                "file",
                "html",
                "number",
                "phonenumber",
                "radio",
                "select",
                "text",
                "textarea",
            ],
        },
        "formField": {"type": "boolean"},
        "groupName": _S,
        "hasUniqueValue": {"type": "boolean"},
        "hidden": {"type": "boolean"},
        "label": _S,
        "name": _S,
        "numberDisplayHint": {
            "type": "string",
            "enum": [
                "currency",
                "duration",
                "formatted",
                "percentage",
                "probability",
                "unformatted",
            ],
        },
        "options": {"type": "array", "items": _OPTION},
        "referencedObjectType": _S,
        "showCurrencySymbol": {"type": "boolean"},
        "textDisplayHint": {
            "type": "string",
            "enum": [
                "domain_name",
                "email",
                "ip_address",
                "multi_line",
                "phone_number",
                "physical_address",
                "postal_code",
                "unformatted_single_line",
            ],
        },
        "type": {"type": "string", "enum": list(PROPERTY_TYPES)},
    },
}
LIST_CREATE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "objectTypeId", "processingType"],
    "properties": {
        "customProperties": _STRING_MAP,
        "listFolderId": {"type": "integer"},
        "name": _S,
        "objectTypeId": _S,
        "processingType": _S,
    },
}
RECORD_IDS_BODY: dict[str, Any] = _STRINGS
BATCH_STRINGS_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {"inputs": _STRINGS},
}
STATUS_WRITE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["channel", "statusState", "subscriberIdString", "subscriptionId"],
                "properties": {
                    "channel": {"type": "string", "enum": ["EMAIL"]},
                    "legalBasis": _LEGAL_BASIS,
                    "legalBasisExplanation": _S,
                    "statusState": {"type": "string", "enum": list(STATUS_STATES)},
                    "subscriberIdString": _S,
                    "subscriptionId": {"type": "integer"},
                },
            },
        }
    },
}

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def schema_problem(value: Any, schema: Mapping[str, Any], where: str = "body") -> str | None:
    """The first way ``value`` breaks ``schema`` (the JSON-schema subset above), or ``None``.

    Objects without ``additionalProperties`` are closed, as HubSpot's JSON binding is
    (``Unrecognized field "x"``).
    """
    kind = schema.get("type")
    if kind is not None and not _JSON_TYPES[kind](value):
        return f"{where}: expected {kind}, got {json.dumps(value)[:60]}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {list(schema['enum'])}"
    if kind == "object":
        return _object_problem(value, schema, where)
    if kind == "array":
        for index, item in enumerate(value):
            problem = schema_problem(item, schema.get("items", {}), f"{where}[{index}]")
            if problem is not None:
                return problem
    return None


def _object_problem(value: dict[str, Any], schema: Mapping[str, Any], where: str) -> str | None:
    extra = schema.get("additionalProperties")
    declared = schema.get("properties", {})
    for name, item in value.items():
        sub = declared.get(name, extra)
        if sub is None:
            return f'Unrecognized field "{name}" at {where} (not marked as ignorable)'
        problem = schema_problem(item, sub, f"{where}.{name}")
        if problem is not None:
            return problem
    for name in schema.get("required", []):
        if name not in value:
            return f"{where}: missing required field {name!r}"
    return None


def iso_now() -> str:
    """Now as HubSpot writes timestamps: ISO 8601, milliseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_valid_email(email: str) -> bool:
    return bool(_EMAIL.match(email)) and ".." not in email


class HubSpotApiError(Exception):
    """A request the stand-in rejects with a HubSpot error body."""

    def __init__(
        self,
        status: int,
        category: str,
        message: str,
        *,
        context: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.category = category
        self.message = message
        self.context = context


def _validation(message: str, **context: list[str]) -> HubSpotApiError:
    return HubSpotApiError(
        HTTPStatus.BAD_REQUEST, "VALIDATION_ERROR", message, context=context or None
    )


def _not_found(message: str) -> HubSpotApiError:
    return HubSpotApiError(HTTPStatus.NOT_FOUND, "OBJECT_NOT_FOUND", message)


def hubspot_error(
    status: int, category: str, message: str, context: dict[str, list[str]] | None = None
) -> Response:
    payload: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    if context:
        payload["context"] = context
    return json_response(status, payload)


def _standard_error(
    category: str, message: str, context: dict[str, list[str]], code: str
) -> dict[str, Any]:
    """One entry of a batch ``errors[]`` (the spec's ``StandardError``)."""
    return {
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
        "errors": [{"message": message, "code": code}],
        "links": {},
    }


@dataclass
class _Property:
    name: str
    label: str
    type: str
    field_type: str
    group_name: str
    options: list[dict[str, Any]] = field(default_factory=list)
    read_only: bool = False
    hubspot_defined: bool = False
    has_unique_value: bool = False
    created_at: str = field(default_factory=iso_now)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "groupName": self.group_name,
            "description": "",
            "options": [dict(o) for o in self.options],
            "hasUniqueValue": self.has_unique_value,
            "hidden": False,
            "hubspotDefined": self.hubspot_defined,
            "formField": False,
            "archived": False,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
        }


_BOOL_OPTIONS = [
    {"label": "Yes", "value": "true", "hidden": False, "displayOrder": 0},
    {"label": "No", "value": "false", "hidden": False, "displayOrder": 1},
]


def _default_properties() -> dict[str, _Property]:
    """The HubSpot-defined contact properties an adapter meets (a small, real subset)."""
    builtin = [
        _Property("email", "Email", "string", "text", "contactinformation", has_unique_value=True),
        _Property("firstname", "First Name", "string", "text", "contactinformation"),
        _Property("lastname", "Last Name", "string", "text", "contactinformation"),
        _Property("city", "City", "string", "text", "contactinformation"),
        _Property("hs_object_id", "Record ID", "number", "number", "contactinformation", [], True),
        _Property("createdate", "Create Date", "datetime", "date", "contactinformation", [], True),
        _Property(
            "lastmodifieddate", "Last Modified Date", "datetime", "date", "contactinformation"
        ),
    ]
    builtin[-1].read_only = True
    for prop in builtin:
        prop.hubspot_defined = True
    return {p.name: p for p in builtin}


@dataclass
class _Contact:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str

    def to_wire(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        shown = self.properties if names is None else {n: self.properties.get(n) for n in names}
        return {
            "id": self.id,
            # Unset properties are left out: the spec types every value as a string.
            "properties": {k: v for k, v in shown.items() if v is not None},
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
        }


@dataclass
class _List:
    list_id: str
    name: str
    processing_type: str
    created_at: str = field(default_factory=iso_now)
    members: dict[str, str] = field(default_factory=dict)
    """record id -> membership timestamp"""
    version: int = 1

    def to_wire(self) -> dict[str, Any]:
        return {
            "listId": self.list_id,
            "listVersion": self.version,
            "name": self.name,
            "objectTypeId": CONTACTS_OBJECT_TYPE_ID,
            "processingStatus": "COMPLETE",
            "processingType": self.processing_type,
            "size": len(self.members),
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
        }


@dataclass
class _Status:
    state: str
    timestamp: str
    source: str
    legal_basis: str | None = None


@dataclass(frozen=True)
class _Fault:
    status: int
    body: bytes | None


@dataclass(frozen=True)
class Exchange:
    """One request and the stand-in's answer, as sent on the wire (for contract tests)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes
    response_content_type: str | None


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    query: Mapping[str, Callable[[str], bool]]
    """Allowed query parameters and a check of each value."""
    handler: str


def _is_bool(value: str) -> bool:
    return value in ("true", "false")


def _is_int(value: str) -> bool:
    return value.isdigit()


def _is_any(value: str) -> bool:
    return True


def _is_email_channel(value: str) -> bool:
    return value == "EMAIL"


_V4 = "/communication-preferences/v4"
_BUSINESS_UNIT = {"businessUnitId": _is_int}
ROUTES: tuple[_Route, ...] = (
    _Route("POST", re.compile(r"^/crm/v3/objects/contacts/batch/upsert$"), {}, "_upsert"),
    _Route(
        "POST",
        re.compile(r"^/crm/v3/objects/contacts/batch/read$"),
        {"archived": _is_bool},
        "_batch_read",
    ),
    _Route("POST", re.compile(r"^/crm/v3/objects/contacts/gdpr-delete$"), {}, "_gdpr_delete"),
    _Route(
        "GET",
        re.compile(r"^/crm/v3/properties/(?P<object>[^/]+)$"),
        {
            "archived": _is_bool,
            "dataSensitivity": lambda v: v in ("highly_sensitive", "non_sensitive", "sensitive"),
            "locale": _is_any,
            "properties": _is_any,
        },
        "_read_properties",
    ),
    _Route("POST", re.compile(r"^/crm/v3/properties/(?P<object>[^/]+)$"), {}, "_create_property"),
    _Route("POST", re.compile(r"^/crm/v3/lists$"), {}, "_create_list"),
    _Route(
        "GET",
        re.compile(r"^/crm/v3/lists/object-type-id/(?P<object>[^/]+)/name/(?P<name>[^/]+)$"),
        {"includeFilters": _is_bool},
        "_list_by_name",
    ),
    _Route(
        "GET",
        re.compile(r"^/crm/v3/lists/(?P<list>[^/]+)/memberships$"),
        {"after": _is_any, "before": _is_any, "limit": _is_int},
        "_memberships",
    ),
    _Route(
        "PUT",
        re.compile(r"^/crm/v3/lists/(?P<list>[^/]+)/memberships/(?P<action>add|remove)$"),
        {},
        "_update_memberships",
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V4}/definitions$"),
        {**_BUSINESS_UNIT, "includeTranslations": _is_bool},
        "_read_definitions",
    ),
    _Route(
        "POST",
        re.compile(rf"^{_V4}/statuses/batch/read$"),
        {"channel": _is_email_channel, **_BUSINESS_UNIT},
        "_read_statuses",
    ),
    _Route("POST", re.compile(rf"^{_V4}/statuses/batch/write$"), {}, "_write_statuses"),
    _Route(
        "POST",
        re.compile(rf"^{_V4}/statuses/batch/unsubscribe-all$"),
        {"channel": _is_email_channel, **_BUSINESS_UNIT, "verbose": _is_bool},
        "_unsubscribe_all",
    ),
    _Route(
        "POST",
        re.compile(rf"^{_V4}/statuses/batch/unsubscribe-all/read$"),
        {"channel": _is_email_channel, **_BUSINESS_UNIT},
        "_read_unsubscribe_all",
    ),
)
REQUIRED_QUERY: dict[str, tuple[str, ...]] = {
    "_read_statuses": ("channel",),
    "_unsubscribe_all": ("channel",),
    "_read_unsubscribe_all": ("channel",),
}
RATE_LIMIT_HEADERS = (
    "X-HubSpot-RateLimit-Max",
    "X-HubSpot-RateLimit-Remaining",
    "X-HubSpot-RateLimit-Interval-Milliseconds",
    "X-HubSpot-RateLimit-Daily",
    "X-HubSpot-RateLimit-Daily-Remaining",
)


class HubSpotMarketingStandIn(StandInServer):
    """HubSpot contacts, properties, lists and subscription preferences served on loopback.

    ``lists`` pre-creates ``MANUAL`` lists by id (numeric strings, as HubSpot's are);
    ``subscription_ids`` names the email subscription types of the portal. ``shuffle_seed``
    fixes the order in which batch results are returned (always not the input order when a
    batch has more than one input). ``exchanges`` records every request and answer (turn it off
    with ``record_exchanges=False`` for long runs). ``response_delay`` (seconds) keeps every
    admitted request in flight that long, as the real API's latency does.
    """

    name = "hubspot-marketing"

    def __init__(
        self,
        *,
        token: str = "demo-hubspot-token",
        lists: Iterable[str] = (),
        subscription_ids: Iterable[int] = (DEFAULT_SUBSCRIPTION_ID,),
        burst: int = DEFAULT_BURST,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
        shuffle_seed: int = 7,
        response_delay: float = 0.0,
        record_exchanges: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        if burst < 1 or window_seconds <= 0 or daily_limit < 1:
            raise ValueError("burst and daily_limit must be >= 1 and window_seconds > 0")
        self.token = token
        self.burst = burst
        self.window_seconds = window_seconds
        self.daily_limit = daily_limit
        self.response_delay = response_delay
        self.record_exchanges = record_exchanges
        self.exchanges: list[Exchange] = []
        self.rate_limited = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.RLock()
        self._random = random.Random(shuffle_seed)
        self._window: deque[float] = deque()
        self._daily_used = 0
        self._faults: deque[_Fault] = deque()
        self._refusals: dict[str, int] = {}
        self._properties = _default_properties()
        self._contacts: dict[str, _Contact] = {}
        self._by_email: dict[str, str] = {}
        self._next_contact_id = 1001
        self._next_list_id = 1
        self._lists: dict[str, _List] = {}
        self._blocklist: set[str] = set()
        self._definitions = {int(s): iso_now() for s in subscription_ids}
        self._statuses: dict[str, dict[int, _Status]] = {}
        self._opted_out_of_all: dict[str, str] = {}
        for list_id in lists:
            self.add_list(list_id)

    # -- test helpers -------------------------------------------------------------------------
    def add_list(
        self, list_id: str, *, name: str | None = None, processing: str = "MANUAL"
    ) -> None:
        """Create a list with a given id (no-op if it exists)."""
        if not _LIST_ID.match(list_id):
            raise ValueError(f"HubSpot list ids are positive integers as strings, got {list_id!r}")
        with self._lock:
            if list_id not in self._lists:
                self._lists[list_id] = _List(list_id, name or f"list {list_id}", processing)
                self._next_list_id = max(self._next_list_id, int(list_id) + 1)

    @property
    def list_ids(self) -> list[str]:
        """Ids of all lists, in creation order."""
        with self._lock:
            return list(self._lists)

    def add_property(
        self, name: str, type_: str, field_type: str, *, read_only: bool = False
    ) -> None:
        """Create a contact property directly (as someone in the HubSpot UI would)."""
        with self._lock:
            self._properties[name] = _Property(
                name, name, type_, field_type, DEFAULT_PROPERTY_GROUP, read_only=read_only
            )

    def contact(self, email: str) -> dict[str, str] | None:
        """The stored properties of the contact with ``email``, or ``None``."""
        with self._lock:
            contact_id = self._by_email.get(email.strip().lower())
            return dict(self._contacts[contact_id].properties) if contact_id else None

    def list_members(self, list_id: str) -> set[str]:
        """Emails of the contacts in list ``list_id``."""
        with self._lock:
            members = self._list(list_id).members
            return {self._contacts[i].properties["email"] for i in members if i in self._contacts}

    def subscription_status(self, email: str, subscription_id: int) -> str:
        with self._lock:
            status = self._statuses.get(email.strip().lower(), {}).get(subscription_id)
            return status.state if status else "NOT_SPECIFIED"

    def is_blocklisted(self, email: str) -> bool:
        with self._lock:
            return email.strip().lower() in self._blocklist

    def person_unsubscribes(self, email: str, subscription_id: int | None = None) -> None:
        """Simulate the person clicking "unsubscribe" in a HubSpot email (``None``: from all)."""
        with self._lock:
            key = email.strip().lower()
            if subscription_id is None:
                self._opt_out_of_all(key, source="Unsubscribe link")
            else:
                self._set_status(key, subscription_id, "UNSUBSCRIBED", "Unsubscribe link", None)

    def fail_next(self, count: int, *, status: int, body: bytes | None = None) -> None:
        """Make the next ``count`` requests fail with ``status`` (HubSpot error unless ``body``;
        a 429 is the documented rate-limit answer, as the rolling window gives it)."""
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        with self._lock:
            self._faults.extend(_Fault(status, body) for _ in range(count))

    def refuse_upsert(self, email: str, *, times: int = 1) -> None:
        """Make the next ``times`` batch-upsert inputs for ``email`` fail for that input only
        (one ``errors[]`` entry of a 207; the rest of the batch is applied)."""
        if times < 1:
            raise ValueError(f"refuse_upsert(times=...) must be >= 1, got {times}")
        with self._lock:
            key = email.strip().lower()
            self._refusals[key] = self._refusals.get(key, 0) + times

    def requests_to(self, method: str, path_suffix: str) -> list[Exchange]:
        """Recorded exchanges whose method matches and whose path ends with ``path_suffix``."""
        with self._lock:
            return [
                e for e in self.exchanges if e.method == method and e.path.endswith(path_suffix)
            ]

    # -- HTTP -----------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        response = super().dispatch(request)
        if not self.record_exchanges:
            return response
        with self._lock:
            self.exchanges.append(
                Exchange(
                    request.method,
                    request.path,
                    request.query,
                    request.headers,
                    request.body,
                    response.status,
                    dict(response.headers),
                    response.body,
                    response.content_type,
                )
            )
        return response

    def handle(self, request: Request) -> Response:
        """Faults, rate limit, auth, then routing; every answer carries the rate headers.

        ``max_in_flight`` records the most requests handled at once (HubSpot caps none).
        """
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return self._handle_counted(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handle_counted(self, request: Request) -> Response:
        fault = self._take_fault()
        if fault is not None:
            return fault
        limited = self._admit()
        if limited is not None:
            return limited
        if self.response_delay > 0:
            time.sleep(self.response_delay)
        rejection = self._authenticate(request)
        response = rejection if rejection is not None else self._route(request)
        response.headers.update(self._rate_headers())
        return response

    def _route(self, request: Request) -> Response:
        try:
            route, match = self._find_route(request)
            self._check_query(request, route)
            handler: Callable[[Request, re.Match[str]], Response] = getattr(self, route.handler)
            return handler(request, match)
        except HubSpotApiError as exc:
            return hubspot_error(exc.status, exc.category, exc.message, exc.context)

    @staticmethod
    def _find_route(request: Request) -> tuple[_Route, re.Match[str]]:
        allowed: list[str] = []
        for route in ROUTES:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.method == request.method:
                return route, match
            allowed.append(route.method)
        if allowed:
            raise HubSpotApiError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "VALIDATION_ERROR",
                f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}",
            )
        raise _not_found(f"No HubSpot destination stand-in route for {request.path!r}")

    @staticmethod
    def _check_query(request: Request, route: _Route) -> None:
        for name, values in request.query.items():
            check = route.query.get(name)
            if check is None:
                raise _validation(
                    f"Unknown query parameter {name!r} for {route.method} {request.path}; "
                    f"allowed: {sorted(route.query)}",
                    parameter=[name],
                )
            if len(values) != 1 or not check(values[0]):
                raise _validation(f"Invalid value for query parameter {name!r}: {values}")
        for name in REQUIRED_QUERY.get(route.handler, ()):
            if name not in request.query:
                raise _validation(f"Missing required query parameter {name!r}")

    def _take_fault(self) -> Response | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults.popleft()
        if fault.body is not None:
            return Response(fault.status, fault.body, "application/json", {})
        if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
            return self._rate_limited("TEN_SECONDLY_ROLLING")
        category = "INTERNAL_ERROR" if fault.status >= 500 else "VALIDATION_ERROR"
        return hubspot_error(fault.status, category, f"Injected failure: HTTP {fault.status}")

    def _admit(self) -> Response | None:
        """The rolling window and the daily quota; a rejected request uses up neither."""
        with self._lock:
            now = time.monotonic()
            while self._window and now - self._window[0] >= self.window_seconds:
                self._window.popleft()
            policy = None
            if self._daily_used >= self.daily_limit:
                policy = "DAILY"
            elif len(self._window) >= self.burst:
                policy = "TEN_SECONDLY_ROLLING"
            if policy is None:
                self._window.append(now)
                self._daily_used += 1
                return None
        return self._rate_limited(policy)

    def _rate_limited(self, policy: str) -> Response:
        """HubSpot's documented 429: ``errorType: RATE_LIMIT``, the policy, no ``Retry-After``."""
        with self._lock:
            self.rate_limited += 1
            headers = self._rate_headers()
        limit = "daily" if policy == "DAILY" else policy.lower()
        body = {
            "status": "error",
            "message": f"You have reached your {limit} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": policy,
        }
        return json_response(HTTPStatus.TOO_MANY_REQUESTS, body, headers=headers)

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            return {
                "X-HubSpot-RateLimit-Max": str(self.burst),
                "X-HubSpot-RateLimit-Remaining": str(max(0, self.burst - len(self._window))),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window_seconds * 1000)),
                "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
                "X-HubSpot-RateLimit-Daily-Remaining": str(
                    max(0, self.daily_limit - self._daily_used)
                ),
            }

    def _authenticate(self, request: Request) -> Response | None:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. Send 'Authorization: Bearer <private app "
                "access token>'.",
            )
        if not secrets.compare_digest(token.strip(), self.token):
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "The private app access token used to make this call is not valid.",
            )
        return None

    @staticmethod
    def _json(request: Request, schema: Mapping[str, Any]) -> Any:
        try:
            body = json.loads(request.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _validation(f"Invalid input JSON on line 1: {exc}") from exc
        problem = schema_problem(body, schema)
        if problem is not None:
            raise _validation(f"Invalid input JSON: {problem}")
        return body

    @staticmethod
    def _check_batch_size(inputs: list[Any]) -> None:
        if len(inputs) > BATCH_MAX_INPUTS:
            raise _validation(
                f"Batch input limit exceeded: got {len(inputs)} inputs, the maximum is "
                f"{BATCH_MAX_INPUTS}."
            )

    def _shuffled(self, items: list[Any]) -> list[Any]:
        """Batch results in an order other than the inputs' (HubSpot promises no order)."""
        shuffled = list(items)
        if len(shuffled) > 1:
            self._random.shuffle(shuffled)
            if shuffled == items:
                shuffled.reverse()
        return shuffled

    @staticmethod
    def _batch_body(results: list[Any], errors: list[dict[str, Any]], started: str) -> Response:
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "requestedAt": started,
            "startedAt": started,
            "completedAt": iso_now(),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
            return json_response(HTTPStatus.MULTI_STATUS, body)
        return json_response(HTTPStatus.OK, body)

    # -- contacts -------------------------------------------------------------------------------
    def _upsert(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        inputs = self._json(request, UPSERT_BODY)["inputs"]
        self._check_batch_size(inputs)
        keys = [str(i["id"]).strip().lower() for i in inputs]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise _validation(
                f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique",
                ids=duplicates,
            )
        traced = all("objectWriteTraceId" in i for i in inputs)
        with self._lock:
            problems = [self._upsert_problem(i) for i in inputs]
            errors = [
                _standard_error("VALIDATION_ERROR", p[1], _input_context(i), p[0])
                for i, p in zip(inputs, problems, strict=True)
                if p is not None
            ]
            if errors and not traced:
                first = errors[0]
                raise _validation(first["message"], **first["context"])
            results = [
                self._apply_upsert(i) for i, p in zip(inputs, problems, strict=True) if p is None
            ]
        return self._batch_body(self._shuffled(results), errors, started)

    def _upsert_problem(self, item: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(code, message)`` when one upsert input cannot be applied, else ``None``."""
        if item.get("idProperty") != "email":
            return (
                "INVALID_ID_PROPERTY",
                f"idProperty must be a unique property such as 'email'; got "
                f"{item.get('idProperty')!r}",
            )
        email = str(item["id"]).strip().lower()
        if not is_valid_email(email):
            return "INVALID_EMAIL", f"Email address {item['id']} is invalid"
        if self._refusals.get(email, 0) > 0:
            self._refusals[email] -= 1
            return "CONTACT_LOCKED", f"Contact {item['id']} is being updated by another process"
        if email in self._blocklist:
            return (
                "BLOCKLISTED_EMAIL",
                f"Cannot write contact {item['id']}: the address was permanently deleted (GDPR) "
                "and is blocklisted",
            )
        for name, value in item["properties"].items():
            problem = self._value_problem(name, value, email)
            if problem is not None:
                return problem
        return None

    def _value_problem(self, name: str, value: str, email: str) -> tuple[str, str] | None:
        prop = self._properties.get(name)
        if prop is None:
            return "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'
        if prop.read_only:
            return "READ_ONLY_VALUE", f'Property "{name}" is read-only'
        if name == "email":
            if value.strip().lower() != email:
                return "INVALID_EMAIL", f"properties.email {value!r} does not match id {email!r}"
            return None
        if value == "":
            return None
        return _type_problem(prop, value)

    def _apply_upsert(self, item: Mapping[str, Any]) -> dict[str, Any]:
        email = str(item["id"]).strip().lower()
        now = iso_now()
        contact_id = self._by_email.get(email)
        new = contact_id is None
        if contact_id is None:
            contact_id = str(self._next_contact_id)
            self._next_contact_id += 1
            self._contacts[contact_id] = _Contact(
                contact_id,
                {"email": email, "hs_object_id": contact_id, "createdate": now},
                now,
                now,
            )
            self._by_email[email] = contact_id
        contact = self._contacts[contact_id]
        for name, value in item["properties"].items():
            if value == "":
                contact.properties.pop(name, None)
            else:
                contact.properties[name] = value
        contact.properties["lastmodifieddate"] = now
        contact.updated_at = now
        written = {"email", "hs_object_id", "createdate", "lastmodifieddate", *item["properties"]}
        wire = {**contact.to_wire(written), "new": new}
        if "objectWriteTraceId" in item:
            wire["objectWriteTraceId"] = item["objectWriteTraceId"]
        return wire

    def _batch_read(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        body = self._json(request, BATCH_READ_BODY)
        self._check_batch_size(body["inputs"])
        if body["propertiesWithHistory"] and len(body["inputs"]) > 50:
            raise _validation("Batch read with propertiesWithHistory is limited to 50 inputs.")
        id_property = body.get("idProperty")
        if id_property not in (None, "email", "hs_object_id"):
            raise _validation(f"idProperty {id_property!r} is not a unique contact property")
        names = ["email", "hs_object_id", "createdate", "lastmodifieddate", *body["properties"]]
        with self._lock:
            found, missing = [], []
            for item in body["inputs"]:
                contact = self._contact_by(item["id"], id_property)
                if contact is None:
                    missing.append(item["id"])
                else:
                    found.append(contact.to_wire(names))
        errors = []
        if missing:
            message = (
                "Could not get some CONTACT objects, they may be deleted or not exist. Check "
                "that ids are valid."
            )
            errors.append(
                _standard_error("OBJECT_NOT_FOUND", message, {"ids": missing}, "OBJECT_NOT_FOUND")
            )
        return self._batch_body(self._shuffled(found), errors, started)

    def _contact_by(self, key: str, id_property: str | None) -> _Contact | None:
        if id_property == "email":
            contact_id = self._by_email.get(key.strip().lower())
            return self._contacts.get(contact_id) if contact_id else None
        return self._contacts.get(key)

    def _gdpr_delete(self, request: Request, match: re.Match[str]) -> Response:
        body = self._json(request, GDPR_DELETE_BODY)
        id_property = body.get("idProperty")
        if id_property not in (None, "email"):
            raise _validation(f"idProperty must be 'email' when given, got {id_property!r}")
        with self._lock:
            contact = self._contact_by(body["objectId"], id_property)
            if contact is None and id_property != "email":
                raise _not_found(f"No contact with id {body['objectId']!r}")
            email = contact.properties["email"] if contact else body["objectId"].strip().lower()
            if contact is not None:
                del self._contacts[contact.id]
                del self._by_email[email]
                for hub_list in self._lists.values():
                    hub_list.members.pop(contact.id, None)
            self._statuses.pop(email, None)
            self._opted_out_of_all.pop(email, None)
            self._blocklist.add(email)
        return empty_response()

    # -- properties -----------------------------------------------------------------------------
    @staticmethod
    def _check_object_type(match: re.Match[str]) -> None:
        if match["object"] not in ("contacts", CONTACTS_OBJECT_TYPE_ID):
            raise _not_found(
                f"Unable to infer object type from: {match['object']} (this stand-in serves "
                "contacts only)"
            )

    def _read_properties(self, request: Request, match: re.Match[str]) -> Response:
        self._check_object_type(match)
        with self._lock:
            results = [p.to_wire() for p in self._properties.values()]
        return json_response(HTTPStatus.OK, {"results": results})

    def _create_property(self, request: Request, match: re.Match[str]) -> Response:
        self._check_object_type(match)
        body = self._json(request, PROPERTY_CREATE_BODY)
        name = body["name"]
        if not _PROPERTY_NAME.match(name):
            raise _validation(
                f"Property name {name!r} is invalid: use lower-case letters, digits and "
                "underscores, starting with a letter"
            )
        if body["groupName"] != DEFAULT_PROPERTY_GROUP:
            raise _validation(f"Property group {body['groupName']!r} does not exist")
        options = body.get("options", [])
        if body["type"] in ("bool", "enumeration") and not options:
            raise _validation(f"Property {name!r} of type {body['type']} needs options")
        with self._lock:
            if name in self._properties:
                raise HubSpotApiError(
                    HTTPStatus.CONFLICT,
                    "OBJECT_ALREADY_EXISTS",
                    f"Property named '{name}' already exists.",
                )
            prop = _Property(
                name, body["label"], body["type"], body["fieldType"], body["groupName"], options
            )
            self._properties[name] = prop
        return json_response(HTTPStatus.CREATED, prop.to_wire())

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

    # -- communication preferences v4 -----------------------------------------------------------
    def _read_definitions(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        with self._lock:
            results = [
                {
                    "id": str(sid),
                    "name": f"Marketing email {sid}",
                    "description": "Marketing email",
                    "purpose": "Marketing",
                    "communicationMethod": "Email",
                    "isActive": True,
                    "isDefault": index == 0,
                    "isInternal": False,
                    "createdAt": created,
                    "updatedAt": created,
                }
                for index, (sid, created) in enumerate(self._definitions.items())
            ]
        body = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso_now(),
        }
        return json_response(HTTPStatus.OK, body)

    def _set_status(
        self, email: str, subscription_id: int, state: str, source: str, legal_basis: str | None
    ) -> str:
        """Record a status; returns HubSpot's ``setStatusSuccessReason``."""
        statuses = self._statuses.setdefault(email, {})
        previous = statuses.get(subscription_id)
        if previous is not None and previous.state == state:
            return "NO_STATUS_CHANGE"
        statuses[subscription_id] = _Status(state, iso_now(), source, legal_basis)
        if state == "SUBSCRIBED" and previous is not None and previous.state == "UNSUBSCRIBED":
            return "RESUBSCRIBE_OCCURRED"
        return "REQUESTED_CHANGE_OCCURRED"

    def _opt_out_of_all(self, email: str, *, source: str) -> None:
        self._opted_out_of_all.setdefault(email, iso_now())
        for subscription_id in self._definitions:
            self._set_status(email, subscription_id, "UNSUBSCRIBED", source, None)

    def _status_wire(
        self, email: str, subscription_id: int, status: _Status, reason: str | None = None
    ) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "subscriberIdString": email,
            "subscriptionId": subscription_id,
            "subscriptionName": f"Marketing email {subscription_id}",
            "channel": "EMAIL",
            "status": status.state,
            "source": status.source,
            "timestamp": status.timestamp,
        }
        if status.legal_basis is not None:
            wire["legalBasis"] = status.legal_basis
        if reason is not None:
            wire["setStatusSuccessReason"] = reason
        return wire

    def _read_emails(self, request: Request) -> tuple[list[str], list[dict[str, Any]]]:
        """Valid, normalised emails of a ``BatchInputString`` body and errors for the rest."""
        inputs = self._json(request, BATCH_STRINGS_BODY)["inputs"]
        self._check_batch_size(inputs)
        emails: list[str] = []
        invalid: list[str] = []
        for raw in inputs:
            email = raw.strip().lower()
            (emails if is_valid_email(email) else invalid).append(raw)
        errors = []
        if invalid:
            errors.append(
                _standard_error(
                    "VALIDATION_ERROR",
                    "Some subscriber ids are not valid email addresses.",
                    {"subscriberIdString": invalid},
                    "INVALID_EMAIL",
                )
            )
        return list(dict.fromkeys(e.strip().lower() for e in emails)), errors

    def _read_statuses(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        emails, errors = self._read_emails(request)
        with self._lock:
            results = [
                {
                    "subscriberIdString": email,
                    "statuses": [
                        self._status_wire(email, sid, status)
                        for sid, status in self._statuses.get(email, {}).items()
                    ],
                }
                for email in emails
            ]
        return self._batch_body(self._shuffled(results), errors, started)

    def _write_statuses(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        inputs = self._json(request, STATUS_WRITE_BODY)["inputs"]
        self._check_batch_size(inputs)
        results, errors = [], []
        with self._lock:
            for item in inputs:
                email = item["subscriberIdString"].strip().lower()
                sid = item["subscriptionId"]
                problem = None
                if not is_valid_email(email):
                    problem = ("INVALID_EMAIL", f"{item['subscriberIdString']} is not an email")
                elif sid not in self._definitions:
                    problem = ("SUBSCRIPTION_NOT_FOUND", f"Subscription {sid} does not exist")
                elif email in self._blocklist:
                    problem = ("BLOCKLISTED_EMAIL", f"{email} was permanently deleted (GDPR)")
                if problem is not None:
                    context = {"subscriberIdString": [item["subscriberIdString"]]}
                    errors.append(
                        _standard_error("VALIDATION_ERROR", problem[1], context, problem[0])
                    )
                    continue
                reason = self._set_status(
                    email, sid, item["statusState"], "API", item.get("legalBasis")
                )
                status = self._statuses[email][sid]
                results.append(self._status_wire(email, sid, status, reason))
        # The spec declares only 200 for batch/write: per-input errors ride in a 200.
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": self._shuffled(results),
            "requestedAt": started,
            "startedAt": started,
            "completedAt": iso_now(),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        return json_response(HTTPStatus.OK, body)

    def _unsubscribe_all(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        emails, errors = self._read_emails(request)
        verbose = request.query_value("verbose") == "true"
        with self._lock:
            results = []
            for email in emails:
                self._opt_out_of_all(email, source="API")
                result: dict[str, Any] = {"subscriberIdString": email}
                if verbose:
                    result["statuses"] = [
                        self._status_wire(email, sid, status, "UNSUBSCRIBE_FROM_ALL_OCCURRED")
                        for sid, status in self._statuses[email].items()
                    ]
                results.append(result)
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": self._shuffled(results),
            "startedAt": started,
            "completedAt": iso_now(),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        return json_response(HTTPStatus.OK, body)

    def _read_unsubscribe_all(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        emails, errors = self._read_emails(request)
        with self._lock:
            results = [
                {
                    "subscriberIdString": email,
                    "wideStatuses": [
                        {
                            "subscriberIdString": email,
                            "channel": "EMAIL",
                            "status": "UNSUBSCRIBED",
                            "timestamp": self._opted_out_of_all[email],
                            "wideStatusType": "PORTAL_WIDE",
                        }
                    ]
                    if email in self._opted_out_of_all
                    else [],
                }
                for email in emails
            ]
        return self._batch_body(self._shuffled(results), errors, started)


def _input_context(item: Mapping[str, Any]) -> dict[str, list[str]]:
    context = {"id": [str(item.get("id"))]}
    if "objectWriteTraceId" in item:
        context["objectWriteTraceId"] = [str(item["objectWriteTraceId"])]
    return context


def _type_problem(prop: _Property, value: str) -> tuple[str, str] | None:
    """Whether ``value`` fits ``prop``'s type, as HubSpot checks it on write."""
    if prop.type == "number":
        try:
            float(value)
        except ValueError:
            return "INVALID_NUMBER", f'{value!r} is not a valid number for "{prop.name}"'
    elif prop.type == "date":
        return _date_problem(prop.name, value)
    elif prop.type == "datetime":
        if not value.isdigit():
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return "INVALID_DATETIME", f'{value!r} is not a valid datetime for "{prop.name}"'
    elif prop.type in ("bool", "enumeration"):
        allowed = [o["value"] for o in prop.options]
        if value not in allowed:
            return (
                "INVALID_OPTION",
                f'{value!r} was not one of the allowed options for "{prop.name}": {allowed}',
            )
    return None


def _date_problem(name: str, value: str) -> tuple[str, str] | None:
    """Date properties take ``YYYY-MM-DD`` or epoch milliseconds at midnight UTC."""
    if _DATE.match(value):
        try:
            datetime.strptime(value, "%Y-%m-%d")
        except ValueError:
            return "INVALID_DATE", f'{value!r} is not a valid date for "{name}"'
        return None
    if value.isdigit():
        if int(value) % 86_400_000 != 0:
            return (
                "INVALID_DATE",
                f'{value} is not at midnight UTC; "{name}" is a date property',
            )
        return None
    return "INVALID_DATE", f'{value!r} is not a valid date (YYYY-MM-DD) for "{name}"'


def _decode_after(after: str) -> int:
    if not after.isdigit():
        raise _validation(f"after {after!r} is not a valid cursor")
    return int(after)

"""The CRM stand-in's paths and documented limits, HubSpot's error shapes, contact ids,
timestamps and the paging cursor.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote

from infra.sandbox._http import Response, json_response
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

"""HubSpot's documented limits and vocabularies, timestamps, and its error shapes
(``{status, message, correlationId, category}`` and the per-input ``StandardError``).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Response, json_response

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

"""Klaviyo's documented limits and vocabularies, timestamps, and its JSON:API error shape."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Response, json_response

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

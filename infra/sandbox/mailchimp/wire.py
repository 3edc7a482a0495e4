"""Mailchimp's paths, documented limits and vocabularies, subscriber hashes, and its
problem-JSON errors (request-level and per-member).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Response, json_response

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

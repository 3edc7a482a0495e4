"""Request validation against the Mailchimp spec: member bodies, the query parameters
each route accepts, ``fields``/``exclude_fields`` views, sorting, time filters and paging.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request
from infra.sandbox.mailchimp.records import _Member, _MemberInput
from infra.sandbox.mailchimp.state import MailchimpState
from infra.sandbox.mailchimp.wire import (
    _OFFSET_WITHOUT_PLUS,
    _PAGE,
    _VIEW,
    MEMBERS_QUERY,
    MEMBERS_QUERY_NOT_IMPLEMENTED,
    SORT_FIELDS,
    STATUSES,
    MailchimpError,
    _invalid,
)
from infra.sandbox.mailchimp_merge import MergeField, select_fields


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


class MailchimpParsing(MailchimpState):
    """Method and body checks shared by the Mailchimp routes."""

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

"""Reading Mailchimp's answers: per-member results of a batch, errors, tags, response bodies.

Pure functions over responses; nothing here sends a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tasks.connectors.destinations.protocol import Member, RecordResult
from tasks.connectors.redact import redact
from tasks.errors import PublishError

_PERMANENT_MEMBER_ERRORS = (
    "fake or invalid",
    "compliance state",
    "permanently deleted",
    "merge fields were invalid",
    "appears more than once",
)
"""Per-member error texts a resend cannot fix (the data or the person's state must change)."""


def _member_results(
    batch: Sequence[Member],
    answer: Mapping[str, Any],
    refused: Mapping[str, RecordResult],
    *,
    unreported_ok: bool = False,
) -> list[RecordResult]:
    errors = _errors_by_email(answer)
    reported = set(_tags_by_email(answer))
    results: list[RecordResult] = []
    for member in batch:
        key = member.email.strip().lower()
        if member.contact_key in refused:
            results.append(refused[member.contact_key])
        elif key in errors:
            text = errors[key]
            permanent = any(marker in text.lower() for marker in _PERMANENT_MEMBER_ERRORS)
            results.append(
                RecordResult(member.contact_key, ok=False, error=text, retryable=not permanent)
            )
        elif key in reported or unreported_ok:
            results.append(RecordResult(member.contact_key, ok=True))
        else:
            results.append(
                RecordResult(member.contact_key, ok=False, error="missing from the batch answer")
            )
    return results


def _errors_by_email(answer: Mapping[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for entry in answer.get("errors") or []:
        if not isinstance(entry, dict):
            continue
        text = str(entry.get("error") or entry.get("error_code") or "error")
        if entry.get("field"):
            text = f"{text} (field {entry['field']}: {entry.get('field_message') or 'invalid'})"
        errors[str(entry.get("email_address", "")).strip().lower()] = text
    return errors


def _tags_by_email(answer: Mapping[str, Any]) -> dict[str, set[str]]:
    """Members the batch answer reports as created or updated, with the tags they now have."""
    tags: dict[str, set[str]] = {}
    for entry in [*(answer.get("new_members") or []), *(answer.get("updated_members") or [])]:
        if isinstance(entry, dict):
            names = {str(t.get("name")) for t in entry.get("tags") or [] if isinstance(t, dict)}
            tags[str(entry.get("email_address", "")).strip().lower()] = names
    return tags


def _all_failed(
    batch: Sequence[Member], reason: str, refused: Mapping[str, RecordResult]
) -> list[RecordResult]:
    return [
        refused.get(m.contact_key) or RecordResult(m.contact_key, ok=False, error=reason)
        for m in batch
    ]


def _json_object(response: httpx.Response, audience: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise PublishError(
            redact(f"mailchimp list {audience!r}: unreadable response {_short(response)}")
        ) from exc
    if not isinstance(body, dict):
        raise PublishError(f"mailchimp list {audience!r}: response is not an object")
    return body


def _short(response: httpx.Response) -> str:
    return redact(f"HTTP {response.status_code}: {response.text[:200]}")

"""Reading Klaviyo's answers: import job outcomes, suppressions of a profile, error texts.

Pure functions over response bodies; nothing here sends a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from tasks.connectors.destinations.protocol import (
    Member,
    RecordResult,
    Suppression,
    SuppressionStatus,
)
from tasks.connectors.destinations.wire import parse_timestamp
from tasks.connectors.redact import redact

REASONS: dict[str, SuppressionStatus] = {
    "UNSUBSCRIBE": "unsubscribed",
    "USER_SUPPRESSED": "unsubscribed",
    "HARD_BOUNCE": "bounced",
    "INVALID_EMAIL": "cleaned",
    "SPAM_COMPLAINT": "spam_complaint",
}
_POINTER_INDEX = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")


@dataclass(frozen=True)
class _JobOutcome:
    job_id: str
    status: str
    failed_count: int


def _failed(member: Member, error: str, *, retryable: bool = False) -> RecordResult:
    return RecordResult(member.contact_key, ok=False, error=redact(error), retryable=retryable)


def _suppressions(item: Mapping[str, Any], audience: str, floor: datetime) -> list[Suppression]:
    """The suppressions of one profile at or after ``floor``: global ones and this list's."""
    attributes = item.get("attributes") or {}
    email = attributes.get("email")
    if not isinstance(email, str) or not email:
        return []
    marketing = ((attributes.get("subscriptions") or {}).get("email") or {}).get("marketing") or {}
    found: list[Suppression] = []
    entries = [(e, None) for e in marketing.get("suppression") or []] + [
        (e, e.get("list_id")) for e in marketing.get("list_suppressions") or []
    ]
    for entry, list_id in entries:
        if list_id is not None and list_id != audience:
            continue
        occurred = parse_timestamp(entry.get("timestamp"))
        if occurred is None or occurred < floor:
            continue
        found.append(
            Suppression(
                email=email,
                status=REASONS.get(str(entry.get("reason")), "unsubscribed"),
                occurred_at=occurred,
                platform_record_id=str(item.get("id")) if item.get("id") else None,
            )
        )
    return found


def _error_text(response: httpx.Response) -> str:
    """``code: detail`` of each JSON:API error, else the start of the body."""
    try:
        errors = response.json().get("errors")
        return "; ".join(f"{e.get('code')}: {e.get('detail')}" for e in errors)[:500]
    except (ValueError, AttributeError, TypeError):
        return response.text[:300]

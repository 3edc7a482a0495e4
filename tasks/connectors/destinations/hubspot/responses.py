"""Reading HubSpot's answers: batch results by input, per-input errors, statuses, properties.

Pure functions over response bodies; nothing here sends a request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tasks.connectors.destinations.protocol import (
    FieldSpec,
    FieldType,
    Member,
    RecordResult,
    Suppression,
)
from tasks.connectors.destinations.wire import parse_timestamp

# HubSpot property types a mapped field of each FieldType may write to.
COMPATIBLE_TYPES: dict[FieldType, frozenset[str]] = {
    "text": frozenset({"string", "phone_number"}),
    "number": frozenset({"number"}),
    "date": frozenset({"date", "datetime"}),
    "boolean": frozenset({"bool"}),
}


@dataclass(frozen=True)
class _Outcome:
    """What one batch call said about each input, by input position."""

    record_ids: dict[int, str]
    errors: dict[int, tuple[str, bool]]
    """position -> (message, retryable)"""


def _error_message(response: httpx.Response) -> str:
    """HubSpot's own words for an error (``category: message``), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        label = body.get("category") or body.get("errorType") or "error"
        return f"{label}: {body['message'][:300]}"
    return response.text[:200]


def _read_upsert(body: Mapping[str, Any], batch: Sequence[Member]) -> _Outcome:
    """Record ids and per-input errors of a batch upsert, by input position."""
    by_email = {m.email.strip().lower(): p for p, m in enumerate(batch)}

    def position(trace: Any, email: Any) -> int | None:
        if isinstance(trace, str) and trace.isdigit() and int(trace) < len(batch):
            return int(trace)
        return by_email.get(str(email).strip().lower()) if email is not None else None

    record_ids: dict[int, str] = {}
    for result in body.get("results", []):
        where = position(
            result.get("objectWriteTraceId"), (result.get("properties") or {}).get("email")
        )
        if where is not None and result.get("id") is not None:
            record_ids[where] = str(result["id"])
    errors: dict[int, tuple[str, bool]] = {}
    for error in body.get("errors", []):
        context = error.get("context") or {}
        traces = context.get("objectWriteTraceId") or []
        ids = context.get("id") or []
        places = [position(t, None) for t in traces] or [position(None, i) for i in ids]
        message = f"{error.get('category', 'ERROR')}: {error.get('message', '')}"[:300]
        retryable = error.get("category") not in ("VALIDATION_ERROR", "INVALID_EMAIL")
        for where in places:
            if where is not None:
                errors[where] = (message, retryable)
    return _Outcome(record_ids, errors)


def _result(member: Member, position: int, outcome: _Outcome, missing: set[str]) -> RecordResult:
    if position in outcome.errors:
        message, retryable = outcome.errors[position]
        return RecordResult(member.contact_key, ok=False, error=message, retryable=retryable)
    record_id = outcome.record_ids.get(position)
    if record_id is None:
        return RecordResult(member.contact_key, ok=False, error="no result in HubSpot's answer")
    if record_id in missing:
        return RecordResult(
            member.contact_key, ok=False, error=f"record {record_id} missing when added to list"
        )
    return RecordResult(member.contact_key, ok=True)


def _failed_subscribers(body: Mapping[str, Any]) -> dict[str, str]:
    """Normalised email -> HubSpot's message, for the inputs a batch status call refused."""
    failed: dict[str, str] = {}
    for error in body.get("errors", []):
        message = f"{error.get('category', 'ERROR')}: {error.get('message', '')}"[:300]
        for email in (error.get("context") or {}).get("subscriberIdString", []):
            failed[str(email).strip().lower()] = message
    return failed


def _suppression(status: Mapping[str, Any], record: str) -> Iterator[Suppression]:
    moment = parse_timestamp(status.get("timestamp"))
    email = status.get("subscriberIdString")
    if moment is not None and isinstance(email, str):
        yield Suppression(email.strip().lower(), "unsubscribed", moment, record)


def _field_problem(spec: FieldSpec, prop: Mapping[str, Any]) -> str | None:
    """Why an existing property cannot take ``spec``'s values, or ``None``."""
    if (prop.get("modificationMetadata") or {}).get("readOnlyValue"):
        return f"{spec.name} is read-only in HubSpot"
    kind = str(prop.get("type"))
    if kind in COMPATIBLE_TYPES[spec.type]:
        return None
    if spec.type == "boolean" and kind == "enumeration":
        values = {str(o.get("value")) for o in prop.get("options", []) if isinstance(o, dict)}
        if {"true", "false"} <= values:
            return None
    return f"{spec.name} is a HubSpot {kind} property, the mapping writes {spec.type}"

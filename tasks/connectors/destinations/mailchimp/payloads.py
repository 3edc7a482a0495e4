"""What the Mailchimp adapter writes on the wire: batch subscribe members and merge values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tasks.connectors.destinations.protocol import FieldValue, Member, RecordResult


def _upsert_payloads(
    batch: Sequence[Member],
) -> tuple[dict[str, dict[str, Any]], dict[str, RecordResult]]:
    """Wire members keyed by contact; members whose values cannot be sent are refused here."""
    wire: dict[str, dict[str, Any]] = {}
    refused: dict[str, RecordResult] = {}
    for member in batch:
        try:
            merge_fields = {tag: _merge_value(tag, v) for tag, v in member.fields.items()}
        except ValueError as exc:
            refused[member.contact_key] = RecordResult(
                member.contact_key, ok=False, error=str(exc), retryable=False
            )
            continue
        payload: dict[str, Any] = {"email_address": member.email, "status": "subscribed"}
        if merge_fields:
            payload["merge_fields"] = merge_fields
        if member.tags:
            payload["tags"] = list(member.tags)
        wire[member.contact_key] = payload
    return wire, refused


def _merge_value(tag: str, value: FieldValue) -> str | int | float:
    """The spec allows strings and numbers as merge values: no booleans, no nulls."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"merge field {tag}: {value!r} is not a number Mailchimp can store")
    return value

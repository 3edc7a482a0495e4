"""What the Klaviyo adapter writes: the profile model, filter strings, timestamps, addresses.

Which fields a mapping may write to a profile, how a filter quotes a value and a moment, and
which addresses Klaviyo can be sent at all.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from tasks.connectors.destinations.protocol import FieldSpec

STANDARD_ATTRIBUTES = frozenset(
    {
        "first_name",
        "last_name",
        "organization",
        "title",
        "locale",
        "image",
        "phone_number",
        "external_id",
    }
)
LOCATION_TEXT = frozenset({"address1", "address2", "city", "country", "region", "zip", "timezone"})
LOCATION_NUMBER = frozenset({"latitude", "longitude"})
_EMAIL = re.compile(r"^[^@\s\"\\,]+@[^@\s\"\\,]+\.[^@\s\"\\,]+$")


def _filter_string(value: str) -> str:
    return '"' + value + '"'


def _timestamp(value: datetime) -> str:
    """Klaviyo filter timestamps: UTC with a ``Z``, no ``+`` to be mangled in a query string."""
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_sendable_email(email: str) -> bool:
    """Whether Klaviyo can be sent ``email`` at all (and a filter can quote it)."""
    return bool(_EMAIL.match(email))


def _field_problem(spec: FieldSpec, tags_property: str) -> str | None:
    """Why ``spec`` cannot be a Klaviyo profile field, or ``None`` when it can."""
    name = spec.name
    if not name or name != name.strip():
        return f"{name!r}: a property name must be non-empty, without outer spaces"
    if name.startswith("$"):
        return f"{name!r}: names starting with '$' are Klaviyo's own properties"
    if name == "email":
        return "'email' is the member key, not a mapped field"
    if name == tags_property:
        return f"{name!r}: that property holds the member's tags"
    if name in STANDARD_ATTRIBUTES and spec.type != "text":
        return f"{name!r} is a standard Klaviyo attribute of type text, mapped as {spec.type}"
    if name.startswith("location."):
        part = name.removeprefix("location.")
        if part in LOCATION_NUMBER:
            return None if spec.type in {"text", "number"} else f"{name!r} must be text or number"
        if part not in LOCATION_TEXT:
            return f"{name!r}: Klaviyo locations have no {part!r}"
        if spec.type != "text":
            return f"{name!r} is a text attribute, mapped as {spec.type}"
    return None

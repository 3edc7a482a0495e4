"""What the HubSpot adapter writes on the wire: property values, batches, new property bodies."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal

from tasks.connectors.destinations.protocol import FieldType, FieldValue, Member

# FieldType -> (HubSpot property type, fieldType) used when creating a property.
PROPERTY_KINDS: dict[FieldType, tuple[str, str]] = {
    "text": ("string", "text"),
    "number": ("number", "number"),
    "date": ("date", "date"),
    "boolean": ("bool", "booleancheckbox"),
}
BOOL_OPTIONS = (
    {"label": "Yes", "value": "true", "hidden": False, "displayOrder": 0},
    {"label": "No", "value": "false", "hidden": False, "displayOrder": 1},
)


def format_value(value: FieldValue) -> str:
    """A mapped value as HubSpot takes it: every property value is a string; ``""`` clears."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        # Plain notation (HubSpot refuses "1e-07"), exactly the digits repr() would keep.
        return format(Decimal(repr(value)), "f")
    return str(value)


def _unique_email_batches(members: Sequence[Member], size: int) -> Iterator[list[Member]]:
    """Batches of at most ``size`` with no email twice (HubSpot fails a batch with duplicate
    ids); a repeated email goes to a later batch, in order."""
    pending = list(members)
    for _ in range(len(members) + 1):
        if not pending:
            return
        batch: list[Member] = []
        seen: set[str] = set()
        later: list[Member] = []
        for member in pending:
            key = member.email.strip().lower()
            if len(batch) < size and key not in seen:
                batch.append(member)
                seen.add(key)
            else:
                later.append(member)
        yield batch
        pending = later


def _emails_of(batch: Sequence[Member]) -> set[str]:
    return {m.email.strip().lower() for m in batch}

"""What the HubSpot stand-in stores (properties, contacts, lists, subscription statuses)
and what it records for tests (injected faults, exchanges).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from infra.sandbox.hubspot_marketing.wire import CONTACTS_OBJECT_TYPE_ID, iso_now


@dataclass
class _Property:
    name: str
    label: str
    type: str
    field_type: str
    group_name: str
    options: list[dict[str, Any]] = field(default_factory=list)
    read_only: bool = False
    hubspot_defined: bool = False
    has_unique_value: bool = False
    created_at: str = field(default_factory=iso_now)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "groupName": self.group_name,
            "description": "",
            "options": [dict(o) for o in self.options],
            "hasUniqueValue": self.has_unique_value,
            "hidden": False,
            "hubspotDefined": self.hubspot_defined,
            "formField": False,
            "archived": False,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
        }


_BOOL_OPTIONS = [
    {"label": "Yes", "value": "true", "hidden": False, "displayOrder": 0},
    {"label": "No", "value": "false", "hidden": False, "displayOrder": 1},
]


def _default_properties() -> dict[str, _Property]:
    """The HubSpot-defined contact properties an adapter meets (a small, real subset)."""
    builtin = [
        _Property("email", "Email", "string", "text", "contactinformation", has_unique_value=True),
        _Property("firstname", "First Name", "string", "text", "contactinformation"),
        _Property("lastname", "Last Name", "string", "text", "contactinformation"),
        _Property("city", "City", "string", "text", "contactinformation"),
        _Property("hs_object_id", "Record ID", "number", "number", "contactinformation", [], True),
        _Property("createdate", "Create Date", "datetime", "date", "contactinformation", [], True),
        _Property(
            "lastmodifieddate", "Last Modified Date", "datetime", "date", "contactinformation"
        ),
    ]
    builtin[-1].read_only = True
    for prop in builtin:
        prop.hubspot_defined = True
    return {p.name: p for p in builtin}


@dataclass
class _Contact:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str

    def to_wire(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        shown = self.properties if names is None else {n: self.properties.get(n) for n in names}
        return {
            "id": self.id,
            # Unset properties are left out: the spec types every value as a string.
            "properties": {k: v for k, v in shown.items() if v is not None},
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
        }


@dataclass
class _List:
    list_id: str
    name: str
    processing_type: str
    created_at: str = field(default_factory=iso_now)
    members: dict[str, str] = field(default_factory=dict)
    """record id -> membership timestamp"""
    version: int = 1

    def to_wire(self) -> dict[str, Any]:
        return {
            "listId": self.list_id,
            "listVersion": self.version,
            "name": self.name,
            "objectTypeId": CONTACTS_OBJECT_TYPE_ID,
            "processingStatus": "COMPLETE",
            "processingType": self.processing_type,
            "size": len(self.members),
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
        }


@dataclass
class _Status:
    state: str
    timestamp: str
    source: str
    legal_basis: str | None = None


@dataclass(frozen=True)
class _Fault:
    status: int
    body: bytes | None


@dataclass(frozen=True)
class Exchange:
    """One request and the stand-in's answer, as sent on the wire (for contract tests)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes
    response_content_type: str | None

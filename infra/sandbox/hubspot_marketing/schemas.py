"""Request validation against the HubSpot spec: the body schemas of each operation, the
checker that names unknown fields and wrong types, and property value types.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from infra.sandbox.hubspot_marketing.records import _Property
from infra.sandbox.hubspot_marketing.wire import _DATE, LEGAL_BASES, STATUS_STATES

# -- the spec's request schemas, transcribed (types, enums, required; objects are closed) ----------
_S: dict[str, Any] = {"type": "string"}


_STRINGS: dict[str, Any] = {"type": "array", "items": _S}


_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": _S}


_LEGAL_BASIS: dict[str, Any] = {"type": "string", "enum": list(LEGAL_BASES)}


UPSERT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "properties"],
                "properties": {
                    "id": _S,
                    "idProperty": _S,
                    "objectWriteTraceId": _S,
                    "properties": _STRING_MAP,
                },
            },
        }
    },
}


BATCH_READ_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs", "properties", "propertiesWithHistory"],
    "properties": {
        "idProperty": _S,
        "inputs": {
            "type": "array",
            "items": {"type": "object", "required": ["id"], "properties": {"id": _S}},
        },
        "properties": _STRINGS,
        "propertiesWithHistory": _STRINGS,
    },
}


GDPR_DELETE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["objectId"],
    "properties": {"idProperty": _S, "objectId": _S},
}


_OPTION: dict[str, Any] = {
    "type": "object",
    "required": ["hidden", "label", "value"],
    "properties": {
        "displayOrder": {"type": "integer"},
        "hidden": {"type": "boolean"},
        "label": _S,
        "value": _S,
    },
}


PROPERTY_TYPES = ("bool", "date", "datetime", "enumeration", "number", "phone_number", "string")


PROPERTY_CREATE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["fieldType", "groupName", "label", "name", "type"],
    "properties": {
        "calculationFormula": _S,
        "currencyPropertyName": _S,
        "dataSensitivity": {
            "type": "string",
            "enum": ["highly_sensitive", "non_sensitive", "sensitive"],
        },
        "description": _S,
        "displayOrder": {"type": "integer"},
        "externalOptions": {"type": "boolean"},
        "fieldType": {
            "type": "string",
            "enum": [
                "booleancheckbox",
                "calculation_equation",
                "checkbox",
                "date",
                "file",
                "html",
                "number",
                "phonenumber",
                "radio",
                "select",
                "text",
                "textarea",
            ],
        },
        "formField": {"type": "boolean"},
        "groupName": _S,
        "hasUniqueValue": {"type": "boolean"},
        "hidden": {"type": "boolean"},
        "label": _S,
        "name": _S,
        "numberDisplayHint": {
            "type": "string",
            "enum": [
                "currency",
                "duration",
                "formatted",
                "percentage",
                "probability",
                "unformatted",
            ],
        },
        "options": {"type": "array", "items": _OPTION},
        "referencedObjectType": _S,
        "showCurrencySymbol": {"type": "boolean"},
        "textDisplayHint": {
            "type": "string",
            "enum": [
                "domain_name",
                "email",
                "ip_address",
                "multi_line",
                "phone_number",
                "physical_address",
                "postal_code",
                "unformatted_single_line",
            ],
        },
        "type": {"type": "string", "enum": list(PROPERTY_TYPES)},
    },
}


LIST_CREATE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "objectTypeId", "processingType"],
    "properties": {
        "customProperties": _STRING_MAP,
        "listFolderId": {"type": "integer"},
        "name": _S,
        "objectTypeId": _S,
        "processingType": _S,
    },
}


RECORD_IDS_BODY: dict[str, Any] = _STRINGS


BATCH_STRINGS_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {"inputs": _STRINGS},
}


STATUS_WRITE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["channel", "statusState", "subscriberIdString", "subscriptionId"],
                "properties": {
                    "channel": {"type": "string", "enum": ["EMAIL"]},
                    "legalBasis": _LEGAL_BASIS,
                    "legalBasisExplanation": _S,
                    "statusState": {"type": "string", "enum": list(STATUS_STATES)},
                    "subscriberIdString": _S,
                    "subscriptionId": {"type": "integer"},
                },
            },
        }
    },
}


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def schema_problem(value: Any, schema: Mapping[str, Any], where: str = "body") -> str | None:
    """The first way ``value`` breaks ``schema`` (the JSON-schema subset above), or ``None``.

    Objects without ``additionalProperties`` are closed, as HubSpot's JSON binding is
    (``Unrecognized field "x"``).
    """
    kind = schema.get("type")
    if kind is not None and not _JSON_TYPES[kind](value):
        return f"{where}: expected {kind}, got {json.dumps(value)[:60]}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {list(schema['enum'])}"
    if kind == "object":
        return _object_problem(value, schema, where)
    if kind == "array":
        for index, item in enumerate(value):
            problem = schema_problem(item, schema.get("items", {}), f"{where}[{index}]")
            if problem is not None:
                return problem
    return None


def _object_problem(value: dict[str, Any], schema: Mapping[str, Any], where: str) -> str | None:
    extra = schema.get("additionalProperties")
    declared = schema.get("properties", {})
    for name, item in value.items():
        sub = declared.get(name, extra)
        if sub is None:
            return f'Unrecognized field "{name}" at {where} (not marked as ignorable)'
        problem = schema_problem(item, sub, f"{where}.{name}")
        if problem is not None:
            return problem
    for name in schema.get("required", []):
        if name not in value:
            return f"{where}: missing required field {name!r}"
    return None


def _type_problem(prop: _Property, value: str) -> tuple[str, str] | None:
    """Whether ``value`` fits ``prop``'s type, as HubSpot checks it on write."""
    if prop.type == "number":
        try:
            float(value)
        except ValueError:
            return "INVALID_NUMBER", f'{value!r} is not a valid number for "{prop.name}"'
    elif prop.type == "date":
        return _date_problem(prop.name, value)
    elif prop.type == "datetime":
        if not value.isdigit():
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return "INVALID_DATETIME", f'{value!r} is not a valid datetime for "{prop.name}"'
    elif prop.type in ("bool", "enumeration"):
        allowed = [o["value"] for o in prop.options]
        if value not in allowed:
            return (
                "INVALID_OPTION",
                f'{value!r} was not one of the allowed options for "{prop.name}": {allowed}',
            )
    return None


def _date_problem(name: str, value: str) -> tuple[str, str] | None:
    """Date properties take ``YYYY-MM-DD`` or epoch milliseconds at midnight UTC."""
    if _DATE.match(value):
        try:
            datetime.strptime(value, "%Y-%m-%d")
        except ValueError:
            return "INVALID_DATE", f'{value!r} is not a valid date for "{name}"'
        return None
    if value.isdigit():
        if int(value) % 86_400_000 != 0:
            return (
                "INVALID_DATE",
                f'{value} is not at midnight UTC; "{name}" is a date property',
            )
        return None
    return "INVALID_DATE", f'{value!r} is not a valid date (YYYY-MM-DD) for "{name}"'

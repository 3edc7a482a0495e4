"""Request validation against the HubSpot search spec: the body schema and its checker,
filter groups and their operators, sorts, integer limits and requested properties.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from infra.sandbox.crm.wire import (
    DATE_PROPERTIES,
    DEFAULT_PROPERTIES,
    MAX_FILTER_GROUPS,
    MAX_FILTERS_PER_GROUP,
    MAX_FILTERS_TOTAL,
    NUMERIC_PROPERTIES,
    CrmRequestError,
    _parse_iso_millis,
)


# -- search filters -----------------------------------------------------------------------------
def _comparable(prop: str, value: Any) -> Any:
    """Turn a property or filter value into something orderable for ``prop``."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if prop in DATE_PROPERTIES:
        return int(text) if text.lstrip("-").isdigit() else _parse_iso_millis(text)
    if prop in NUMERIC_PROPERTIES:
        return int(text)
    return text.lower()


_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": lambda have, want: have == want,
    "NEQ": lambda have, want: have != want,
    "LT": lambda have, want: have is not None and have < want,
    "LTE": lambda have, want: have is not None and have <= want,
    "GT": lambda have, want: have is not None and have > want,
    "GTE": lambda have, want: have is not None and have >= want,
}


_OPERATORS = frozenset(
    {
        *_COMPARATORS,
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    }
)


# The vendor's search request schema (CRM contacts v3, PublicObjectSearchRequest, FilterGroup,
# Filter), as data. ``sorts`` also takes the object form the vendor documents and accepts.
_STRING: dict[str, Any] = {"type": "string"}


_STRINGS: dict[str, Any] = {"type": "array", "items": _STRING}


_FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["operator", "propertyName"],
    "properties": {
        "highValue": _STRING,
        "operator": {"type": "string", "enum": sorted(_OPERATORS)},
        "propertyName": _STRING,
        "value": _STRING,
        "values": _STRINGS,
    },
}


_SORT_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["propertyName"],
    "properties": {
        "propertyName": _STRING,
        "direction": {"type": "string", "enum": ["ASCENDING", "DESCENDING"]},
    },
}


SEARCH_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "after": _STRING,
        "filterGroups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["filters"],
                "properties": {"filters": {"type": "array", "items": _FILTER_SCHEMA}},
            },
        },
        "limit": {"type": "integer"},
        "properties": _STRINGS,
        "query": _STRING,
        "sorts": {"type": "array", "items": {"anyOf": [_STRING, _SORT_OBJECT]}},
    },
}


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
}


def schema_problem(value: Any, schema: Mapping[str, Any], where: str = "body") -> str | None:
    """The first way ``value`` breaks ``schema`` (a small JSON-schema subset), or None.

    Objects are closed: a field the schema does not declare is a problem, as it is for
    HubSpot's JSON binding ("Unrecognized field").
    """
    if "anyOf" in schema:
        problems = [schema_problem(value, option, where) for option in schema["anyOf"]]
        return None if any(p is None for p in problems) else problems[-1]
    kind = schema.get("type")
    if kind is not None and not _JSON_TYPES[kind](value):
        return f"{where}: expected {kind}, got {json.dumps(value)[:60]}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {list(schema['enum'])}"
    if kind == "object":
        declared = schema.get("properties", {})
        for name in value:
            if name not in declared:
                return f'Unrecognized field "{name}" at {where} (not marked as ignorable)'
        for name in schema.get("required", []):
            if name not in value:
                return f"{where}: missing required field {name!r}"
        for name, sub in declared.items():
            if name in value:
                problem = schema_problem(value[name], sub, f"{where}.{name}")
                if problem is not None:
                    return problem
    if kind == "array":
        for index, item in enumerate(value):
            problem = schema_problem(item, schema.get("items", {}), f"{where}[{index}]")
            if problem is not None:
                return problem
    return None


@dataclass(frozen=True)
class _Filter:
    """One validated search filter."""

    prop: str
    operator: str
    value: Any = None
    high_value: Any = None
    values: tuple[Any, ...] = ()

    def matches(self, properties: Mapping[str, Any]) -> bool:
        """True when the contact's properties satisfy this filter."""
        have = _comparable(self.prop, properties.get(self.prop))
        if self.operator == "HAS_PROPERTY":
            return have is not None
        if self.operator == "NOT_HAS_PROPERTY":
            return have is None
        if self.operator == "BETWEEN":
            return have is not None and self.value <= have <= self.high_value
        if self.operator == "IN":
            return have in self.values
        if self.operator == "NOT_IN":
            return have not in self.values
        if self.operator in {"CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}:
            found = have is not None and str(self.value) in str(have).split()
            return found == (self.operator == "CONTAINS_TOKEN")
        return _COMPARATORS[self.operator](have, self.value)


def _matches_groups(properties: Mapping[str, Any], groups: list[list[_Filter]]) -> bool:
    """OR across filter groups, AND within a group; no groups matches everything."""
    return not groups or any(all(f.matches(properties) for f in group) for group in groups)


def _bad_request(message: str) -> CrmRequestError:
    return CrmRequestError(HTTPStatus.BAD_REQUEST, "VALIDATION_ERROR", message)


def _parse_filter(raw: Any, where: str) -> _Filter:
    """Validate one filter dict from a search body."""
    if not isinstance(raw, dict) or not isinstance(raw.get("propertyName"), str):
        raise _bad_request(f"{where}: a filter needs a string 'propertyName'")
    prop, operator = raw["propertyName"], raw.get("operator", "EQ")
    if operator not in _OPERATORS:
        raise _bad_request(f"{where}: operator {operator!r} is not supported")
    try:
        if operator in {"IN", "NOT_IN"}:
            values = raw.get("values")
            if not isinstance(values, list):
                raise _bad_request(f"{where}: operator {operator} needs a 'values' list")
            return _Filter(prop, operator, values=tuple(_comparable(prop, v) for v in values))
        if operator in {"HAS_PROPERTY", "NOT_HAS_PROPERTY"}:
            return _Filter(prop, operator)
        if raw.get("value") is None:
            raise _bad_request(f"{where}: operator {operator} needs a 'value'")
        high = _comparable(prop, raw.get("highValue")) if operator == "BETWEEN" else None
        if operator == "BETWEEN" and high is None:
            raise _bad_request(f"{where}: operator BETWEEN needs a 'highValue'")
        return _Filter(prop, operator, value=_comparable(prop, raw["value"]), high_value=high)
    except ValueError as exc:
        raise _bad_request(f"{where}: value for {prop!r} cannot be parsed ({exc})") from exc


def parse_filter_groups(raw: Any) -> list[list[_Filter]]:
    """Validate ``filterGroups`` and enforce HubSpot's 5 / 10 / 25 caps."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad_request("filterGroups must be a list")
    if len(raw) > MAX_FILTER_GROUPS:
        raise _bad_request(f"at most {MAX_FILTER_GROUPS} filterGroups allowed, got {len(raw)}")
    groups: list[list[_Filter]] = []
    for g, group in enumerate(raw):
        filters = group.get("filters", []) if isinstance(group, dict) else None
        if not isinstance(filters, list):
            raise _bad_request(f"filterGroups[{g}].filters must be a list")
        if len(filters) > MAX_FILTERS_PER_GROUP:
            raise _bad_request(
                f"filterGroups[{g}] has {len(filters)} filters; at most "
                f"{MAX_FILTERS_PER_GROUP} are allowed per group"
            )
        groups.append(
            [_parse_filter(f, f"filterGroups[{g}].filters[{i}]") for i, f in enumerate(filters)]
        )
    total = sum(len(group) for group in groups)
    if total > MAX_FILTERS_TOTAL:
        raise _bad_request(f"at most {MAX_FILTERS_TOTAL} filters allowed in total, got {total}")
    return groups


def _parse_sort(raw: Any) -> tuple[str, bool] | None:
    """Validate ``sorts``; returns (property, descending) or None for id order.

    The search API applies one sort rule only; a second one is refused here rather than
    silently ignored, so a client cannot believe it has a tie-breaking secondary sort.
    """
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list) or len(raw) != 1:
        raise _bad_request("sorts must be a list with exactly one {propertyName, direction}")
    if isinstance(raw[0], str):
        raw = [{"propertyName": raw[0], "direction": "ASCENDING"}]
    if not isinstance(raw[0], dict):
        raise _bad_request("sorts must be a list with exactly one {propertyName, direction}")
    prop, direction = raw[0].get("propertyName"), raw[0].get("direction", "ASCENDING")
    if not isinstance(prop, str):
        raise _bad_request("sorts[0].propertyName must be a string")
    if direction not in {"ASCENDING", "DESCENDING"}:
        raise _bad_request(f"sorts[0].direction must be ASCENDING or DESCENDING, not {direction!r}")
    return prop, direction == "DESCENDING"


def _parse_int(raw: Any, name: str, *, default: int, low: int, high: int | None) -> int:
    """Parse an integer parameter (int or numeric string) within ``[low, high]``."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not str(raw).strip().isdigit():
        raise _bad_request(f"{name} must be a non-negative integer, got {raw!r}")
    value = int(str(raw).strip())
    if value < low or (high is not None and value > high):
        upper = f" and {high}" if high is not None else ""
        raise _bad_request(f"{name} must be between {low}{upper}, got {value}")
    return value


def _requested_properties(raw: Iterable[str] | None) -> tuple[str, ...]:
    """Requested property names (comma lists and repeats both allowed); default set if none."""
    names = [name.strip() for item in raw or () for name in str(item).split(",") if name.strip()]
    return tuple(dict.fromkeys(names)) if names else DEFAULT_PROPERTIES

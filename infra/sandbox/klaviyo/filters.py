"""Klaviyo's ``filter`` query language: parsing ``equals(email,"...")``-style calls and
``and(...)`` into conditions checked against the operators the spec allows per field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from infra.sandbox.klaviyo.wire import DATE_FIELDS, _parse_datetime


class _Condition:
    """One ``op(field,value)`` of a filter."""

    def __init__(self, op: str, name: str, value: Any) -> None:
        self.op = op
        self.name = name
        # `any` lists of strings become sets: a lookup of 100 emails scans each profile once.
        self.value = (
            frozenset(value) if op == "any" and all(isinstance(v, str) for v in value) else value
        )

    def test(self, actual: Any) -> bool:
        if actual is None:
            return False
        if self.op == "equals":
            return bool(actual == self.value)
        if self.op == "any":
            return actual in self.value
        compare: dict[str, Callable[[Any, Any], bool]] = {
            "greater-than": lambda a, b: a > b,
            "greater-or-equal": lambda a, b: a >= b,
            "less-than": lambda a, b: a < b,
            "less-or-equal": lambda a, b: a <= b,
        }
        return compare[self.op](actual, self.value)


_CALL = re.compile(r"^\s*([a-z-]+)\((.*)\)\s*$", re.DOTALL)


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside quotes, brackets or parentheses."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if quote or depth:
        raise ValueError("unbalanced quotes or brackets")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _literal(raw: str, name: str) -> Any:
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        inner = raw[1:-1].strip()
        return [_literal(item, name) for item in _split_top(inner)] if inner else []
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        raw = raw[1:-1]
        if name not in DATE_FIELDS:
            return raw
    if name in DATE_FIELDS:
        return _parse_datetime(raw)
    if raw in {"true", "false"}:
        return raw == "true"
    if raw == "null":
        return None
    raise ValueError(f"value {raw!r} for {name!r} must be quoted")


def parse_filter(text: str, allowed: Mapping[str, frozenset[str]]) -> list[_Condition]:
    """Klaviyo's filter syntax: ``op(field,value)``, joined by ``and(...)`` or commas."""
    conditions: list[_Condition] = []
    for part in _split_top(text):
        match = _CALL.match(part)
        if match is None:
            raise ValueError(f"cannot parse {part!r}")
        op, args = match.group(1), match.group(2)
        if op == "and":
            conditions.extend(parse_filter(args, allowed))
            continue
        pieces = _split_top(args)
        if len(pieces) != 2:
            raise ValueError(f"{op}(...) takes a field and a value, got {args!r}")
        name = pieces[0]
        if name not in allowed:
            raise ValueError(f"{name!r} is not a filterable field")
        if op not in allowed[name]:
            raise ValueError(f"operator {op!r} is not allowed for {name!r}")
        value = _literal(pieces[1], name)
        if (op == "any") != isinstance(value, list):
            raise ValueError(f"{op}({name},...) needs {'a list' if op == 'any' else 'one value'}")
        conditions.append(_Condition(op, name, value))
    if not conditions:
        raise ValueError("empty filter")
    return conditions

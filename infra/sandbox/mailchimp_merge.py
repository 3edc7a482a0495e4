"""Merge fields of the Mailchimp stand-in: the audience's field definitions and the checks a
member's ``merge_fields`` values go through (``docs/platforms.md``, *Mailchimp*), plus the
``fields`` / ``exclude_fields`` response filter every read supports.

Every audience starts with Mailchimp's default fields (``FNAME``, ``LNAME``, ``ADDRESS``,
``PHONE``, ``BIRTHDAY``). A value for a merge tag the audience does not have, or of the wrong
shape for its type, is a per-member error naming the tag - never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

MERGE_FIELD_TYPES = frozenset(
    {
        "text",
        "number",
        "address",
        "phone",
        "date",
        "url",
        "imageurl",
        "radio",
        "dropdown",
        "birthday",
        "zip",
    }
)
MERGE_FIELD_LIMIT = 30
"""Merge fields one audience may hold (plan dependent in Mailchimp; the spec's example)."""
MERGE_FIELDS_MAX_COUNT = 1000
_TAG = re.compile(r"^[A-Z0-9_]{1,10}$")
_BIRTHDAY = re.compile(r"^(0[1-9]|1[0-2])/(0[1-9]|[12]\d|3[01])$")
_NUMBER_TEXT = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$")
_ADDRESS_REQUIRED = ("addr1", "city", "state", "zip")


class MergeValueError(ValueError):
    """A member's value for one merge tag is refused; ``tag`` names the field."""

    def __init__(self, tag: str, message: str) -> None:
        super().__init__(f"{tag}: {message}")
        self.tag = tag
        self.message = message


@dataclass
class MergeField:
    """One merge field definition of an audience."""

    merge_id: int
    tag: str
    name: str
    type: str
    required: bool = False
    public: bool = False
    default_value: str = ""
    display_order: int = 0
    help_text: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_wire(self, list_id: str) -> dict[str, Any]:
        return {
            "merge_id": self.merge_id,
            "tag": self.tag,
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default_value": self.default_value,
            "public": self.public,
            "display_order": self.display_order,
            "options": dict(self.options),
            "help_text": self.help_text,
            "list_id": list_id,
            "_links": [],
        }


def default_merge_fields() -> dict[str, MergeField]:
    """The fields a new Mailchimp audience has, keyed by tag."""
    defaults: list[tuple[str, str, str, dict[str, Any]]] = [
        ("FNAME", "First Name", "text", {"size": 25}),
        ("LNAME", "Last Name", "text", {"size": 25}),
        ("ADDRESS", "Address", "address", {"default_country": 164}),
        ("PHONE", "Phone Number", "phone", {"phone_format": "none"}),
        ("BIRTHDAY", "Birthday", "birthday", {"date_format": "MM/DD"}),
    ]
    return {
        tag: MergeField(i, tag, name, kind, public=False, display_order=i + 1, options=options)
        for i, (tag, name, kind, options) in enumerate(defaults, start=1)
    }


def new_merge_field(
    body: Mapping[str, Any], existing: Mapping[str, MergeField]
) -> MergeField | str:
    """Build the field a ``POST …/merge-fields`` body asks for, or return why it is refused."""
    name, kind = body.get("name"), body.get("type")
    if not isinstance(name, str) or not name.strip():
        return "name: This value should not be blank."
    if kind not in MERGE_FIELD_TYPES:
        return f"type: {kind!r} is not one of {sorted(MERGE_FIELD_TYPES)}."
    tag = body.get("tag")
    if tag is None:
        tag = re.sub(r"[^A-Z0-9_]", "", name.upper())[:10] or f"MMERGE{len(existing) + 1}"
    if not isinstance(tag, str) or not _TAG.match(tag.upper()):
        return f"tag: {tag!r} must be 1-10 letters, digits or underscores."
    tag = tag.upper()
    if tag in existing:
        return f"tag: A Merge Field with the tag {tag!r} already exists for this list."
    if len(existing) >= MERGE_FIELD_LIMIT:
        return f"This audience already has the maximum of {MERGE_FIELD_LIMIT} merge fields."
    options = body.get("options") or {}
    if not isinstance(options, dict):
        return "options: must be an object."
    if kind in {"radio", "dropdown"} and not options.get("choices"):
        return f"options.choices: a {kind} field needs at least one choice."
    merge_id = max((f.merge_id for f in existing.values()), default=0) + 1
    return MergeField(
        merge_id,
        tag,
        name.strip(),
        str(kind),
        required=bool(body.get("required", False)),
        public=bool(body.get("public", False)),
        default_value=str(body.get("default_value") or ""),
        display_order=int(body.get("display_order") or merge_id),
        help_text=str(body.get("help_text") or ""),
        options=dict(options),
    )


def check_merge_values(
    values: Mapping[str, Any], fields: Mapping[str, MergeField]
) -> dict[str, Any]:
    """The stored form of ``values``; raises :class:`MergeValueError` for the first bad one."""
    stored: dict[str, Any] = {}
    for tag, value in values.items():
        definition = fields.get(tag.upper()) if isinstance(tag, str) else None
        if definition is None:
            raise MergeValueError(str(tag), "This merge field does not exist on the audience.")
        stored[definition.tag] = _checked(definition, value)
    return stored


def missing_required(values: Mapping[str, Any], fields: Mapping[str, MergeField]) -> list[str]:
    """Tags of required fields without a non-empty value in ``values``."""
    return [f.tag for f in fields.values() if f.required and values.get(f.tag) in (None, "", {})]


def _checked(definition: MergeField, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        raise MergeValueError(definition.tag, f"{value!r} is not a valid value (string/number).")
    if value == "":
        return ""
    kind = definition.type
    if kind == "number":
        return _number(definition.tag, value)
    if kind == "address":
        return _address(definition.tag, value)
    if isinstance(value, dict | list):
        raise MergeValueError(definition.tag, "Please enter a text value.")
    text = str(value)
    if kind == "date":
        _date(definition.tag, text)
    elif kind == "birthday" and not _BIRTHDAY.match(text):
        raise MergeValueError(definition.tag, f"{text!r} is not a birthday (MM/DD).")
    elif kind in {"radio", "dropdown"} and text not in definition.options.get("choices", []):
        raise MergeValueError(definition.tag, f"{text!r} is not one of the field's choices.")
    return text


def _number(tag: str, value: Any) -> int | float:
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _NUMBER_TEXT.match(value):
        number = float(value)
        return int(number) if number.is_integer() else number
    raise MergeValueError(tag, f"{value!r} is not a number.")


def _date(tag: str, text: str) -> None:
    try:
        date.fromisoformat(text)
    except ValueError as exc:
        raise MergeValueError(tag, f"{text!r} is not a date (YYYY-MM-DD).") from exc


def _address(tag: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or any(
        not isinstance(value.get(k), str) for k in _ADDRESS_REQUIRED
    ):
        raise MergeValueError(tag, "An address needs addr1, city, state and zip.")
    return dict(value)


def select_fields(
    payload: dict[str, Any], fields: Iterable[str] | None, exclude: Iterable[str] | None
) -> dict[str, Any]:
    """Apply Mailchimp's ``fields`` / ``exclude_fields`` (dot notation into objects and lists)."""
    result: Any = payload
    if fields:
        result = _keep(result, _tree(fields))
    if exclude:
        result = _drop(result, _tree(exclude))
    return dict(result)


def _tree(paths: Iterable[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for part in path.strip().split("."):
            if part:
                node = node.setdefault(part, {})
    return tree


def _keep(value: Any, tree: dict[str, Any]) -> Any:
    if not tree:
        return value
    if isinstance(value, list):
        return [_keep(item, tree) for item in value]
    if isinstance(value, dict):
        return {k: _keep(v, tree[k]) for k, v in value.items() if k in tree}
    return value


def _drop(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_drop(item, tree) for item in value]
    if isinstance(value, dict):
        return {
            k: (_drop(v, tree[k]) if k in tree else v)
            for k, v in value.items()
            if not (k in tree and not tree[k])
        }
    return value

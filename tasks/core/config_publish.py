"""``destinations.<name>.audiences.<segment>``: the list, the sync mode, what each person carries.

An audience is either a bare list id (``champions: list-champions``: upsert, the platform's
first/last-name fields, no holdout) or an object::

    champions:
      list: list-champions
      mode: mirror            # upsert (add/update only) | mirror (leavers are removed)
      holdout: 0.1            # share kept out as a control group, never sent
      create_fields: true     # create missing platform fields at publish start
      fields:                 # platform field -> where its value comes from
        FNAME: {column: first_name}
        LTV: {column: lifetime_value, type: number, format: "0.00"}
        LASTORDER: {column: last_order_at, type: date}
        SEGMENT: {value: "{segment}"}
      tags: [lake]
      send_budget: {max_calls: 2000, max_minutes: 30}   # else the audience is held

A field takes its value from a gold column (``column``: any ``gold/customer_features`` or
``gold/audience_members`` column) or is a constant (``value``; ``{segment}`` in a text constant
becomes the segment's name). ``format`` shapes it: for a date/datetime column a ``strftime``
pattern (default ``%Y-%m-%d``), for a number column the decimals as ``0``, ``0.0``, ``0.00``...
(rounded half away from zero by polars' ``round``). Columns are checked against the gold schema
when the file loads, so a typo fails naming the key path.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.core.send_budget import SendBudget

FieldType = Literal["text", "number", "date", "boolean"]
SyncMode = Literal["upsert", "mirror"]

NUMBER_FORMAT = re.compile(r"^0(\.0{1,6})?$")
DATE_FORMAT = re.compile(r"^(?:[^%]|%[aAbBdHjmMpSyYzZ%])+$")
"""strftime patterns made of the portable directives (no locale- or platform-specific ones)."""
MAX_HOLDOUT = 0.5


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FieldMapping(_Model):
    """One platform field: its source (a gold column or a constant), type and format."""

    column: str | None = Field(
        default=None, description="A gold column (customer features, audience)."
    )
    value: str | int | float | bool | None = Field(
        default=None, description="A constant; '{segment}' in text becomes the segment name."
    )
    type: FieldType = Field(default="text", description="The platform field's type.")
    format: str | None = Field(
        default=None,
        description="Dates: a strftime pattern (default %Y-%m-%d). "
        "Numbers: decimals as 0, 0.0, 0.00.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> FieldMapping:
        if (self.column is None) == (self.value is None):
            raise ValueError("give exactly one of 'column' or 'value'")
        if self.format is not None and not (
            NUMBER_FORMAT.match(self.format) or DATE_FORMAT.match(self.format)
        ):
            raise ValueError(
                f"format {self.format!r}: a number format is 0, 0.0, 0.00...; a date format is a "
                "strftime pattern using %Y %m %d %H %M %S %b %B %a %A %j %p %y %z %Z"
            )
        return self

    @property
    def decimals(self) -> int | None:
        """Decimals a number format asks for (``"0.00"`` -> 2), None without one."""
        if self.format is None or not NUMBER_FORMAT.match(self.format):
            return None
        return len(self.format) - 2 if "." in self.format else 0


class AudienceConfig(_Model):
    """How one segment is published to one list of one destination."""

    list_id: str = Field(alias="list", min_length=1, description="The platform's list id.")
    mode: SyncMode = Field(
        default="upsert",
        description="upsert: add and update only. mirror: a contact who leaves the segment is "
        "removed from the list (archived, not unsubscribed). Opt-outs are always unsubscribed.",
    )
    holdout: Annotated[float, Field(ge=0, le=MAX_HOLDOUT)] = Field(
        default=0.0,
        description="Share of the segment kept out as a control group (keyed hash of contact "
        "and segment: stable across runs, destinations and re-sizes); never sent.",
    )
    create_fields: bool = Field(
        default=False, description="Create missing platform fields at publish start."
    )
    fields: dict[str, FieldMapping] | None = Field(
        default=None,
        description="Platform field -> mapping. Unset: the platform's first and last name.",
    )
    tags: tuple[str, ...] = Field(default=(), description="Tags every member carries.")
    send_budget: SendBudget | None = Field(
        default=None,
        description="Hold this audience when its publish would need more API calls, or a "
        "longer minimum send time, than this (unsubscribes still go out).",
    )


class BudgetOption(BaseModel):
    """``send_budget`` of a destination: a ceiling on all its audiences of one run together."""

    send_budget: SendBudget | None = Field(
        default=None,
        description="Hold every audience of this destination when their publishes together "
        "would need more API calls, or a longer minimum send time, than this (unsubscribes "
        "still go out).",
    )


DEFAULT_NAME_FIELDS: dict[str, dict[str, str]] = {
    "mailchimp": {"FNAME": "first_name", "LNAME": "last_name"},
    "klaviyo": {"first_name": "first_name", "last_name": "last_name"},
    "hubspot": {"firstname": "first_name", "lastname": "last_name"},
}
"""What an audience without ``fields`` sends: the platform's own first/last-name fields."""


def resolved_fields(kind: str, audience: AudienceConfig) -> dict[str, FieldMapping]:
    """The mapping an audience publishes with (its own, or the platform's name fields)."""
    if audience.fields is not None:
        return dict(audience.fields)
    return {name: FieldMapping(column=column) for name, column in DEFAULT_NAME_FIELDS[kind].items()}


def coerce_audiences(value: object) -> object:
    """Bare list ids (``segment: list-id``) as ``{list: list-id}`` objects."""
    if isinstance(value, dict):
        return {k: {"list": v} if isinstance(v, str) else v for k, v in value.items()}
    return value

"""``destinations:`` of ``pipeline.yaml``: the platforms audiences are published to.

One model per platform (Mailchimp, Klaviyo, HubSpot), each with its credentials, batch size and
``audiences`` (segment -> list, see :mod:`tasks.core.config_publish`); :data:`Destination` is
their discriminated union. :func:`check_field_mappings` checks that an audience's field mappings
read gold columns that exist (:data:`GOLD_COLUMNS`) in a format that fits them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Literal

import polars as pl
from pydantic import Field, field_validator

from tasks.core.config_base import Model, Name, SecretRef
from tasks.core.config_publish import (
    AudienceConfig,
    BudgetOption,
    coerce_audiences,
    resolved_fields,
)
from tasks.core.feature_catalog import FEATURE_COLUMNS
from tasks.core.transport import TransportOptions


class MailchimpDestination(Model, TransportOptions, BudgetOption):
    kind: Literal["mailchimp"]
    base_url: str = Field(description="e.g. https://us6.api.mailchimp.com")
    api_key: SecretRef
    batch_size: int = Field(default=500, ge=1, le=500)
    audiences: dict[Name, AudienceConfig] = Field(
        min_length=1, description="Segment name -> Mailchimp list id (or an audience object)."
    )

    _coerce = field_validator("audiences", mode="before")(coerce_audiences)

    def list_ids(self) -> list[str]:
        return [a.list_id for a in self.audiences.values()]

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


class KlaviyoDestination(Model, TransportOptions, BudgetOption):
    """A Klaviyo account (private API key), publishing to static lists by id."""

    kind: Literal["klaviyo"]
    base_url: str = Field(default="https://a.klaviyo.com", description="Klaviyo API host.")
    api_key: SecretRef = Field(description="Private API key (Klaviyo-API-Key ...).")
    revision: str = Field(
        default="2026-07-15",
        pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$",
        description="API revision sent in the `revision` header on every request.",
    )
    batch_size: int = Field(
        default=10_000, ge=1, le=10_000, description="Profiles per bulk import job (max 10,000)."
    )
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Wait between two reads of an import job."
    )
    poll_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="An import job not finished after this long is sent again next run.",
    )
    tags_property: str = Field(
        default="tags",
        min_length=1,
        description="Profile property holding a member's tags (Klaviyo has no profile tags).",
    )
    audiences: dict[Name, AudienceConfig] = Field(
        min_length=1, description="Segment name -> Klaviyo list id (or an audience object)."
    )

    _coerce = field_validator("audiences", mode="before")(coerce_audiences)

    def list_ids(self) -> list[str]:
        return [a.list_id for a in self.audiences.values()]

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


class HubSpotDestination(Model, TransportOptions, BudgetOption):
    """A HubSpot portal (private app token), publishing to MANUAL contact lists by id."""

    kind: Literal["hubspot"]
    base_url: str = Field(
        default="https://api.hubapi.com",
        description="HubSpot API root, e.g. https://api.hubapi.com",
    )
    token: SecretRef = Field(description="Private app access token, sent as a Bearer token.")
    subscription_type_id: int = Field(
        ge=1,
        description="The email subscription type (communication preferences) whose opt-outs "
        "are read before each publish and written for opted-out contacts.",
    )
    unsubscribe_scope: Literal["subscription", "all"] = Field(
        default="subscription",
        description="'subscription': opt-outs unsubscribe from subscription_type_id only; "
        "'all': from every email subscription of the portal.",
    )
    batch_size: int = Field(
        default=100, ge=1, le=100, description="Contacts per batch call (HubSpot's maximum: 100)."
    )
    audiences: dict[Name, AudienceConfig] = Field(
        min_length=1,
        description="Segment name -> id (digits) of a MANUAL HubSpot contact list (or an "
        "audience object).",
    )

    _coerce = field_validator("audiences", mode="before")(coerce_audiences)

    @field_validator("audiences")
    @classmethod
    def _hubspot_lists(cls, audiences: dict[str, AudienceConfig]) -> dict[str, AudienceConfig]:
        for segment, audience in audiences.items():
            if not re.fullmatch(r"[1-9][0-9]{0,18}", audience.list_id):
                raise ValueError(
                    f"{segment}.list: {audience.list_id!r} is not a HubSpot list id (digits)"
                )
            if audience.tags:
                raise ValueError(f"{segment}.tags: HubSpot contacts have no tags; map a property")
        return audiences

    def list_ids(self) -> list[str]:
        return [a.list_id for a in self.audiences.values()]

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


Destination = Annotated[
    MailchimpDestination | KlaviyoDestination | HubSpotDestination, Field(discriminator="kind")
]


AUDIENCE_COLUMNS: dict[str, pl.DataType] = {
    "segment": pl.String(),
    "email": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "phone": pl.String(),
    "consent_at": pl.Datetime("us", "UTC"),
}
"""Columns of gold/audience_members a field mapping may use besides the features."""

GOLD_COLUMNS: dict[str, pl.DataType] = {**FEATURE_COLUMNS, **AUDIENCE_COLUMNS}
"""Every gold column a field mapping may read (``country`` comes from the features)."""


def check_field_mappings(path: str, kind: str, audience: AudienceConfig) -> None:
    """Fail naming the key path if a mapping reads an unknown gold column or formats a column
    of a kind the format cannot apply to."""
    for name, mapping in resolved_fields(kind, audience).items():
        where = f"{path}.fields.{name}"
        if mapping.column is None:
            continue
        dtype = GOLD_COLUMNS.get(mapping.column)
        if dtype is None:
            raise ValueError(
                f"{where}.column: unknown column {mapping.column!r}; available: "
                f"{sorted(GOLD_COLUMNS)}"
            )
        if mapping.format is None:
            continue
        if dtype.is_temporal() and mapping.decimals is not None:
            raise ValueError(f"{where}.format: {mapping.column} is a date; use a strftime pattern")
        if dtype.is_numeric() and mapping.decimals is None:
            raise ValueError(f"{where}.format: {mapping.column} is a number; use 0, 0.0, 0.00...")
        if not (dtype.is_numeric() or dtype.is_temporal()):
            raise ValueError(f"{where}.format: {mapping.column} is text; it takes no format")

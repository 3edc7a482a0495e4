"""``pipeline.yaml`` → ``transform``: how silver and gold are built.

Normalisation defaults, the reporting currency and its rates, identity survivorship and feature
windows. Every field has a default, so a pipeline without a ``transform`` section still loads;
the reporting currency then has no rates and every amount in another currency is quarantined.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from tasks.core.config_base import Model, Name
from tasks.core.normalise import iso_currencies, phone_regions

# Contact attributes that survivorship decides (consent is not one: see tasks.core.entities).
SURVIVING_ATTRIBUTES = (
    "first_name",
    "last_name",
    "phone",
    "country",
    "company",
    "job_title",
    "city",
)

PositiveRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class CurrencyConfig(Model):
    """Amounts are reported in one currency; others convert at the configured rates."""

    reporting: str = Field(default="EUR", description="ISO-4217 code amounts are reported in.")
    rates: dict[str, PositiveRate] = Field(
        default_factory=dict,
        description=(
            "ISO-4217 code -> value of one unit in the reporting currency, e.g. {USD: 0.92}. "
            "An amount in a currency without a rate is quarantined, never guessed."
        ),
    )

    @field_validator("reporting")
    @classmethod
    def _reporting_is_iso(cls, code: str) -> str:
        if code not in iso_currencies():
            raise ValueError(f"{code!r} is not an ISO-4217 currency code (e.g. 'EUR')")
        return code

    @field_validator("rates")
    @classmethod
    def _rates_are_iso(cls, rates: dict[str, float]) -> dict[str, float]:
        unknown = sorted(code for code in rates if code not in iso_currencies())
        if unknown:
            raise ValueError(f"not ISO-4217 currency code(s): {unknown}")
        return rates

    def to_reporting(self) -> dict[str, float]:
        """Every convertible code -> rate into the reporting currency (which maps to 1)."""
        return {**self.rates, self.reporting: 1.0}


class IdentityConfig(Model):
    """Survivorship: which value of an attribute a merged contact keeps."""

    source_priority: list[Name] = Field(
        default_factory=list,
        description=(
            "Sources in order of trust for every attribute: a listed source's most recent "
            "non-null value beats any later-listed or unlisted source's; unlisted sources tie "
            "and the most recent non-null value among them wins."
        ),
    )
    attribute_priority: dict[str, list[Name]] = Field(
        default_factory=dict,
        description=(
            f"Per-attribute override of source_priority; attributes: {SURVIVING_ATTRIBUTES}"
        ),
    )

    @field_validator("attribute_priority")
    @classmethod
    def _known_attributes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(SURVIVING_ATTRIBUTES))
        if unknown:
            raise ValueError(
                f"unknown attribute(s) {unknown}; allowed: {sorted(SURVIVING_ATTRIBUTES)}"
            )
        return value

    def priority_for(self, attribute: str) -> list[str]:
        """Sources in order of trust for ``attribute``."""
        return self.attribute_priority.get(attribute, self.source_priority)

    def referenced_sources(self) -> set[str]:
        names = set(self.source_priority)
        for sources in self.attribute_priority.values():
            names.update(sources)
        return names


class FeatureConfig(Model):
    """Windows of ``gold/customer_features``."""

    rfm_window_days: int = Field(
        default=365,
        ge=1,
        le=36_500,
        description="Orders in this many days before as_of count for frequency, monetary, RFM.",
    )


class TransformConfig(Model):
    """How silver and gold are built."""

    default_phone_region: str = Field(
        default="DE",
        description="ISO-3166 alpha-2 region for phone numbers written without a country code.",
    )
    currency: CurrencyConfig = Field(default_factory=CurrencyConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)

    @field_validator("default_phone_region")
    @classmethod
    def _region_supported(cls, region: str) -> str:
        if region not in phone_regions():
            raise ValueError(f"{region!r} is not a phone region (ISO-3166 alpha-2, e.g. 'DE')")
        return region

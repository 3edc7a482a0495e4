"""Silver entities: contacts (one row per person, with current consent), orders and events.

All functions are pure ``LazyFrame -> LazyFrame`` transforms; the caller decides when to collect.
"""

from __future__ import annotations

import polars as pl

from tasks.core.normalise import UTC_MICROS, contact_key

CONTACT_ATTRIBUTES = ("first_name", "last_name", "phone", "country")
ENRICHMENT_ATTRIBUTES = ("company", "job_title", "city", "country")
CANCELLED_STATUSES = ["cancelled", "canceled", "refunded", "void"]


def consent_events(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """One consent event per candidate row that states consent.

    An explicit opt-out beats an opt-in stated in the same record; a record that states neither
    yields no event (consent fails closed: no event means not subscribed).
    """
    status = (
        pl.when(pl.col("opted_out").fill_null(False))
        .then(pl.lit("unsubscribed"))
        .when(pl.col("opted_in").fill_null(False))
        .then(pl.lit("subscribed"))
        .otherwise(None)
    )
    at = (
        pl.when(status == "subscribed")
        .then(pl.coalesce("opted_in_at", "updated_at"))
        .otherwise(pl.col("updated_at"))
    )
    return candidates.select(
        "email",
        status.alias("consent_status"),
        at.alias("consent_at"),
        pl.col("_source").alias("consent_source"),
    ).filter(pl.col("consent_status").is_not_null())


def current_consent(events: pl.LazyFrame) -> pl.LazyFrame:
    """The latest consent event per email; on a tie, the opt-out wins."""
    return (
        events.with_columns((pl.col("consent_status") == "subscribed").alias("_is_optin"))
        .sort(["email", "consent_at", "_is_optin"], descending=[False, True, False])
        .unique("email", keep="first", maintain_order=True)
        .drop("_is_optin")
    )


def latest_non_null(columns: tuple[str, ...]) -> list[pl.Expr]:
    """Aggregations taking, per group, the first non-null value (rows pre-sorted newest first)."""
    return [pl.col(c).drop_nulls().first().alias(c) for c in columns]


def resolve_contacts(
    candidates: pl.LazyFrame,
    enrichment: pl.LazyFrame | None,
    *,
    pepper: bytes,
    key_version: int,
) -> pl.LazyFrame:
    """One row per normalised email with surviving attributes, source ids and current consent.

    Survivorship: the most recent non-null value of each attribute (ties broken by source id so
    the result is deterministic). ``source_ids`` keeps every ``source:id`` merged into the row so
    a merge can be explained.
    """
    ordered = candidates.sort(
        ["email", "updated_at", "_source", "source_id"],
        descending=[False, True, False, True],
    )
    people = ordered.group_by("email", maintain_order=True).agg(
        *latest_non_null(CONTACT_ATTRIBUTES),
        pl.col("updated_at").max(),
        pl.concat_str(["_source", "source_id"], separator=":").unique().sort().alias("source_ids"),
    )
    consent = current_consent(consent_events(candidates))
    people = people.join(consent, on="email", how="left").with_columns(
        pl.col("consent_status").fill_null("unknown")
    )
    if enrichment is not None:
        attrs = (
            enrichment.sort(["email", "updated_at"], descending=[False, True])
            .group_by("email", maintain_order=True)
            .agg(*latest_non_null(ENRICHMENT_ATTRIBUTES))
            .rename({"country": "enriched_country"})
        )
        people = (
            people.join(attrs, on="email", how="left")
            .with_columns(pl.coalesce("country", "enriched_country").alias("country"))
            .drop("enriched_country")
        )
    else:
        people = people.with_columns(
            pl.lit(None, pl.String).alias(c) for c in ENRICHMENT_ATTRIBUTES if c != "country"
        )
    return (
        people.with_columns(
            contact_key(pl.col("email"), pepper=pepper, version=key_version).alias("contact_key"),
            pl.col("country").str.to_uppercase(),
        )
        .select(
            "contact_key",
            "email",
            *CONTACT_ATTRIBUTES,
            "company",
            "job_title",
            "city",
            "consent_status",
            pl.col("consent_at").cast(UTC_MICROS),
            "consent_source",
            "source_ids",
            "updated_at",
        )
        .sort("contact_key")
    )


def latest_per_key(lf: pl.LazyFrame, *, key: str, order_by: list[str]) -> pl.LazyFrame:
    """Keep the newest version of each key (``order_by`` descending, nulls last)."""
    return lf.sort(order_by, descending=True, nulls_last=True).unique(
        subset=key, keep="first", maintain_order=True
    )


def silver_orders(candidates: pl.LazyFrame, *, pepper: bytes, key_version: int) -> pl.LazyFrame:
    """Orders deduped to their latest version, linked to the person by ``contact_key``."""
    return (
        latest_per_key(candidates, key="order_id", order_by=["updated_at", "_ingested_at"])
        .with_columns(
            contact_key(pl.col("email"), pepper=pepper, version=key_version).alias("contact_key"),
            pl.col("currency").str.to_uppercase(),
            pl.col("status").str.to_lowercase(),
            pl.coalesce("created_at", "updated_at").alias("created_at"),
        )
        .select(
            "order_id",
            "contact_key",
            "amount",
            "currency",
            "category",
            "status",
            "created_at",
            "updated_at",
            "_source",
        )
        .sort("order_id")
    )


def silver_events(candidates: pl.LazyFrame, *, pepper: bytes, key_version: int) -> pl.LazyFrame:
    """Events deduped on ``event_id`` (deliveries are at-least-once; the first one wins)."""
    return (
        candidates.sort(["event_id", "_ingested_at"], nulls_last=True)
        .unique(subset="event_id", keep="first", maintain_order=True)
        .with_columns(
            contact_key(pl.col("email"), pepper=pepper, version=key_version).alias("contact_key")
        )
        .select("event_id", "contact_key", "anonymous_id", "event_type", "occurred_at", "url")
        .sort("event_id")
    )

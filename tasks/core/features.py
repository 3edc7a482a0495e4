"""Gold layer: customer features, segment membership and the audience to publish."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from tasks.core.config import FEATURE_COLUMNS, Segment
from tasks.core.entities import CANCELLED_STATUSES

AUDIENCE_FIELDS = ("email", "first_name", "last_name", "country")


def customer_features(
    contacts: pl.LazyFrame,
    orders: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    as_of: datetime,
) -> pl.LazyFrame:
    """One row per contact with order and engagement features, keyed by ``contact_key``.

    Cancelled/refunded orders do not count. Amounts are summed as stored (one reporting
    currency is assumed until currency conversion is configured).
    """
    as_of_lit = pl.lit(as_of).cast(pl.Datetime("us", "UTC"))
    order_stats = (
        orders.filter(~pl.col("status").fill_null("").is_in(CANCELLED_STATUSES))
        .group_by("contact_key")
        .agg(
            pl.len().cast(pl.Int64).alias("order_count"),
            pl.col("amount").sum().alias("revenue"),
            pl.col("created_at").min().alias("first_order_at"),
            pl.col("created_at").max().alias("last_order_at"),
        )
    )
    event_stats = (
        events.filter(pl.col("contact_key").is_not_null() & (pl.col("occurred_at") <= as_of_lit))
        .group_by("contact_key")
        .agg(
            (pl.col("occurred_at") > as_of_lit - pl.duration(days=30))
            .sum()
            .cast(pl.Int64)
            .alias("events_30d"),
            (pl.col("occurred_at") > as_of_lit - pl.duration(days=90))
            .sum()
            .cast(pl.Int64)
            .alias("events_90d"),
        )
    )
    return (
        contacts.select("contact_key", "country")
        .join(order_stats, on="contact_key", how="left")
        .join(event_stats, on="contact_key", how="left")
        .with_columns(
            pl.col("order_count", "events_30d", "events_90d").fill_null(0),
            pl.col("revenue").fill_null(0.0).round(2),
        )
        .with_columns(
            pl.when(pl.col("order_count") > 0)
            .then((pl.col("revenue") / pl.col("order_count")).round(2))
            .otherwise(None)
            .alias("avg_order_value"),
            (as_of_lit - pl.col("last_order_at")).dt.total_days().alias("days_since_last_order"),
        )
        .select(list(FEATURE_COLUMNS))
        .sort("contact_key")
    )


def audience_members(
    features: pl.LazyFrame, contacts: pl.LazyFrame, segments: list[Segment]
) -> pl.LazyFrame:
    """Rows ``(segment, contact_key, fields to send)`` for every segment a contact matches.

    Only contacts whose *current* consent is an opt-in are members: consent fails closed.
    """
    publishable = contacts.filter(pl.col("consent_status") == "subscribed").select(
        "contact_key", "email", "first_name", "last_name", "consent_status"
    )
    base = features.join(publishable, on="contact_key", how="inner")
    frames = [
        base.filter(pl.sql_expr(segment.where).fill_null(False)).select(
            pl.lit(segment.name).alias("segment"),
            "contact_key",
            "email",
            "first_name",
            "last_name",
            "country",
            "consent_status",
        )
        for segment in segments
    ]
    if not frames:
        return pl.LazyFrame(schema=AUDIENCE_SCHEMA)
    return pl.concat(frames).sort("segment", "contact_key")


AUDIENCE_SCHEMA: dict[str, pl.DataType] = {
    "segment": pl.String(),
    "contact_key": pl.String(),
    "email": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "country": pl.String(),
    "consent_status": pl.String(),
}

"""Gold layer: the customer features of each contact, computed from silver.

What each feature means, its type and its expression are declared once in
:mod:`tasks.core.feature_catalog`; this module evaluates them step by step (aggregations over
a contact's orders and events, the favourite category, expressions over the joined row) and
ranks the RFM scores. Segment assignment lives in :mod:`tasks.core.segments`.

The favourite category is the category with most counted orders; ties go to higher spend in
it, then the alphabetically first category, so it is stable.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from tasks.core.entities import CANCELLED_STATUSES
from tasks.core.feature_catalog import (
    FEATURE_COLUMNS,
    RANKS,
    Window,
    exact_sum,
    fill_defaults,
    quintile_of_rank,
    step_exprs,
)
from tasks.core.feature_catalog import SCORE_COLUMNS as SCORE_COLUMNS
from tasks.core.feature_catalog import quintile_score as quintile_score


def customer_features(
    contacts: pl.LazyFrame,
    orders: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    as_of: datetime,
    rfm_window_days: int = 365,
) -> pl.LazyFrame:
    """One row per contact with order and engagement features, keyed by ``contact_key``.

    ``orders`` are silver orders (``amount_reporting`` in the reporting currency); ``events``
    silver events. See :mod:`tasks.core.feature_catalog` for every definition.
    """
    return customer_metrics(
        contacts, orders, events, as_of=as_of, rfm_window_days=rfm_window_days
    ).pipe(score_rfm)


def _favourite_category(counted: pl.LazyFrame) -> pl.LazyFrame:
    """``contact_key``, ``favourite_category`` (see the module doc)."""
    return (
        counted.filter(pl.col("category").is_not_null())
        .group_by("contact_key", "category")
        .agg(pl.len().alias("_n"), exact_sum(pl.col("amount_reporting")).alias("_spend"))
        .sort(
            ["contact_key", "_n", "_spend", "category"],
            descending=[False, True, True, False],
        )
        .unique("contact_key", keep="first", maintain_order=True)
        .select("contact_key", pl.col("category").alias("favourite_category"))
    )


def customer_metrics(
    contacts: pl.LazyFrame,
    orders: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    as_of: datetime,
    rfm_window_days: int = 365,
) -> pl.LazyFrame:
    """Every feature except the RFM scores, one row per contact of ``contacts``.

    Each row depends only on that contact's own orders and events, so the features of a subset
    of contacts can be computed from their rows alone (the incremental transform does); the
    scores compare contacts with each other and are added by :func:`score_rfm`.
    """
    window = Window.ending(as_of, rfm_window_days)
    counted = orders.filter(
        ~pl.col("status").fill_null("").is_in(CANCELLED_STATUSES)
        & (pl.col("created_at") <= window.as_of)
        & pl.col("contact_key").is_not_null()
    )
    order_stats = counted.group_by("contact_key").agg(step_exprs("orders", window))
    event_stats = (
        events.filter(pl.col("contact_key").is_not_null() & (pl.col("occurred_at") <= window.as_of))
        .group_by("contact_key")
        .agg(*step_exprs("events", window), pl.col("occurred_at").max().alias("_last_event_at"))
    )
    return (
        contacts.select("contact_key", "country")
        .join(order_stats, on="contact_key", how="left")
        .join(_favourite_category(counted), on="contact_key", how="left")
        .join(event_stats, on="contact_key", how="left")
        .with_columns(*fill_defaults(), *step_exprs("activity", window))
        .with_columns(step_exprs("derived", window))
        .select(
            [
                pl.col(name).cast(dtype)
                for name, dtype in FEATURE_COLUMNS.items()
                if name not in SCORE_COLUMNS
            ]
        )
    )


def score_rfm(metrics: pl.LazyFrame) -> pl.LazyFrame:
    """Add the RFM quintile scores to :func:`customer_metrics` rows (any score columns present
    are replaced): ranks among all rows given, so pass every contact.

    Recency ranks on days, not timestamps: two orders on the same day are equally recent to a
    marketer (fewer days = more recent = higher score).
    """
    return _labelled(
        metrics.drop(SCORE_COLUMNS, strict=False).with_columns(step_exprs("score", _TIMELESS))
    )


_TIMELESS = Window.ending(datetime(1970, 1, 1, tzinfo=UTC), 0)  # scores do not depend on time


def _labelled(scored: pl.LazyFrame) -> pl.LazyFrame:
    return (
        scored.with_columns(step_exprs("label", _TIMELESS))
        .select([pl.col(name).cast(dtype) for name, dtype in FEATURE_COLUMNS.items()])
        .sort("contact_key")
    )


# --- scores over parts of the contacts --------------------------------------------------------
# A score ranks a value among every contact's. What the rank needs from the others is how many
# contacts hold each value (one row per distinct value: a few hundred recencies and
# frequencies, the distinct spends), so the metrics can be computed one part of the contacts at
# a time, their value counts added up, and each part scored exactly as the whole would be.


def rank_counts(metrics: pl.LazyFrame) -> dict[str, pl.LazyFrame]:
    """Per quintile score: each ranked value among ``metrics`` and how many rows hold it."""
    return {
        name: metrics.select(rank.value().alias("value"))
        .drop_nulls()
        .group_by("value")
        .agg(pl.len().cast(pl.Int64).alias("n"))
        for name, rank in RANKS.items()
    }


def add_rank_counts(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    """The :func:`rank_counts` of all parts together."""
    return {
        name: pl.concat([part[name] for part in parts])
        .group_by("value")
        .agg(pl.col("n").sum())
        .sort("value")
        for name in RANKS
    }


def score_rfm_by_counts(metrics: pl.LazyFrame, counts: dict[str, pl.DataFrame]) -> pl.LazyFrame:
    """:func:`score_rfm` for some contacts, ranked among all contacts whose value ``counts``
    (:func:`add_rank_counts`) are given: the same scores as ranking them all together.

    A value's average rank is the number of values ranked before it plus the midpoint of its
    ties, ``before + (n + 1) / 2`` - what polars' average rank computes - exact in floating point.
    """
    scored = metrics.drop(SCORE_COLUMNS, strict=False)
    scores = []
    for name, rank in RANKS.items():
        table = counts[name].sort("value", descending=rank.descending)
        value, average = f"_{name}_value", f"_{name}_rank"
        ranks = table.select(
            pl.col("value").alias(value),
            (pl.col("n").cum_sum() - pl.col("n") + (pl.col("n") + 1) / 2).alias(average),
        )
        scored = scored.with_columns(rank.value().alias(value)).join(
            ranks.lazy(), on=value, how="left"
        )
        total = pl.lit(int(table.get_column("n").sum()), pl.UInt32)
        scores.append(quintile_of_rank(pl.col(average), total).alias(name))
    return _labelled(scored.with_columns(scores))

"""Gold layer: customer features, segment membership and the audience to publish.

Feature definitions (``gold/customer_features``, one row per contact, amounts in the reporting
currency, every window ending at ``as_of``):

- orders count when not cancelled/refunded/void and created at or before ``as_of``;
- ``order_count``, ``lifetime_value``: all such orders; ``avg_order_value`` = their mean
  (null without orders); ``first_order_at``/``last_order_at``; ``recency_days`` = whole days
  from the last order to ``as_of``;
- ``frequency``, ``monetary``: orders and revenue in the RFM window (``rfm_window_days``);
- ``r_score``, ``f_score``, ``m_score``: quintile scores 1-5 (5 = most recent / most frequent /
  highest spend) among the contacts with at least one order in the window, see
  :func:`quintile_score`; null for everyone else. ``rfm_score`` concatenates them ("545");
- ``favourite_category``: the category with most orders; ties go to higher spend in it, then the
  alphabetically first category, so it is stable;
- ``events_30d``/``events_90d``: events in the last 30/90 days (events linked to the contact by
  email or anonymous id); ``last_activity_at`` = latest order or event;
  ``days_since_last_activity`` = whole days from it to ``as_of``.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from tasks.core.config import FEATURE_COLUMNS, Segment
from tasks.core.entities import CANCELLED_STATUSES
from tasks.core.normalise import UTC_MICROS

AUDIENCE_SCHEMA: dict[str, pl.DataType] = {
    "segment": pl.String(),
    "contact_key": pl.String(),
    "email": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "phone": pl.String(),
    "country": pl.String(),
    "consent_status": pl.String(),
    "consent_at": UTC_MICROS,
}
"""``gold/audience_members``: what every destination needs to address, greet and prove consent."""

AUDIENCE_FIELDS = ("email", "first_name", "last_name", "phone", "country")


def quintile_score(value: pl.Expr, *, descending: bool = False) -> pl.Expr:
    """Quintile score 1-5 of ``value`` among its non-null entries (null stays null).

    ``score = floor(5 * (r - 0.5) / n) + 1`` where ``r`` is the *average* rank (1 = smallest, or
    largest with ``descending``) and ``n`` the number of non-null values. Using the midpoint of
    each rank:

    - equal values always share a score (a tie straddling a quintile boundary goes to the
      quintile its middle falls in);
    - all values equal, or a single customer: everyone scores 3, "average", not 1 or 5;
    - fewer than 5 customers: scores spread evenly around 3 (two customers: 2 and 4);
    - for large ``n`` each score holds a fifth of the customers.
    """
    rank = value.rank("average", descending=descending)
    count = value.count()
    return (((rank - 0.5) * 5 / count).floor() + 1).clip(1, 5).cast(pl.Int8)


def _exact_sum(amounts: pl.Expr) -> pl.Expr:
    """Sum of amounts, independent of row order (float addition is not associative, so the
    features of a contact would otherwise depend on how rows happened to be partitioned, and
    an incremental run could round differently from a full one)."""
    return amounts.cast(pl.Decimal(38, 6)).sum().cast(pl.Float64)


def _days(later: pl.Expr, earlier: pl.Expr) -> pl.Expr:
    return (later - earlier).dt.total_days().cast(pl.Int64)


SCORE_COLUMNS = ("r_score", "f_score", "m_score", "rfm_score")
"""Population-relative columns: :func:`score_rfm` recomputes them over every contact."""


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
    silver events. See the module docstring for every definition.
    """
    return customer_metrics(
        contacts, orders, events, as_of=as_of, rfm_window_days=rfm_window_days
    ).pipe(score_rfm)


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
    as_of_lit = pl.lit(as_of).cast(UTC_MICROS)
    window_start = as_of_lit - pl.duration(days=rfm_window_days)
    counted = orders.filter(
        ~pl.col("status").fill_null("").is_in(CANCELLED_STATUSES)
        & (pl.col("created_at") <= as_of_lit)
        & pl.col("contact_key").is_not_null()
    )
    in_window = pl.col("created_at") > window_start
    order_stats = counted.group_by("contact_key").agg(
        pl.len().cast(pl.Int64).alias("order_count"),
        _exact_sum(pl.col("amount_reporting")).alias("lifetime_value"),
        pl.col("created_at").min().alias("first_order_at"),
        pl.col("created_at").max().alias("last_order_at"),
        in_window.sum().cast(pl.Int64).alias("frequency"),
        _exact_sum(pl.col("amount_reporting").filter(in_window)).alias("monetary"),
    )
    favourite = (
        counted.filter(pl.col("category").is_not_null())
        .group_by("contact_key", "category")
        .agg(pl.len().alias("_n"), _exact_sum(pl.col("amount_reporting")).alias("_spend"))
        .sort(
            ["contact_key", "_n", "_spend", "category"],
            descending=[False, True, True, False],
        )
        .unique("contact_key", keep="first", maintain_order=True)
        .select("contact_key", pl.col("category").alias("favourite_category"))
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
            pl.col("occurred_at").max().alias("_last_event_at"),
        )
    )
    return (
        contacts.select("contact_key", "country")
        .join(order_stats, on="contact_key", how="left")
        .join(favourite, on="contact_key", how="left")
        .join(event_stats, on="contact_key", how="left")
        .with_columns(
            pl.col("order_count", "frequency", "events_30d", "events_90d").fill_null(0),
            pl.col("lifetime_value", "monetary").fill_null(0.0).round(2),
            pl.max_horizontal("last_order_at", "_last_event_at").alias("last_activity_at"),
        )
        .with_columns(
            pl.when(pl.col("order_count") > 0)
            .then((pl.col("lifetime_value") / pl.col("order_count")).round(2))
            .otherwise(None)
            .alias("avg_order_value"),
            _days(as_of_lit, pl.col("last_order_at")).alias("recency_days"),
            _days(as_of_lit, pl.col("last_activity_at")).alias("days_since_last_activity"),
        )
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
    are replaced): ranks among all rows given, so pass every contact."""
    scored = pl.col("frequency") > 0
    return (
        metrics.drop(SCORE_COLUMNS, strict=False)
        .with_columns(
            # Recency ranks on days, not timestamps: two orders on the same day are equally
            # recent to a marketer. Fewer days = more recent = higher score.
            quintile_score(pl.when(scored).then(pl.col("recency_days")), descending=True).alias(
                "r_score"
            ),
            quintile_score(pl.when(scored).then(pl.col("frequency"))).alias("f_score"),
            quintile_score(pl.when(scored).then(pl.col("monetary"))).alias("m_score"),
        )
        .with_columns(
            pl.concat_str([pl.col("r_score"), pl.col("f_score"), pl.col("m_score")]).alias(
                "rfm_score"
            )
        )
        .select([pl.col(name).cast(dtype) for name, dtype in FEATURE_COLUMNS.items()])
        .sort("contact_key")
    )


def segment_membership(
    features: pl.LazyFrame, segments: list[Segment], *, prefix: str = ""
) -> pl.LazyFrame:
    """``contact_key`` and one boolean column per segment (``prefix`` + its name): is the
    contact a member?

    A predicate that evaluates to null (a comparison with a missing feature) is false. Segments
    with a ``priority`` are mutually exclusive: a contact is a member only of the matching one
    with the lowest priority number; segments without a priority are independent.
    """
    matches = {s.name: s.expr().fill_null(False) for s in segments}
    exclusive = sorted(
        (s for s in segments if s.priority is not None), key=lambda s: s.priority or 0
    )
    columns = {s.name: matches[s.name] for s in segments if s.priority is None}
    taken: pl.Expr = pl.lit(False)
    for segment in exclusive:
        columns[segment.name] = matches[segment.name] & ~taken
        taken = taken | matches[segment.name]
    return features.select(
        "contact_key", *(columns[s.name].alias(prefix + s.name) for s in segments)
    )


def audience_members(
    features: pl.LazyFrame, contacts: pl.LazyFrame, segments: list[Segment]
) -> pl.LazyFrame:
    """Rows ``(segment, contact_key, fields to send)`` for every segment a contact is in.

    Only contacts whose *current* consent is an opt-in are members: consent fails closed.
    """
    if not segments:
        return pl.LazyFrame(schema=AUDIENCE_SCHEMA)
    publishable = contacts.filter(pl.col("consent_status") == "subscribed").select(
        "contact_key",
        *(f for f in AUDIENCE_FIELDS if f != "country"),
        "consent_status",
        "consent_at",
    )
    membership = segment_membership(features, segments, prefix="_in_").join(
        features.select("contact_key", "country"), on="contact_key", how="left"
    )
    base = membership.join(publishable, on="contact_key", how="inner")
    frames = [
        base.filter(pl.col(f"_in_{segment.name}")).select(
            pl.lit(segment.name).alias("segment"), *list(AUDIENCE_SCHEMA)[1:]
        )
        for segment in segments
    ]
    return (
        pl.concat(frames)
        .select([pl.col(n).cast(t) for n, t in AUDIENCE_SCHEMA.items()])
        .sort("segment", "contact_key")
    )

"""The customer features, declared once: name, type, how it is computed, what it means.

``gold/customer_features`` holds one row per contact with the features below (amounts in the
reporting currency, every window ending at ``as_of``). Everything else is derived from this
list, so a feature is added or renamed in one place:

- the table's columns (:data:`FEATURE_COLUMNS`), which segment predicates are checked against
  when ``pipeline.yaml`` loads (:mod:`tasks.core.config`);
- the gold contract ``CustomerFeatures`` (:mod:`tasks.core.contracts`: nullability and bounds);
- the computation (:mod:`tasks.core.features` evaluates each feature's expression in its step);
- the source roles each feature is computed from (:data:`FEATURE_ROLES`), which the volume
  anomaly detector uses to hold the audiences a broken source feeds (:mod:`tasks.core.anomaly`).

Steps, in the order they run (:func:`tasks.core.features.customer_metrics`):

- ``key``/``contact``: taken from the contact's silver row;
- ``orders``: aggregations over the contact's counted orders (not cancelled, refunded or void,
  created at or before ``as_of``);
- ``events``: aggregations over the contact's events at or before ``as_of``;
- ``category``: the favourite category (a ranking, see :mod:`tasks.core.features`);
- ``activity``, then ``derived``: expressions over the joined row (after the defaults of
  contacts without orders or events are filled in);
- ``score``, then ``label``: RFM quintiles, ranked over every contact (see ``score_rfm``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import polars as pl

from tasks.core.normalise import CONTACT_KEY_PATTERN, UTC_MICROS

Step = Literal[
    "key", "contact", "orders", "events", "category", "activity", "derived", "score", "label"
]
RFM_PATTERN = r"^[1-5]{3}$"

_CONTACTS = frozenset({"contacts"})
_ORDERS = frozenset({"orders"})
_EVENTS = frozenset({"events"})


@dataclass(frozen=True)
class Window:
    """What time-relative expressions need: ``as_of`` and the start of the RFM window."""

    as_of: pl.Expr
    rfm_start: pl.Expr

    @classmethod
    def ending(cls, as_of: datetime, rfm_window_days: int) -> Window:
        at = pl.lit(as_of).cast(UTC_MICROS)
        return cls(as_of=at, rfm_start=at - pl.duration(days=rfm_window_days))

    @property
    def in_rfm_window(self) -> pl.Expr:
        return pl.col("created_at") > self.rfm_start

    def events_within(self, days: int) -> pl.Expr:
        """Events in the last ``days`` days (of the events at or before ``as_of``)."""
        return (pl.col("occurred_at") > self.as_of - pl.duration(days=days)).sum().cast(pl.Int64)


Expression = Callable[[Window], pl.Expr]


@dataclass(frozen=True)
class Feature:
    """One column of ``gold/customer_features``.

    ``expr`` computes it in its ``step`` (None: computed by a dedicated function, see the module
    doc), or ``rank`` when it is a quintile score; ``fill`` is its value for a contact without
    orders/events (then rounded to ``round_to`` digits); ``roles`` are the source roles it is
    computed from. ``nullable``,
    ``ge``, ``le``, ``pattern`` and ``unique`` are its contract.
    """

    name: str
    dtype: pl.DataType
    doc: str
    step: Step
    roles: frozenset[str]
    expr: Expression | None = None
    fill: int | float | None = None
    round_to: int | None = None
    nullable: bool = True
    ge: int | None = None
    le: int | None = None
    pattern: str | None = None
    unique: bool = False
    rank: Rank | None = None

    def expression(self, window: Window) -> pl.Expr | None:
        """How the feature is computed in its step (None: by a dedicated function)."""
        if self.rank is not None:
            return self.rank.score(window)
        return None if self.expr is None else self.expr(window)


def exact_sum(amounts: pl.Expr) -> pl.Expr:
    """Sum of amounts, independent of row order (float addition is not associative, so the
    features of a contact would otherwise depend on how rows happened to be partitioned, and
    an incremental run could round differently from a full one)."""
    return amounts.cast(pl.Decimal(38, 6)).sum().cast(pl.Float64)


def days_between(later: pl.Expr, earlier: pl.Expr) -> pl.Expr:
    """Whole days from ``earlier`` to ``later``."""
    return (later - earlier).dt.total_days().cast(pl.Int64)


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
    return quintile_of_rank(value.rank("average", descending=descending), value.count())


def quintile_of_rank(rank: pl.Expr, count: pl.Expr) -> pl.Expr:
    """:func:`quintile_score` from a value's average rank among ``count`` values."""
    return (((rank - 0.5) * 5 / count).floor() + 1).clip(1, 5).cast(pl.Int8)


@dataclass(frozen=True)
class Rank:
    """How a quintile score ranks: ``column`` among contacts with an order in the RFM window,
    ascending unless ``descending`` (see :func:`quintile_score`)."""

    column: str
    descending: bool = False

    def value(self) -> pl.Expr:
        """The ranked value: ``column`` for contacts ordering in the window, else null."""
        return pl.when(pl.col("frequency") > 0).then(pl.col(self.column))

    def score(self, _: Window) -> pl.Expr:
        """The score among every row of the frame it is evaluated on."""
        return quintile_score(self.value(), descending=self.descending)


CUSTOMER_FEATURES: tuple[Feature, ...] = (
    Feature(
        "contact_key",
        pl.String(),
        "The contact (a keyed hash of the normalised email).",
        "key",
        _CONTACTS,
        nullable=False,
        unique=True,
        pattern=CONTACT_KEY_PATTERN,
    ),
    Feature(
        "country",
        pl.String(),
        "ISO 3166 country of the contact (from contacts or enrichment).",
        "contact",
        frozenset({"contacts", "enrichment"}),
    ),
    Feature(
        "order_count",
        pl.Int64(),
        "All-time counted orders.",
        "orders",
        _ORDERS,
        expr=lambda w: pl.len().cast(pl.Int64),
        fill=0,
        nullable=False,
        ge=0,
    ),
    Feature(
        "lifetime_value",
        pl.Float64(),
        "All-time revenue of counted orders.",
        "orders",
        _ORDERS,
        expr=lambda w: exact_sum(pl.col("amount_reporting")),
        fill=0.0,
        round_to=2,
        nullable=False,
        ge=0,
    ),
    Feature(
        "avg_order_value",
        pl.Float64(),
        "lifetime_value / order_count; null without orders.",
        "derived",
        _ORDERS,
        expr=lambda w: (
            pl.when(pl.col("order_count") > 0)
            .then((pl.col("lifetime_value") / pl.col("order_count")).round(2))
            .otherwise(None)
        ),
        ge=0,
    ),
    Feature(
        "first_order_at",
        UTC_MICROS,
        "When the first counted order was created.",
        "orders",
        _ORDERS,
        expr=lambda w: pl.col("created_at").min(),
    ),
    Feature(
        "last_order_at",
        UTC_MICROS,
        "When the latest counted order was created.",
        "orders",
        _ORDERS,
        expr=lambda w: pl.col("created_at").max(),
    ),
    Feature(
        "recency_days",
        pl.Int64(),
        "Whole days from the last order to as_of; null without orders.",
        "derived",
        _ORDERS,
        expr=lambda w: days_between(w.as_of, pl.col("last_order_at")),
        ge=0,
    ),
    Feature(
        "frequency",
        pl.Int64(),
        "Counted orders in the RFM window (rfm_window_days before as_of).",
        "orders",
        _ORDERS,
        expr=lambda w: w.in_rfm_window.sum().cast(pl.Int64),
        fill=0,
        nullable=False,
        ge=0,
    ),
    Feature(
        "monetary",
        pl.Float64(),
        "Revenue of counted orders in the RFM window.",
        "orders",
        _ORDERS,
        expr=lambda w: exact_sum(pl.col("amount_reporting").filter(w.in_rfm_window)),
        fill=0.0,
        round_to=2,
        nullable=False,
        ge=0,
    ),
    Feature(
        "r_score",
        pl.Int8(),
        "Recency quintile 1-5 (5 = most recent) among contacts ordering in the window.",
        "score",
        _ORDERS,
        rank=Rank("recency_days", descending=True),
        ge=1,
        le=5,
    ),
    Feature(
        "f_score",
        pl.Int8(),
        "Frequency quintile 1-5 (5 = most orders) among contacts ordering in the window.",
        "score",
        _ORDERS,
        rank=Rank("frequency"),
        ge=1,
        le=5,
    ),
    Feature(
        "m_score",
        pl.Int8(),
        "Monetary quintile 1-5 (5 = highest spend) among contacts ordering in the window.",
        "score",
        _ORDERS,
        rank=Rank("monetary"),
        ge=1,
        le=5,
    ),
    Feature(
        "rfm_score",
        pl.String(),
        'The three scores together, e.g. "545"; null without orders in the window.',
        "label",
        _ORDERS,
        expr=lambda w: pl.concat_str([pl.col("r_score"), pl.col("f_score"), pl.col("m_score")]),
        pattern=RFM_PATTERN,
    ),
    Feature(
        "favourite_category",
        pl.String(),
        "Category with most counted orders; ties: higher spend, then alphabetical.",
        "category",
        _ORDERS,
    ),
    Feature(
        "events_30d",
        pl.Int64(),
        "Events in the 30 days up to as_of (linked by email or anonymous id).",
        "events",
        _EVENTS,
        expr=lambda w: w.events_within(30),
        fill=0,
        nullable=False,
        ge=0,
    ),
    Feature(
        "events_90d",
        pl.Int64(),
        "Events in the 90 days up to as_of.",
        "events",
        _EVENTS,
        expr=lambda w: w.events_within(90),
        fill=0,
        nullable=False,
        ge=0,
    ),
    Feature(
        "last_activity_at",
        UTC_MICROS,
        "The latest order or event.",
        "activity",
        _ORDERS | _EVENTS,
        expr=lambda w: pl.max_horizontal("last_order_at", "_last_event_at"),
    ),
    Feature(
        "days_since_last_activity",
        pl.Int64(),
        "Whole days from last_activity_at to as_of.",
        "derived",
        _ORDERS | _EVENTS,
        expr=lambda w: days_between(w.as_of, pl.col("last_activity_at")),
        ge=0,
    ),
)

FEATURE_COLUMNS: dict[str, pl.DataType] = {f.name: f.dtype for f in CUSTOMER_FEATURES}
"""Columns of ``gold/customer_features``, in order: what a segment predicate may read."""

FEATURE_ROLES: dict[str, frozenset[str]] = {f.name: f.roles for f in CUSTOMER_FEATURES}
"""The source roles each feature is computed from."""

SCORE_COLUMNS = tuple(f.name for f in CUSTOMER_FEATURES if f.step in ("score", "label"))
"""Population-relative columns: recomputed over every contact (``score_rfm``)."""

RANKS: dict[str, Rank] = {f.name: f.rank for f in CUSTOMER_FEATURES if f.rank is not None}
"""The quintile scores and how each ranks."""


def features_in(step: Step) -> tuple[Feature, ...]:
    """The features computed in ``step``, in catalogue order."""
    return tuple(f for f in CUSTOMER_FEATURES if f.step == step)


def step_exprs(step: Step, window: Window) -> list[pl.Expr]:
    """The expressions of ``step``'s features, each named after its feature."""
    exprs = ((f.name, f.expression(window)) for f in features_in(step))
    return [expr.alias(name) for name, expr in exprs if expr is not None]


def fill_defaults() -> list[pl.Expr]:
    """Values of contacts without orders or events (counts 0, amounts 0.00)."""
    exprs = []
    for f in CUSTOMER_FEATURES:
        if f.fill is None:
            continue
        expr = pl.col(f.name).fill_null(f.fill)
        exprs.append(expr if f.round_to is None else expr.round(f.round_to))
    return exprs

"""``gold/customer_features``: definitions, RFM scoring edge cases, determinism."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.config import FEATURE_COLUMNS
from tasks.core.contracts import CustomerFeatures, split_valid
from tasks.core.features import (
    add_rank_counts,
    customer_features,
    customer_metrics,
    quintile_score,
    rank_counts,
    score_rfm,
    score_rfm_by_counts,
)

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


def days_ago(days: float) -> datetime:
    return AS_OF - timedelta(days=days)


def key(n: int) -> str:
    return f"v1:{n:064x}"


def contacts(n: int) -> pl.LazyFrame:
    return pl.LazyFrame({"contact_key": [key(i) for i in range(n)], "country": ["DE"] * n})


def orders(rows: list[tuple[int, float, float]], **extra: list[object]) -> pl.LazyFrame:
    """``(contact, amount_reporting, days ago)`` per order."""
    n = len(rows)
    data: dict[str, list[object]] = {
        "contact_key": [key(c) for c, _, _ in rows],
        "amount_reporting": [a for _, a, _ in rows],
        "created_at": [days_ago(d) for _, _, d in rows],
        "status": ["paid"] * n,
        "category": ["books"] * n,
    }
    data.update(extra)
    return pl.LazyFrame(
        data,
        schema={"contact_key": pl.String, "amount_reporting": pl.Float64,
                "created_at": pl.Datetime("us", "UTC"), "status": pl.String,
                "category": pl.String},
    )  # fmt: skip


def events(rows: list[tuple[int, float]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {"contact_key": [key(c) for c, _ in rows], "occurred_at": [days_ago(d) for _, d in rows]},
        schema={"contact_key": pl.String, "occurred_at": pl.Datetime("us", "UTC")},
    )


NO_EVENTS = events([])


def features(
    n: int, order_rows: pl.LazyFrame, event_rows: pl.LazyFrame = NO_EVENTS, window: int = 365
) -> pl.DataFrame:
    out = customer_features(
        contacts(n), order_rows, event_rows, as_of=AS_OF, rfm_window_days=window
    ).collect()
    # Every result must satisfy the gold contract.
    split = split_valid(
        out, CustomerFeatures, table="gold/customer_features", run_id="t", now=AS_OF
    )
    assert split.rejected == 0, split.quarantine.to_dicts()
    return out


def scores(df: pl.DataFrame, column: str) -> list[int | None]:
    return df.sort("contact_key")[column].to_list()


def test_feature_definitions_for_one_customer() -> None:
    rows = orders(
        [(0, 100.0, 400), (0, 50.0, 10), (0, 30.0, 5), (0, 999.0, 3)],
        status=["paid", "paid", "delivered", "cancelled"],
        category=["home", "books", "books", "home"],
    )
    row = features(1, rows, events([(0, 2), (0, 45), (0, 200), (0, -1)])).row(0, named=True)
    assert row["order_count"] == 3  # the cancelled order does not count
    assert row["lifetime_value"] == 180.0
    assert row["avg_order_value"] == 60.0
    assert row["first_order_at"] == days_ago(400) and row["last_order_at"] == days_ago(5)
    assert row["recency_days"] == 5
    assert (row["frequency"], row["monetary"]) == (2, 80.0)  # the 400-day-old order is outside
    assert row["favourite_category"] == "books"
    assert (row["events_30d"], row["events_90d"]) == (1, 2)  # a future event (-1 day) ignored
    assert row["last_activity_at"] == days_ago(2) and row["days_since_last_activity"] == 2
    assert row["rfm_score"] == "333"  # a single customer is "average" on every axis


def test_contacts_without_orders_have_zero_counts_and_no_scores() -> None:
    out = features(3, orders([(0, 10.0, 1)]), events([(2, 3)]))
    none, buyer, browser = (out.sort("contact_key").row(i, named=True) for i in (1, 0, 2))
    assert buyer["r_score"] == 3
    for row in (none, browser):
        assert (row["order_count"], row["lifetime_value"], row["frequency"]) == (0, 0.0, 0)
        assert row["avg_order_value"] is None and row["recency_days"] is None
        assert row["r_score"] is None and row["rfm_score"] is None
        assert row["favourite_category"] is None
    assert none["last_activity_at"] is None and none["days_since_last_activity"] is None
    assert browser["days_since_last_activity"] == 3 and browser["events_30d"] == 1


def test_orders_only_outside_the_window_are_not_scored() -> None:
    out = features(2, orders([(0, 10.0, 500), (1, 10.0, 5)]))
    old, recent = out.sort("contact_key").rows(named=True)
    assert old["order_count"] == 1 and old["frequency"] == 0
    assert old["r_score"] is None and old["recency_days"] == 500
    assert recent["rfm_score"] == "333"


def test_no_orders_at_all() -> None:
    out = features(4, orders([]))
    assert out.height == 4
    assert out["r_score"].null_count() == 4
    assert out["order_count"].to_list() == [0, 0, 0, 0]


def test_all_customers_equal_score_three() -> None:
    out = features(7, orders([(c, 25.0, 10) for c in range(7)]))
    assert set(out["rfm_score"]) == {"333"}


@pytest.mark.parametrize(
    ("monetary", "expected"),
    [
        ([10.0], [3]),
        ([10.0, 20.0], [2, 4]),
        ([10.0, 20.0, 30.0], [1, 3, 5]),
        ([10.0, 20.0, 30.0, 40.0], [1, 2, 4, 5]),
        ([10.0, 20.0, 30.0, 40.0, 50.0], [1, 2, 3, 4, 5]),
        ([10.0, 10.0, 30.0, 40.0], [2, 2, 4, 5]),  # ties share the score of their midpoint
    ],
)
def test_fewer_than_five_customers_spread_around_three(
    monetary: list[float], expected: list[int]
) -> None:
    out = features(len(monetary), orders([(c, m, 10) for c, m in enumerate(monetary)]))
    assert scores(out, "m_score") == expected


def test_recency_scores_favour_the_most_recent_and_count_days_not_seconds() -> None:
    rows = [(0, 10.0, 300), (1, 10.0, 30), (2, 10.0, 30.2), (3, 10.0, 1), (4, 10.0, 100)]
    out = features(5, orders(rows))
    r = scores(out, "r_score")
    assert r[3] == 5 and r[0] == 1
    assert r[1] == r[2]  # 30 and 30.2 days ago: the same day for recency


def test_large_populations_fill_each_quintile_equally() -> None:
    n = 1000
    out = features(n, orders([(c, float(c + 1), 10) for c in range(n)]))
    counts = out.group_by("m_score").len().sort("m_score")
    assert counts["len"].to_list() == [200] * 5
    assert set(out["f_score"]) == {3}  # everyone bought once


@given(st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=1, max_size=40))
@settings(max_examples=100, deadline=None)
def test_quintile_score_properties(values: list[int | None]) -> None:
    out = pl.DataFrame({"v": values}, schema={"v": pl.Int64}).with_columns(
        up=quintile_score(pl.col("v")), down=quintile_score(pl.col("v"), descending=True)
    )
    scored = out.drop_nulls("v")
    unscored = out.filter(pl.col("v").is_null())
    assert unscored["up"].null_count() == unscored["down"].null_count() == unscored.height
    if scored.is_empty():
        return
    assert scored["up"].is_between(1, 5).all() and scored["down"].is_between(1, 5).all()
    # Monotone in the value (either direction) and ties share a score.
    ordered = scored.sort("v")
    assert ordered["up"].is_sorted()
    assert ordered["down"].is_sorted(descending=True)
    assert scored.group_by("v").agg(pl.col("up").n_unique())["up"].max() == 1
    # One distinct value (everyone equal, or a single customer): the middle score.
    if scored["v"].n_unique() == 1:
        assert set(scored["up"]) == {3}


def test_favourite_category_tie_breaks_on_spend_then_name() -> None:
    rows = orders(
        [(0, 10.0, 5), (0, 30.0, 4), (1, 10.0, 5), (1, 10.0, 4)],
        category=["toys", "books", "toys", "art"],
    )
    out = features(2, rows)
    assert scores(out, "favourite_category") == ["books", "art"]


def test_feature_columns_match_the_config_and_rows_are_sorted() -> None:
    out = features(3, orders([(2, 1.0, 1), (0, 2.0, 2)]))
    assert dict(out.schema) == FEATURE_COLUMNS
    assert out["contact_key"].is_sorted()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),  # frequency (0: no order in the window, so no scores)
            st.integers(0, 12),  # recency in days: many ties
            st.sampled_from([0.0, 9.99, 10.0, 25.5, 100.0, 1e6]),  # spend: ties too
        ),
        min_size=1,
        max_size=60,
    ),
    parts=st.integers(1, 5),
)
def test_scores_from_value_counts_equal_scores_over_everyone(
    rows: list[tuple[int, int, float]], parts: int
) -> None:
    """Scoring parts of the contacts against the value counts of all (a build in buckets)
    gives every contact the score ranking all of them together gives."""
    metrics = customer_metrics(
        contacts(len(rows)), orders([(0, 1.0, 1.0)]), events([]), as_of=AS_OF
    ).collect()
    metrics = metrics.with_columns(
        pl.Series("frequency", [f for f, _, _ in rows], pl.Int64),
        pl.Series("recency_days", [r for _, r, _ in rows], pl.Int64),
        pl.Series("monetary", [m for _, _, m in rows], pl.Float64),
    )
    together = score_rfm(metrics.lazy()).collect()
    part = pl.int_range(pl.len()) % parts
    pieces = [metrics.filter(part == p) for p in range(parts)]
    counts = add_rank_counts(
        [{n: c.collect() for n, c in rank_counts(piece.lazy()).items()} for piece in pieces]
    )
    apart = pl.concat(
        [score_rfm_by_counts(piece.lazy(), counts).collect() for piece in pieces]
    ).sort("contact_key")
    assert apart.equals(together)

"""Pure pieces of the incremental transform (tasks.core.incremental, features' RFM split)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tasks.core.features import customer_features, customer_metrics, score_rfm
from tasks.core.incremental import (
    COPIES,
    RECORD_HASH,
    SEQ,
    StagingState,
    TransformState,
    changed_rows,
    distinct_records,
    fingerprint,
    live_counts,
    live_rows,
    net_changes,
    row_hash,
    staging_updates,
)
from tasks.core.normalise import UTC_MICROS

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


def frame(**columns: list[object]) -> pl.DataFrame:
    return pl.DataFrame(columns)


# --- net_changes: what a MERGE really changed --------------------------------------------------
def test_rows_a_merge_only_copied_cancel_out() -> None:
    old_file = frame(id=["1", "2", "3"], email=["a@x.io", "b@x.io", "c@x.io"])
    new_file = frame(id=["1", "2", "3"], email=["a@x.io", "B2@x.io", "c@x.io"])
    added, removed = net_changes(new_file.lazy(), old_file.lazy(), columns=["id", "email"])
    assert added.collect().to_dicts() == [{"id": "2", "email": "B2@x.io"}]
    assert removed.collect().to_dicts() == [{"id": "2", "email": "b@x.io"}]


def test_identical_rows_are_counted_as_a_multiset() -> None:
    row = {"id": ["7"], "v": [1]}
    two = pl.concat([frame(**row), frame(**row)])
    added, removed = net_changes(two.lazy(), frame(**row).lazy(), columns=["id", "v"])
    assert added.collect().height == 1 and removed.collect().height == 0
    added, removed = net_changes(frame(**row).lazy(), two.lazy(), columns=["id", "v"])
    assert added.collect().height == 0 and removed.collect().height == 1


def test_null_values_compare_equal() -> None:
    left = frame(id=["1"], v=[None]).cast({"v": pl.Int64})
    added, removed = net_changes(left.lazy(), left.lazy(), columns=["id", "v"])
    assert added.collect().is_empty() and removed.collect().is_empty()


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2)), max_size=12),
    after=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2)), max_size=12),
)
def test_net_changes_turn_before_into_after(
    before: list[tuple[int, int]], after: list[tuple[int, int]]
) -> None:
    """before - removed + added == after, as multisets, for any two versions."""

    def as_frame(rows: list[tuple[int, int]]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema={"k": pl.Int64, "v": pl.Int64}, orient="row")

    added, removed = net_changes(
        as_frame(after).lazy(), as_frame(before).lazy(), columns=["k", "v"]
    )
    remaining = sorted(before)
    for row in removed.collect().iter_rows():
        remaining.remove(row)
    assert sorted(remaining + list(added.collect().iter_rows())) == sorted(after)


def test_row_hash_ignores_column_order() -> None:
    df = frame(a=[1], b=["x"])
    one = df.select(row_hash(["a", "b"])).item()
    two = df.select(["b", "a"]).select(row_hash(["b", "a"])).item()
    assert one == two and isinstance(one, int)


# --- the staging log --------------------------------------------------------------------------
def records(*emails: str) -> pl.DataFrame:
    return distinct_records(
        pl.LazyFrame({"_source": ["crm"] * len(emails), "email": list(emails)})
    ).collect()


def test_distinct_records_collapse_identical_rows_into_copies() -> None:
    staged = records("a@x.io", "a@x.io", "b@x.io").sort("email")
    assert staged.select("email", COPIES).rows() == [("a@x.io", 2), ("b@x.io", 1)]
    assert staged.get_column(RECORD_HASH).dtype == pl.Int64


def current(log: pl.DataFrame) -> pl.LazyFrame:
    return log.lazy().select(RECORD_HASH, COPIES)


def test_staging_updates_add_remove_and_ignore_unknown_removals() -> None:
    first = staging_updates(
        current(records().head(0)), records("a@x.io", "b@x.io").lazy(), records().lazy(), seq=1
    ).collect()
    assert sorted(first.select("email", COPIES, SEQ).rows()) == [
        ("a@x.io", 1, 1),
        ("b@x.io", 1, 1),
    ]
    # b is removed; c was never staged (it failed its contract): removing it changes nothing;
    # a gains a second identical copy.
    second = staging_updates(
        current(first),
        records("a@x.io").lazy(),
        records("b@x.io", "c@x.io").lazy(),
        seq=2,
    ).collect()
    assert sorted(second.select("email", COPIES, SEQ).rows()) == [
        ("a@x.io", 2, 2),
        ("b@x.io", 0, 2),
    ]
    log = pl.concat([first, second])
    live = live_rows(log.lazy()).collect()
    assert live.columns == ["_source", "email"]
    assert live.get_column("email").to_list() == ["a@x.io", "a@x.io"]
    assert live_counts(log.lazy()).collect().rows() == [("crm", 2)]


def test_an_unchanged_record_appends_nothing() -> None:
    staged = records("a@x.io").with_columns(pl.lit(1, pl.Int64).alias(SEQ))
    same = staging_updates(
        current(staged), records("a@x.io").lazy(), records("a@x.io").lazy(), seq=2
    )
    assert same.collect().is_empty()


def test_live_rows_of_a_subset_keep_the_full_orders_relative_order() -> None:
    log = records(*(f"p{i}@x.io" for i in range(30))).with_columns(pl.lit(1, pl.Int64).alias(SEQ))
    everything = live_rows(log.lazy()).collect().get_column("email").to_list()
    subset = {f"p{i}@x.io" for i in range(0, 30, 3)}
    part = live_rows(log.lazy().filter(pl.col("email").is_in(subset))).collect()
    assert part.get_column("email").to_list() == [e for e in everything if e in subset]


# --- writing only changes ---------------------------------------------------------------------
def test_changed_rows_find_upserts_and_deletes_null_safely() -> None:
    table = frame(k=["a", "b", "c"], v=[1, None, 3])
    new = frame(k=["a", "b", "d"], v=[1, None, 4])
    upserts, deletes = changed_rows(new.lazy(), table.lazy(), keys=["k"])
    assert upserts.collect().rows() == [("d", 4)]
    assert deletes.collect().rows() == [("c",)]
    upserts, _ = changed_rows(
        frame(k=["b"], v=[2]).lazy(), table.lazy(), keys=["k"]
    )  # null -> 2 is a change
    assert upserts.collect().rows() == [("b", 2)]


# --- state in commit metadata -----------------------------------------------------------------
def test_states_round_trip_through_commit_metadata() -> None:
    staging = StagingState("fp", 4, {"crm": 7}, {"crm": "m1"}, {"crm": 120})
    commit = {"operation": "WRITE", **staging.to_metadata()}
    assert StagingState.from_commit(commit) == staging
    assert StagingState.from_commit({"operation": "OPTIMIZE"}) is None
    counted = StagingState("fp", 5, {"crm": 8}, {"crm": "m1"}, {"crm": 118}, {"crm": 2})
    assert StagingState.from_commit(counted.to_metadata()) == counted
    assert StagingState.from_commit(staging.to_metadata()).rejected is None  # type: ignore[union-attr]
    built = TransformState("fp2", AS_OF.isoformat(), {"orders": 3}, {"silver/orders": 9})
    assert TransformState.from_commit({**built.to_metadata()}) == built
    assert TransformState.from_commit(staging.to_metadata()) is None


def test_fingerprint_follows_its_parts() -> None:
    assert fingerprint({"a": 1}) == fingerprint({"a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


# --- features of a subset + rescoring == features of everyone ---------------------------------
def sample_silver(people: int = 40) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    keys = [f"k{i:03d}" for i in range(people)]
    contacts = pl.LazyFrame({"contact_key": keys, "country": ["DE"] * people})
    orders = pl.LazyFrame(
        {
            "contact_key": [keys[i % people] for i in range(3 * people) if i % 7],
            "amount_reporting": [
                round(10.01 + (i * 37 % 300) * 0.92, 4) for i in range(3 * people) if i % 7
            ],
            "category": [["books", "home", "toys"][i % 3] for i in range(3 * people) if i % 7],
            "status": ["paid"] * len([i for i in range(3 * people) if i % 7]),
            "created_at": [
                datetime(2026, 1 + i % 10, 1 + i % 27, tzinfo=UTC)
                for i in range(3 * people)
                if i % 7
            ],
        }
    ).with_columns(pl.col("created_at").cast(UTC_MICROS))
    events = pl.LazyFrame(
        {
            "contact_key": [keys[i % people] for i in range(2 * people)],
            "occurred_at": [datetime(2026, 10, 1 + i % 30, tzinfo=UTC) for i in range(2 * people)],
        }
    ).with_columns(pl.col("occurred_at").cast(UTC_MICROS))
    return contacts, orders, events


def test_rescoring_subset_metrics_equals_a_full_computation() -> None:
    contacts, orders, events = sample_silver()
    full = customer_features(contacts, orders, events, as_of=AS_OF).collect()
    affected = ["k003", "k010", "k011", "k039"]

    def only(lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.filter(pl.col("contact_key").is_in(affected))

    fresh = customer_metrics(only(contacts), only(orders), only(events), as_of=AS_OF)
    kept = full.lazy().filter(~pl.col("contact_key").is_in(affected))
    rescored = score_rfm(
        pl.concat([kept.drop("r_score", "f_score", "m_score", "rfm_score"), fresh])
    )
    assert_frame_equal(rescored.collect(), full)


def test_features_do_not_depend_on_row_order() -> None:
    contacts, orders, events = sample_silver()
    straight = customer_features(contacts, orders, events, as_of=AS_OF).collect()
    shuffled = orders.collect().sample(fraction=1.0, shuffle=True, seed=3).lazy()
    assert_frame_equal(
        customer_features(contacts, shuffled, events, as_of=AS_OF).collect(), straight
    )


def test_amount_sums_are_exact_whatever_the_row_order() -> None:
    """Float addition depends on order; the features' sums do not (they add decimals).

    These amounts add up to exactly 556.335. Summed as floats, one order rounds to 556.34 and
    the reverse to 556.33 (found by searching; with plain float sums this test fails), so
    an incremental run, which sums a contact's orders in a different order than a full run
    does, would disagree with it by a cent.
    """
    amounts = [92.1141, 191.4237, 272.7972]

    def features(values: list[float]) -> pl.DataFrame:
        orders = pl.LazyFrame(
            {
                "contact_key": ["k"] * len(values),
                "amount_reporting": values,
                "category": ["x"] * len(values),
                "status": ["paid"] * len(values),
                "created_at": [datetime(2026, 5, 1, tzinfo=UTC)] * len(values),
            }
        ).with_columns(pl.col("created_at").cast(UTC_MICROS))
        contacts = pl.LazyFrame({"contact_key": ["k"], "country": ["DE"]})
        events = pl.LazyFrame(schema={"contact_key": pl.String, "occurred_at": UTC_MICROS})
        return customer_features(contacts, orders, events, as_of=AS_OF).collect()

    assert_frame_equal(features(amounts), features(amounts[::-1]))
    assert features(amounts).item(0, "lifetime_value") in (556.33, 556.34)

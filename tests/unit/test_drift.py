"""Schema drift at the bronze boundary (pure: no lake, no IO)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tasks.core.contracts import QUARANTINE_SCHEMA
from tasks.core.drift import (
    DriftSplit,
    Rejection,
    rejection_records,
    split_drift,
    type_conflict_rule,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def split(
    frame: pl.DataFrame, target: dict[str, pl.DataType] | None, key: str | None = "id"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    result: DriftSplit = split_drift(
        frame.lazy(),
        target=target,
        primary_key=key,
        table="bronze/src",
        source="src",
        run_id="r1",
        now=NOW,
    )
    valid, quarantine = pl.collect_all([result.valid, result.quarantine])
    return valid, quarantine


def test_without_bronze_every_keyed_row_passes_unchanged() -> None:
    frame = pl.DataFrame({"id": ["1", "2"], "x": [1, 2], "nested": [{"a": 1}, {"a": 2}]})
    valid, quarantine = split(frame, None)
    assert_frame_equal(valid, frame)
    assert quarantine.is_empty()
    assert quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)


def test_new_columns_pass_through_for_the_lake_to_evolve() -> None:
    frame = pl.DataFrame({"id": ["1"], "amount": [1.5], "brand_new": ["x"]})
    valid, quarantine = split(frame, {"id": pl.String(), "amount": pl.Float64()})
    assert valid.columns == ["id", "amount", "brand_new"]
    assert quarantine.is_empty()


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_missing_primary_key_quarantines_the_row(missing: str | None) -> None:
    frame = pl.DataFrame({"id": ["a", missing, "c"], "v": ["1", "2", "3"]})
    valid, quarantine = split(frame, None)
    assert valid["id"].to_list() == ["a", "c"]
    record = quarantine.row(0, named=True)
    assert (record["rule"], record["column"], record["source"]) == (
        "missing_primary_key",
        "id",
        "src",
    )
    assert json.loads(record["row"]) == {"id": missing, "v": "2"}


def test_absent_key_column_quarantines_every_row() -> None:
    valid, quarantine = split(pl.DataFrame({"other": [1, 2]}), None)
    assert valid.height == 0
    assert quarantine["rule"].to_list() == ["missing_primary_key"] * 2


def test_text_that_fits_bronze_is_cast_and_text_that_does_not_is_quarantined() -> None:
    frame = pl.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5"],
            "amount": ["2.5", " 7 ", "lots", None, ""],
            "paid_at": ["2026-01-01T10:00:00Z", "2026-01-01 12:00:00+02:00", None, "soon", None],
            "active": ["true", "no", "1", None, "maybe"],
        }
    )
    target = {
        "id": pl.String(),
        "amount": pl.Float64(),
        "paid_at": pl.Datetime("us", "UTC"),
        "active": pl.Boolean(),
    }
    valid, quarantine = split(frame, target)
    assert valid.schema == pl.Schema(target)
    assert valid.rows() == [
        ("1", 2.5, datetime(2026, 1, 1, 10, tzinfo=UTC), True),
        ("2", 7.0, datetime(2026, 1, 1, 10, tzinfo=UTC), False),
    ]
    assert sorted(quarantine.select("rule", "column", "value").rows()) == [
        ("type_conflict(Boolean)", "active", "maybe"),
        ("type_conflict(Datetime[us, UTC])", "paid_at", "soon"),
        ("type_conflict(Float64)", "amount", "lots"),
    ]
    # Row 3 broke one rule, row 4 one, row 5 one: three rows quarantined, two written.
    rows = {json.loads(r)["id"] for r in quarantine["row"]}
    assert rows == {"3", "4", "5"}


def test_lossy_numeric_changes_conflict_and_lossless_ones_are_cast() -> None:
    frame = pl.DataFrame({"id": ["a", "b", "c"], "qty": [1.0, 2.5, None], "n": [1, 2, 3]})
    valid, quarantine = split(frame, {"id": pl.String(), "qty": pl.Int64(), "n": pl.Float64()})
    assert valid.rows() == [("a", 1, 1.0), ("c", None, 3.0)]
    assert quarantine.select("rule", "value").rows() == [("type_conflict(Int64)", "2.5")]


def test_timestamps_dates_and_nested_values() -> None:
    frame = pl.DataFrame(
        {
            "id": ["a", "b"],
            "at": [datetime(2026, 1, 1, 8), datetime(2026, 1, 2, 9)],  # naive: read as UTC
            "day": [datetime(2026, 1, 1), datetime(2026, 1, 2, 13)],  # a time of day is lost
            "tags": [["x"], ["y", "z"]],
        }
    )
    target = {
        "id": pl.String(),
        "at": pl.Datetime("us", "UTC"),
        "day": pl.Date(),
        "tags": pl.String(),
    }
    valid, quarantine = split(frame, target)
    assert valid.height == 0  # lists never fit a text column
    assert sorted(zip(quarantine["rule"], quarantine["value"], strict=True)) == [
        ("type_conflict(Date)", "2026-01-02 13:00:00.000000"),
        ("type_conflict(String)", '["x"]'),
        ("type_conflict(String)", '["y","z"]'),
    ]
    fine = frame.drop("tags")
    valid, quarantine = split(fine.head(1), target)
    assert valid.rows() == [("a", datetime(2026, 1, 1, 8, tzinfo=UTC), date(2026, 1, 1))]


def test_all_null_columns_take_bronze_type_or_text() -> None:
    frame = pl.DataFrame({"id": ["a"], "known": [None], "unknown": [None]})
    valid, _ = split(frame, {"id": pl.String(), "known": pl.Int64()})
    assert valid.schema == pl.Schema({"id": pl.String, "known": pl.Int64, "unknown": pl.String})


def test_binary_rows_are_recorded_as_hex() -> None:
    frame = pl.DataFrame({"id": [None], "blob": [b"\x00\xff"]})
    _valid, quarantine = split(frame, None)
    assert json.loads(quarantine["row"].item()) == {"id": None, "blob": "00ff"}


def test_quarantine_ids_are_stable_and_ignore_columns_added_later() -> None:
    frame = pl.DataFrame({"id": ["1"], "amount": ["x"]})
    target = {"id": pl.String(), "amount": pl.Float64()}
    _, first = split(frame, target)
    _, again = split(frame, target)
    _, evolved = split(frame.with_columns(pl.lit(None, pl.String).alias("added")), target)
    assert first["quarantine_id"].to_list() == again["quarantine_id"].to_list()
    assert first["quarantine_id"].to_list() == evolved["quarantine_id"].to_list()
    _, other = split(pl.DataFrame({"id": ["2"], "amount": ["x"]}), target)
    assert other["quarantine_id"].item() != first["quarantine_id"].item()


def test_rejection_records_name_file_version_and_reason() -> None:
    records = rejection_records(
        [
            Rejection("unreadable_file", "a.csv.gz: not valid gzip", "a.csv.gz", version="9:e"),
            Rejection("unparseable_record", "b.ndjson line 2: not JSON", "b.ndjson", raw="{x"),
        ],
        table="bronze/src",
        source="src",
        run_id="r1",
        now=NOW,
    )
    assert records.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert records["rule"].to_list() == ["unreadable_file", "unparseable_record"]
    assert records["value"].to_list() == ["a.csv.gz: not valid gzip", "b.ndjson line 2: not JSON"]
    whole = json.loads(records["row"][0])
    assert (whole["origin"], whole["version"], whole["raw"]) == ("a.csv.gz", "9:e", None)
    assert json.loads(records["row"][1])["raw"] == "{x"
    assert records["quarantine_id"].n_unique() == 2


def test_type_conflict_rule_names_the_bronze_type() -> None:
    assert type_conflict_rule(pl.Decimal(10, 2)) == "type_conflict(Decimal[10, 2])"
    assert type_conflict_rule(pl.Datetime("us")) == "type_conflict(Datetime[us, naive])"


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.none(),
            st.integers(-(10**6), 10**6).map(str),
            st.floats(allow_nan=False, allow_infinity=False, width=32).map(str),
            st.text(max_size=6),
        ),
        max_size=30,
    ),
    keys=st.lists(st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=4)), max_size=30),
)
def test_every_row_is_written_or_quarantined_never_both(
    values: list[str | None], keys: list[str | None]
) -> None:
    n = min(len(values), len(keys))
    frame = pl.DataFrame(
        {"id": keys[:n], "amount": values[:n], "_pos": list(range(n))},
        schema={"id": pl.String, "amount": pl.String, "_pos": pl.Int64},
    )
    valid, quarantine = split(frame, {"id": pl.String(), "amount": pl.Int64(), "_pos": pl.Int64()})
    bad = {json.loads(r)["_pos"] for r in quarantine["row"]}
    assert set(valid["_pos"]).isdisjoint(bad)
    assert len(bad) + valid.height == n
    assert valid.schema["amount"] == pl.Int64

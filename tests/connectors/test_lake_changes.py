"""The change data feed: bronze tables record what each commit changed, and the lake reads it.

Real Delta tables on a local directory and on the S3 test server (the ``lake`` fixture).
"""

from __future__ import annotations

import polars as pl
import pytest

from tasks.connectors.lake import CHANGE_COLUMNS, CHANGE_FEED, Lake, LakeError, maintain_table

TABLE = "bronze/cdf_contacts"


def _rows(ids: list[int], value: str) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "name": [f"{value}{i}" for i in ids]})


def _changes(frame: pl.DataFrame) -> set[tuple[int, str, str, int]]:
    """(id, name, change type, version) of every change (each appears once)."""
    rows = list(frame.select("id", "name", "_change_type", "_commit_version").iter_rows())
    assert len(rows) == len(set(rows))
    assert frame.get_column("_commit_version").is_sorted()
    return set(rows)


def test_a_new_table_records_its_changes_from_the_first_commit(lake: Lake) -> None:
    lake.merge(TABLE, _rows([1, 2, 3], "a"), keys=["id"], table_properties=CHANGE_FEED)
    assert lake.change_feed_enabled(TABLE)
    lake.merge(TABLE, pl.concat([_rows([2], "b"), _rows([4], "a")]), keys=["id"])
    lake.delete(TABLE, "id = 3")

    everything = lake.changes(TABLE, after_version=-1)
    assert everything.schema == pl.Schema({"id": pl.Int64(), "name": pl.String(), **CHANGE_COLUMNS})
    assert _changes(everything) == {
        (1, "a1", "insert", 0),
        (2, "a2", "insert", 0),
        (3, "a3", "insert", 0),
        (2, "a2", "update_preimage", 1),
        (2, "b2", "update_postimage", 1),
        (4, "a4", "insert", 1),
        (3, "a3", "delete", 2),
    }
    # Between two versions: only the commits after the first, up to the second.
    assert _changes(lake.changes(TABLE, after_version=0, up_to_version=1)) == {
        (2, "a2", "update_preimage", 1),
        (2, "b2", "update_postimage", 1),
        (4, "a4", "insert", 1),
    }
    # Up to date: nothing changed, but the frame still has its columns.
    latest = lake.changes(TABLE, after_version=2, columns=["id"])
    assert latest.height == 0
    assert latest.columns == ["id", *CHANGE_COLUMNS]


def test_appends_and_deduplicated_inserts_create_tables_with_the_feed(lake: Lake) -> None:
    lake.append_once(
        "bronze/cdf_files", _rows([1], "a"), batch_id="b1", table_properties=CHANGE_FEED
    )
    inserted = lake.insert_new(
        "bronze/cdf_events",
        _rows([1, 2], "a"),
        keys=["id"],
        batch_id="e1",
        table_properties=CHANGE_FEED,
    )
    assert inserted == 2
    assert lake.change_feed_enabled("bronze/cdf_files")
    assert lake.change_feed_enabled("bronze/cdf_events")
    lake.insert_new("bronze/cdf_events", _rows([2, 3], "b"), keys=["id"], batch_id="e2")
    # The known key 2 keeps its first row: the feed shows only the new row.
    assert _changes(lake.changes("bronze/cdf_events", after_version=0)) == {(3, "b3", "insert", 1)}


def test_an_existing_table_is_upgraded_once_and_records_changes_from_then_on(lake: Lake) -> None:
    lake.merge(TABLE, _rows([1, 2], "a"), keys=["id"])
    assert not lake.change_feed_enabled(TABLE)
    before = lake.read(TABLE)

    assert lake.enable_change_feed(TABLE) is True
    upgraded = lake.version(TABLE)
    assert upgraded == 1
    assert lake.enable_change_feed(TABLE) is False  # already on: no further commit
    assert lake.version(TABLE) == upgraded
    assert lake.read(TABLE).equals(before)  # the upgrade changed no row

    lake.merge(TABLE, _rows([1], "b"), keys=["id"])
    assert _changes(lake.changes(TABLE, after_version=upgraded)) == {
        (1, "a1", "update_preimage", 2),
        (1, "b1", "update_postimage", 2),
    }
    with pytest.raises(LakeError, match="change data feed was not on") as error:
        lake.changes(TABLE, after_version=-1)
    assert repr(TABLE) in str(error.value)


def test_a_compaction_records_no_changes(lake: Lake) -> None:
    lake.merge(TABLE, _rows([1], "a"), keys=["id"], table_properties=CHANGE_FEED)
    for i in range(2, 5):
        lake.merge(TABLE, _rows([i], "a"), keys=["id"])
    written = lake.version(TABLE)
    assert written is not None
    report = maintain_table(lake, TABLE, retention_hours=168)
    assert report.optimized == "compact"
    assert lake.version(TABLE) == written + 1
    assert lake.changes(TABLE, after_version=written).height == 0


def test_versions_outside_the_history_are_refused_naming_the_table(lake: Lake) -> None:
    lake.merge(TABLE, _rows([1], "a"), keys=["id"], table_properties=CHANGE_FEED)
    for after, up_to in [(0, 5), (-2, None), (1, 0)]:
        with pytest.raises(LakeError, match="not in the table's history") as error:
            lake.changes(TABLE, after_version=after, up_to_version=up_to)
        assert repr(TABLE) in str(error.value)
    with pytest.raises(LakeError, match=r"\['nope'\] are not in the table"):
        lake.changes(TABLE, after_version=-1, columns=["nope"])

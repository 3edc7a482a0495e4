"""Incremental staging reads what bronze gained and lost from the change data feed, and gets
exactly what a diff of the data files gives, for every range of versions.

Bronze is written as ingest writes it (feed on, MERGE / insert-new / append-once), then edited,
deleted from, compacted and finally overwritten (a commit the feed does not describe row by
row, so ranges across it fall back to the file diff).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tasks.connectors.lake import CHANGE_FEED, Lake, maintain_table
from tasks.core.incremental import net_changes
from tasks.engine.bronze_changes import bronze_diff, fed_changes, file_changes

TABLE = "bronze/crm"


def rows(ids: range, *, value: int = 0, batch: str = "b0") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"{i:05d}" for i in ids],
            "email": [f"p{i}@example.com" for i in ids],
            "score": [i + value for i in ids],
            "_batch_id": [batch] * len(ids),
        }
    )


def net(pair: tuple[pl.LazyFrame, pl.LazyFrame], columns: list[str]) -> list[pl.DataFrame]:
    gained, lost = net_changes(*pair, columns=columns)
    return [frame.collect().sort(pl.all()) for frame in (gained, lost)]


def same(left: list[pl.DataFrame], right: list[pl.DataFrame]) -> bool:
    return all(a.equals(b) for a, b in zip(left, right, strict=True))


def test_the_change_feed_gives_the_file_diff_for_every_range(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    lake.merge(TABLE, rows(range(0, 2000)), keys=["id"], table_properties=CHANGE_FEED)
    lake.insert_new(TABLE, rows(range(1990, 2100)), keys=["id"], batch_id="b1")
    lake.append_once(TABLE, rows(range(5000, 5010), batch="b2"), batch_id="b2")
    # An edit of 1 % of the records (and a record "edited" to what it was).
    edits = pl.concat([rows(range(0, 2000, 100), value=7), rows(range(3, 4))])
    lake.merge(TABLE, edits, keys=["id"])
    lake.delete(TABLE, "id >= '00500' AND id < '00510'")
    maintain_table(lake, TABLE, retention_hours=10_000)  # compaction: no row changes
    lake.merge(TABLE, rows(range(7, 9), value=1), keys=["id"])
    fed_until = lake.version(TABLE)
    assert fed_until is not None
    lake.overwrite(TABLE, rows(range(0, 50), value=3))
    last = lake.version(TABLE)
    assert last is not None
    columns = lake.scan(TABLE).collect_schema().names()

    for since in range(0, last):
        for version in range(since + 1, last + 1):
            fed = fed_changes(lake, TABLE, since, version, columns)
            if version <= fed_until:
                assert fed is not None, (since, version)
                files = file_changes(lake, TABLE, since, version)
                assert same(net(fed, columns), net(files, columns)), (since, version)
            else:
                assert fed is None, (since, version)  # an overwrite: the files tell
            gained, lost = bronze_diff(lake, "crm", since, version)
            expected = net(file_changes(lake, TABLE, since, version), columns)
            assert same([gained.sort(pl.all()), lost.sort(pl.all())], expected)


def test_the_change_feed_reads_only_what_changed(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    lake.merge(TABLE, rows(range(0, 5000)), keys=["id"], table_properties=CHANGE_FEED)
    since = lake.version(TABLE)
    assert since is not None
    lake.merge(TABLE, rows(range(0, 5000, 100), value=1), keys=["id"])
    version = lake.version(TABLE)
    assert version is not None
    columns = lake.scan(TABLE).collect_schema().names()
    fed = fed_changes(lake, TABLE, since, version, columns)
    assert fed is not None
    added, removed = (frame.collect() for frame in fed)
    assert added.height == removed.height == 50  # the 1 % edited, before and after
    files_added, _ = (frame.collect() for frame in file_changes(lake, TABLE, since, version))
    assert files_added.height == 5000  # the MERGE rewrote the file: every row read again
    gained, lost = bronze_diff(lake, "crm", since, version)
    assert gained.height == lost.height == 50


def test_a_table_without_the_feed_is_diffed_by_files(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    lake.merge(TABLE, rows(range(0, 100)), keys=["id"])
    lake.merge(TABLE, rows(range(0, 10), value=1), keys=["id"])
    columns = lake.scan(TABLE).collect_schema().names()
    assert fed_changes(lake, TABLE, 0, 1, columns) is None
    gained, lost = bronze_diff(lake, "crm", 0, 1)
    assert gained.height == lost.height == 10

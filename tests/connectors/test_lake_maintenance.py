"""Maintenance on real Delta tables (local and on the S3 test server): compaction, Z-order,
checkpoints, vacuum retention, and what happens when a writer commits while it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.connectors.lake import (
    Lake,
    LakeError,
    MergeStats,
    file_stats,
    maintain_table,
    vacuum_table,
    writes,
)
from tasks.connectors.lake import base as lake_base

MEMBERS = "gold/maint_members"


def _members(keys: range, segment: str, score: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "segment": [segment] * len(keys),
            "contact_key": [f"k{i:05d}" for i in keys],
            "score": [score + i for i in keys],
        }
    )


def _many_small_commits(lake: Lake, commits: int = 8, per_commit: int = 5) -> pl.DataFrame:
    """A members table built by ``commits`` small upserts, as incremental runs leave it."""
    for n in range(commits):
        keys = range(n * per_commit, (n + 1) * per_commit)
        for segment in ("vip", "all"):
            lake.upsert(MEMBERS, _members(keys, segment), keys=["segment", "contact_key"],
                        partition_by=["segment"])  # fmt: skip
    return _sorted(lake.read(MEMBERS))


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("segment", "contact_key").select("segment", "contact_key", "score")


def _files(lake: Lake, table: str) -> int:
    with lake.delta_table(table, "count files of") as delta:
        return file_stats(delta).files


def test_compaction_leaves_fewer_files_and_the_same_rows(lake: Lake) -> None:
    expected = _many_small_commits(lake)
    report = maintain_table(lake, MEMBERS, retention_hours=168)
    assert report.optimized == "compact"
    assert (report.before.files, report.after.files) == (16, 2)  # one file per segment
    assert report.before.bytes > report.after.bytes > 0
    assert report.checkpoint_version == report.version_after
    assert report.vacuumed_files == 0  # the replaced files are younger than the retention
    assert_frame_equal(_sorted(lake.read(MEMBERS)), expected)
    # Nothing committed since: a second run rewrites nothing.
    again = maintain_table(lake, MEMBERS, retention_hours=168)
    assert again.optimized is None and again.version_after == report.version_after


def test_z_order_clusters_by_the_filter_column(lake: Lake) -> None:
    expected = _many_small_commits(lake)
    report = maintain_table(lake, MEMBERS, z_order=["contact_key"], retention_hours=168)
    assert report.optimized == "z_order" and report.z_order == ("contact_key",)
    assert report.after.files == 2
    assert_frame_equal(_sorted(lake.read(MEMBERS)), expected)


@pytest.mark.parametrize(
    ("columns", "message"),
    [(["segment"], "partition the table already"), (["nope"], r"\['nope'\] are not in")],
)
def test_z_order_on_a_partition_or_missing_column_is_refused(
    lake: Lake, columns: list[str], message: str
) -> None:
    _many_small_commits(lake, commits=1)
    with pytest.raises(LakeError, match=message) as error:
        maintain_table(lake, MEMBERS, z_order=columns, retention_hours=168)
    assert repr(MEMBERS) in str(error.value)


def test_vacuum_keeps_what_a_reader_of_a_recent_version_needs(lake: Lake) -> None:
    """Retention is the trade-off: files a recent version reads survive; retention 0 (an
    erasure) deletes them, and reading that old version then fails."""
    expected = _many_small_commits(lake, commits=3)
    pinned = lake.version(MEMBERS)
    assert pinned is not None
    pinned_files = lake.file_uris(MEMBERS, version=pinned)
    maintain_table(lake, MEMBERS, retention_hours=168)
    # A reader still on the pre-compaction version reads every one of its files.
    assert_frame_equal(_sorted(lake.scan_files(MEMBERS, pinned_files).collect()), expected)

    assert vacuum_table(lake, MEMBERS, retention_hours=168) == []
    deleted = vacuum_table(lake, MEMBERS, retention_hours=0)
    assert len(deleted) == len(pinned_files)
    assert_frame_equal(_sorted(lake.read(MEMBERS)), expected)  # the current version is intact
    with pytest.raises(Exception, match="(?i)not found|no such file|404"):
        lake.scan_files(MEMBERS, pinned_files).collect()


def _compacting_first(
    monkeypatch: pytest.MonkeyPatch, name: str, other: Lake, table: str
) -> list[int]:
    """Patch ``writes.<name>`` so that, the first time, a compaction by another process (its
    own Lake) commits after the writer read the table and before the writer commits: the race
    a real concurrent maintenance run can produce, made deterministic."""
    real: Callable[..., Any] = getattr(writes, name)
    compactions: list[int] = []

    def racing(delta: Any, *args: Any, **kwargs: Any) -> Any:
        if not compactions:
            report = maintain_table(other, table, retention_hours=168, checkpoint=False)
            assert report.optimized == "compact"
            compactions.append(report.version_after)
        return real(delta, *args, **kwargs)

    monkeypatch.setattr(writes, name, racing)
    return compactions


def test_a_write_that_loses_its_race_to_a_compaction_is_rerun(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _many_small_commits(lake)
    other = Lake(lake.root, lake.storage_options)
    compactions = _compacting_first(monkeypatch, "upsert_rows", other, MEMBERS)
    change = _members(range(3), "vip", score=100)
    gone = _members(range(35, 40), "all").select("segment", "contact_key")
    stats = lake.upsert(MEMBERS, change, keys=["segment", "contact_key"], delete=gone)
    assert compactions, "the compaction did not run inside the write"
    assert stats == MergeStats(inserted=0, updated=3, deleted=5, version=compactions[0] + 1)
    want = expected.filter(
        ~((pl.col("segment") == "all") & (pl.col("contact_key") >= "k00035"))
    ).update(change, on=["segment", "contact_key"])
    assert_frame_equal(_sorted(lake.read(MEMBERS)), _sorted(want))


def test_without_the_rerun_the_write_would_fail(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race above is real: with reruns off, Delta rejects the write."""
    _many_small_commits(lake, commits=2)
    other = Lake(lake.root, lake.storage_options)
    _compacting_first(monkeypatch, "merge_rows", other, MEMBERS)
    monkeypatch.setattr(lake_base, "_MAX_RERUNS", 1)
    with pytest.raises(LakeError, match="(?i)concurrent"):
        lake.merge(MEMBERS, _members(range(2), "vip", score=7), keys=["segment", "contact_key"])


def test_writers_and_maintenance_running_together_lose_nothing(lake: Lake) -> None:
    """A transform-like writer (upserts and deletes) and a publish-like writer (ledger merges),
    each with its own Lake as a separate process would have, commit while maintenance runs
    again and again; afterwards every table holds exactly what the writers wrote."""
    ledger = "ops/maint_ledger"
    expected = _many_small_commits(lake, commits=4)
    lake.merge(ledger, pl.DataFrame({"contact_key": ["k"], "n": [0]}), keys=["contact_key"])
    transform, publish, maintainer = (Lake(lake.root, lake.storage_options) for _ in range(3))
    rounds, errors, reports = 12, [], []
    done = threading.Event()

    def run_transform() -> None:
        for n in range(rounds):
            change = _members(range(n, n + 3), "vip", score=1000 * (n + 1))
            transform.upsert(MEMBERS, change, keys=["segment", "contact_key"])

    def run_publish() -> None:
        for n in range(rounds):
            publish.merge(ledger, pl.DataFrame({"contact_key": [f"k{n}"], "n": [n]}),
                          keys=["contact_key"])  # fmt: skip

    def run_maintenance() -> None:
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            for table in (MEMBERS, ledger):
                reports.append(
                    maintain_table(maintainer, table, z_order=["contact_key"], retention_hours=168)
                )

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        return run

    writers = [threading.Thread(target=guarded(w)) for w in (run_transform, run_publish)]
    maintenance = threading.Thread(target=guarded(run_maintenance))
    maintenance.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=180)
    done.set()
    maintenance.join(timeout=180)
    assert not errors, errors
    assert any(r.optimized for r in reports), "maintenance never rewrote anything"

    want = expected
    for n in range(rounds):
        want = want.update(_members(range(n, n + 3), "vip", score=1000 * (n + 1)),
                           on=["segment", "contact_key"])  # fmt: skip
    assert_frame_equal(_sorted(lake.read(MEMBERS)), _sorted(want))
    ledger_rows = lake.read(ledger).sort("contact_key")
    assert ledger_rows.height == rounds + 1
    assert sorted(ledger_rows["n"].to_list()) == [0, *range(rounds)]


def test_maintenance_commits_do_not_count_as_data_changes(lake: Lake) -> None:
    """A reader that remembers a version (the transform's state) can tell a compaction from
    a write."""
    _many_small_commits(lake, commits=2)
    seen = lake.version(MEMBERS)
    assert seen is not None
    assert not lake.data_changed_since(MEMBERS, seen)
    maintain_table(lake, MEMBERS, z_order=["contact_key"], retention_hours=0)
    assert lake.version(MEMBERS) != seen  # optimize and vacuum committed versions
    assert not lake.data_changed_since(MEMBERS, seen)
    lake.upsert(MEMBERS, _members(range(1), "vip", score=9), keys=["segment", "contact_key"])
    assert lake.data_changed_since(MEMBERS, seen)

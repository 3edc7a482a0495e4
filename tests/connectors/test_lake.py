"""The lake adapter against a local directory and a real S3 server (the ``lake`` fixture)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.connectors.lake import (
    DEFAULT_S3_CLIENT_OPTIONS,
    FrameStream,
    Lake,
    LakeError,
    MergeStats,
    TableNotFoundError,
    polars_storage_options,
    s3_storage_options,
)
from tasks.connectors.s3 import s3_client, split_s3_uri
from tasks.core.settings import load_settings
from tasks.errors import ConfigError
from tasks.resources import lake_for
from tests.conftest import S3Endpoint, free_port

UTC = dt.UTC


def _events(ids: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"event_id": ids, "kind": [f"kind_{i}" for i in ids]})


def _sorted(df: pl.DataFrame, by: str) -> pl.DataFrame:
    return df.sort(by).select(sorted(df.columns))


# --- exactly-once appends ------------------------------------------------------------------------


def test_append_once_commits_each_batch_exactly_once(lake: Lake) -> None:
    table = "bronze/web_events"

    assert lake.append_once(table, _events([1, 2]), batch_id="batch-1") is True
    assert lake.append_once(table, _events([1, 2]), batch_id="batch-1") is False
    assert lake.read(table).height == 2
    assert lake.committed(table, "batch-1")
    assert not lake.committed(table, "batch-2")

    assert lake.append_once(table, _events([3]), batch_id="batch-2") is True
    assert sorted(lake.read(table)["event_id"].to_list()) == [1, 2, 3]
    assert lake.version(table) == 1

    # A rerun in another process sees the recorded batch too: it lives in the Delta log.
    rerun = Lake(lake.root, lake.storage_options)
    assert rerun.append_once(table, _events([1, 2]), batch_id="batch-1") is False
    assert rerun.read(table).height == 3


def test_append_once_is_exactly_once_under_a_race(lake: Lake) -> None:
    """Two writers (separate Lake objects) race the same batch: one commit wins, one says False."""
    table = "bronze/web_events"
    lake.append_once(table, _events([0]), batch_id="seed")
    writers = [Lake(lake.root, lake.storage_options) for _ in range(2)]
    for writer in writers:
        assert writer.exists(table)  # both now hold the same snapshot
    barrier = threading.Barrier(len(writers), timeout=30)
    results: list[bool | BaseException] = []

    def write(writer: Lake) -> None:
        barrier.wait()
        try:
            results.append(writer.append_once(table, _events([1, 2]), batch_id="raced"))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    assert sorted(results, key=str) == [False, True]
    assert lake.read(table).height == 3


def test_append_once_rechecks_the_batch_on_the_snapshot_it_commits_on(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving the race above hits only sometimes, made certain: another writer commits
    the batch after this one checked for it and before this one writes."""
    table = "bronze/web_events"
    lake.append_once(table, _events([0]), batch_id="seed")
    late = Lake(lake.root, lake.storage_options)
    assert late.exists(table)
    prepare = late._prepare

    def prepare_while_another_writer_commits(*args: Any, **kwargs: Any) -> pl.DataFrame:
        data = prepare(*args, **kwargs)
        first = Lake(lake.root, lake.storage_options)
        assert first.append_once(table, _events([1, 2]), batch_id="raced") is True
        return data

    monkeypatch.setattr(late, "_prepare", prepare_while_another_writer_commits)

    assert late.append_once(table, _events([1, 2]), batch_id="raced") is False
    assert lake.read(table).height == 3


def test_append_once_creates_an_empty_table_with_its_schema(lake: Lake) -> None:
    empty = pl.DataFrame(schema={"run_id": pl.String, "started_at": pl.Datetime("us", "UTC")})

    assert lake.append_once("ops/runs", empty, batch_id="run-0") is True

    assert lake.exists("ops/runs")
    assert lake.read("ops/runs").schema == empty.schema
    assert lake.committed("ops/runs", "run-0")


def test_append_evolves_the_schema(lake: Lake) -> None:
    table = "bronze/crm_contacts"
    lake.append_once(table, pl.DataFrame({"id": [1], "email": ["a@x.io"]}), batch_id="b1")
    lake.append_once(
        table, pl.DataFrame({"id": [2], "email": ["b@x.io"], "city": ["Oslo"]}), batch_id="b2"
    )
    lake.append_once(table, pl.DataFrame({"id": [3]}), batch_id="b3")

    got = lake.read(table).sort("id")
    assert got.columns == ["id", "email", "city"]
    assert got.rows() == [(1, "a@x.io", None), (2, "b@x.io", "Oslo"), (3, None, None)]


def test_append_once_records_commit_metadata(lake: Lake) -> None:
    lake.append_once(
        "bronze/web_events", _events([1]), batch_id="b1", metadata={"run_id": "run-42"}
    )

    [latest] = lake.history("bronze/web_events", limit=1)
    assert latest["run_id"] == "run-42"


# --- merge ---------------------------------------------------------------------------------------


def test_merge_upserts_and_a_rerun_changes_nothing(lake: Lake) -> None:
    table = "silver/contacts"
    first = pl.DataFrame(
        {"contact_key": ["k1", "k2"], "email": ["a@x.io", "b@x.io"], "score": [1, None]}
    )
    assert lake.merge(table, first, keys=["contact_key"]) == MergeStats(
        inserted=2, updated=0, deleted=0, version=0
    )

    # k1 unchanged, k2 changes from null (null-safe comparison), k3 is new.
    second = pl.DataFrame(
        {
            "contact_key": ["k1", "k2", "k3"],
            "email": ["a@x.io", "b@x.io", "c@x.io"],
            "score": [1, 5, 7],
        }
    )
    assert lake.merge(table, second, keys=["contact_key"]) == MergeStats(
        inserted=1, updated=1, deleted=0, version=1
    )
    content = lake.read(table)

    rerun = lake.merge(table, second, keys=["contact_key"])

    assert rerun == MergeStats(inserted=0, updated=0, deleted=0, version=None)
    assert lake.version(table) == 1  # no commit, no files touched
    assert_frame_equal(_sorted(lake.read(table), "contact_key"), _sorted(content, "contact_key"))
    assert _sorted(content, "contact_key").rows() == [
        ("k1", "a@x.io", 1),
        ("k2", "b@x.io", 5),
        ("k3", "c@x.io", 7),
    ]


def test_merge_without_only_if_changed_rewrites_every_match(lake: Lake) -> None:
    df = pl.DataFrame({"contact_key": ["k1", "k2"], "email": ["a@x.io", None]})
    lake.merge("silver/contacts", df, keys=["contact_key"])

    stats = lake.merge("silver/contacts", df, keys=["contact_key"], only_if_changed=False)

    assert (stats.updated, stats.inserted, stats.version) == (2, 0, 1)


def test_merge_evolves_the_schema_and_keeps_columns_the_source_lacks(lake: Lake) -> None:
    table = "silver/contacts"
    lake.merge(
        table,
        pl.DataFrame({"contact_key": ["k1", "k2"], "email": ["a@x.io", "b@x.io"]}),
        keys=["contact_key"],
    )

    # A new column: k1 gets a value for it (a change), k9 is inserted.
    stats = lake.merge(
        table,
        pl.DataFrame(
            {"contact_key": ["k1", "k9"], "email": ["a@x.io", "z@x.io"], "tier": ["g", "s"]}
        ),
        keys=["contact_key"],
    )
    assert (stats.inserted, stats.updated) == (1, 1)

    # A source without "email": matched rows keep their email.
    stats = lake.merge(
        table, pl.DataFrame({"contact_key": ["k2"], "tier": ["b"]}), keys=["contact_key"]
    )
    assert (stats.inserted, stats.updated) == (0, 1)

    got = lake.read(table).sort("contact_key")
    assert got.columns == ["contact_key", "email", "tier"]
    assert got.rows() == [("k1", "a@x.io", "g"), ("k2", "b@x.io", "b"), ("k9", "z@x.io", "s")]


def test_merge_of_an_empty_frame_creates_the_table_then_commits_nothing(lake: Lake) -> None:
    empty = pl.DataFrame(schema={"contact_key": pl.String, "email": pl.String})

    first = lake.merge("silver/contacts", empty, keys=["contact_key"])
    second = lake.merge("silver/contacts", empty, keys=["contact_key"])

    assert first == MergeStats(inserted=0, updated=0, deleted=0, version=0)
    assert second == MergeStats(inserted=0, updated=0, deleted=0, version=None)
    assert lake.read("silver/contacts").schema == empty.schema


@pytest.mark.parametrize(
    ("keys", "emails", "problem"),
    [
        (["k1", "k1"], ["a@x.io", "b@x.io"], "share a key"),
        (["k1", None], ["a@x.io", "b@x.io"], "null"),
    ],
    ids=["duplicate", "null"],
)
def test_merge_refuses_duplicate_or_null_keys_naming_the_key(
    lake: Lake, keys: list[str | None], emails: list[str], problem: str
) -> None:
    df = pl.DataFrame({"contact_key": keys, "email": emails})

    with pytest.raises(LakeError, match=problem) as raised:
        lake.merge("silver/contacts", df, keys=["contact_key"])

    assert "contact_key" in str(raised.value)
    assert "silver/contacts" in str(raised.value)
    assert "a@x.io" not in str(raised.value)  # key values can be personal data
    assert not lake.exists("silver/contacts")


# --- overwrite -----------------------------------------------------------------------------------


def _members(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"segment": pl.String, "contact_key": pl.String}, orient="row")


def test_overwrite_replaces_the_table_or_only_rows_matching_a_predicate(lake: Lake) -> None:
    table = "gold/audience_members"
    lake.overwrite(
        table, _members([("vip", "k1"), ("vip", "k2"), ("lapsed", "k3")]), partition_by=["segment"]
    )

    lake.overwrite(table, _members([("vip", "k9")]), predicate="segment = 'vip'")

    assert sorted(lake.read(table).rows()) == [("lapsed", "k3"), ("vip", "k9")]
    with pytest.raises(LakeError, match="gold/audience_members"):
        lake.overwrite(table, _members([("lapsed", "k4")]), predicate="segment = 'vip'")

    # A full overwrite replaces rows and schema (the frame defines the table).
    lake.overwrite(table, pl.DataFrame({"segment": ["new"], "score": [1.5]}))
    got = lake.read(table)
    assert got.rows() == [("new", 1.5)]
    assert set(got.columns) == {"segment", "score"}


def test_overwrite_from_a_frame_stream_commits_every_frame_once(lake: Lake) -> None:
    table = "silver/staged_events"
    lake.overwrite(table, pl.DataFrame({"old": [1]}))
    schema = {"event_id": pl.Int64(), "kind": pl.String()}
    calls: list[int] = []

    def frames() -> Any:
        calls.append(1)
        for start in range(0, 30, 10):  # produced one at a time, as the writer asks
            yield _events(list(range(start, start + 10)))

    lake.overwrite(table, FrameStream(schema, frames), metadata={"note": "streamed"})

    assert lake.version(table) == 1 and len(calls) == 1  # one commit, the stream read once
    assert lake.history(table, limit=1)[0]["note"] == "streamed"
    assert_frame_equal(
        _sorted(lake.read(table), "event_id"), _sorted(_events(list(range(30))), "event_id")
    )

    # No frames leave the table empty, with the stream's schema.
    lake.overwrite(table, FrameStream(schema, lambda: iter(())))
    assert lake.read(table).schema == pl.Schema(schema) and lake.read(table).height == 0
    with pytest.raises(LakeError, match="a stream replaces a whole table"):
        lake.overwrite(table, FrameStream(schema, frames), predicate="kind = 'x'")


def _partition_dirs(lake: Lake, table: str) -> set[str]:
    uri = lake.uri(table)
    if not lake.is_remote:
        return {name for name in os.listdir(uri) if "=" in name}
    bucket, prefix = split_s3_uri(uri)
    client = s3_client(lake.storage_options)
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", Delimiter="/")
    return {
        entry["Prefix"][len(prefix) + 1 :].rstrip("/")
        for entry in listing.get("CommonPrefixes", [])
        if "=" in entry["Prefix"]
    }


def test_overwrite_partitions_replaces_exactly_the_partitions_present(lake: Lake) -> None:
    table = "gold/audience_members"
    lake.overwrite_partitions(
        table,
        _members([("vip", "k1"), ("vip", "k2"), ("lapsed", "k3"), ("churned", "k4")]),
        partition_by="segment",
    )
    assert _partition_dirs(lake, table) == {"segment=vip", "segment=lapsed", "segment=churned"}
    before = lake.version(table)

    lake.overwrite_partitions(
        table, _members([("vip", "k7"), ("winback", "k8")]), partition_by="segment"
    )

    assert lake.version(table) == (before or 0) + 1  # one commit
    assert sorted(lake.read(table).rows()) == [
        ("churned", "k4"),
        ("lapsed", "k3"),
        ("vip", "k7"),
        ("winback", "k8"),
    ]
    assert "segment=winback" in _partition_dirs(lake, table)


def test_overwrite_partitions_with_all_partitions_drops_absent_ones(lake: Lake) -> None:
    table = "gold/audience_members"
    lake.overwrite_partitions(
        table, _members([("vip", "k1"), ("lapsed", "k3")]), partition_by="segment"
    )

    lake.overwrite_partitions(
        table, _members([("vip", "k5")]), partition_by="segment", all_partitions=True
    )

    assert lake.read(table).rows() == [("vip", "k5")]
    assert lake.version(table) == 1


def test_overwrite_partitions_refuses_a_different_partition_column(lake: Lake) -> None:
    lake.overwrite_partitions(
        "gold/audience_members", _members([("vip", "k1")]), partition_by="segment"
    )

    with pytest.raises(LakeError, match="partitioned by"):
        lake.overwrite_partitions(
            "gold/audience_members", _members([("vip", "k1")]), partition_by="contact_key"
        )


# --- delete, history, tables -------------------------------------------------------------------


def test_delete_returns_the_number_of_rows_removed(lake: Lake) -> None:
    lake.merge(
        "silver/contacts",
        pl.DataFrame({"contact_key": ["k1", "k2", "k3"]}),
        keys=["contact_key"],
    )

    assert lake.delete("silver/contacts", "contact_key IN ('k1', 'k3')") == 2
    assert lake.delete("silver/contacts", "contact_key = 'nobody'") == 0
    assert lake.read("silver/contacts")["contact_key"].to_list() == ["k2"]


def test_version_and_history_follow_the_commits(lake: Lake) -> None:
    table = "ops/volume_metrics"
    assert lake.version(table) is None

    lake.append_once(table, pl.DataFrame({"rows": [1]}), batch_id="a", metadata={"run_id": "r1"})
    lake.append_once(table, pl.DataFrame({"rows": [2]}), batch_id="b", metadata={"run_id": "r2"})

    assert lake.version(table) == 1
    history = lake.history(table)
    assert [entry["version"] for entry in history] == [1, 0]
    assert [entry["run_id"] for entry in history] == ["r2", "r1"]
    assert len(lake.history(table, limit=1)) == 1


def test_tables_lists_every_delta_table(lake: Lake) -> None:
    assert lake.tables() == []
    for name in ["bronze/crm_contacts", "silver/contacts", "ops/runs"]:
        lake.append_once(name, pl.DataFrame({"x": [1]}), batch_id="b")
    if not lake.is_remote:
        os.makedirs(os.path.join(lake.root, "bronze", "not_a_table"))

    assert lake.tables() == ["bronze/crm_contacts", "ops/runs", "silver/contacts"]


def test_scratch_files_round_trip_are_never_a_table_and_are_removed(lake: Lake) -> None:
    """A run's scratch folder on the lake's storage: what one process writes, another reads;
    even holding a Delta log it is not listed as a table; removal leaves nothing."""
    lake.append_once("silver/contacts", pl.DataFrame({"x": [1]}), batch_id="b")
    scratch = lake.scratch("silver-0123abc")
    for part in range(3):
        scratch.write(f"links-{part}.parquet", pl.DataFrame({"id": [part, part + 10]}))
    elsewhere = Lake(lake.root, lake.storage_options).scratch("silver-0123abc")  # another process
    assert sorted(elsewhere.scan("links-*.parquet").collect().get_column("id")) == [
        0, 1, 2, 10, 11, 12,
    ]  # fmt: skip
    pl.DataFrame({"x": [1]}).write_delta(
        scratch.uri, storage_options=lake.storage_options if lake.is_remote else None
    )
    assert lake.tables() == ["silver/contacts"]
    assert scratch.remove() >= 4
    assert scratch.remove() == 0
    with pytest.raises((OSError, pl.exceptions.PolarsError), match="links-0"):
        elsewhere.read("links-0.parquet")
    assert lake.tables() == ["silver/contacts"]
    with pytest.raises(LakeError, match="invalid scratch name"):
        lake.scratch("../silver")


def test_scratch_files_are_deleted_and_leftover_folders_removed(lake: Lake) -> None:
    """A build deletes each bucket's files once committed; folders nobody wrote in for a
    while (a killed build's) are removed, and all of them on request (an erasure)."""
    old, new = lake.scratch("silver-old"), lake.scratch("gold-new")
    for folder in (old, new):
        for part in range(2):
            folder.write(f"rows-{part}.parquet", pl.DataFrame({"email": [f"p{part}@x.example"]}))
    old.delete("rows-0.parquet", "never-written.parquet")
    assert old.scan("rows-*.parquet").collect().get_column("email").to_list() == ["p1@x.example"]
    with pytest.raises(LakeError, match="file names, not patterns"):
        old.delete("rows-*.parquet")
    modified = new.modified()
    assert modified is not None and abs(dt.datetime.now(UTC) - modified) < dt.timedelta(minutes=5)
    assert lake.remove_scratch(older_than=dt.timedelta(hours=1)) == []  # both in use
    assert lake.remove_scratch() == ["gold-new", "silver-old"]
    assert lake.remove_scratch() == []
    assert new.modified() is None


def test_a_split_writes_one_file_per_part_in_one_pass(lake: Lake) -> None:
    """Each part's rows, in their order, without the part column; a part with no rows still
    gets its (empty) file; rows of no part are left out; another process reads them back."""
    scratch = lake.scratch("silver-split")
    stamp = dt.datetime(2026, 3, 1, tzinfo=UTC)
    rows = pl.LazyFrame(
        {
            "part": [2, 0, 2, 7, None, 0, 2],
            "email": [f"p{n}@x.example" for n in range(7)],
            "at": [stamp] * 7,
        },
        schema={"part": pl.Int64, "email": pl.String, "at": pl.Datetime("us", "UTC")},
    )
    scratch.split("staged-contacts", rows, "part", 4)
    elsewhere = Lake(lake.root, lake.storage_options).scratch("silver-split")
    got = {k: elsewhere.read(f"staged-contacts-{k}.parquet") for k in range(4)}
    assert {k: frame.get_column("email").to_list() for k, frame in got.items()} == {
        0: ["p1@x.example", "p5@x.example"],
        1: [],
        2: ["p0@x.example", "p2@x.example", "p6@x.example"],
        3: [],
    }
    assert all(frame.schema == rows.drop("part").collect_schema() for frame in got.values())
    assert scratch.remove() == 4


# --- types ---------------------------------------------------------------------------------------


def test_utc_datetimes_round_trip(lake: Lake) -> None:
    stamps = [dt.datetime(2026, 3, 29, 0, 59, 59, 123456, tzinfo=UTC), None]
    df = pl.DataFrame(
        {"id": [1, 2], "at": stamps}, schema={"id": pl.Int64, "at": pl.Datetime("us", "UTC")}
    )

    lake.append_once("ops/runs", df, batch_id="b1")

    assert_frame_equal(lake.read("ops/runs").sort("id"), df)


def test_polars_types_are_written_faithfully(lake: Lake) -> None:
    table = "bronze/typed"
    df = pl.DataFrame(
        {
            "id": pl.Series([1], dtype=pl.Int64),
            "label": pl.Series(["a"], dtype=pl.Categorical),  # deltalake panics on these as-is
            "big": pl.Series([4_000_000_000], dtype=pl.UInt32),  # overflows Int32
            "tags": [["x", "y"]],
            "raw": [b"\x00\x01"],
            "local_time": pl.Series([dt.datetime(2026, 1, 1, 12)]).dt.replace_time_zone(
                "Europe/Oslo"
            ),
        }
    )
    lake.append_once(table, df, batch_id="b1")
    # A later batch where a column happens to be all null takes the table's type.
    lake.append_once(table, pl.DataFrame({"id": [2], "label": [None]}), batch_id="b2")

    got = lake.read(table).sort("id")
    assert got.schema["label"] == pl.String
    assert got.schema["big"] == pl.Int64
    assert got.schema["local_time"] == pl.Datetime("us", "UTC")  # same instant, stored as UTC
    assert got.row(0) == (
        1,
        "a",
        4_000_000_000,
        ["x", "y"],
        b"\x00\x01",
        dt.datetime(2026, 1, 1, 11, tzinfo=UTC),
    )
    assert got.row(1)[:2] == (2, None)


def test_an_untyped_new_column_is_refused(lake: Lake) -> None:
    with pytest.raises(LakeError, match="mystery"):
        lake.append_once("bronze/typed", pl.DataFrame({"id": [1], "mystery": [None]}), batch_id="b")


def test_read_selects_columns(lake: Lake) -> None:
    lake.append_once("bronze/web_events", _events([1, 2]), batch_id="b")

    assert lake.read("bronze/web_events", columns=["kind"]).columns == ["kind"]
    assert lake.scan("bronze/web_events").filter(pl.col("event_id") == 2).collect().height == 1


# --- errors --------------------------------------------------------------------------------------


def test_missing_tables_raise_table_not_found_naming_table_and_uri(lake: Lake) -> None:
    table = "silver/nothing_here"
    assert not lake.exists(table)
    assert lake.version(table) is None
    assert not lake.committed(table, "b")
    for call in (
        lambda: lake.read(table),
        lambda: lake.scan(table),
        lambda: lake.history(table),
        lambda: lake.delete(table, "x = 1"),
    ):
        with pytest.raises(TableNotFoundError) as raised:
            call()
        assert table in str(raised.value)
        assert lake.uri(table) in str(raised.value)


@pytest.mark.parametrize(
    "name", ["contacts", "Silver/contacts", "a/b/c", "../x", "silver/con-tacts", "silver/x\n"]
)
def test_table_names_are_validated(tmp_path: Path, name: str) -> None:
    lake = Lake(str(tmp_path))
    with pytest.raises(LakeError, match="invalid table name"):
        lake.uri(name)
    with pytest.raises(LakeError, match="invalid table name"):
        lake.exists(name)


@pytest.mark.s3
def test_unreachable_s3_endpoint_fails_fast_naming_the_table(s3_endpoint: S3Endpoint) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    options = s3_storage_options(
        endpoint=closed, access_key_id="k", secret_access_key="s", region="us-east-1"
    )
    lake = Lake("s3://nowhere/lake", options)

    started = time.monotonic()
    with pytest.raises(LakeError) as raised:
        lake.append_once("bronze/web_events", _events([1]), batch_id="b1")
    elapsed = time.monotonic() - started

    assert elapsed < 20, f"took {elapsed:.1f}s"
    message = str(raised.value)
    assert "bronze/web_events" in message
    assert "s3://nowhere/lake/bronze/web_events" in message
    assert "\x1b[" not in message  # deltalake's ANSI colours are stripped
    with pytest.raises(LakeError, match="bronze/web_events"):
        lake.read("bronze/web_events")


# --- options -------------------------------------------------------------------------------------


def test_s3_storage_options_allow_http_only_for_http_endpoints() -> None:
    http = s3_storage_options(
        endpoint="http://127.0.0.1:9000", access_key_id="k", secret_access_key="s", region="r"
    )
    https = s3_storage_options(
        endpoint="https://s3.example.com", access_key_id=None, secret_access_key=None, region="r"
    )

    assert http == {
        "AWS_REGION": "r",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ALLOW_HTTP": "true",
    }
    assert https == {"AWS_REGION": "r", "AWS_ENDPOINT_URL": "https://s3.example.com"}
    with pytest.raises(ValueError, match="AWS_S3_ALLOW_UNSAFE_RENAME"):
        s3_storage_options(
            endpoint=None,
            access_key_id=None,
            secret_access_key=None,
            region="r",
            extra={"AWS_S3_ALLOW_UNSAFE_RENAME": "true"},
        )


def test_lake_refuses_unsafe_rename_and_plain_http_without_allow_http() -> None:
    with pytest.raises(LakeError, match=r"(?i)allow_unsafe_rename"):
        Lake("s3://b/lake", {"aws_s3_allow_unsafe_rename": "true"})
    with pytest.raises(LakeError, match="AWS_ALLOW_HTTP"):
        Lake("s3://b/lake", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})


def test_s3_lakes_get_bounded_timeouts_that_callers_can_override() -> None:
    base = s3_storage_options(
        endpoint=None, access_key_id="AKIDEXAMPLE", secret_access_key="s3cr3t", region="r"
    )

    default = Lake("s3://b/lake", base)
    custom = Lake("s3://b/lake", {**base, "timeout": "120s", "MAX_RETRIES": "9"})

    assert {k: default.storage_options[k] for k in DEFAULT_S3_CLIENT_OPTIONS} == dict(
        DEFAULT_S3_CLIENT_OPTIONS
    )
    assert custom.storage_options["timeout"] == "120s"
    assert custom.storage_options["MAX_RETRIES"] == "9"
    assert "max_retries" not in custom.storage_options
    assert "s3cr3t" not in repr(custom)
    assert Lake("./relative").root == os.path.abspath("./relative")


def test_the_environment_can_bound_store_retries_and_unset_keeps_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", "s3://b/lake")
    for name in ("AUDIENCE_LAKE_S3_MAX_RETRIES", "AUDIENCE_LAKE_S3_RETRY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    default = lake_for(load_settings()).storage_options
    assert (default["max_retries"], default["retry_timeout"]) == ("3", "10s")

    monkeypatch.setenv("AUDIENCE_LAKE_S3_MAX_RETRIES", "0")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_RETRY_TIMEOUT", "1.5")
    bounded = lake_for(load_settings()).storage_options
    assert (bounded["max_retries"], bounded["retry_timeout"]) == ("0", "1500ms")
    assert polars_storage_options(bounded)["retry_timeout_ms"] == 1500  # type: ignore[index]

    monkeypatch.setenv("AUDIENCE_LAKE_S3_MAX_RETRIES", "-1")
    with pytest.raises(ConfigError, match="AUDIENCE_LAKE_S3_MAX_RETRIES"):
        load_settings()

"""File drops from local folders and from a real S3 server, through the real ingest path.

Every format (CSV, NDJSON, Parquet, each optionally gzipped) is read from real files; ingests
call the real ``ingest_source`` task function (``.fn``, Prefect's run logger disabled) against a
real Delta lake, so exactly-once bookkeeping, drift checks and quarantine are production code.
"""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect.logging import disable_run_logger

from tasks.connectors.lake import Lake
from tasks.connectors.s3 import s3_client
from tasks.connectors.sources.files import FileDropReader, LocalDropStore, S3DropStore
from tasks.core.config import FileDropSource
from tasks.ingest import bronze_table, ingest_source
from tasks.quarantine import QUARANTINE
from tests.conftest import S3Endpoint

ROWS = [
    {"event_id": "e1", "email": "a@example.com", "amount": "1.5"},
    {"event_id": "e2", "email": "b@example.com", "amount": "2"},
    {"event_id": "e3", "email": None, "amount": "3.25"},
]


def never(_batch_id: str) -> bool:
    return False


def encode(rows: list[dict[str, Any]], file_format: str, *, gzipped: bool = False) -> bytes:
    frame = pl.DataFrame(rows)
    buffer = io.BytesIO()
    if file_format == "csv":
        frame.write_csv(buffer)
    elif file_format == "ndjson":
        frame.write_ndjson(buffer)
    else:
        frame.write_parquet(buffer)
    content = buffer.getvalue()
    return gzip.compress(content) if gzipped else content


def config(path: str, file_format: str = "csv", **extra: Any) -> FileDropSource:
    return FileDropSource.model_validate(
        {
            "kind": "files",
            "role": "events",
            "path": path,
            "format": file_format,
            "primary_key": "event_id",
            **extra,
        }
    )


def ingest(source: FileDropSource, *, run: str, name: str = "drops") -> Any:
    with disable_run_logger():
        return ingest_source.fn(name, source, run_id=run, started_at=datetime.now(UTC))


@pytest.fixture
def lake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    root = tmp_path / "lake"
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(root))
    return Lake(str(root))


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("file_format", ["csv", "ndjson", "parquet"])
def test_each_format_is_read_plain_and_gzipped(
    tmp_path: Path, file_format: str, gzipped: bool
) -> None:
    name = f"drop.{file_format}" + (".gz" if gzipped else "")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(encode(ROWS, file_format, gzipped=gzipped))
    reader = FileDropReader(
        str(tmp_path / "in"), source_name="ev", file_format=file_format, primary_key="event_id"
    )
    (batch,) = reader.batches(since=None, is_committed=never)
    assert batch.rejected is None and batch.rejections == ()
    assert batch.frame["event_id"].to_list() == ["e1", "e2", "e3"]
    assert batch.frame["email"].to_list() == ["a@example.com", "b@example.com", None]
    assert batch.frame["_file"].unique().to_list() == [name]
    assert batch.batch_id is not None and batch.batch_id.startswith(f"ev:{name}:")


def test_bad_records_are_rejected_one_by_one(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_text(
        '{"event_id": "e1"}\n{broken\n[1, 2]\n\n{"event_id": "e2"}\n'
    )
    (tmp_path / "b.csv").write_text('event_id,amount\ne3,1\ne4,1,extra\n"e5",2\n')
    ndjson = FileDropReader(
        str(tmp_path), source_name="ev", file_format="ndjson", pattern="*.ndjson"
    )
    (batch,) = ndjson.batches(since=None, is_committed=never)
    assert batch.frame["event_id"].to_list() == ["e1", "e2"]
    assert [(r.rule, r.position, r.raw) for r in batch.rejections] == [
        ("unparseable_record", 2, "{broken"),
        ("unparseable_record", 3, "[1, 2]"),
    ]
    csv = FileDropReader(str(tmp_path), source_name="ev", file_format="csv", pattern="*.csv")
    (batch,) = csv.batches(since=None, is_committed=never)
    assert batch.frame["event_id"].to_list() == ["e3", "e5"]
    (bad,) = batch.rejections
    assert bad.position == 3 and bad.raw == "e4,1,extra\n" and "3 field(s)" in bad.reason


def test_a_run_reads_at_most_max_files_new_files(tmp_path: Path) -> None:
    for n in range(3):
        (tmp_path / f"{n}.ndjson").write_text(f'{{"event_id": "e{n}"}}\n')
    reader = FileDropReader(str(tmp_path), source_name="ev", file_format="ndjson", max_files=2)
    first = [b.batch_id for b in reader.batches(since=None, is_committed=never)]
    assert len(first) == 2
    # Committed files do not count against the bound: the next run gets the third.
    rest = list(reader.batches(since=None, is_committed=lambda b: b in first))
    assert [b.frame["event_id"].item() for b in rest] == ["e2"]


def test_corrupt_files_are_quarantined_whole_once_and_never_block_others(
    tmp_path: Path, lake_dir: Lake
) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "01-good.csv").write_bytes(encode(ROWS, "csv"))
    (drops / "02-truncated.csv.gz").write_bytes(encode(ROWS, "csv", gzipped=True)[:25])
    (drops / "03-latin1.csv").write_bytes("event_id,name\ne9,Zoë\n".encode("latin-1"))
    (drops / "04-no-key.csv").write_text("id,email\n1,x@example.com\n")
    (drops / "05-good.csv.gz").write_bytes(
        encode([{"event_id": "e4", "amount": "4"}], "csv", gzipped=True)
    )
    (drops / ".partial-upload.csv").write_text("event_id\nhidden\n")
    first = ingest(config(str(drops)), run="r1")
    assert (first.rows, first.batches, first.rejected_batches, first.known_bad_batches) == (
        4,
        2,
        3,
        0,
    )
    bronze = lake_dir.read(bronze_table("drops"))
    assert sorted(bronze["event_id"]) == ["e1", "e2", "e3", "e4"]
    quarantine = lake_dir.read(QUARANTINE).sort("value")
    assert sorted(quarantine["rule"]) == ["schema_violation", "unreadable_file", "unreadable_file"]
    reasons = " | ".join(quarantine["value"])
    assert "02-truncated.csv.gz: not valid gzip" in reasons
    assert "03-latin1.csv: not UTF-8" in reasons
    assert "04-no-key.csv: required column(s) ['event_id'] missing" in reasons
    assert quarantine.filter(pl.col("rule") == "schema_violation")["column"].item() == "event_id"
    assert set(quarantine["run_id"]) == {"r1"} and set(quarantine["table"]) == {"bronze/drops"}
    assert (
        '"origin": "04-no-key.csv"'
        in quarantine.filter(pl.col("rule") == "schema_violation")["row"].item()
    )

    # A rerun neither re-ingests the good files nor re-quarantines the bad ones, and says so.
    second = ingest(config(str(drops)), run="r2")
    assert (second.rows, second.rejected_batches, second.known_bad_batches) == (0, 0, 3)
    assert lake_dir.read(QUARANTINE).height == 3

    # A corrected file dropped under the same name is a new version: it is ingested.
    (drops / "04-no-key.csv").write_text("event_id,email\ne7,y@example.com\n")
    third = ingest(config(str(drops)), run="r3")
    assert (third.rows, third.known_bad_batches) == (1, 2)
    assert lake_dir.read(bronze_table("drops")).height == 5


def test_each_file_version_lands_exactly_once(tmp_path: Path, lake_dir: Lake) -> None:
    drops = tmp_path / "drops"
    (drops / "2026" / "11").mkdir(parents=True)
    (drops / "2026" / "11" / "a.ndjson").write_bytes(encode(ROWS[:2], "ndjson"))
    (drops / "2026" / "11" / "b.ndjson").write_bytes(encode(ROWS[2:], "ndjson"))
    source = config(str(drops), "ndjson", pattern="2026/*.ndjson")
    assert ingest(source, run="r1").rows == 3
    again = ingest(source, run="r2")
    assert (again.rows, again.batches) == (0, 0)
    (drops / "2026" / "11" / "b.ndjson").write_bytes(encode([{"event_id": "e9"}], "ndjson"))
    assert ingest(source, run="r3").rows == 1
    bronze = lake_dir.read(bronze_table("drops"))
    assert sorted(bronze["event_id"]) == ["e1", "e2", "e3", "e9"]
    assert bronze.group_by("_batch_id").len().height == 3
    assert set(bronze["_file"]) == {"2026/11/a.ndjson", "2026/11/b.ndjson"}


def test_parquet_type_drift_quarantines_rows_and_new_columns_evolve(
    tmp_path: Path, lake_dir: Lake
) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    pl.DataFrame({"event_id": ["e1", "e2"], "amount": [1.5, 2.0]}).write_parquet(
        drops / "1.parquet"
    )
    pl.DataFrame(
        {
            "event_id": ["e3", "e4", None, "e6"],
            "amount": ["12.5", "lots", "3", None],  # now text: a type change upstream
            "channel": ["web", "app", "web", None],  # a new field
        }
    ).write_parquet(drops / "2.parquet")
    report = ingest(config(str(drops), "parquet"), run="r1")
    assert (report.rows, report.quarantined_rows) == (4, 2)
    bronze = lake_dir.read(bronze_table("drops")).sort("event_id")
    assert bronze.schema["amount"] == pl.Float64
    assert bronze.select("event_id", "amount", "channel").rows() == [
        ("e1", 1.5, None),
        ("e2", 2.0, None),
        ("e3", 12.5, "web"),
        ("e6", None, None),
    ]
    quarantine = lake_dir.read(QUARANTINE).sort("rule")
    assert quarantine.select("rule", "column", "value").rows() == [
        ("missing_primary_key", "event_id", None),
        ("type_conflict(Float64)", "amount", "lots"),
    ]
    assert '"amount":"lots"' in quarantine["row"][1]


def _put(endpoint: S3Endpoint, bucket: str, key: str, body: bytes) -> None:
    endpoint.client().put_object(Bucket=bucket, Key=key, Body=body)


@pytest.mark.s3
def test_s3_prefix_with_its_own_endpoint_and_keys(
    s3_endpoint: S3Endpoint, s3_bucket: str, lake_dir: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_DROP_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_DROP_SECRET", s3_endpoint.secret_access_key)
    _put(s3_endpoint, s3_bucket, "partner/2026-11-01.csv.gz", encode(ROWS, "csv", gzipped=True))
    _put(s3_endpoint, s3_bucket, "partner/2026-11-02.csv", b"\x00\x01garbage\xff")
    _put(s3_endpoint, s3_bucket, "partner/sub/", b"")  # a "folder" marker
    _put(s3_endpoint, s3_bucket, "elsewhere/x.csv", encode(ROWS, "csv"))
    source = config(
        f"s3://{s3_bucket}/partner",
        s3={
            "endpoint": s3_endpoint.url,
            "region": s3_endpoint.region,
            "access_key_id": {"secret": "drop_key_id"},
            "secret_access_key": {"secret": "drop_secret"},
        },
    )
    first = ingest(source, run="r1")
    assert (first.rows, first.rejected_batches) == (3, 1)
    quarantine = lake_dir.read(QUARANTINE)
    assert quarantine["rule"].to_list() == ["unreadable_file"]
    assert "2026-11-02.csv: not UTF-8" in quarantine["value"].item()

    second = ingest(source, run="r2")
    assert (second.rows, second.batches, second.known_bad_batches) == (0, 0, 1)

    # Overwriting an object gives it a new ETag: the new version is ingested once.
    _put(s3_endpoint, s3_bucket, "partner/2026-11-01.csv.gz", encode(ROWS[:1], "csv", gzipped=True))
    third = ingest(source, run="r3")
    assert third.rows == 1
    assert ingest(source, run="r4").rows == 0
    bronze = lake_dir.read(bronze_table("drops"))
    assert bronze.height == 4 and bronze["_batch_id"].n_unique() == 2


@pytest.mark.s3
def test_s3_drop_and_lake_share_the_lake_s3_settings(
    s3_endpoint: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", s3_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    monkeypatch.setenv("AWS_REGION", s3_endpoint.region)
    _put(s3_endpoint, s3_bucket, "landing/events.parquet", encode(ROWS, "parquet"))
    _put(s3_endpoint, s3_bucket, "landing/events.ndjson", encode(ROWS, "ndjson"))
    report = ingest(config(f"s3://{s3_bucket}/landing", "parquet", pattern="*.parquet"), run="r1")
    assert report.rows == 3
    lake = Lake(f"s3://{s3_bucket}/lake", s3_endpoint.storage_options())
    assert sorted(lake.read(bronze_table("drops"))["event_id"]) == ["e1", "e2", "e3"]


@pytest.mark.s3
def test_s3_store_lists_versions_without_downloading(
    s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    _put(s3_endpoint, s3_bucket, "p/a.ndjson", encode(ROWS, "ndjson"))
    store = S3DropStore(s3_client(s3_endpoint.storage_options()), s3_bucket, "p")
    (listed,) = store.list()
    assert listed.key == "a.ndjson" and listed.version is not None
    seen: list[str] = []
    reader = FileDropReader(store, source_name="ev", file_format="ndjson")
    # A committed version is skipped on its listed ETag, before any download.
    assert list(reader.batches(since=None, is_committed=lambda b: seen.append(b) or True)) == []
    assert seen == [f"ev:a.ndjson:{listed.version}"]
    local = LocalDropStore("/nonexistent/drop")
    with pytest.raises(FileNotFoundError):
        list(local.list())

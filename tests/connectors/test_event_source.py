"""The event source: landed micro-batches -> bronze, once per file and once per ``event_id``.

Deliveries go through the real webhook receiver on loopback; bronze is a real Delta table on a
local directory and on the session's S3 server (the ``lake`` fixture).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from tasks.connectors.lake import Lake, writes
from tasks.connectors.sources import open_source
from tasks.connectors.sources.events import EventBatchReader, event_batch_id
from tasks.connectors.webhook import (
    LandedObject,
    LocalLanding,
    S3Landing,
    WebhookReceiver,
    batch_file_name,
)
from tasks.core.config import PipelineConfig, parse_pipeline
from tasks.errors import ConfigError, SourceError
from tasks.reports import IngestReport
from tests.conftest import S3Endpoint

TABLE = "bronze/web_events"


def event(n: int, **extra: object) -> dict[str, object]:
    return {"event_id": f"evt_{n:04d}", "event_type": "page_view", "n": n, **extra}


def ingest(reader: EventBatchReader, lake: Lake) -> tuple[int, int]:
    """What ``tasks.ingest.ingest_source`` does for an ``insert_new`` reader (minus Prefect).

    Returns (files landed, rows inserted).
    """
    files = inserted = 0
    for batch in reader.batches(since=None, is_committed=lambda b: lake.committed(TABLE, b)):
        assert batch.batch_id is not None
        frame = batch.frame.with_columns(pl.lit(batch.batch_id).alias("_batch_id"))
        result = lake.insert_new(
            TABLE, frame, keys=["event_id"], batch_id=batch.batch_id, also_record=batch.covers
        )
        if result is not None:
            files += 1 + len(batch.covers)
            inserted += result
    return files, inserted


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    return tmp_path / "landing"


@pytest.fixture
def receiver(landing: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(
        LocalLanding(landing), source_name="web_events", allow_unsigned=True
    ) as server:
        yield server


def deliver(receiver: WebhookReceiver, events: list[dict[str, object]]) -> str:
    response = httpx.post(receiver.url, json=events)
    assert response.status_code == 200, response.text
    name: str = response.json()["batch"]
    return name


def reader_for(landing: Path, **kwargs: object) -> EventBatchReader:
    return EventBatchReader(LocalLanding(landing), source_name="web_events", **kwargs)  # type: ignore[arg-type]


def test_duplicate_deliveries_become_exactly_one_row_per_event_id(
    receiver: WebhookReceiver, landing: Path, lake: Lake
) -> None:
    first = deliver(receiver, [event(1), event(2), event(3)])
    deliver(receiver, [event(1), event(2), event(3)])  # verbatim retry: the same file
    # A sender re-batched its retry: two known events (one with a later sentAt) + one new.
    deliver(receiver, [event(3, sentAt="later"), event(2), event(4)])
    deliver(receiver, [event(5), event(5), event(6)])  # a duplicate inside one batch
    reader = reader_for(landing)
    assert ingest(reader, lake) == (3, 6)
    # Files written together are deduped before the write: evt_0002, evt_0003 (the re-batched
    # retry) and the second evt_0005 never reach the MERGE.
    assert reader.duplicates_in_files == 3

    bronze = lake.read(TABLE).sort("event_id")
    assert bronze["event_id"].to_list() == [f"evt_{n:04d}" for n in range(1, 7)]
    # The first delivery wins: evt_0003 keeps the row from the first batch.
    first_row = bronze.filter(pl.col("event_id") == "evt_0003").row(0, named=True)
    assert first_row["_landed_file"] == first
    assert first_row.get("sentAt") is None
    assert first_row["_batch_id"] == event_batch_id("web_events", first)

    # Committed files were archived; a rerun reads nothing; more redeliveries add nothing.
    assert sorted(p.name for p in landing.glob("*.ndjson")) == []
    assert len(list((landing / "archive").glob("*.ndjson"))) == 3
    assert ingest(reader_for(landing), lake) == (0, 0)
    deliver(receiver, [event(1), event(6)])
    assert ingest(reader_for(landing), lake) == (1, 0)  # recorded, so never read again
    assert ingest(reader_for(landing), lake) == (0, 0)
    assert lake.read(TABLE).height == 6


def test_files_are_written_in_groups_and_each_is_recorded(
    receiver: WebhookReceiver, landing: Path, lake: Lake
) -> None:
    names = [deliver(receiver, [event(n), event(n + 1)]) for n in range(0, 10, 2)]
    reader = reader_for(landing, files_per_batch=2)
    assert ingest(reader, lake) == (5, 10)
    assert lake.version(TABLE) == 2  # three commits (2 + 2 + 1 files), not five
    assert all(lake.committed(TABLE, event_batch_id("web_events", n)) for n in names)
    bronze = lake.read(TABLE)
    assert set(bronze["_landed_file"]) == set(names)  # each row still names its own file
    assert bronze["_batch_id"].n_unique() == 3


def test_a_file_committed_but_not_archived_before_a_crash_is_skipped_then_archived(
    receiver: WebhookReceiver, landing: Path, lake: Lake
) -> None:
    name = deliver(receiver, [event(1), event(2)])
    assert ingest(reader_for(landing, archive_landed=False), lake) == (1, 2)
    assert (landing / name).exists()  # as if the run died right after the commit
    reader = reader_for(landing)
    assert ingest(reader, lake) == (0, 0)
    assert reader.files_read == 0  # recognised by its committed transaction id, not re-read
    assert not (landing / name).exists() and (landing / "archive" / name).exists()
    # The same body delivered again after archiving is recognised as delivered: no new file.
    assert deliver(receiver, [event(1), event(2)]) == name
    assert ingest(reader_for(landing), lake) == (0, 0)
    assert lake.read(TABLE).height == 2


def test_a_file_archived_by_a_concurrent_run_after_listing_is_skipped(
    receiver: WebhookReceiver, landing: Path
) -> None:
    deliver(receiver, [event(1)])
    folder = LocalLanding(landing)
    listed = folder.list("*.ndjson")

    class StaleListing(LocalLanding):
        def list(self, pattern: str) -> list[LandedObject]:
            return listed  # what this run saw before the other run archived the file

    folder.archive(listed[0].name)  # the other run committed and archived it meanwhile
    reader = EventBatchReader(StaleListing(landing), source_name="web_events")
    looks: list[str] = []

    def committed_on_second_look(batch_id: str) -> bool:
        looks.append(batch_id)
        return len(looks) > 1

    assert list(reader.batches(since=None, is_committed=committed_on_second_look)) == []
    assert len(looks) == 2
    # Gone but never committed: that is a loss, and it is reported.
    with pytest.raises(SourceError, match="vanished from the landing zone"):
        list(reader.batches(since=None, is_committed=lambda _b: False))


def test_values_arrive_as_delivered_text_with_nested_json_and_landing_metadata(
    receiver: WebhookReceiver, landing: Path, lake: Lake
) -> None:
    name = deliver(
        receiver, [event(1, props={"b": 1, "a": [1, 2]}, ok=True, price=9.5, missing=None)]
    )
    ingest(reader_for(landing), lake)
    row = lake.read(TABLE).row(0, named=True)
    assert row["props"] == '{"a": [1, 2], "b": 1}'
    assert (row["ok"], row["price"], row["missing"], row["n"]) == ("true", "9.5", None, "1")
    assert row["_landed_file"] == name
    assert row["_landed_at"].endswith("Z")


def test_new_fields_evolve_the_bronze_schema(
    receiver: WebhookReceiver, landing: Path, lake: Lake
) -> None:
    deliver(receiver, [event(1)])
    ingest(reader_for(landing), lake)
    deliver(receiver, [event(2, campaign="spring")])
    ingest(reader_for(landing), lake)
    bronze = lake.read(TABLE).sort("event_id")
    assert bronze["campaign"].to_list() == [None, "spring"]


def test_bad_lines_are_quarantined_and_the_rest_lands(
    receiver: WebhookReceiver, landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the real ingest task: rejections go to ops/quarantine, good rows to bronze.
    from prefect.logging import disable_run_logger

    from tasks.ingest import ingest_source
    from tasks.resources import open_lake

    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
    deliver(receiver, [event(1)])
    mixed = landing / "zz-mixed.ndjson"
    mixed.write_text('{"event_id": "evt_9"}\n{broken\n[1]\n{"type": "x"}\n')
    (landing / "zz-binary.ndjson").write_bytes(b"\xff\xfe\x00garbage")
    source = pipeline(str(landing)).sources["web_events"]

    def run() -> IngestReport:
        with disable_run_logger():
            return ingest_source.fn("web_events", source, run_id="r", started_at=_now())

    report = run()
    lake = open_lake()
    assert sorted(lake.read(TABLE)["event_id"]) == ["evt_0001", "evt_9"]
    quarantine = lake.read("ops/quarantine").sort("value")
    assert quarantine["rule"].to_list().count("unparseable_record") == 3
    assert quarantine["rule"].to_list().count("unreadable_file") == 1
    reasons = "\n".join(quarantine["value"])
    assert f"{mixed} line 2: not valid JSON" in reasons
    assert f"{mixed} line 3: a JSON list, not an object" in reasons
    assert f"{mixed} line 4: no 'event_id'" in reasons
    assert "zz-binary.ndjson is not UTF-8" in reasons
    assert (report.quarantined_rows, report.rejected_batches) == (3, 1)
    # Nothing is read, landed or quarantined twice.
    again = run()
    assert again.batches == 0 and again.quarantined_rows == 0
    assert lake.read("ops/quarantine").height == 4 and lake.read(TABLE).height == 2
    assert list(landing.glob("*.ndjson")) == []


def test_a_run_is_bounded_and_the_rest_waits_for_the_next(
    receiver: WebhookReceiver, landing: Path, lake: Lake
) -> None:
    for n in range(5):
        deliver(receiver, [event(n)])
    assert ingest(reader_for(landing, max_files=2), lake) == (2, 2)
    assert ingest(reader_for(landing, max_files=2), lake) == (2, 2)
    assert ingest(reader_for(landing, max_files=2), lake) == (1, 1)
    assert lake.read(TABLE).height == 5


def test_concurrent_writers_still_keep_one_row_per_event_id(tmp_path: Path) -> None:
    # Two runs (e.g. the triggered land-events and the hourly pipeline) with their own Lake
    # objects land overlapping batches at once: the MERGE conflict check plus the retry keep
    # every event id once.
    root = str(tmp_path / "lake")
    Lake(root).insert_new(
        TABLE, pl.DataFrame({"event_id": ["seed"]}), keys=["event_id"], batch_id="s"
    )
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        lake = Lake(root)
        try:
            for batch in range(6):
                ids = [f"e{batch * 5 + i}" for i in range(offset, offset + 8)]
                frame = pl.DataFrame({"event_id": ids})
                lake.insert_new(TABLE, frame, keys=["event_id"], batch_id=f"w{offset}-{batch}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(offset,)) for offset in (0, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    bronze = Lake(root).read(TABLE)
    assert bronze.height == bronze["event_id"].n_unique()
    expected = {"seed"} | {f"e{b * 5 + i}" for b in range(6) for i in range(11)}
    assert set(bronze["event_id"]) == expected


def test_an_insert_that_a_concurrent_insert_overtook_checks_its_keys_again(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving the race above hits only sometimes, made certain: another writer
    commits an overlapping key after this insert found its keys missing and before it commits.
    The shared app transaction makes delta-rs reject this commit; the retry sees the key."""
    lake.insert_new(TABLE, pl.DataFrame({"event_id": ["seed"]}), keys=["event_id"], batch_id="s")
    late = Lake(lake.root, lake.storage_options)
    assert late.exists(TABLE)  # holds the snapshot with the seed only
    append = writes.write_deltalake
    overtaken: list[bool] = []

    def append_after_another_insert(*args: Any, **kwargs: Any) -> None:
        if not overtaken:
            overtaken.append(True)
            other = Lake(lake.root, lake.storage_options)
            frame = pl.DataFrame({"event_id": ["y", "z"]})
            assert other.insert_new(TABLE, frame, keys=["event_id"], batch_id="b") == 2
        append(*args, **kwargs)

    monkeypatch.setattr(writes, "write_deltalake", append_after_another_insert)
    frame = pl.DataFrame({"event_id": ["x", "y"]})
    assert late.insert_new(TABLE, frame, keys=["event_id"], batch_id="a") == 1
    bronze = Lake(lake.root, lake.storage_options).read(TABLE)
    assert sorted(bronze["event_id"]) == ["seed", "x", "y", "z"]
    assert late.committed(TABLE, "a") and late.committed(TABLE, "b")


def test_insert_new_refuses_rows_it_could_not_dedupe(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(Exception, match="contain null values"):
        lake.insert_new(
            TABLE, pl.DataFrame({"event_id": ["a", None]}), keys=["event_id"], batch_id="b"
        )
    with pytest.raises(Exception, match="2 rows share a key"):
        lake.insert_new(
            TABLE, pl.DataFrame({"event_id": ["a", "a"]}), keys=["event_id"], batch_id="b"
        )
    with pytest.raises(Exception, match="batch_id is empty"):
        lake.insert_new(TABLE, pl.DataFrame({"event_id": ["a"]}), keys=["event_id"], batch_id="")


def _now() -> datetime:
    return datetime.now(UTC)


def pipeline(landing: str, **source: object) -> PipelineConfig:
    sources = {
        "crm": {"kind": "files", "role": "contacts", "path": "x", "format": "csv"},
        "web_events": {"kind": "events", "landing": landing, **source},
    }
    return parse_pipeline(json.dumps({"sources": sources}))


def test_config_selects_the_reader_through_the_registry(
    receiver: WebhookReceiver, landing: Path, lake: Lake
) -> None:
    config = pipeline(str(landing), fields={"event_id": "messageId"})
    source = config.sources["web_events"]
    reader = open_source("web_events", source)
    assert isinstance(reader, EventBatchReader)
    assert (reader.write_mode, reader.primary_key, reader.cursor_field) == (
        "insert_new",
        "messageId",
        None,
    )
    assert source.role == "events"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"landing": "http://x/y"}, "sources.web_events.landing: landing 'http://x/y'"),
        ({"landing": "s3://"}, "names no bucket"),
        ({"landing": "/x", "receiver": {"path": "events"}}, "receiver.path: path 'events'"),
        ({"landing": "/x", "receiver": {"prot": 1}}, "receiver.prot: Extra inputs"),
        ({"landing": "/x", "receiver": {"signature_header": "X Sig"}}, "signature_header"),
        ({"landing": "/x", "max_files_per_run": 0}, "max_files_per_run"),
    ],
)
def test_config_errors_name_the_key_path(source: dict[str, object], message: str) -> None:
    sources = {
        "crm": {"kind": "files", "role": "contacts", "path": "x", "format": "csv"},
        "web_events": {"kind": "events", **source},
    }
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(json.dumps({"sources": sources}))


@pytest.mark.s3
def test_events_landed_on_s3_reach_bronze_once(
    s3_endpoint: S3Endpoint, s3_bucket: str, lake: Lake
) -> None:
    landing = S3Landing(f"s3://{s3_bucket}/landing/web", s3_endpoint.client())
    with WebhookReceiver(landing, source_name="web_events", allow_unsigned=True) as server:
        names = [
            httpx.post(server.url, json=events).json()["batch"]
            for events in ([event(1), event(2)], [event(2), event(3)], [event(1), event(2)])
        ]
    assert names[0] == names[2] != names[1]
    reader = EventBatchReader(landing, source_name="web_events")
    assert ingest(reader, lake) == (2, 3)
    assert ingest(EventBatchReader(landing, source_name="web_events"), lake) == (0, 0)
    assert sorted(lake.read(TABLE)["event_id"]) == ["evt_0001", "evt_0002", "evt_0003"]
    assert landing.list("*.ndjson") == []  # archived under landing/web/archive/
    assert all(lake.committed(TABLE, event_batch_id("web_events", name)) for name in names)
    assert names[1] == batch_file_name(httpx.Request("POST", "/", json=[event(2), event(3)]).read())

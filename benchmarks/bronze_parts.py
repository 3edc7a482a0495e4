"""Benchmark bronze for more people than fit in memory at once: a part at a time.

:func:`bronze_chunks` yields the people and bronze frames of :mod:`benchmarks.bronze_gen` a
part (a million people by default) at a time, each part numbering its rows in a range of its
own, so 10 M people (80 M bronze rows) are written part by part (:func:`generate`), and a
day's change is computed part by part too (:func:`apply_change`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl

from benchmarks.bronze_gen import bronze_part, people

# Row numbers a part may use (records, orders, events, enrichment rows), so ids never collide
# across parts; far above a million people's ~10 rows each.
PART_STRIDE = 10**8


def bronze_chunks(
    contacts: int, seed: int = 7, *, chunk: int = 1_000_000
) -> Iterator[tuple[pl.DataFrame, dict[str, pl.DataFrame]]]:
    """``contacts`` people generated ``chunk`` at a time: ``(people, bronze frames)`` per part,
    so 10 M people never sit in memory at once. One part (``contacts <= chunk``) is exactly
    :func:`~benchmarks.bronze_gen.bronze_tables`; more parts give a dataset of the same shape
    with other ids."""
    for part, first in enumerate(range(0, contacts, chunk)):
        persons = people(min(chunk, contacts - first), seed, start=first)
        yield persons, bronze_part(persons, seed, start=part * PART_STRIDE)


GENERATE_CHUNK = 1_000_000
"""People generated at a time: above it, bronze is written in parts (one commit each)."""


def generate(work: Path, contacts: int, seed: int) -> tuple[dict[str, int], float]:
    """Write the bronze tables of ``contacts`` people; returns row counts and seconds."""
    from tasks.connectors.lake import Lake

    started = time.perf_counter()
    lake = Lake(str(work / "bronze"))
    rows: dict[str, int] = {}
    for part, (_, frames) in enumerate(bronze_chunks(contacts, seed, chunk=GENERATE_CHUNK)):
        for table, frame in frames.items():
            if part == 0:
                lake.overwrite(table, frame)
            else:
                lake.append(table, frame)
            rows[table] = rows.get(table, 0) + frame.height
    return rows, time.perf_counter() - started


def bronze_for(
    work: Path, contacts: int, seed: int, *, reuse: bool
) -> tuple[dict[str, int], float]:
    """The bronze of ``contacts`` people in ``work``: generated (row counts, seconds), or with
    ``reuse`` the one generated there before for the same people and seed (seconds 0)."""
    marker = work / "bronze.json"
    wanted = {"contacts": contacts, "seed": seed}
    if reuse and marker.exists():
        recorded = json.loads(marker.read_text())
        if {k: recorded.get(k) for k in wanted} == wanted:
            return dict(recorded["rows"]), 0.0
    shutil.rmtree(work / "bronze", ignore_errors=True)
    marker.unlink(missing_ok=True)
    rows, seconds = generate(work, contacts, seed)
    marker.write_text(json.dumps({**wanted, "rows": rows}))
    return rows, seconds


def record_changes(lake_dir: Path, tables: Iterable[str]) -> None:
    """Turn the change data feed on for the bronze ``tables``, as ingest writes them, so the
    incremental run reads what changed from the feed (a metadata commit; no row changes)."""
    from tasks.connectors.lake import Lake

    lake = Lake(str(lake_dir))
    for table in tables:
        lake.enable_change_feed(f"bronze/{table}")


def write_change(contacts: int, seed: int, share: float, out: Path) -> dict[str, int]:
    """Compute a day's change for ``share`` of the people, part by part, into parquet files in
    ``out`` (``<table>-<part>.parquet``, table with ``_`` for ``/``); returns rows per table.
    Each part's change is written before the next part is generated: a change frame may share
    buffers with its part's bronze frames, and holding ten parts' worth took more than 24 GB
    at 10 M people."""
    from benchmarks.bronze_gen import changes

    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    for part, (persons, frames) in enumerate(bronze_chunks(contacts, seed, chunk=GENERATE_CHUNK)):
        start = None if contacts <= GENERATE_CHUNK else (100 + part) * PART_STRIDE
        for table, frame in changes(persons, frames, share=share, seed=seed, start=start).items():
            frame.write_parquet(out / f"{change_file(table)}-{part}.parquet")
            rows[table] = rows.get(table, 0) + frame.height
        del persons, frames
    return rows


def change_file(table: str) -> str:
    """The stem of ``table``'s change files in :func:`write_change`'s folder."""
    return table.replace("/", "_")


def apply_change(
    lake_dir: Path, contacts: int, seed: int, share: float
) -> tuple[dict[str, int], float]:
    """Write a day's change for ``share`` of the people into bronze, as ingest would (one
    commit per table), from the files :func:`write_change` computes."""
    from tasks.connectors.lake import Lake

    with tempfile.TemporaryDirectory(prefix="bench-change-") as tmp:
        rows = write_change(contacts, seed, share, Path(tmp))
        change = {
            table: pl.read_parquet(sorted(Path(tmp).glob(f"{change_file(table)}-*.parquet")))
            for table in rows
        }
    started = time.perf_counter()
    lake = Lake(str(lake_dir))
    lake.merge("bronze/crm_contacts", change["bronze/crm_contacts"], keys=["id"])
    lake.merge("bronze/orders", change["bronze/orders"], keys=["order_id"])
    lake.insert_new(
        "bronze/web_events", change["bronze/web_events"], keys=["event_id"], batch_id="day-2"
    )
    lake.append_once("bronze/enrichment", change["bronze/enrichment"], batch_id="day-2")
    return {t: f.height for t, f in change.items()}, time.perf_counter() - started

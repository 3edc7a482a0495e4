"""A full restage in chunks gives the staging tables, quarantine and counts of one pass.

Bronze comes from the benchmark's generator (duplicate deliveries, unreadable phones and
countries, invalid emails that the contracts quarantine), written in two data files per table,
the second repeating rows of the first so that copies of one record lie in chunks far apart.
One lake is staged in a single chunk, a copy in chunks of a few hundred rows (dozens per
source); every staging table, its state, the quarantine and the report must match.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from benchmarks.bronze_gen import bronze_tables
from tasks.connectors.lake import Lake, LakeError
from tasks.core.config import PipelineConfig, load_pipeline
from tasks.core.incremental import COPIES, RECORD_HASH, STAGING_STATE_KEY
from tasks.core.tables import QUARANTINE, STAGED
from tasks.engine.roles import stage_bronze
from tasks.engine.staging_full import spill_directory

ROOT = Path(__file__).resolve().parents[2]
LOGGER = logging.getLogger("test_staging_chunks")
NOW = datetime(2026, 11, 2, tzinfo=UTC)
SMALL_CHUNK = 211
REPEATED = 150


@pytest.fixture(autouse=True)
def _pepper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_PEPPER", "chunk-test-pepper")


def config_with(chunk_rows: int) -> PipelineConfig:
    config = load_pipeline(str(ROOT / "pipeline.yaml"), env={})
    engine = config.engine.model_copy(update={"staging_chunk_rows": chunk_rows})
    return config.model_copy(update={"engine": engine})


def write_bronze(lake: Lake) -> dict[str, int]:
    """Generated bronze in two files per table; the rows of each table."""
    sizes = {}
    for table, frame in bronze_tables(1_000, seed=5).items():
        lake.overwrite(table, frame)
        lake.append(table, frame.head(REPEATED))  # the same records again, in a later chunk
        sizes[table] = frame.height + REPEATED
    return sizes


def staged(lake: Lake) -> dict[str, pl.DataFrame]:
    return {role: lake.read(table).sort(RECORD_HASH) for role, table in STAGED.items()}


def states(lake: Lake) -> dict[str, dict[str, object]]:
    return {
        role: json.loads(lake.history(table, limit=1)[0][STAGING_STATE_KEY])
        for role, table in STAGED.items()
    }


def quarantine(lake: Lake) -> pl.DataFrame:
    return lake.read(QUARANTINE).drop("run_id", "quarantined_at").sort(pl.all())


def test_a_restage_in_small_chunks_stages_what_one_chunk_does(tmp_path: Path) -> None:
    one, chunked = Lake(str(tmp_path / "one")), Lake(str(tmp_path / "chunked"))
    sizes = write_bronze(one)
    shutil.copytree(tmp_path / "one", tmp_path / "chunked")
    assert min(sizes.values()) > 2 * SMALL_CHUNK  # every source is read in several chunks

    single = stage_bronze(
        one, config_with(10_000_000), run_id="one", now=NOW, full_refresh=True, logger=LOGGER
    )
    many = stage_bronze(
        chunked, config_with(SMALL_CHUNK), run_id="many", now=NOW, full_refresh=True, logger=LOGGER
    )

    assert many == single
    assert single.modes == dict.fromkeys(STAGED, "full")
    assert sum(single.rejected.values()) > 0 and single.rule_counts  # contracts did reject rows
    assert single.losses  # and normalisation lost values, reported with a masked example
    assert states(chunked) == states(one)
    assert quarantine(chunked).equals(quarantine(one))
    a, b = staged(one), staged(chunked)
    for role in STAGED:
        assert a[role].schema == b[role].schema, role
        assert a[role].equals(b[role]), f"{role} differs"
        assert a[role].get_column(RECORD_HASH).is_unique().all(), role
        # Each record's copies were counted over all chunks: the repeated rows, read many
        # chunks after their first copies, are one log row each with the copies added up.
        assert a[role].get_column(COPIES).max() >= 2, role  # type: ignore[operator]
        live = states(chunked)[role]["live"]
        assert isinstance(live, dict) and int(b[role].get_column(COPIES).sum()) == sum(
            live.values()
        ), role


def test_the_spill_is_removed_when_the_staging_commit_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    write_bronze(lake)
    spills = tmp_path / "tmp"
    spills.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spills))
    seen: list[Path] = []

    def fail(self: Lake, table: str, *args: object, **kwargs: object) -> None:
        seen.extend(path for path in spills.rglob("*.parquet"))
        raise LakeError(f"{table}: commit refused")

    monkeypatch.setattr(Lake, "_overwrite_streamed", fail)
    with pytest.raises(LakeError, match="commit refused"):
        stage_bronze(
            lake, config_with(SMALL_CHUNK), run_id="x", now=NOW, full_refresh=True, logger=LOGGER
        )
    assert len(seen) > 1  # rows were spilled
    assert not any(spills.iterdir())  # and removed


def test_an_empty_source_stages_an_empty_log(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    for table, frame in bronze_tables(50, seed=3).items():
        lake.overwrite(table, frame.head(0) if table == "bronze/enrichment" else frame)
    report = stage_bronze(
        lake, config_with(7), run_id="e", now=NOW, full_refresh=True, logger=LOGGER
    )
    assert report.checked["enrichment"] == 0
    assert lake.read(STAGED["enrichment"]).height == 0
    assert lake.read(STAGED["contacts"]).height > 0


def test_spills_of_processes_no_longer_running_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    orphan = tmp_path / f"audience-lake-staging-{ended.pid}-abc"
    running = tmp_path / f"audience-lake-staging-{os.getppid()}-def"
    for folder in (orphan, running):
        (folder / "0000").mkdir(parents=True)
    with spill_directory() as directory:
        assert directory.exists() and str(os.getpid()) in directory.name
    assert not orphan.exists() and running.exists() and not directory.exists()

"""A full restage of a role in memory that follows a chunk of bronze, not the lake.

Restaging a role whole (a first run, ``full_refresh``, a changed normalisation setting) reads
every current bronze row of its sources. Instead of holding them all, it runs in two passes
over local temporary files (:class:`Spill`, removed afterwards, also on error):

1. **Chunks.** Each source's bronze is read ``engine.staging_chunk_rows`` rows at a time
   (row slices of a scan of the version being staged). A chunk is normalised, cleared of erased
   people and checked against the role's contract like a whole role would be: the failing rows
   become quarantine records in the run's :class:`~tasks.engine.checks.Checker`, the counts are
   added up (:class:`Tally`), and the valid rows are written to the spill, each row to the
   partition a hash of its content picks.
2. **Partitions.** Every copy of a record has the same content, so every copy is in the same
   spill partition, whichever chunk it came from: counting copies one partition at a time
   (:func:`tasks.core.incremental.distinct_records`) gives each record's copies over the whole
   role. The partitions' log rows stream into the staging table in one commit
   (a :class:`~tasks.connectors.lake.FrameStream`), which carries the staging state.

A contract judges each row on its own and the counts are sums, so the result does not depend on
the chunk size: the staging table, the quarantine and the counts are those of one pass over
everything (``tests/connectors/test_staging_chunks.py``).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from tasks.core.canonical import canonical_schema, combine_losses, normalisation_losses
from tasks.core.contracts import Contract
from tasks.core.incremental import SEQ, distinct_records, row_hash
from tasks.core.tables import ROLE_TABLES, staging_schema
from tasks.engine.checks import Checker

MAX_SPILL_PARTITIONS = 1024
"""At most this many spill partitions (each chunk writes one file per partition it reaches)."""

_PART = "_spill_part"
_SPILL_PREFIX = "audience-lake-staging-"


@dataclass
class Tally:
    """What checking the chunks of a role found: rows ``checked`` and ``rejected``, rejected
    and valid rows per source, and the normalisation losses of each chunk (unmasked)."""

    checked: int = 0
    rejected: int = 0
    rejected_by_source: Counter[str] = field(default_factory=Counter)
    valid_by_source: Counter[str] = field(default_factory=Counter)
    losses: list[pl.DataFrame] = field(default_factory=list)

    def add(self, chunk: pl.DataFrame, valid: pl.DataFrame, rejected: int) -> None:
        self.checked += chunk.height
        self.rejected += rejected
        self.rejected_by_source.update(rejected_by_source(chunk, valid))
        self.valid_by_source.update(_rows_by_source(valid))
        self.losses.append(normalisation_losses(chunk.lazy(), masked=False).collect())

    def normalisation_losses(self) -> pl.DataFrame:
        """The losses of all chunks, as :func:`normalisation_losses` reports them."""
        return combine_losses(self.losses)


class Spill:
    """Valid canonical rows of one role in local parquet files, partitioned by content."""

    def __init__(self, directory: Path, *, role: str, partitions: int) -> None:
        self.directory = directory
        self.schema = canonical_schema(role)
        self.role = role
        self.partitions = partitions
        self._written = 0

    def add(self, valid: pl.DataFrame) -> None:
        """Write ``valid`` (canonical rows) to the partitions its rows' contents pick."""
        if not valid.height:
            return
        part = (
            row_hash(list(self.schema)).reinterpret(signed=False) % pl.lit(self.partitions)
        ).alias(_PART)
        frames = valid.select(list(self.schema)).with_columns(part)
        for key, frame in frames.partition_by(_PART, as_dict=True, include_key=False).items():
            folder = self.directory / f"{int(key[0]):04d}"
            folder.mkdir(exist_ok=True)
            frame.write_parquet(folder / f"{self._written:06d}.parquet", statistics=False)
        self._written += 1

    def log_rows(self, *, seq: int) -> Iterator[pl.DataFrame]:
        """Per partition, the staging log rows of its records (copies over all chunks)."""
        for folder in sorted(path for path in self.directory.iterdir() if path.is_dir()):
            files = sorted(str(path) for path in folder.glob("*.parquet"))
            rows = pl.scan_parquet(files).select(
                [pl.col(name).cast(dtype) for name, dtype in self.schema.items()]
            )
            yield staged_records(rows, role=self.role, seq=seq)


@contextmanager
def spill_directory() -> Iterator[Path]:
    """A local temporary directory for spilled rows, removed however the block ends.

    A process killed outright cannot remove its own: the directory's name carries the process
    id, and the spills of processes no longer running are removed first.
    """
    _remove_orphaned_spills()
    directory = Path(tempfile.mkdtemp(prefix=f"{_SPILL_PREFIX}{os.getpid()}-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _remove_orphaned_spills() -> None:
    for path in Path(tempfile.gettempdir()).glob(f"{_SPILL_PREFIX}*-*"):
        pid = path.name.removeprefix(_SPILL_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_in_chunks(
    bronze: Mapping[str, pl.LazyFrame],
    canonical: Callable[[str, pl.LazyFrame], pl.LazyFrame],
    *,
    role: str,
    contract: Contract,
    checker: Checker,
    chunk_rows: int,
    directory: Path,
) -> tuple[Tally, Spill]:
    """Normalise (``canonical``) and check every row of each source's ``bronze``, a chunk of
    ``chunk_rows`` rows at a time; spill the valid rows under ``directory``."""
    sizes = {name: int(rows.select(pl.len()).collect().item()) for name, rows in bronze.items()}
    partitions = min(MAX_SPILL_PARTITIONS, max(1, math.ceil(sum(sizes.values()) / chunk_rows)))
    spill = Spill(directory, role=role, partitions=partitions)
    tally = Tally()
    table = ROLE_TABLES[role]
    for name in sorted(bronze):
        for offset in range(0, sizes[name], chunk_rows):
            chunk = canonical(name, bronze[name].slice(offset, chunk_rows)).collect()
            split = checker.check(chunk, contract, table=table, warn=False)
            tally.add(chunk, split.valid, split.rejected)
            spill.add(split.valid)
            del chunk, split
    checker.warn_rejected(contract, table=table, rejected=tally.rejected)
    return tally, spill


def staged_records(valid: pl.LazyFrame, *, role: str, seq: int) -> pl.DataFrame:
    """Valid canonical rows as log rows of sequence ``seq``: one per distinct record, with
    its copies."""
    records = distinct_records(valid).with_columns(pl.lit(seq, pl.Int64).alias(SEQ))
    records = records.select([pl.col(c).cast(t) for c, t in staging_schema(role).items()])
    return records.collect()


def rejected_by_source(checked: pl.DataFrame, valid: pl.DataFrame) -> dict[str, int]:
    """Rows of ``checked`` that did not pass (are not in ``valid``), per ``_source``."""
    passed = _rows_by_source(valid)
    return {
        source: count - passed.get(source, 0) for source, count in _rows_by_source(checked).items()
    }


def _rows_by_source(frame: pl.DataFrame) -> dict[str, int]:
    counts = frame.group_by("_source").len().iter_rows()
    return {str(source): int(count) for source, count in counts}

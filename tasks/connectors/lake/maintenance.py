"""Keeping Delta tables fast to read: compaction, Z-order, checkpoints and vacuum.

Every incremental write adds files; a table that gained a few rows per run for a month is
thousands of small files, and a reader opens each one. :func:`maintain_table` rewrites them
into few large ones (``optimize.compact``), or, for tables whose readers filter on a column
(``contact_key``), into files clustered on it (``optimize.z_order``) so a filter skips most files;
writes a checkpoint so readers stop replaying JSON commits; and vacuums the files the table no
longer references once they are older than the retention.

Writers and maintenance may run at the same time (nothing stops a person from starting either):

* Compaction and Z-order are ``dataChange=false`` rewrites committed with Delta's optimistic
  concurrency. If a writer committed meanwhile and removed a file the compaction read, the
  compaction's commit is rejected, nothing of it becomes visible, and it is retried on the
  refreshed table (at most ``max_attempts`` times, then the table is skipped and the report
  says so). It never overwrites a writer's commit.
* A lake write that loses its race to a compaction is rerun by the lake
  (:meth:`~tasks.connectors.lake.base.LakeBase._rerun_after_maintenance`): the compaction
  changed no row, so the rerun gives the result the write would have given before it.
* Vacuum deletes only files the log removed more than ``retention_hours`` ago. A reader pinned to
  a version younger than the retention keeps every file it needs; one pinned to an older version
  (a long time-travel query) fails to read the vacuumed files. A retention of 0 (to make erased
  rows unrecoverable at once) also lets vacuum delete files a concurrent writer has written but
  not yet committed: run it only while no writer runs. After the checkpoint, commits older
  than the table's log retention (30 days by default) are deleted. Change data files
  (``_change_data``, which vacuum leaves alone) older than the retention go with the vacuum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from tasks.connectors.lake.base import DATA_NEUTRAL_OPERATIONS, LakeBase
from tasks.connectors.lake.expire import drop_old_change_data
from tasks.errors import LakeError

__all__ = ["FileStats", "TableMaintenance", "file_stats", "maintain_table", "vacuum_table"]

_HISTORY_SCANNED = 1000  # commits looked at to find the last compaction


@dataclass(frozen=True)
class FileStats:
    """The data files of a table version: how many, and their total size."""

    files: int
    bytes: int


@dataclass(frozen=True)
class TableMaintenance:
    """What maintenance did to one table.

    ``optimized``: ``compact``, ``z_order`` or None (nothing to do, or ``skipped``);
    ``skipped``: why optimisation gave up (it kept losing the commit race to writers);
    ``vacuumed_files``: files deleted from storage (data files vacuum removed, and change data
    files older than the retention: see :mod:`tasks.connectors.lake.expire`).
    """

    table: str
    before: FileStats
    after: FileStats
    version_before: int
    version_after: int
    optimized: str | None = None
    z_order: tuple[str, ...] = ()
    attempts: int = 0
    skipped: str | None = None
    checkpoint_version: int | None = None
    vacuumed_files: int = 0
    vacuumed: list[str] = field(default_factory=list, repr=False)


def file_stats(delta: DeltaTable) -> FileStats:
    """Files and bytes of the table's current version (from the log; no data file is read)."""
    actions = pl.DataFrame(delta.get_add_actions(flatten=True))
    if actions.height == 0:
        return FileStats(files=0, bytes=0)
    return FileStats(files=actions.height, bytes=int(actions.get_column("size_bytes").sum()))


def maintain_table(
    lake: LakeBase,
    table: str,
    *,
    z_order: Sequence[str] = (),
    target_size: int | None = None,
    retention_hours: int,
    keep_versions: Sequence[int] = (),
    checkpoint: bool = True,
    max_attempts: int = 5,
) -> TableMaintenance:
    """Compact (or Z-order by ``z_order``), checkpoint and vacuum ``table``.

    Optimisation runs only if data was committed since the table's last compaction, so a
    second run on an unchanged table rewrites nothing (a Z-order rewrites every file it
    orders; compaction alone would also skip large files).

    Args:
        z_order: columns readers filter on; empty for plain compaction.
        target_size: the file size to aim for, in bytes (None: the table's or deltalake's).
        retention_hours: vacuum deletes removed files older than this.
        keep_versions: versions whose files vacuum keeps whatever their age.
        max_attempts: optimisation attempts before the table is skipped.

    Raises:
        TableNotFoundError: if the table does not exist.
        LakeError: naming the table, for any other failure.
    """
    with lake.delta_table(table, "maintain") as delta:
        _check_z_order(delta, table, z_order)
        before, version_before = file_stats(delta), delta.version()
        optimized, attempts, skipped = _optimize(delta, z_order, target_size, max_attempts)
        checkpointed = _checkpoint(delta) if checkpoint else None
        vacuumed = _vacuum(delta, retention_hours, keep_versions)
        vacuumed += drop_old_change_data(
            lake, table, retention_hours=retention_hours, now=datetime.now(UTC)
        )
        delta.update_incremental()
        return TableMaintenance(
            table=table,
            before=before,
            after=file_stats(delta),
            version_before=version_before,
            version_after=delta.version(),
            optimized=optimized,
            z_order=tuple(z_order) if optimized == "z_order" else (),
            attempts=attempts,
            skipped=skipped,
            checkpoint_version=checkpointed,
            vacuumed_files=len(vacuumed),
            vacuumed=vacuumed,
        )


def vacuum_table(
    lake: LakeBase, table: str, *, retention_hours: int, keep_versions: Sequence[int] = ()
) -> list[str]:
    """Delete the files ``table`` removed more than ``retention_hours`` ago (0: all of them).

    Returns:
        The files deleted, relative to the table's location.
    """
    with lake.delta_table(table, f"vacuum (retention {retention_hours} h)") as delta:
        return _vacuum(delta, retention_hours, keep_versions)


def _optimize(
    delta: DeltaTable, z_order: Sequence[str], target_size: int | None, max_attempts: int
) -> tuple[str | None, int, str | None]:
    """(what ran, attempts, why it was skipped) for one table."""
    attempts = 0
    for attempts in range(1, max(1, max_attempts) + 1):
        delta.update_incremental()
        if not _changed_since_last_optimize(delta):
            return None, attempts - 1, None
        try:
            if z_order:
                delta.optimize.z_order(list(z_order), target_size=target_size)
                return "z_order", attempts, None
            delta.optimize.compact(target_size=target_size)
            return "compact", attempts, None
        except CommitFailedError:
            continue  # a writer removed files this rewrite read: re-read and try again
    return None, attempts, f"lost the commit race to writers {attempts} times; retried next run"


def _check_z_order(delta: DeltaTable, table: str, columns: Sequence[str]) -> None:
    schema = {field.name for field in delta.schema().fields}
    partitions = set(delta.metadata().partition_columns)
    missing = [c for c in columns if c not in schema]
    if missing:
        raise LakeError(f"maintain {table!r}: Z-order column(s) {missing} are not in the table")
    partitioned = [c for c in columns if c in partitions]
    if partitioned:
        raise LakeError(
            f"maintain {table!r}: Z-order column(s) {partitioned} partition the table already; "
            "order by a column inside the partitions"
        )


def _changed_since_last_optimize(delta: DeltaTable) -> bool:
    """Whether a commit changed data since the newest OPTIMIZE (or none was ever made)."""
    for entry in delta.history(_HISTORY_SCANNED):
        operation = entry.get("operation")
        if operation == "OPTIMIZE":
            return False
        if operation not in DATA_NEUTRAL_OPERATIONS:
            return True
    return True


def _checkpoint(delta: DeltaTable) -> int:
    delta.create_checkpoint()
    # Commits older than the table's log retention (delta.logRetentionDuration, 30 days by
    # default) and older than this checkpoint go: their column statistics (min/max values of
    # files long removed) would otherwise keep expired or erased values for good.
    delta.cleanup_metadata()
    return delta.version()


def _vacuum(delta: DeltaTable, retention_hours: int, keep_versions: Sequence[int]) -> list[str]:
    # Our own bound replaces deltalake's (the table's deletedFileRetentionDuration, 7 days by
    # default): the caller's retention is validated configuration, or an explicit erasure.
    return list(
        delta.vacuum(
            retention_hours=int(retention_hours),
            dry_run=False,
            enforce_retention_duration=False,
            keep_versions=list(keep_versions) or None,
        )
    )

"""Deleting expired rows, and the change data that would keep them.

* :func:`delete_where` deletes the rows a Delta predicate selects (one ``DELETE`` commit,
  rewriting only the files holding a matching row). Retention predicates name a column and a
  cutoff time, never a person, so recording them in the commit is harmless.
* :func:`drop_old_change_data` deletes ``_change_data`` files older than the vacuum retention.
  Vacuum leaves them alone, and a table with the change data feed on (bronze) writes every row a
  delete removed into one: without this, an expired row would stay in storage for good. Reading
  changes of versions older than the retention fails afterwards, as time travel to them does
  once vacuum has run.

Run next to writers like any maintenance: the delete is an ordinary commit (a lost race is
retried by the lake's writer rules), and a change data file younger than the retention -
including one a writer has written but not committed yet - is never touched.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tasks.connectors.lake.base import LakeBase
from tasks.connectors.lake.commits import commit_properties
from tasks.connectors.lake.purge import DeleteStats, TableStore

__all__ = ["delete_where", "drop_old_change_data"]


def delete_where(
    lake: LakeBase, table: str, predicate: str, *, metadata: dict[str, str] | None = None
) -> DeleteStats:
    """Delete the rows of ``table`` matching the SQL ``predicate``; none matched, no commit."""
    with lake.delta_table(table, "delete expired rows from") as delta:
        before = delta.version()
        metrics = delta.delete(predicate, commit_properties=commit_properties(metadata))
        if delta.version() == before:
            return DeleteStats(0, 0, 0)
        return DeleteStats(
            rows=int(metrics.get("num_deleted_rows", 0)),
            files_removed=int(metrics.get("num_removed_files", 0)),
            files_added=int(metrics.get("num_added_files", 0)),
        )


def drop_old_change_data(
    lake: LakeBase, table: str, *, retention_hours: int, now: datetime
) -> list[str]:
    """Delete the table's change data files written more than ``retention_hours`` ago.

    Returns:
        The files deleted, relative to the table's location.
    """
    store = TableStore.of(lake, table)
    cutoff = now - timedelta(hours=retention_hours)
    old = [path for path, written in store.modified("_change_data/") if written < cutoff]
    store.delete(old)
    return old

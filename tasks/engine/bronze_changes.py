"""What a source's bronze gained and lost between two versions, for incremental staging.

Two ways, one answer (rows compared as multisets on every column, see
:func:`tasks.core.incremental.net_changes`):

- **the change data feed** (ingest writes bronze with it on, see :mod:`tasks.ingest`): the rows
  each commit inserted, updated (before and after images) or deleted. It costs what changed: a
  MERGE that edits 1 % of the records rewrites most of the table's files, but records 1 %;
- **a diff of data files**: the rows of the files the table gained against those of the files
  it lost; a rewritten file's unchanged rows are on both sides and cancel. It costs the files
  rewritten, and serves where the feed cannot answer: a table written before the feed was on,
  a range whose feed is gone, or a commit the feed does not describe row by row (an overwrite,
  a restore).

The feed is read only when every commit in the range is one whose rows it records (appends,
MERGEs, deletes, updates) or one that changes no row (compaction, vacuum, properties).
"""

from __future__ import annotations

import polars as pl

from tasks.connectors.lake import DATA_NEUTRAL_OPERATIONS, Lake, LakeError
from tasks.core.incremental import net_changes
from tasks.core.tables import bronze_table

_FED_OPERATIONS = frozenset({"MERGE", "DELETE", "UPDATE"})
_GAINED = ("insert", "update_postimage")
_LOST = ("delete", "update_preimage")


def bronze_diff(
    lake: Lake, source: str, since: int, version: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows of the source's bronze gained and lost from version ``since`` to ``version``:
    from the change data feed where it answers, else from a diff of the data files.

    Raises:
        LakeError: neither can answer (a version or its files are gone).
    """
    bronze = bronze_table(source)
    columns = lake.scan(bronze).collect_schema().names()
    added, removed = fed_changes(lake, bronze, since, version, columns) or file_changes(
        lake, bronze, since, version
    )
    gained, lost = net_changes(added, removed, columns=columns)
    gained_rows, lost_rows = pl.collect_all([gained, lost])
    return gained_rows, lost_rows


def fed_changes(
    lake: Lake, table: str, since: int, version: int, columns: list[str]
) -> tuple[pl.LazyFrame, pl.LazyFrame] | None:
    """The rows the commits after ``since`` up to ``version`` added and removed, from the
    table's change data feed; None where the feed cannot tell (see the module doc)."""
    current = lake.version(table)
    if current is None or version <= since or not lake.change_feed_enabled(table):
        return None
    commits = [c for c in lake.history(table, limit=current - since) if c["version"] > since]
    if not all(_fed(c) for c in commits if c["version"] <= version):
        return None
    try:
        changes = lake.changes(table, after_version=since, up_to_version=version, columns=columns)
    except LakeError:
        return None
    kind = pl.col("_change_type")
    return (
        changes.lazy().filter(kind.is_in(_GAINED)).select(columns),
        changes.lazy().filter(kind.is_in(_LOST)).select(columns),
    )


def file_changes(
    lake: Lake, table: str, since: int, version: int
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The rows of the data files the table gained and lost from ``since`` to ``version``."""
    before = set(lake.file_uris(table, version=since))
    after = set(lake.file_uris(table, version=version))
    return (
        lake.scan_files(table, sorted(after - before)),
        lake.scan_files(table, sorted(before - after)),
    )


def _fed(commit: dict[str, object]) -> bool:
    """Whether the feed records every row ``commit`` changed (or it changed none)."""
    operation = commit.get("operation")
    if operation in _FED_OPERATIONS or operation in DATA_NEUTRAL_OPERATIONS:
        return True
    parameters = commit.get("operationParameters")
    mode = parameters.get("mode") if isinstance(parameters, dict) else None
    return operation == "WRITE" and mode == "Append"

"""Reading the lake at pinned versions, and writing only the rows that changed.

- :func:`pinned`: a table's rows at one version, however it changes while a stage reads;
- :func:`latest_state`: the newest state a stage recorded in a table's commit metadata;
- :func:`sync_table`: make a silver or gold table hold a built frame (for a scope of keys or
  all of them) with one MERGE that rewrites only the files holding changed or stale keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import polars as pl

from tasks.connectors.lake import Lake, LakeError
from tasks.core.incremental import changed_rows, values_in
from tasks.core.tables import TABLES

# A table whose stale keys (gone from the new result) exceed this share is rewritten whole
# instead of merged and pruned: one overwrite beats a merge touching most of the table.
REWRITE_SHARE = 0.1
REWRITE_MIN = 1_000
# Commits searched (newest first) for the latest state; older states mean a rebuild.
STATE_HISTORY = 200

_State = TypeVar("_State")


def sync_table(
    lake: Lake,
    table: str,
    df: pl.DataFrame,
    *,
    keys: Sequence[str],
    scope: pl.Series | None = None,
    scope_column: str | None = None,
    where: pl.Expr | None = None,
) -> int:
    """Make ``table`` hold ``df`` for the keys in ``scope`` (all keys if None); write only changes.

    Within the scope (values of ``scope_column``, default the first key), rows of ``df`` that
    differ from the table are upserted and table rows whose key ``df`` lacks are deleted, in one
    MERGE commit that rewrites only the files holding those keys; an unchanged result commits
    nothing. ``where`` narrows the scope to the table rows matching it (a bucket of people),
    and ``df`` must hold only such rows; when the table has none, ``df`` is appended (the first
    full build writes each bucket without a MERGE reading the table for matches). Without a
    scope, a changed schema or mostly-new keys rewrite the table whole.
    Partitioning comes from the table catalogue. Returns the number of rows written or deleted.
    """
    key_list = list(keys)
    partition_by = _partitioning(table)
    whole = scope is None and where is None
    if not lake.exists(table):
        lake.overwrite(table, df, partition_by=partition_by)
        return df.height
    current = lake.scan(table)
    same_schema = dict(current.collect_schema()) == dict(df.schema)
    if scope is not None or where is not None:
        if not same_schema:
            raise LakeError(
                f"{table}: the built rows' schema differs from the table's; an incremental "
                "build cannot change a schema (run with full_refresh)"
            )
        if scope is not None:
            current = current.filter(values_in(scope_column or key_list[0], scope))
        if where is not None:
            current = current.filter(where)
    elif not same_schema:
        lake.overwrite(table, df, partition_by=partition_by)
        return df.height
    if where is not None and current.select(pl.len()).collect().item() == 0:
        if df.height:  # the slice is empty: nothing for a MERGE to match, append instead
            lake.append(table, df, partition_by=partition_by)
        return df.height
    upserts, deletes = (
        frame.collect() for frame in changed_rows(df.lazy(), current.select(df.columns), keys=keys)
    )
    if whole and deletes.height > max(REWRITE_MIN, REWRITE_SHARE * df.height):
        lake.overwrite(table, df, partition_by=partition_by)
        return df.height
    if upserts.height or deletes.height:
        lake.upsert(table, upserts, keys=key_list, delete=deletes, partition_by=partition_by)
    return upserts.height + deletes.height


def _partitioning(name: str) -> list[str] | None:
    entry = TABLES.get(name)
    return list(entry.partition_by) if entry is not None and entry.partition_by else None


def replace_table(lake: Lake, table: str, df: pl.DataFrame, *, key: str) -> None:
    """Make ``table`` hold exactly ``df`` (one row per ``key``), touching as little as possible.

    Rows that did not change are not rewritten and an unchanged result commits nothing; keys
    that disappeared (a person whose last record was corrected away, an order now quarantined)
    are deleted, so silver never keeps a stale row - a stale contact could carry a stale
    consent. A changed schema, or mostly-new keys, rewrites the table.
    """
    sync_table(lake, table, df, keys=[key])


# --- reading pinned versions and states --------------------------------------------------------


def pinned(lake: Lake, table: str, version: int | None) -> pl.LazyFrame:
    """The table's rows at ``version``, however it changes while we read."""
    return lake.scan_files(table, lake.file_uris(table, version=version))


def table_version(lake: Lake, table: str) -> int:
    """The table's version, -1 if it does not exist."""
    version = lake.version(table)
    return -1 if version is None else version


def latest_state(
    lake: Lake, table: str, parse: Callable[[Mapping[str, Any]], _State | None]
) -> tuple[_State | None, int | None]:
    """The newest state ``parse`` finds in the table's commit metadata, and its version."""
    if not lake.exists(table):
        return None, None
    seen = 0
    for limit in (1, 10, STATE_HISTORY):  # the newest commit usually carries it: read few
        commits = lake.history(table, limit=limit)
        for commit in commits[seen:]:
            state = parse(commit)
            if state is not None:
                return state, int(commit["version"])
        if len(commits) < limit:
            break
        seen = len(commits)
    return None, None

"""Delta change data feed: which rows a table's commits inserted, updated and deleted.

With ``delta.enableChangeDataFeed=true`` every commit that changes data also records its changed
rows (``_change_type`` is ``insert``, ``update_preimage``, ``update_postimage`` or ``delete``), so
a reader learns what changed between two versions without diffing rewritten files. Compaction
and Z-ordering change no data and record no changes.

Turning the feed on for an existing table is a metadata commit that raises the table's writer
protocol to version 4 (readers are unaffected: the reader protocol stays at 1). Changes are
recorded only from that commit on; :func:`read_changes` refuses a range that starts earlier
rather than return a partial answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import polars as pl
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from tasks.errors import LakeError

__all__ = [
    "CHANGE_COLUMNS",
    "CHANGE_FEED",
    "change_feed_enabled",
    "enable_change_feed",
    "read_changes",
]

CHANGE_FEED_PROPERTY = "delta.enableChangeDataFeed"
CHANGE_FEED: Mapping[str, str] = MappingProxyType({CHANGE_FEED_PROPERTY: "true"})
"""Table properties that turn the change data feed on (pass as ``table_properties``)."""

CHANGE_COLUMNS: Mapping[str, pl.DataType] = MappingProxyType(
    {
        "_change_type": pl.String(),
        "_commit_version": pl.Int64(),
        "_commit_timestamp": pl.Datetime("ms"),
    }
)
"""The columns a change frame has besides the table's own (the timestamp is UTC)."""

_NOT_ENABLED = re.compile(r"does not have change data enabled", re.I)
_MAX_UPGRADE_ATTEMPTS = 5


def change_feed_enabled(delta: DeltaTable) -> bool:
    """Whether the table's current version records its changes."""
    value = delta.metadata().configuration.get(CHANGE_FEED_PROPERTY, "false")
    return value.strip().lower() == "true"


def enable_change_feed(delta: DeltaTable, *, metadata: Mapping[str, str] | None = None) -> bool:
    """Turn the change data feed on for an existing table; False if it already was on.

    A concurrent writer's commit makes the property commit fail; the table is then re-read and
    the commit retried (a few times), so the upgrade never overwrites anyone's data.

    Raises:
        CommitFailedError: if the upgrade keeps losing races to concurrent writers.
    """
    for attempt in range(_MAX_UPGRADE_ATTEMPTS):
        delta.update_incremental()
        if change_feed_enabled(delta):
            return False
        try:
            delta.alter.set_table_properties(
                dict(CHANGE_FEED),
                raise_if_not_exists=False,
                commit_properties=CommitProperties(
                    custom_metadata=dict(metadata) if metadata else None
                ),
            )
        except CommitFailedError:
            if attempt == _MAX_UPGRADE_ATTEMPTS - 1:
                raise
            continue
        return True
    return False  # unreachable: the last attempt returns or raises


def read_changes(
    delta: DeltaTable,
    *,
    after_version: int,
    up_to_version: int | None,
    columns: Sequence[str] | None,
    where: str,
    read_options: dict[str, Any] | None,
) -> pl.DataFrame:
    """The rows changed by the commits after ``after_version`` up to ``up_to_version``.

    Args:
        after_version: the version the reader already has (-1 for "from the creation on").
        up_to_version: the last version to include; None for the current one.
        columns: the table columns to return (the change columns always come along).
        where: how error messages name the table.
        read_options: the storage options in polars' spelling (for the table's schema).

    Raises:
        LakeError: for a range outside the table's history, or one reaching back before the
            feed was turned on.
    """
    current = delta.version()
    last = current if up_to_version is None else up_to_version
    if after_version < -1 or last > current or last < after_version:
        raise LakeError(
            f"changes of {where}: versions after {after_version} up to {last} are not in the "
            f"table's history (current version {current})"
        )
    schema = _change_schema(delta, columns, where=where, read_options=read_options)
    if last == after_version:
        return pl.DataFrame(schema=schema)
    try:
        reader = delta.load_cdf(
            starting_version=after_version + 1,
            ending_version=last,
            columns=[*columns, *CHANGE_COLUMNS] if columns is not None else None,
        )
    except Exception as exc:
        if _NOT_ENABLED.search(str(exc)):
            raise LakeError(
                f"changes of {where}: the change data feed was not on for every version after "
                f"{after_version} (it records changes only from the commit that turned it on); "
                "read the table instead"
            ) from exc
        raise
    frame = pl.DataFrame(reader).select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    return frame.sort("_commit_version", maintain_order=True)


def _change_schema(
    delta: DeltaTable,
    columns: Sequence[str] | None,
    *,
    where: str,
    read_options: dict[str, Any] | None,
) -> pl.Schema:
    table = pl.scan_delta(delta, storage_options=read_options).collect_schema()
    names = list(table) if columns is None else list(columns)
    missing = [name for name in names if name not in table]
    if missing:
        raise LakeError(f"changes of {where}: column(s) {missing} are not in the table")
    return pl.Schema({**{name: table[name] for name in names}, **CHANGE_COLUMNS})

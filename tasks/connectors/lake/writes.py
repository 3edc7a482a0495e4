"""Writing polars frames into Delta tables: create, append, merge, upsert, overwrite.

These functions do one Delta operation each on a table the caller has loaded (or on a URI for a
table that does not exist yet); :class:`~tasks.connectors.lake.Lake` adds locking, refreshing
and error reporting around them. Data goes to deltalake through the Arrow C stream interface
(no pyarrow).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from arro3.core import RecordBatch, RecordBatchReader, Table
from deltalake import CommitProperties, DeltaTable, write_deltalake

from tasks.connectors.lake.expressions import (
    changed_predicate,
    compared,
    keys_match,
    partition_predicate,
    quote,
)
from tasks.errors import LakeError

__all__ = [
    "INSERT_SERIAL",
    "UPSERT_DELETE_FLAG",
    "MergeStats",
    "append_rows",
    "create_table",
    "insert_missing_rows",
    "merge_rows",
    "overwrite_partition_rows",
    "overwrite_rows",
    "overwrite_streamed",
    "prepare_frame",
    "upsert_rows",
    "validate_keys",
]

# Unsigned integers: deltalake maps them to the signed type of the same width and fails on
# values above its maximum; the next wider signed type holds every value.
_WIDER_SIGNED: dict[type[pl.DataType], pl.DataType] = {
    pl.UInt8: pl.Int16(),
    pl.UInt16: pl.Int32(),
    pl.UInt32: pl.Int64(),
}
UPSERT_DELETE_FLAG = "_upsert_delete"


@dataclass(frozen=True)
class MergeStats:
    """Rows a merge inserted, updated and deleted, and the table version it committed.

    ``version`` is None when the merge committed nothing (no changes, or an empty input).
    """

    inserted: int
    updated: int
    deleted: int
    version: int | None


def prepare_frame(
    df: pl.DataFrame,
    delta: DeltaTable | None,
    *,
    where: str,
    read_options: dict[str, Any] | None,
) -> pl.DataFrame:
    """Make a frame's types ones deltalake writes faithfully.

    Categorical/Enum become String (deltalake 1.6 panics on dictionary-encoded string views),
    small unsigned integers widen to a signed type that holds every value, and all-null
    (``pl.Null``) columns take the table's type for that column.

    Raises:
        LakeError: (prefixed with ``where``) for an all-null column the table does not have.
    """
    casts: dict[str, pl.DataType] = {}
    untyped: list[str] = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Categorical | pl.Enum):
            casts[name] = pl.String()
        elif type(dtype) in _WIDER_SIGNED:
            casts[name] = _WIDER_SIGNED[type(dtype)]
        elif isinstance(dtype, pl.Null):
            untyped.append(name)
    if untyped:
        existing = (
            pl.scan_delta(delta, storage_options=read_options).collect_schema()
            if delta is not None
            else pl.Schema()
        )
        missing = [name for name in untyped if name not in existing]
        if missing:
            raise LakeError(
                f"{where}: column(s) {missing} have no type (every value is null and the table "
                "has no such column); cast them first"
            )
        casts.update({name: existing[name] for name in untyped})
    if not casts:
        return df
    return df.with_columns(pl.col(name).cast(dtype) for name, dtype in casts.items())


def validate_keys(df: pl.DataFrame, keys: Sequence[str], *, where: str) -> list[str]:
    """The key columns as a list, after checking ``df`` has them, without nulls or duplicates.

    Raises:
        LakeError: (prefixed with ``where``) naming the key columns; key values are never put
            in the message, as they can be personal data.
    """
    key_list = [keys] if isinstance(keys, str) else list(keys)
    if not key_list:
        raise LakeError(f"{where}: no merge keys given")
    absent = [k for k in key_list if k not in df.columns]
    if absent:
        raise LakeError(f"{where}: key column(s) {absent} are not in the frame")
    nulls = {k: df.get_column(k).null_count() for k in key_list}
    null_keys = {k: n for k, n in nulls.items() if n}
    if null_keys:
        raise LakeError(
            f"{where}: key column(s) {list(null_keys)} contain null values "
            f"({', '.join(f'{k}: {n} rows' for k, n in null_keys.items())}); "
            "rows without a key cannot be merged"
        )
    if df.height:
        count = int(df.select(key_list).is_duplicated().sum())
        if count:
            raise LakeError(
                f"{where}: {count} rows share a key on {key_list}; deduplicate before merging"
            )
    return key_list


def create_table(
    uri: str,
    data: pl.DataFrame,
    *,
    partition_by: Sequence[str] | None,
    options: dict[str, str] | None,
    properties: CommitProperties,
    configuration: Mapping[str, str] | None = None,
) -> None:
    """Create the table at ``uri`` from ``data``; fails if a table is already there."""
    write_deltalake(
        uri,
        data,
        mode="error",
        partition_by=list(partition_by) if partition_by else None,
        storage_options=options,
        commit_properties=properties,
        configuration=dict(configuration) if configuration else None,
    )


def append_rows(
    target: DeltaTable | str,
    data: pl.DataFrame,
    *,
    partition_by: Sequence[str] | None,
    options: dict[str, str] | None,
    properties: CommitProperties,
    configuration: Mapping[str, str] | None = None,
) -> None:
    """Append ``data`` (new columns evolve the schema); a URI ``target`` creates the table."""
    creating = not isinstance(target, DeltaTable)
    write_deltalake(
        target,
        data,
        mode="append",
        schema_mode="merge",
        partition_by=list(partition_by) if partition_by else None,
        storage_options=options if creating else None,
        commit_properties=properties,
        configuration=dict(configuration) if configuration and creating else None,
    )


def merge_rows(
    delta: DeltaTable,
    data: pl.DataFrame,
    *,
    keys: list[str],
    properties: CommitProperties,
    only_if_changed: bool,
) -> MergeStats:
    """MERGE ``data`` into ``delta`` on ``keys``: update matched rows, insert the others."""
    target_columns = {field.name for field in delta.schema().fields}
    before = delta.version()
    merger = delta.merge(
        data,
        predicate=keys_match(keys),
        source_alias="s",
        target_alias="t",
        merge_schema=True,
        # The source is an in-memory frame: let delta-rs use its statistics to prune target
        # files (streamed execution would disable that).
        streamed_exec=False,
        commit_properties=properties,
    )
    value_columns = [c for c in data.columns if c not in keys]
    # Columns starting with "_" are ingest metadata (_ingested_at, _run_id, ...): they are
    # written with a changed row but never make a row "changed" on their own, so re-reading an
    # unchanged record leaves bronze untouched.
    checked = compared(value_columns)
    if value_columns:
        wanted = only_if_changed and checked
        changed = changed_predicate(checked, target_columns) if wanted else None
        merger = merger.when_matched_update_all(predicate=changed)
    metrics = merger.when_not_matched_insert_all().execute()
    return _stats(metrics, before, delta.version())


INSERT_SERIAL = "audience-lake/insert-new"
"""The app transaction every :func:`insert_missing_rows` commit carries besides its batch ids.

Two inserts that read the same version of a table both carry it, so delta-rs rejects the later
commit (``CommitFailedError``) and its writer checks its keys again on a fresh snapshot: two
writers can never both insert the same key. Other writes (compaction, merges) do not carry it
and never conflict with an insert on its account."""


def insert_missing_rows(
    delta: DeltaTable,
    data: pl.DataFrame,
    *,
    keys: list[str],
    properties: CommitProperties,
    read_options: dict[str, Any] | None,
) -> int:
    """Insert the rows of ``data`` whose keys ``delta`` lacks; record the batch either way.

    ``properties`` must carry :data:`INSERT_SERIAL`. The keys the table already holds are found
    by streaming its key columns alone, at the version ``delta`` is at, against the batch's keys,
    and the other rows are appended in one commit built on that version. Memory follows the
    batch, not the table: a delta-rs MERGE held the whole target (3.5 GB for a batch into 5 M
    events). With nothing new, the commit is an empty append that records the batch.

    Returns:
        The number of rows inserted.
    """
    present = (
        pl.scan_delta(delta, storage_options=read_options)
        .select(keys)
        .join(data.lazy().select(keys), on=keys, how="semi")
        .collect(engine="streaming")
    )
    new = data.join(present, on=keys, how="anti", maintain_order="left") if present.height else data
    write_deltalake(delta, new, mode="append", schema_mode="merge", commit_properties=properties)
    return new.height


def upsert_rows(
    delta: DeltaTable,
    source: pl.DataFrame,
    *,
    columns: Sequence[str],
    keys: list[str],
    properties: CommitProperties,
) -> MergeStats:
    """One MERGE that deletes the rows flagged :data:`UPSERT_DELETE_FLAG` and upserts the rest.

    ``columns`` are the table's columns (the source has them plus the flag).
    """
    flag = quote(UPSERT_DELETE_FLAG)
    values = [c for c in columns if c not in keys]
    checked = compared(values)
    target = {field.name for field in delta.schema().fields}
    before = delta.version()
    merger = delta.merge(
        source,
        predicate=keys_match(keys),
        source_alias="s",
        target_alias="t",
        streamed_exec=False,
        commit_properties=properties,
    ).when_matched_delete(predicate=f"s.{flag}")
    if values:
        changed = changed_predicate(checked, target) if checked else "TRUE"
        merger = merger.when_matched_update(
            updates={c: f"s.{quote(c)}" for c in values},
            predicate=f"NOT s.{flag} AND ({changed})",
        )
    metrics = merger.when_not_matched_insert(
        updates={c: f"s.{quote(c)}" for c in columns}, predicate=f"NOT s.{flag}"
    ).execute()
    return _stats(metrics, before, delta.version())


def overwrite_rows(
    target: DeltaTable | str,
    data: pl.DataFrame,
    *,
    partition_by: Sequence[str] | None,
    predicate: str | None,
    options: dict[str, str] | None,
    properties: CommitProperties,
) -> None:
    """Replace the table (or the rows matching ``predicate``) with ``data`` in one commit."""
    creating = not isinstance(target, DeltaTable)
    write_deltalake(
        target,
        data,
        mode="overwrite",
        schema_mode="merge" if predicate else "overwrite",
        predicate=predicate,
        partition_by=list(partition_by) if partition_by else None,
        storage_options=options if creating else None,
        commit_properties=properties,
    )


def overwrite_streamed(
    target: DeltaTable | str,
    empty: pl.DataFrame,
    frames: Iterable[pl.DataFrame],
    *,
    options: dict[str, str] | None,
    properties: CommitProperties,
) -> None:
    """Replace the table with ``frames`` (each of ``empty``'s schema) in one commit.

    deltalake pulls the frames through an Arrow record batch reader (arro3's, the Arrow
    implementation it uses itself) one batch at a time and writes data files as it goes, so
    only a frame is in memory at once; the commit comes after the last one.
    """
    creating = not isinstance(target, DeltaTable)
    schema = Table.from_arrow(empty).schema
    write_deltalake(
        target,
        RecordBatchReader.from_batches(schema, _record_batches(frames)),
        mode="overwrite",
        schema_mode="overwrite",
        storage_options=options if creating else None,
        commit_properties=properties,
    )


def _record_batches(frames: Iterable[pl.DataFrame]) -> Iterator[RecordBatch]:
    """The Arrow record batches of each frame in turn, a frame converted when it is reached."""
    for frame in frames:
        yield from Table.from_arrow(frame).to_batches()


def overwrite_partition_rows(
    delta: DeltaTable,
    data: pl.DataFrame,
    *,
    partition_by: str,
    all_partitions: bool,
    properties: CommitProperties,
) -> None:
    """Replace the ``partition_by`` partitions present in ``data`` (or all of them) at once."""
    if all_partitions:
        predicate = None
    else:
        if data.height == 0:
            return
        predicate = partition_predicate(partition_by, data.get_column(partition_by))
    write_deltalake(
        delta,
        data,
        mode="overwrite",
        schema_mode="merge",
        predicate=predicate,
        commit_properties=properties,
    )


def _stats(metrics: Mapping[str, Any], before: int, after: int) -> MergeStats:
    return MergeStats(
        inserted=int(metrics.get("num_target_rows_inserted", 0)),
        updated=int(metrics.get("num_target_rows_updated", 0)),
        deleted=int(metrics.get("num_target_rows_deleted", 0)),
        version=after if after != before else None,
    )

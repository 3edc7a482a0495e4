"""Making deleted rows unrecoverable: delete by value, then purge a table's history.

A Delta ``DELETE`` only hides rows: the files that held them stay until a vacuum, time travel
to an older version reads them back, the JSON commits keep the column statistics (min/max
values) of every file ever added, and a table with the change data feed keeps the deleted rows
once more in ``_change_data``. For a privacy erasure every one of those copies must go.

* :func:`delete_matching` deletes the rows whose columns equal a row of a frame, through a
  MERGE, so the values never appear in the commit's ``operationParameters`` (a ``DELETE``
  records its SQL predicate there, values included).
* :func:`purge_history` then vacuums with retention 0, writes a checkpoint of the current
  version, deletes every older commit and checkpoint from ``_delta_log`` and every
  ``_change_data`` file no remaining commit refers to. Afterwards the table has exactly one
  readable version, the current one; time travel to an older version fails.

Both rewrite and delete files a concurrent writer may be using: run them only while no writer
runs (see :mod:`tasks.erasure`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from tasks.connectors.lake.base import LakeBase
from tasks.connectors.lake.commits import commit_properties
from tasks.connectors.s3 import s3_client, split_s3_uri

__all__ = [
    "DeleteStats",
    "PurgeStats",
    "TableStore",
    "delete_matching",
    "purge_history",
    "table_objects",
]

_LOG_FILE = re.compile(r"^(\d{20})\.(json|checkpoint\.parquet|checkpoint\.\d+\.\d+\.parquet)$")
_S3_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys per call


@dataclass(frozen=True)
class DeleteStats:
    """What :func:`delete_matching` did: rows deleted, data files removed and written."""

    rows: int
    files_removed: int
    files_added: int


@dataclass(frozen=True)
class PurgeStats:
    """What :func:`purge_history` deleted from storage."""

    vacuumed: int
    log_files: int
    change_files: int
    checkpoint_version: int


def delete_matching(
    lake: LakeBase, table: str, values: pl.DataFrame, *, metadata: dict[str, str] | None = None
) -> DeleteStats:
    """Delete the rows of ``table`` whose columns ``values.columns`` equal a row of ``values``.

    One MERGE commit (none when nothing matched). Only files holding a matching row are
    rewritten. The values stay out of the commit log (see the module docstring).
    """
    if values.height == 0:
        return DeleteStats(0, 0, 0)
    predicate = " AND ".join(f"t.`{c}` = s.`{c}`" for c in values.columns)
    with lake.delta_table(table, f"delete matching rows ({', '.join(values.columns)}) from") as d:
        before = d.version()
        metrics = (
            d.merge(
                values.unique(),
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                streamed_exec=False,
                commit_properties=commit_properties(metadata),
            )
            .when_matched_delete()
            .execute()
        )
        if d.version() == before:
            return DeleteStats(0, 0, 0)
        return DeleteStats(
            rows=int(metrics.get("num_target_rows_deleted", 0)),
            files_removed=int(metrics.get("num_target_files_removed", 0)),
            files_added=int(metrics.get("num_target_files_added", 0)),
        )


def purge_history(lake: LakeBase, table: str) -> PurgeStats:
    """Leave ``table`` with its current version only: no superseded data file, no older
    commit or checkpoint, no change data file of a removed commit.

    Idempotent: a second call deletes nothing more (it writes one more checkpoint).
    """
    with lake.delta_table(table, "purge the history of") as delta:
        vacuumed = delta.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
        delta.update_incremental()
        delta.create_checkpoint()
        version = delta.version()
        store = TableStore.of(lake, table)
        log_files = _old_log_files(store, version)
        store.delete(log_files)
        change_files = _orphan_change_files(store, version)
        store.delete(change_files)
        return PurgeStats(
            vacuumed=len(list(vacuumed)),
            log_files=len(log_files),
            change_files=len(change_files),
            checkpoint_version=version,
        )


def table_objects(lake: LakeBase, table: str) -> list[str]:
    """Every object under the table's location, relative to it (data, log, change data)."""
    return sorted(TableStore.of(lake, table).objects(""))


def _log_files(store: TableStore) -> Iterator[tuple[str, int, str]]:
    """The commits and checkpoints in ``_delta_log``: path, version and kind (``json`` for a
    commit, the checkpoint suffix otherwise); other files there are skipped."""
    for path in store.objects("_delta_log/"):
        match = _LOG_FILE.match(path.removeprefix("_delta_log/"))
        if match:
            yield path, int(match.group(1)), match.group(2)


def _old_log_files(store: TableStore, version: int) -> list[str]:
    """Commits and checkpoints older than ``version`` (the checkpoint just written)."""
    return [path for path, log_version, _ in _log_files(store) if log_version < version]


def _orphan_change_files(store: TableStore, version: int) -> list[str]:
    """``_change_data`` files no remaining commit (``version`` and later) refers to."""
    referenced: set[str] = set()
    for path, log_version, kind in _log_files(store):
        if kind != "json" or log_version < version:
            continue
        for line in store.read(path).splitlines():
            action = json.loads(line) if line.strip() else {}
            if "cdc" in action:
                referenced.add(action["cdc"]["path"])
    return [p for p in store.objects("_change_data/") if p not in referenced]


@dataclass(frozen=True)
class TableStore:
    """The objects of one table, local or on S3, by path relative to the table."""

    uri: str
    lake: LakeBase

    @classmethod
    def of(cls, lake: LakeBase, table: str) -> TableStore:
        return cls(lake.uri(table), lake)

    def objects(self, prefix: str) -> Iterator[str]:
        if self.lake.is_remote:
            for path, _ in self._s3_listing(prefix):
                yield path
            return
        root = os.path.join(self.uri, prefix) if prefix else self.uri
        if not os.path.isdir(root):
            return
        for folder, _, files in os.walk(root):
            for name in files:
                yield os.path.relpath(os.path.join(folder, name), self.uri).replace(os.sep, "/")

    def modified(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Objects under ``prefix`` with the time they were last written (UTC)."""
        if self.lake.is_remote:
            for path, entry in self._s3_listing(prefix):
                yield path, entry["LastModified"].astimezone(UTC)
            return
        for path in self.objects(prefix):
            stamp = os.path.getmtime(os.path.join(self.uri, path))
            yield path, datetime.fromtimestamp(stamp, UTC)

    def _s3_listing(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """The S3 objects under ``prefix``: path relative to the table, and the listing entry."""
        bucket, base = split_s3_uri(self.uri)
        client = s3_client(self.lake.storage_options, read_timeout=30.0)
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{base}/{prefix}"
        )
        for page in pages:
            for entry in page.get("Contents", []):
                yield entry["Key"][len(base) + 1 :], entry

    def read(self, path: str) -> str:
        if self.lake.is_remote:
            bucket, base = split_s3_uri(self.uri)
            client = s3_client(self.lake.storage_options, read_timeout=30.0)
            body = client.get_object(Bucket=bucket, Key=f"{base}/{path}")["Body"].read()
            return bytes(body).decode("utf-8")
        with open(os.path.join(self.uri, path), encoding="utf-8") as handle:
            return handle.read()

    def delete(self, paths: list[str]) -> None:
        if not paths:
            return
        if self.lake.is_remote:
            bucket, base = split_s3_uri(self.uri)
            client = s3_client(self.lake.storage_options, read_timeout=30.0)
            for start in range(0, len(paths), _S3_DELETE_BATCH):
                chunk = paths[start : start + _S3_DELETE_BATCH]
                client.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": f"{base}/{p}"} for p in chunk], "Quiet": True},
                )
            return
        for path in paths:
            os.remove(os.path.join(self.uri, path))

"""Reading the lake: lazy scans, frames, versions, history, partitions and data files."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from deltalake import DeltaTable

from tasks.connectors.lake.base import DATA_NEUTRAL_OPERATIONS, LakeBase
from tasks.connectors.lake.commits import batch_committed
from tasks.connectors.lake.failures import clean
from tasks.connectors.lake.listing import list_local_tables, list_s3_tables
from tasks.connectors.lake.scratch import SCRATCH_FOLDER, Scratch, scratch_folders
from tasks.errors import LakeError

__all__ = ["LakeReads"]


class LakeReads(LakeBase):
    """The read side of :class:`~tasks.connectors.lake.Lake`."""

    # --- reads -----------------------------------------------------------------------------------

    def exists(self, table: str) -> bool:
        """Whether ``table`` is a Delta table in this lake."""
        with self._locked(table), self._errors(table, "look up"):
            return self._load(table) is not None

    def scan(self, table: str) -> pl.LazyFrame:
        """A lazy scan of the table (partition pruning and predicate pushdown apply).

        Like ``pl.scan_delta``, the frame reads the files of the version current when it is
        collected, as far as this ``Lake`` has seen it (it refreshes before every operation).

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, "scan"):
            delta = self._noted(table, self._require(table))
            return pl.scan_delta(delta, storage_options=self._polars_options)

    def read(self, table: str, *, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Read the table (optionally only ``columns``) into a DataFrame.

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, "read"):
            delta = self._noted(table, self._require(table))
            frame = pl.scan_delta(delta, storage_options=self._polars_options)
            if columns is not None:
                frame = frame.select(list(columns))
            return frame.collect()

    def version(self, table: str) -> int | None:
        """The table's current version, or None if it does not exist."""
        with self._locked(table), self._errors(table, "get the version of"):
            delta = self._load(table)
            return None if delta is None else delta.version()

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit history, newest first (operation, parameters, metrics, custom metadata).

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, "read the history of"):
            return self._require(table).history(limit)

    def data_changed_since(self, table: str, version: int) -> bool:
        """Whether a commit after ``version`` changed rows of ``table``.

        Maintenance (compaction, Z-order, vacuum) and property changes commit new versions
        without changing a row; they do not count. A reader that remembers the version it last
        saw asks this instead of comparing versions.

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, f"read the history since {version} of"):
            delta = self._require(table)
            newer = delta.version() - version
            if newer <= 0:
                return False
            return any(
                entry.get("operation") not in DATA_NEUTRAL_OPERATIONS
                for entry in delta.history(newer)
            )

    def committed(self, table: str, batch_id: str) -> bool:
        """Whether :meth:`append_once` already committed ``batch_id`` to ``table``."""
        with self._locked(table), self._errors(table, f"check batch {batch_id!r} in"):
            return batch_committed(self._load(table), batch_id)

    def tables(self) -> list[str]:
        """Every Delta table under the root, as sorted ``"layer/name"`` strings."""
        try:
            found = (
                list_s3_tables(self._root, self._options)
                if self.is_remote
                else list_local_tables(self._root)
            )
        except LakeError:
            raise
        except Exception as exc:
            raise LakeError(f"listing tables in lake {self._root} failed: {clean(exc)}") from exc
        return sorted(found)

    def scratch(self, name: str) -> Scratch:
        """The scratch folder ``name`` of this lake (:mod:`.scratch`): parquet files one run's
        units of work hand each other, wherever they run. Never a table; remove it when done."""
        return Scratch(self._root, name, dict(self._options), self._polars_options)

    def remove_scratch(self, *, older_than: timedelta | None = None) -> list[str]:
        """Remove the scratch folders left behind (:mod:`.scratch`): every one, or those with
        no file written for ``older_than``. Returns the names of the folders removed."""
        now = datetime.now(UTC)
        removed = []
        with self._errors(SCRATCH_FOLDER, "remove scratch folders in"):
            for folder in scratch_folders(self._root, dict(self._options), self._polars_options):
                if older_than is not None:  # only then is the age worth a listing
                    modified = folder.modified()
                    if modified is not None and now - modified < older_than:
                        continue
                folder.remove()
                removed.append(folder.name)
        return removed

    def partitions(self, table: str) -> list[dict[str, str | None]]:
        """The partition values present in the table's current version (from the Delta log)."""
        with self._locked(table), self._errors(table, "list partitions of"):
            delta = self._require(table)
            delta.update_incremental()
            return [dict(p) for p in delta.partitions()]

    def count(self, table: str) -> int:
        """Rows in the table's current version, from the Delta log (no data file is read).

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, "count the rows of"):
            return int(self._require(table).count())

    def file_uris(self, table: str, *, version: int | None = None) -> list[str]:
        """The data files of the table's current version, or of an older ``version``.

        Together with :meth:`scan_files` this tells what a writer changed between two versions
        (the files one has and the other lacks) without reading the rest of the table.

        Raises:
            TableNotFoundError: if the table does not exist.
            LakeError: if ``version`` can no longer be loaded (its log was cleaned up).
        """
        with self._locked(table), self._errors(table, f"list the files (version {version}) of"):
            delta = self._noted(table, self._require(table), version)
            if version is None or version == delta.version():
                return list(delta.file_uris())
            old = DeltaTable(
                self.uri(table), version=version, storage_options=self._delta_options()
            )
            return list(old.file_uris())

    def scan_files(self, table: str, uris: Sequence[str]) -> pl.LazyFrame:
        """A lazy scan of some data files of ``table`` (from :meth:`file_uris`).

        Rows come in the table's *current* schema: columns a file predates are null, partition
        columns come from the file's path. A file that was removed from the table is still
        readable until a vacuum deletes it; reading a vacuumed file fails when collected.

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, "scan files of"):
            delta = self._require(table)
            schema = pl.scan_delta(delta, storage_options=self._polars_options).collect_schema()
            if not uris:
                return pl.LazyFrame(schema=schema)
            partitions = list(delta.metadata().partition_columns)
            frame = pl.scan_parquet(
                list(uris),
                schema={n: t for n, t in schema.items() if n not in partitions},
                hive_partitioning=bool(partitions),
                hive_schema={n: schema[n] for n in partitions} if partitions else None,
                missing_columns="insert",
                extra_columns="ignore",
                storage_options=self._polars_options,
            )
            return frame.select(list(schema))

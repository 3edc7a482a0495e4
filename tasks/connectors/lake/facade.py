"""The :class:`Lake` facade: Delta tables under one root, written from and read into polars.

Every write here is idempotent in the way docs/architecture.md (*Safety rules*) asks for:

* :meth:`Lake.append_once` appends a batch exactly once (Delta app transaction ids);
* :meth:`Lake.merge` upserts on keys and, by default, rewrites a matched row only when a non-key
  column actually changed, so a rerun with the same data commits nothing;
* :meth:`Lake.overwrite` and :meth:`Lake.overwrite_partitions` replace what they are given in one
  commit, so readers never see a half-written (or empty) table.

Data goes to deltalake through the Arrow C stream interface (no pyarrow) and comes back through
``pl.scan_delta``. One :class:`deltalake.DeltaTable` is kept per table and refreshed incrementally:
opening a table from its path re-reads the whole log every time (docs/architecture.md, *Facts
the code relies on*). The Delta operations themselves live in :mod:`.writes`, the commit
metadata in :mod:`.commits`, the storage options in :mod:`.options` and the error diagnosis in
:mod:`.failures`.

Example:
    >>> import polars as pl
    >>> lake = Lake("./.lake")  # doctest: +SKIP
    >>> lake.merge("silver/contacts", pl.DataFrame({"contact_key": ["k1"], "email": ["a@x.io"]}),
    ...            keys=["contact_key"])  # doctest: +SKIP
    MergeStats(inserted=1, updated=0, deleted=0, version=0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from tasks.connectors.lake import changes, writes
from tasks.connectors.lake.commits import batch_committed, commit_properties
from tasks.connectors.lake.reads import LakeReads
from tasks.connectors.lake.streams import FrameStream, LakeStreams
from tasks.connectors.lake.writes import MergeStats
from tasks.errors import LakeError

__all__ = ["Lake"]


class Lake(LakeStreams, LakeReads):
    """Delta tables under one root: a local directory (e.g. ``./.lake``) or ``s3://bucket/prefix``.

    Tables are named ``"<layer>/<name>"`` (e.g. ``"bronze/crm_contacts"``). A ``Lake`` may be
    shared between threads: operations on one table are serialised, different tables proceed in
    parallel. It must not be shared across ``fork`` (use the ``spawn`` start method).

    Args:
        root: local directory or ``s3://bucket/prefix``.
        storage_options: object_store options (see :func:`s3_storage_options`). For S3 roots the
            bounded timeouts in :data:`DEFAULT_S3_CLIENT_OPTIONS` are added unless overridden.

    Raises:
        LakeError: for an unusable root or unsafe options.
    """

    # --- writes ----------------------------------------------------------------------------------

    def append_once(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        batch_id: str,
        partition_by: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        table_properties: Mapping[str, str] | None = None,
    ) -> bool:
        """Append ``df`` unless ``batch_id`` was already committed to ``table``.

        The batch id is recorded in the same commit as a Delta app transaction, so "written" and
        "recorded as written" cannot disagree; a retry or rerun of the batch is a no-op. If another
        writer commits the same batch concurrently, the loser's commit is rejected and this
        returns False. The table is created if missing, even for an empty ``df``, so it exists with
        its schema (and ``table_properties``, e.g. :data:`CHANGE_FEED`); new columns evolve the
        schema.

        Returns:
            True if this call committed the batch, False if it was already there.
        """
        if not batch_id:
            raise LakeError(f"append to {table!r} in lake {self._root}: batch_id is empty")
        with (
            self._locked(table),
            self._errors(table, f"append batch {batch_id!r} to"),
            self._audited(table),
        ):
            delta = self._load(table)
            if batch_committed(delta, batch_id):
                return False
            data = self._prepare(table, df, delta)
            properties = commit_properties(metadata, batch_ids=[batch_id])

            def append(target: DeltaTable | str) -> bool:
                # The check is made again on the snapshot the commit builds on: a rerun after a
                # lost race refreshes the table, and a concurrent writer may have committed this
                # very batch in between. delta-rs rejects the commit only for app ids committed
                # after that snapshot.
                if isinstance(target, DeltaTable) and batch_committed(target, batch_id):
                    return False
                writes.append_rows(
                    target,
                    data,
                    partition_by=partition_by,
                    options=self._delta_options(),
                    properties=properties,
                    configuration=table_properties,
                )
                return True

            try:
                return self._create_or_rerun(table, delta, append)
            except CommitFailedError:
                # delta-rs rejects a commit whose app id a concurrent commit already used; if that
                # commit carried this batch, the batch is in and this call is a no-op.
                if self.committed(table, batch_id):
                    return False
                raise

    def append(
        self, table: str, df: pl.DataFrame, *, partition_by: Sequence[str] | None = None
    ) -> None:
        """Append ``df`` as it is, creating the table if missing: for rows whose keys the caller
        knows the table does not hold (a bucket of a build finding its slice empty), where a
        MERGE would only read the table to find no match. Idempotence is the caller's: a rerun
        finds the rows there and must not append again."""
        with self._locked(table), self._errors(table, "append to"), self._audited(table):
            delta = self._load(table)
            data = self._prepare(table, df, delta)

            def append(target: DeltaTable | str) -> None:
                writes.append_rows(
                    target,
                    data,
                    partition_by=partition_by,
                    options=self._delta_options(),
                    properties=commit_properties(None),
                )

            self._create_or_rerun(table, delta, append)

    def merge(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        keys: Sequence[str],
        partition_by: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        only_if_changed: bool = True,
        table_properties: Mapping[str, str] | None = None,
    ) -> MergeStats:
        """Upsert ``df`` into ``table`` on ``keys`` (creating the table if missing).

        With ``only_if_changed`` a matched row is rewritten only when some non-key column differs
        (null-safe), so rerunning a merge with the same data touches no files and commits nothing.
        Columns new to the table evolve its schema; table columns missing from ``df`` keep their
        values on update and are null on insert. An empty ``df`` creates the table if missing and
        otherwise commits nothing. ``table_properties`` apply when the table is created.

        Raises:
            LakeError: naming the key columns if ``df`` has null or duplicate keys (rows are never
                silently dropped), or if the merge fails.
        """
        key_list = writes.validate_keys(df, keys, where=self._where("merge into", table))
        with (
            self._locked(table),
            self._errors(table, f"merge on {key_list} into"),
            self._audited(table),
        ):
            delta = self._load(table)
            data = self._prepare(table, df, delta)
            if delta is None:
                created = self._create(table, data, partition_by, metadata, table_properties)
                if created is not None:
                    return MergeStats(inserted=df.height, updated=0, deleted=0, version=created)
                # Someone else created the table meanwhile: merge into theirs.
                delta = self._require(table)
            if df.height == 0:
                return MergeStats(inserted=0, updated=0, deleted=0, version=None)
            properties = commit_properties(metadata)
            return self._rerun_after_maintenance(
                table,
                lambda delta: writes.merge_rows(
                    delta,
                    data,
                    keys=key_list,
                    properties=properties,
                    only_if_changed=only_if_changed,
                ),
            )

    def insert_new(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        keys: Sequence[str],
        batch_id: str,
        also_record: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        max_attempts: int = 10,
        table_properties: Mapping[str, str] | None = None,
    ) -> int | None:
        """Insert the rows of ``df`` whose ``keys`` ``table`` lacks, once per ``batch_id``.

        For at-least-once deliveries (events): a key already in the table keeps its first row,
        and the batch is recorded as a Delta app transaction in the *same* commit as its rows, so
        "inserted" and "recorded" cannot disagree after a crash. ``also_record`` adds further
        batch ids to that commit (several landed files written at once; each then counts as
        committed). A batch whose keys are all known is still recorded (an empty append) so it
        is not read again. Memory follows ``df``: only the table's keys are read, streamed
        (:mod:`.writes`). Each such commit carries one shared app transaction, so of two inserts
        built on one version delta-rs rejects the later, whose batch is re-checked and retried
        (at most ``max_attempts`` times).

        Returns:
            The number of rows inserted, or None if ``batch_id`` was already committed.

        Raises:
            LakeError: for null or duplicate keys in ``df`` (naming the columns), or when the
                commit keeps losing races.
        """
        if not batch_id:
            raise LakeError(f"insert into {table!r} in lake {self._root}: batch_id is empty")
        key_list = writes.validate_keys(df, keys, where=self._where("merge into", table))
        serial = [batch_id, *also_record, writes.INSERT_SERIAL]
        properties = commit_properties(metadata, batch_ids=serial)
        action = f"insert new {key_list} of batch {batch_id!r} into"
        with self._locked(table), self._errors(table, action), self._audited(table):
            for _attempt in range(max(1, max_attempts)):
                delta = self._load(table)
                if batch_committed(delta, batch_id):
                    return None
                data = self._prepare(table, df, delta)
                try:
                    if delta is None:
                        writes.create_table(
                            self.uri(table),
                            data,
                            partition_by=None,
                            options=self._delta_options(),
                            properties=properties,
                            configuration=table_properties,
                        )
                        return df.height
                    return writes.insert_missing_rows(
                        delta,
                        data,
                        keys=key_list,
                        properties=properties,
                        read_options=self._polars_options,
                    )
                except CommitFailedError:
                    if self.committed(table, batch_id):
                        return None
                except Exception:
                    # A concurrent creator wins the race to create the table: merge into theirs.
                    if delta is None and self._load(table) is not None:
                        continue
                    raise
            raise LakeError(
                f"insert into {table!r} ({self.uri(table)}): batch {batch_id!r} lost the commit "
                f"race {max_attempts} times to concurrent writers"
            )

    def overwrite(
        self,
        table: str,
        df: pl.DataFrame | FrameStream,
        *,
        partition_by: Sequence[str] | None = None,
        predicate: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the table's contents with ``df`` in one commit.

        Without ``predicate`` the whole table is replaced and ``df`` defines the schema (columns
        it lacks are dropped); partitioning is kept unless ``partition_by`` changes it. With a
        ``predicate`` (e.g. ``"segment = 'vip'"``) only the rows matching it are replaced, every
        row of ``df`` must match it, and new columns evolve the schema. A :class:`FrameStream`
        (whole table, unpartitioned) is written a frame at a time (:mod:`.streams`).
        """
        if isinstance(df, FrameStream):
            return self._overwrite_streamed(
                table, df, metadata, whole=not partition_by and not predicate
            )
        with self._locked(table), self._errors(table, "overwrite"), self._audited(table):
            delta = self._load(table)
            data = self._prepare(table, df, delta)

            def overwrite(target: DeltaTable | str) -> None:
                writes.overwrite_rows(
                    target,
                    data,
                    partition_by=partition_by,
                    predicate=predicate,
                    options=self._delta_options(),
                    properties=commit_properties(metadata),
                )

            self._create_or_rerun(table, delta, overwrite)

    def overwrite_partitions(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        partition_by: str,
        all_partitions: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Replace exactly the partitions of ``partition_by`` present in ``df``, in one commit.

        Partitions absent from ``df`` are untouched, unless ``all_partitions`` is set: then they
        are removed too (the table becomes exactly ``df``; an empty ``df`` empties it). Either
        way it is a single Delta commit (an overwrite with a partition predicate), so a reader
        sees the old partitions or the new ones, never an empty table in between. The table is
        created (partitioned by ``partition_by``) if missing; an existing table must be
        partitioned by exactly that column.
        """
        where = self._where("overwrite partitions of", table)
        if partition_by not in df.columns:
            raise LakeError(f"{where}: partition column {partition_by!r} is not in the frame")
        with (
            self._locked(table),
            self._errors(table, f"overwrite {partition_by} partitions of"),
            self._audited(table),
        ):
            delta = self._load(table)
            data = self._prepare(table, df, delta)
            properties = commit_properties(metadata)
            if delta is None:
                writes.overwrite_rows(
                    self.uri(table),
                    data,
                    partition_by=[partition_by],
                    predicate=None,
                    options=self._delta_options(),
                    properties=properties,
                )
                return
            existing = list(delta.metadata().partition_columns)
            if existing != [partition_by]:
                raise LakeError(
                    f"{where}: table is partitioned by {existing}, not [{partition_by!r}]"
                )
            self._rerun_after_maintenance(
                table,
                lambda delta: writes.overwrite_partition_rows(
                    delta,
                    data,
                    partition_by=partition_by,
                    all_partitions=all_partitions,
                    properties=properties,
                ),
            )

    def delete(
        self, table: str, predicate: str, *, metadata: Mapping[str, str] | None = None
    ) -> int:
        """Delete the rows matching ``predicate`` (SQL, e.g. ``"contact_key = 'k1'"``).

        Returns:
            The number of rows deleted (no commit when nothing matched), or -1 if deltalake could
            not count them (only for tables with deletion vectors, which this lake never enables).

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with (
            self._locked(table),
            self._errors(table, f"delete {predicate!r} from"),
            self._audited(table),
        ):
            properties = commit_properties(metadata)
            metrics = self._rerun_after_maintenance(
                table, lambda delta: delta.delete(predicate, commit_properties=properties)
            )
            deleted = metrics.get("num_deleted_rows")
            return -1 if deleted is None else int(deleted)

    def upsert(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        keys: Sequence[str],
        delete: pl.DataFrame | None = None,
        partition_by: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> MergeStats:
        """Upsert the rows of ``df``, delete the rows whose ``keys`` are in ``delete``: one commit.

        The incremental writer's primitive: a MERGE reads and rewrites only the files that hold
        a matched key, a matched row is rewritten only when a value changed (null-safe), and
        nothing is committed when nothing changed. ``df`` must have exactly the table's columns
        (a schema change is a rewrite: use :meth:`overwrite`); ``delete`` needs only the key
        columns. A missing table is created from ``df`` (partitioned by ``partition_by``).

        Raises:
            LakeError: for null or duplicate keys (a key may not be both upserted and deleted),
                a frame whose columns differ from the table's, or a failed merge.
        """
        key_list = list(keys)
        gone = (delete if delete is not None else df.head(0)).select(key_list)
        flag = writes.UPSERT_DELETE_FLAG
        source = pl.concat(
            [
                df.with_columns(pl.lit(False).alias(flag)),
                gone.with_columns(pl.lit(True).alias(flag)),
            ],
            how="diagonal_relaxed",
        ).select(*df.columns, flag)
        writes.validate_keys(source, key_list, where=self._where("merge into", table))
        with (
            self._locked(table),
            self._errors(table, f"upsert on {key_list} into"),
            self._audited(table),
        ):
            delta = self._load(table)
            if delta is None:
                data = self._prepare(table, df, None)
                created = self._create(table, data, partition_by, metadata, None)
                if created is not None:
                    return MergeStats(inserted=df.height, updated=0, deleted=0, version=created)
                delta = self._require(table)
            if source.height == 0:
                return MergeStats(inserted=0, updated=0, deleted=0, version=None)
            target = [field.name for field in delta.schema().fields]
            if sorted(target) != sorted(df.columns):
                raise LakeError(
                    f"upsert into {table!r} ({self.uri(table)}): the frame's columns "
                    f"{sorted(df.columns)} differ from the table's {sorted(target)}; "
                    "overwrite the table to change its schema"
                )
            data = self._prepare(table, source, delta)
            properties = commit_properties(metadata)
            return self._rerun_after_maintenance(
                table,
                lambda delta: writes.upsert_rows(
                    delta, data, columns=df.columns, keys=key_list, properties=properties
                ),
            )

    # --- change data feed ------------------------------------------------------------------------

    def change_feed_enabled(self, table: str) -> bool:
        """Whether ``table`` records its changes (False for a table that does not exist)."""
        with self._locked(table), self._errors(table, "read the properties of"):
            delta = self._load(table)
            return delta is not None and changes.change_feed_enabled(delta)

    def enable_change_feed(self, table: str) -> bool:
        """Turn on the change data feed of an existing ``table``; False if it already was on.

        Safe next to concurrent writers: the property commit is retried on a lost race, and a
        lake write that loses a race to it is rerun (see :meth:`LakeBase._rerun_after_maintenance`).
        Changes are recorded from this commit on; create new tables with
        ``table_properties=CHANGE_FEED`` to record them from the first commit.

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, "turn on the change data feed of"):
            return changes.enable_change_feed(self._require(table))

    def changes(
        self,
        table: str,
        *,
        after_version: int,
        up_to_version: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """The rows that the commits after ``after_version`` (up to ``up_to_version``, default the
        current version) inserted, updated or deleted, from the table's change data feed.

        Each row carries ``_change_type`` (``insert``, ``update_preimage``, ``update_postimage``,
        ``delete``), ``_commit_version`` and ``_commit_timestamp`` (UTC), ordered by version.
        ``after_version=-1`` reads every change since the table was created.

        Raises:
            TableNotFoundError: if the table does not exist.
            LakeError: for versions outside the table's history, or reaching back before the
                feed was turned on.
        """
        with self._locked(table), self._errors(table, f"read the changes after {after_version} of"):
            delta = self._require(table)
            return changes.read_changes(
                self._noted(table, delta, up_to_version),
                after_version=after_version,
                up_to_version=up_to_version,
                columns=columns,
                where=self._where("table", table),
                read_options=self._polars_options,
            )

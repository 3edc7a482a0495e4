"""The lake adapter: Delta tables under one root, written from and read into polars.

Every write here is idempotent in the way ARCHITECTURE §5.1 asks for:

* :meth:`Lake.append_once` appends a batch exactly once (Delta app transaction ids);
* :meth:`Lake.merge` upserts on keys and, by default, rewrites a matched row only when a non-key
  column actually changed, so a rerun with the same data commits nothing;
* :meth:`Lake.overwrite` and :meth:`Lake.overwrite_partitions` replace what they are given in one
  commit, so readers never see a half-written (or empty) table.

Data goes to deltalake through the Arrow C stream interface (no pyarrow) and comes back through
``pl.scan_delta``. One :class:`deltalake.DeltaTable` is kept per table and refreshed incrementally:
opening a table from its path re-reads the whole log every time (ARCHITECTURE §8).

Example:
    >>> import polars as pl
    >>> lake = Lake("./.lake")  # doctest: +SKIP
    >>> lake.merge("silver/contacts", pl.DataFrame({"contact_key": ["k1"], "email": ["a@x.io"]}),
    ...            keys=["contact_key"])  # doctest: +SKIP
    MergeStats(inserted=1, updated=0, deleted=0, version=0)
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFoundError

from tasks.connectors.storage import (
    encryption_of,
    is_s3_uri,
    normalise_option_key,
    parse_duration_seconds,
    s3_client,
    split_s3_uri,
    store_security_options,
    trust_ca_bundle,
)
from tasks.core.settings import Settings, lake_uri_problem
from tasks.errors import CorruptTableError, LakeError, LakeFullError, StoreAccessError

__all__ = [
    "DEFAULT_S3_CLIENT_OPTIONS",
    "Lake",
    "LakeError",
    "MergeStats",
    "TableNotFoundError",
    "s3_storage_options",
]

# object_store's defaults (30 s request timeout, 10 retries, 180 s retry budget) turn an
# unreachable endpoint into minutes of silence. These bound it: a refused or black-holed
# connection fails after at most ~retry_timeout + connect_timeout (verified against deltalake
# 1.6.6: the keys are object_store ClientOptions plus delta-rs' retry settings). The request
# timeout stays at object_store's 30 s so large part uploads on slow links still complete.
# Callers override any of them through storage_options.
DEFAULT_S3_CLIENT_OPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "connect_timeout": "3s",
        "timeout": "30s",
        "max_retries": "3",
        "retry_timeout": "10s",
    }
)

_TABLE_NAME = re.compile(r"[a-z0-9_]+/[a-z0-9_]+")
_COMMIT = re.compile(r"\d{20}\.json")
_SCANNED_COMMITS = 1000
# The first frame of a Rust backtrace ("   0: <unknown>", "stack backtrace:").
_BACKTRACE_START = re.compile(r"\s*(0: |stack backtrace:|Stack backtrace:)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_ERROR_CHARS = 2000
# Unsigned integers: deltalake maps them to the signed type of the same width and fails on
# values above its maximum; the next wider signed type holds every value.
_WIDER_SIGNED: dict[type[pl.DataType], pl.DataType] = {
    pl.UInt8: pl.Int16(),
    pl.UInt16: pl.Int32(),
    pl.UInt32: pl.Int64(),
}


class TableNotFoundError(LakeError):
    """The table does not exist (yet) in this lake."""


@dataclass(frozen=True)
class MergeStats:
    """Rows a merge inserted, updated and deleted, and the table version it committed.

    ``version`` is None when the merge committed nothing (no changes, or an empty input).
    """

    inserted: int
    updated: int
    deleted: int
    version: int | None


def s3_storage_options(
    *,
    endpoint: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    region: str,
    allow_http: bool | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build deltalake/object_store storage options for an S3-compatible store.

    Args:
        endpoint: e.g. ``http://127.0.0.1:9000`` for MinIO; None for AWS S3.
        access_key_id: None to use the environment/instance credentials chain.
        secret_access_key: required when ``access_key_id`` is given.
        region: the bucket's region (MinIO accepts any, conventionally ``us-east-1``).
        allow_http: allow plain HTTP; None means "only if the endpoint is http://".
        extra: further object_store options (timeouts, ...), applied last.

    Raises:
        ValueError: for a key id without a secret (or vice versa), or any attempt to set
            ``AWS_S3_ALLOW_UNSAFE_RENAME`` (it disables the conditional-put commit protocol).
    """
    if (access_key_id is None) != (secret_access_key is None):
        raise ValueError("set both access_key_id and secret_access_key, or neither")
    options: dict[str, str] = {"AWS_REGION": region}
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
    if access_key_id is not None and secret_access_key is not None:
        options["AWS_ACCESS_KEY_ID"] = access_key_id
        options["AWS_SECRET_ACCESS_KEY"] = secret_access_key
    if allow_http is None:
        allow_http = bool(endpoint) and endpoint is not None and endpoint.startswith("http://")
        if allow_http:
            options["AWS_ALLOW_HTTP"] = "true"
    else:
        options["AWS_ALLOW_HTTP"] = "true" if allow_http else "false"
    if extra:
        _reject_unsafe_rename(extra)
        options.update(extra)
    return options


def settings_storage_options(settings: Settings) -> dict[str, str]:
    """S3 options from the environment settings (``AWS_*`` / ``AUDIENCE_LAKE_S3_*``): used by
    the lake and by every source that reads S3 with the lake's credentials."""
    key, secret = settings.aws_access_key_id, settings.aws_secret_access_key
    return s3_storage_options(
        endpoint=settings.s3_endpoint,
        access_key_id=None if key is None else key.get_secret_value(),
        secret_access_key=None if secret is None else secret.get_secret_value(),
        region=settings.aws_region,
        allow_http=settings.s3_allow_http,
        extra=store_security_options(settings),
    )


def _reject_unsafe_rename(options: Mapping[str, str]) -> None:
    for key in options:
        if normalise_option_key(key) == "s3_allow_unsafe_rename":
            raise ValueError(
                f"{key} must not be set: it turns off the conditional-put commit protocol and "
                "lets concurrent writers lose commits (ARCHITECTURE §5.3)"
            )


class Lake:
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

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None) -> None:
        options = dict(storage_options or {})
        problem = lake_uri_problem(root)
        if problem:
            raise LakeError(f"lake root {problem}")
        try:
            _reject_unsafe_rename(options)
            encryption_of(options)  # an invalid encryption setting fails here, not mid-write
        except ValueError as exc:
            raise LakeError(f"lake {root}: {exc}") from exc
        if is_s3_uri(root):
            try:
                split_s3_uri(root)
            except ValueError as exc:
                raise LakeError(f"lake {root}: {exc}") from exc
            self._root = root.rstrip("/")
            self._options = _with_default_client_options(options)
            self._check_http(options)
            try:
                trust_ca_bundle(options)
            except ValueError as exc:
                raise LakeError(f"lake {root}: {exc}") from exc
        elif "://" in root and not root.startswith("file://"):
            # Other object stores work with deltalake, but tables() and the doctor only know
            # local and S3 roots; fail early rather than half-work.
            raise LakeError(f"lake {root}: only local directories and s3:// roots are supported")
        else:
            local = root.removeprefix("file://")
            self._root = os.path.abspath(os.path.expanduser(local))
            self._options = options
        self._polars_options = _polars_storage_options(self._options)
        self._tables: dict[str, DeltaTable] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        # Never show storage options: they hold credentials.
        return f"Lake(root={self._root!r})"

    @property
    def root(self) -> str:
        """The lake root: an absolute local path or ``s3://bucket/prefix`` (no trailing slash)."""
        return self._root

    @property
    def storage_options(self) -> dict[str, str]:
        """A copy of the effective storage options (including default timeouts). Holds secrets."""
        return dict(self._options)

    @property
    def is_remote(self) -> bool:
        """Whether the lake lives on S3 rather than a local directory."""
        return is_s3_uri(self._root)

    # --- names -----------------------------------------------------------------------------------

    def uri(self, table: str) -> str:
        """The table's location, e.g. ``s3://bucket/lake/bronze/crm_contacts``.

        Raises:
            LakeError: if ``table`` is not ``"<layer>/<name>"`` in lowercase ``[a-z0-9_]``.
        """
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise LakeError(
                f"invalid table name {table!r} in lake {self._root}: expected '<layer>/<name>' "
                "using lowercase letters, digits and underscores"
            )
        if self.is_remote:
            return f"{self._root}/{table}"
        return os.path.join(self._root, *table.split("/"))

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
            delta = self._require(table)
            return pl.scan_delta(delta, storage_options=self._polars_options)

    def read(self, table: str, *, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Read the table (optionally only ``columns``) into a DataFrame.

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, "read"):
            delta = self._require(table)
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

    def committed(self, table: str, batch_id: str) -> bool:
        """Whether :meth:`append_once` already committed ``batch_id`` to ``table``."""
        with self._locked(table), self._errors(table, f"check batch {batch_id!r} in"):
            delta = self._load(table)
            return delta is not None and delta.transaction_version(batch_id) is not None

    def tables(self) -> list[str]:
        """Every Delta table under the root, as sorted ``"layer/name"`` strings."""
        try:
            found = self._list_s3_tables() if self.is_remote else self._list_local_tables()
        except LakeError:
            raise
        except Exception as exc:
            raise LakeError(f"listing tables in lake {self._root} failed: {_clean(exc)}") from exc
        return sorted(found)

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
            delta = self._require(table)
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

    # --- writes ----------------------------------------------------------------------------------

    def append_once(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        batch_id: str,
        partition_by: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> bool:
        """Append ``df`` unless ``batch_id`` was already committed to ``table``.

        The batch id is recorded in the same commit as a Delta app transaction, so "written" and
        "recorded as written" cannot disagree; a retry or rerun of the batch is a no-op. If another
        writer commits the same batch concurrently, the loser's commit is rejected and this
        returns False. The table is created if missing, even for an empty ``df``, so it exists with
        its schema; new columns evolve the schema.

        Returns:
            True if this call committed the batch, False if it was already there.
        """
        if not batch_id:
            raise LakeError(f"append to {table!r} in lake {self._root}: batch_id is empty")
        with self._locked(table), self._errors(table, f"append batch {batch_id!r} to"):
            delta = self._load(table)
            if delta is not None and delta.transaction_version(batch_id) is not None:
                return False
            data = self._prepare(table, df, delta)
            properties = _commit_properties(metadata, batch_id=batch_id)
            try:
                write_deltalake(
                    delta if delta is not None else self.uri(table),
                    data,
                    mode="append",
                    schema_mode="merge",
                    partition_by=list(partition_by) if partition_by else None,
                    storage_options=None if delta is not None else self._delta_options(),
                    commit_properties=properties,
                )
            except CommitFailedError:
                # delta-rs rejects a commit whose app id a concurrent commit already used; if that
                # commit carried this batch, the batch is in and this call is a no-op.
                if self.committed(table, batch_id):
                    return False
                raise
            return True

    def merge(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        keys: Sequence[str],
        partition_by: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        only_if_changed: bool = True,
    ) -> MergeStats:
        """Upsert ``df`` into ``table`` on ``keys`` (creating the table if missing).

        With ``only_if_changed`` a matched row is rewritten only when some non-key column differs
        (null-safe), so rerunning a merge with the same data touches no files and commits nothing.
        Columns new to the table evolve its schema; table columns missing from ``df`` keep their
        values on update and are null on insert. An empty ``df`` creates the table if missing and
        otherwise commits nothing.

        Raises:
            LakeError: naming the key columns if ``df`` has null or duplicate keys (rows are never
                silently dropped), or if the merge fails.
        """
        key_list = self._validate_keys(table, df, keys)
        with self._locked(table), self._errors(table, f"merge on {key_list} into"):
            delta = self._load(table)
            data = self._prepare(table, df, delta)
            if delta is None:
                created = self._create(table, data, partition_by, metadata)
                if created is not None:
                    return MergeStats(inserted=df.height, updated=0, deleted=0, version=created)
                # Someone else created the table meanwhile: merge into theirs.
                delta = self._require(table)
            if df.height == 0:
                return MergeStats(inserted=0, updated=0, deleted=0, version=None)

            target_columns = {field.name for field in delta.schema().fields}
            before = delta.version()
            merger = delta.merge(
                data,
                predicate=_keys_match(key_list),
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                # The source is an in-memory frame: let delta-rs use its statistics to prune
                # target files (streamed execution would disable that).
                streamed_exec=False,
                commit_properties=_commit_properties(metadata),
            )
            value_columns = [c for c in data.columns if c not in key_list]
            # Columns starting with "_" are ingest metadata (_ingested_at, _run_id, ...): they are
            # written with a changed row but never make a row "changed" on their own, so
            # re-reading an unchanged record leaves bronze untouched.
            compared = _compared(value_columns)
            if value_columns:
                changed = (
                    _changed_predicate(compared, target_columns)
                    if only_if_changed and compared
                    else None
                )
                merger = merger.when_matched_update_all(predicate=changed)
            metrics = merger.when_not_matched_insert_all().execute()
            after = delta.version()
            return MergeStats(
                inserted=int(metrics.get("num_target_rows_inserted", 0)),
                updated=int(metrics.get("num_target_rows_updated", 0)),
                deleted=int(metrics.get("num_target_rows_deleted", 0)),
                version=after if after != before else None,
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
    ) -> int | None:
        """Insert the rows of ``df`` whose ``keys`` ``table`` lacks, once per ``batch_id``.

        For at-least-once deliveries (events): a key already in the table keeps its first row,
        and the batch is recorded as a Delta app transaction in the *same* commit as its rows, so
        "inserted" and "recorded" cannot disagree after a crash. ``also_record`` adds further
        batch ids to that commit (several landed files written at once; each then counts as
        committed). A batch whose keys are all known is still recorded (an empty append carrying
        the transactions) so it is not read again.
        The MERGE reads the table, so delta-rs rejects it if a concurrent writer added data
        meanwhile; the batch is then re-checked and retried (at most ``max_attempts`` times).

        Returns:
            The number of rows inserted, or None if ``batch_id`` was already committed.

        Raises:
            LakeError: for null or duplicate keys in ``df`` (naming the columns), or when the
                commit keeps losing races.
        """
        if not batch_id:
            raise LakeError(f"insert into {table!r} in lake {self._root}: batch_id is empty")
        key_list = self._validate_keys(table, df, keys)
        action = f"insert new {key_list} of batch {batch_id!r} into"
        with self._locked(table), self._errors(table, action):
            for _attempt in range(max(1, max_attempts)):
                delta = self._load(table)
                if delta is not None and delta.transaction_version(batch_id) is not None:
                    return None
                data = self._prepare(table, df, delta)
                properties = CommitProperties(
                    custom_metadata=dict(metadata) if metadata else None,
                    app_transactions=[
                        Transaction(app_id=app_id, version=1)
                        for app_id in dict.fromkeys([batch_id, *also_record])
                    ],
                )
                try:
                    if delta is None:
                        write_deltalake(
                            self.uri(table),
                            data,
                            mode="error",
                            storage_options=self._delta_options(),
                            commit_properties=properties,
                        )
                        return df.height
                    inserted = 0
                    if df.height:
                        before = delta.version()
                        metrics = (
                            delta.merge(
                                data,
                                predicate=_keys_match(key_list),
                                source_alias="s",
                                target_alias="t",
                                merge_schema=True,
                                streamed_exec=False,
                                commit_properties=properties,
                            )
                            .when_not_matched_insert_all()
                            .execute()
                        )
                        inserted = int(metrics.get("num_target_rows_inserted", 0))
                        if delta.version() != before:
                            return inserted
                    # Nothing new: delta-rs commits no MERGE that changes nothing, so record the
                    # batch with an empty append (a blind append of no rows).
                    write_deltalake(
                        delta,
                        data.head(0),
                        mode="append",
                        schema_mode="merge",
                        commit_properties=properties,
                    )
                    return 0
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
        df: pl.DataFrame,
        *,
        partition_by: Sequence[str] | None = None,
        predicate: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the table's contents with ``df`` in one commit.

        Without ``predicate`` the whole table is replaced and ``df`` defines the schema (columns
        it lacks are dropped); partitioning is kept unless ``partition_by`` changes it. With a
        ``predicate`` (e.g. ``"segment = 'vip'"``) only the rows matching it are replaced, every
        row of ``df`` must match it, and new columns evolve the schema.
        """
        with self._locked(table), self._errors(table, "overwrite"):
            delta = self._load(table)
            data = self._prepare(table, df, delta)
            write_deltalake(
                delta if delta is not None else self.uri(table),
                data,
                mode="overwrite",
                schema_mode="merge" if predicate else "overwrite",
                predicate=predicate,
                partition_by=list(partition_by) if partition_by else None,
                storage_options=None if delta is not None else self._delta_options(),
                commit_properties=_commit_properties(metadata),
            )

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
        if partition_by not in df.columns:
            raise LakeError(
                f"overwrite partitions of {table!r} ({self.uri(table)}): partition column "
                f"{partition_by!r} is not in the frame"
            )
        with self._locked(table), self._errors(table, f"overwrite {partition_by} partitions of"):
            delta = self._load(table)
            data = self._prepare(table, df, delta)
            properties = _commit_properties(metadata)
            if delta is None:
                write_deltalake(
                    self.uri(table),
                    data,
                    mode="overwrite",
                    partition_by=[partition_by],
                    storage_options=self._delta_options(),
                    commit_properties=properties,
                )
                return
            existing = list(delta.metadata().partition_columns)
            if existing != [partition_by]:
                raise LakeError(
                    f"overwrite partitions of {table!r} ({self.uri(table)}): table is partitioned "
                    f"by {existing}, not [{partition_by!r}]"
                )
            if all_partitions:
                predicate = None
            else:
                if data.height == 0:
                    return
                predicate = _partition_predicate(partition_by, data.get_column(partition_by))
            write_deltalake(
                delta,
                data,
                mode="overwrite",
                schema_mode="merge",
                predicate=predicate,
                commit_properties=properties,
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
        with self._locked(table), self._errors(table, f"delete {predicate!r} from"):
            delta = self._require(table)
            metrics = delta.delete(predicate, commit_properties=_commit_properties(metadata))
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
        flag = "_upsert_delete"
        source = pl.concat(
            [
                df.with_columns(pl.lit(False).alias(flag)),
                gone.with_columns(pl.lit(True).alias(flag)),
            ],
            how="diagonal_relaxed",
        ).select(*df.columns, flag)
        self._validate_keys(table, source, key_list)
        where = f"upsert on {key_list} into"
        with self._locked(table), self._errors(table, where):
            delta = self._load(table)
            if delta is None:
                data = self._prepare(table, df, None)
                created = self._create(table, data, partition_by, metadata)
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
            values = [c for c in df.columns if c not in key_list]
            compared = _compared(values)
            before = delta.version()
            merger = delta.merge(
                data,
                predicate=_keys_match(key_list),
                source_alias="s",
                target_alias="t",
                streamed_exec=False,
                commit_properties=_commit_properties(metadata),
            ).when_matched_delete(predicate=f"s.{_q(flag)}")
            if values:
                changed = _changed_predicate(compared, set(target)) if compared else "TRUE"
                merger = merger.when_matched_update(
                    updates={c: f"s.{_q(c)}" for c in values},
                    predicate=f"NOT s.{_q(flag)} AND ({changed})",
                )
            metrics = merger.when_not_matched_insert(
                updates={c: f"s.{_q(c)}" for c in df.columns}, predicate=f"NOT s.{_q(flag)}"
            ).execute()
            after = delta.version()
            return MergeStats(
                inserted=int(metrics.get("num_target_rows_inserted", 0)),
                updated=int(metrics.get("num_target_rows_updated", 0)),
                deleted=int(metrics.get("num_target_rows_deleted", 0)),
                version=after if after != before else None,
            )

    # --- internals -------------------------------------------------------------------------------

    def _delta_options(self) -> dict[str, str] | None:
        return dict(self._options) if self._options else None

    def _check_http(self, user_options: Mapping[str, str]) -> None:
        endpoint = next(
            (v for k, v in user_options.items() if normalise_option_key(k) == "endpoint"), None
        )
        allow = next(
            (v for k, v in user_options.items() if normalise_option_key(k) == "allow_http"), None
        )
        if endpoint and endpoint.startswith("http://") and (allow or "").lower() != "true":
            raise LakeError(
                f"lake {self._root}: endpoint {endpoint} is plain HTTP; set AWS_ALLOW_HTTP=true "
                "(s3_storage_options does this for http:// endpoints)"
            )

    @contextmanager
    def _locked(self, table: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(table, threading.RLock())
        with lock:
            yield

    @contextmanager
    def _errors(self, table: str, action: str) -> Iterator[None]:
        """Turn deltalake / object store / polars failures into a LakeError naming the table."""
        try:
            yield
        except LakeError:
            raise
        except Exception as exc:
            raise self._error(table, action, exc) from exc
        except BaseException as exc:
            # A Rust panic surfaces as pyo3's PanicException (a BaseException); it is still a
            # failed lake operation, not a reason to take the process down.
            if type(exc).__name__ != "PanicException":
                raise
            raise self._error(table, action, exc) from exc

    def _error(self, table: str, action: str, exc: BaseException) -> LakeError:
        """The LakeError for ``exc``: a specific, permanent class where the cause is known."""
        location = self.uri(table) if _TABLE_NAME.fullmatch(table) else self._root
        where = f"table {table!r} ({location})"
        text = _clean(exc)
        kind = _classify(exc, text)
        if kind == "full":
            return LakeFullError(
                f"no space left on the volume holding lake {self._root}: {action} {where} "
                "failed (ENOSPC); free space or move the lake, then rerun"
            )
        if kind == "denied":
            return StoreAccessError(
                f"the store refused access to {where}: {_refusal(text)}; check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy "
                "(`audience-lake doctor` checks them)"
            )
        if kind == "corrupt_log":
            commit = self._corrupt_commit(table) if _TABLE_NAME.fullmatch(table) else None
            named = f"commit file {commit}" if commit else f"a commit file in {location}/_delta_log"
            return CorruptTableError(
                f"the Delta log of table {table!r} is corrupt: {named} is not valid JSON "
                f"({_first_clause(text)}); restore it from a backup: the table cannot be read "
                "until then"
            )
        return LakeError(
            f"{action} table {table!r} failed (table {location}, lake {self._root}): {text}"
        )

    def _corrupt_commit(self, table: str) -> str | None:
        """The first commit file of ``table`` that is not valid NDJSON, if one can be found."""
        try:
            for name, read in self._commit_files(table):
                try:
                    for line in read().decode("utf-8").splitlines():
                        if line.strip():
                            json.loads(line)
                except (UnicodeDecodeError, ValueError):
                    return name
        except Exception:
            return None  # only a diagnosis: the caller still reports the table
        return None

    def _commit_files(self, table: str) -> list[tuple[str, Callable[[], bytes]]]:
        """(location, reader) of the table's newest JSON commits, oldest first."""
        log = f"{self.uri(table)}/_delta_log"
        if not self.is_remote:
            names = sorted(n for n in os.listdir(log) if _COMMIT.fullmatch(n))
            paths = [os.path.join(log, n) for n in names[-_SCANNED_COMMITS:]]
            return [(path, partial(_read_local, path)) for path in paths]
        bucket, prefix = split_s3_uri(log)
        client = s3_client(self._options, read_timeout=30.0)
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                if _COMMIT.fullmatch(entry["Key"].rsplit("/", 1)[-1]):
                    keys.append(entry["Key"])

        def reader(key: str) -> Callable[[], bytes]:
            return lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read()

        return [(f"s3://{bucket}/{k}", reader(k)) for k in sorted(keys)[-_SCANNED_COMMITS:]]

    def _load(self, table: str) -> DeltaTable | None:
        uri = self.uri(table)
        cached = self._tables.get(table)
        if cached is not None:
            # Incremental refresh reads only the commits since the last one we saw.
            cached.update_incremental()
            return cached
        try:
            delta = DeltaTable(uri, storage_options=self._delta_options())
        except DeltaTableNotFoundError:
            return None
        self._tables[table] = delta
        return delta

    def _require(self, table: str) -> DeltaTable:
        delta = self._load(table)
        if delta is None:
            raise TableNotFoundError(
                f"table {table!r} does not exist (table {self.uri(table)}, lake {self._root})"
            )
        return delta

    def _create(
        self,
        table: str,
        data: pl.DataFrame,
        partition_by: Sequence[str] | None,
        metadata: Mapping[str, str] | None,
    ) -> int | None:
        """Create ``table`` from ``data``; None if another writer created it first."""
        try:
            write_deltalake(
                self.uri(table),
                data,
                mode="error",
                partition_by=list(partition_by) if partition_by else None,
                storage_options=self._delta_options(),
                commit_properties=_commit_properties(metadata),
            )
        except Exception:
            if self._load(table) is not None:
                return None
            raise
        return self._require(table).version()

    def _prepare(self, table: str, df: pl.DataFrame, delta: DeltaTable | None) -> pl.DataFrame:
        """Make a frame's types ones deltalake writes faithfully.

        Categorical/Enum become String (deltalake 1.6 panics on dictionary-encoded string views),
        small unsigned integers widen to a signed type that holds every value, and all-null
        (``pl.Null``) columns take the table's type for that column.
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
                pl.scan_delta(delta, storage_options=self._polars_options).collect_schema()
                if delta is not None
                else pl.Schema()
            )
            missing = [name for name in untyped if name not in existing]
            if missing:
                raise LakeError(
                    f"write to {table!r} ({self.uri(table)}): column(s) {missing} have no type "
                    "(every value is null and the table has no such column); cast them first"
                )
            casts.update({name: existing[name] for name in untyped})
        if not casts:
            return df
        return df.with_columns(pl.col(name).cast(dtype) for name, dtype in casts.items())

    def _validate_keys(self, table: str, df: pl.DataFrame, keys: Sequence[str]) -> list[str]:
        key_list = [keys] if isinstance(keys, str) else list(keys)
        where = f"merge into {table!r} ({self.uri(table)})"
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
            duplicated = df.select(key_list).is_duplicated()
            count = int(duplicated.sum())
            if count:
                # Counts only: key values can be personal data (emails) and end up in logs.
                raise LakeError(
                    f"{where}: {count} rows share a key on {key_list}; deduplicate before merging"
                )
        return key_list

    def _list_local_tables(self) -> list[str]:
        if not os.path.isdir(self._root):
            return []
        found: list[str] = []
        with os.scandir(self._root) as layers:
            for layer in layers:
                if not layer.is_dir() or layer.name.startswith("."):
                    continue
                with os.scandir(layer.path) as names:
                    for name in names:
                        candidate = f"{layer.name}/{name.name}"
                        log = os.path.join(name.path, "_delta_log")
                        if _TABLE_NAME.fullmatch(candidate) and os.path.isdir(log):
                            found.append(candidate)
        return found

    def _list_s3_tables(self) -> list[str]:
        bucket, prefix = split_s3_uri(self._root)
        base = f"{prefix}/" if prefix else ""
        connect = parse_duration_seconds(self._options.get("connect_timeout", "")) or 3.0
        client = s3_client(self._options, connect_timeout=connect, read_timeout=30.0)
        paginator = client.get_paginator("list_objects_v2")

        def children(under: str) -> list[str]:
            names: list[str] = []
            for page in paginator.paginate(Bucket=bucket, Prefix=under, Delimiter="/"):
                for entry in page.get("CommonPrefixes", []):
                    child = entry.get("Prefix", "")[len(under) :].rstrip("/")
                    if child:
                        names.append(child)
            return names

        found: list[str] = []
        for layer in children(base):
            for name in children(f"{base}{layer}/"):
                candidate = f"{layer}/{name}"
                if not _TABLE_NAME.fullmatch(candidate):
                    continue
                log = client.list_objects_v2(
                    Bucket=bucket, Prefix=f"{base}{candidate}/_delta_log/", MaxKeys=1
                )
                if log.get("KeyCount", 0):
                    found.append(candidate)
        return found


def _with_default_client_options(options: Mapping[str, str]) -> dict[str, str]:
    given = {normalise_option_key(key) for key in options}
    merged = {k: v for k, v in DEFAULT_S3_CLIENT_OPTIONS.items() if k not in given}
    merged.update(options)
    return merged


def _polars_storage_options(options: Mapping[str, str]) -> dict[str, Any] | None:
    """The lake's options as polars' reader wants them.

    Reads go through polars' own object store client, which shares object_store's client keys
    (``timeout``, ``connect_timeout``) but wants ``max_retries`` as an int (a string is rejected)
    and spells the retry budget ``retry_timeout_ms``. Keys it does not know are ignored.
    """
    if not options:
        return None
    converted: dict[str, Any] = dict(options)
    for key, value in options.items():
        name = normalise_option_key(key)
        if name == "max_retries" and value.strip().isdigit():
            converted[key] = int(value)
        elif name == "retry_timeout":
            seconds = parse_duration_seconds(value)
            if seconds is not None:
                converted["retry_timeout_ms"] = int(seconds * 1000)
    return converted


def _commit_properties(
    metadata: Mapping[str, str] | None, *, batch_id: str | None = None
) -> CommitProperties:
    return CommitProperties(
        custom_metadata=dict(metadata) if metadata else None,
        app_transactions=[Transaction(app_id=batch_id, version=1)] if batch_id else None,
    )


def _q(column: str) -> str:
    """Quote a column name for a delta-rs (DataFusion) SQL expression."""
    return "`" + column.replace("`", "``") + "`"


def _keys_match(keys: Sequence[str]) -> str:
    """MERGE condition joining target ``t`` and source ``s`` on every key column."""
    return " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in keys)


def _compared(columns: Sequence[str]) -> list[str]:
    """Columns that decide whether a matched row changed: ingest metadata (``_*``) does not."""
    return [c for c in columns if not c.startswith("_")]


def _changed_predicate(value_columns: Sequence[str], target_columns: set[str]) -> str:
    # Each comparison is parenthesised: DataFusion parses `a IS DISTINCT FROM b OR c ...` with
    # the OR binding inside the comparison. A column the table does not have yet "changed" when
    # the source brings a value for it (the evolved column starts out null).
    parts = [
        f"(t.{_q(c)} IS DISTINCT FROM s.{_q(c)})"
        if c in target_columns
        else f"(s.{_q(c)} IS NOT NULL)"
        for c in value_columns
    ]
    return " OR ".join(parts)


def _partition_predicate(column: str, values: pl.Series) -> str:
    """SQL selecting the partitions whose values appear in ``values``."""
    literals: list[str] = []
    has_null = False
    for value in values.unique().to_list():
        if value is None:
            has_null = True
        elif isinstance(value, bool):
            literals.append("true" if value else "false")
        elif isinstance(value, int):
            literals.append(str(value))
        elif isinstance(value, str):
            literals.append("'" + value.replace("'", "''") + "'")
        elif isinstance(value, date) and not isinstance(value, datetime):
            # An ISO date string, which DataFusion coerces to the column's date type.
            literals.append(f"'{value.isoformat()}'")
        else:
            raise LakeError(
                f"cannot build a partition predicate for column {column!r} of type "
                f"{values.dtype}; partition by a string, integer, boolean or date column"
            )
    clauses = []
    if literals:
        clauses.append(f"{_q(column)} IN ({', '.join(literals)})")
    if has_null:
        clauses.append(f"{_q(column)} IS NULL")
    return "(" + " OR ".join(clauses) + ")"


def _clean(exc: BaseException) -> str:
    """One readable line from a deltalake error (they carry ANSI colours, tree art and, with
    ``RUST_BACKTRACE`` set, a stack trace, which is dropped)."""
    text = _ANSI.sub("", str(exc)) or type(exc).__name__
    lines = text.splitlines()
    frame = next((i for i, line in enumerate(lines) if _BACKTRACE_START.match(line)), len(lines))
    text = " ".join(line.strip().lstrip("↳").strip() for line in lines[:frame] if line.strip())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + " ..."
    return f"{type(exc).__name__}: {text}"


ErrorKind = Literal["full", "denied", "corrupt_log", "other"]

# How a failure's cause shows in deltalake / object_store / polars messages (checked against
# deltalake 1.6.6: a full disk surfaces as "Failed to parse parquet: ... No space left on device
# (os error 28)"; a refused key as "403 Forbidden ... <Code>InvalidAccessKeyId</Code>"; a damaged
# commit as "Kernel error: Json error: ..."). First match wins: a full disk can also garble JSON.
_KINDS: tuple[tuple[ErrorKind, re.Pattern[str]], ...] = (
    ("full", re.compile(r"No space left on device|os error 28\b|\bENOSPC\b|disk quota", re.I)),
    (
        "denied",
        re.compile(
            r"\b403 Forbidden|status code 403\b|\bInvalidAccessKeyId\b|\bSignatureDoesNotMatch"
            r"|\bAccessDenied\b|\bInvalidToken\b|\bExpiredToken\b|lacked the necessary privileges",
        ),
    ),
    (
        "corrupt_log",
        re.compile(
            r"Json error|Invalid JSON|invalid json|EOF while parsing|expected value at line"
        ),
    ),
)
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def _classify(exc: BaseException, text: str) -> ErrorKind:
    """Which known cause ``exc`` has (``"other"`` for transient or unknown ones)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    for kind, pattern in _KINDS:
        if pattern.search(text):
            return kind
    return "other"


def _refusal(text: str) -> str:
    """The S3 error code of a refusal (e.g. ``InvalidAccessKeyId``), else ``HTTP 403``."""
    code = _S3_CODE.search(text)
    return f"HTTP 403 {code.group(1)}" if code else "HTTP 403 Forbidden"


def _first_clause(text: str) -> str:
    """The reason part of a cleaned error, without the exception type, in a few words."""
    reason = text.split(": ", 1)[-1]
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _read_local(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()

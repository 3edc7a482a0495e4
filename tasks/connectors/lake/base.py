"""The lake's foundation: a root, its storage options, table names, and per-table locking,
caching and error reporting that every lake operation shares.

:class:`~tasks.connectors.lake.Lake` builds on it; the modules that reach Delta directly
(change feed, maintenance) use :meth:`LakeBase.delta_table`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFoundError

from tasks.connectors.lake import audit, writes
from tasks.connectors.lake.commits import commit_properties
from tasks.connectors.lake.failures import TableNotFoundError, lake_error
from tasks.connectors.lake.listing import TABLE_NAME
from tasks.connectors.lake.options import (
    polars_storage_options,
    reject_unsafe_rename,
    with_default_client_options,
)
from tasks.connectors.s3 import (
    encryption_of,
    is_s3_uri,
    normalise_option_key,
    split_s3_uri,
    trust_ca_bundle,
)
from tasks.core.settings import lake_uri_problem
from tasks.errors import LakeError

__all__ = ["DATA_NEUTRAL_OPERATIONS", "LakeBase"]

T = TypeVar("T")

DATA_NEUTRAL_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES"})
"""Commits that change no row: maintenance (compaction, Z-order, vacuum) and table properties
(turning the change feed on). A write that lost its commit race only to these is rerun."""
_MAX_RERUNS = 5
_log = logging.getLogger(__name__)


class LakeBase:
    """Delta tables under one root: names, locks, the cached :class:`DeltaTable` of each table,
    and errors that name the table (see :class:`~tasks.connectors.lake.Lake`)."""

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None) -> None:
        options = dict(storage_options or {})
        problem = lake_uri_problem(root)
        if problem:
            raise LakeError(f"lake root {problem}")
        try:
            reject_unsafe_rename(options)
            encryption_of(options)  # an invalid encryption setting fails here, not mid-write
        except ValueError as exc:
            raise LakeError(f"lake {root}: {exc}") from exc
        if is_s3_uri(root):
            try:
                split_s3_uri(root)
            except ValueError as exc:
                raise LakeError(f"lake {root}: {exc}") from exc
            self._root = root.rstrip("/")
            self._options = with_default_client_options(options)
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
        self._polars_options = polars_storage_options(self._options)
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
        if not isinstance(table, str) or not TABLE_NAME.fullmatch(table):
            raise LakeError(
                f"invalid table name {table!r} in lake {self._root}: expected '<layer>/<name>' "
                "using lowercase letters, digits and underscores"
            )
        if self.is_remote:
            return f"{self._root}/{table}"
        return os.path.join(self._root, *table.split("/"))

    # --- for the lake's own modules (changes, maintenance) ---------------------------------------

    @contextmanager
    def delta_table(self, table: str, action: str) -> Iterator[DeltaTable]:
        """The refreshed :class:`DeltaTable` of ``table``, held under the table's lock, with
        failures reported as a LakeError naming ``action`` and the table.

        Raises:
            TableNotFoundError: if the table does not exist.
        """
        with self._locked(table), self._errors(table, action), self._audited(table):
            yield self._require(table)

    @property
    def read_options(self) -> dict[str, Any] | None:
        """The storage options in the spelling polars' reader wants (holds secrets)."""
        return self._polars_options

    def _rerun_after_maintenance(self, table: str, write: Callable[[DeltaTable], T]) -> T:
        """Run ``write`` on the table; rerun it if it lost its commit race only to commits that
        change no data (:data:`DATA_NEUTRAL_OPERATIONS`).

        Delta's optimistic concurrency rejects a MERGE, delete or overwrite when a commit made
        since its read removed files it read, and a compaction does exactly that. The rows
        those files held are unchanged (a compaction rewrites them as they are), so running
        the same write again on the refreshed table gives the result it would have given before
        the compaction. A race lost to any other commit is still raised: that writer's data
        might change the answer.
        """
        for _ in range(_MAX_RERUNS - 1):
            delta = self._require(table)
            read = delta.version()
            try:
                return write(delta)
            except CommitFailedError:
                if not _only_data_neutral_since(delta, read):
                    raise
        return write(self._require(table))

    def _create_or_rerun(
        self, table: str, delta: DeltaTable | None, write: Callable[[DeltaTable | str], T]
    ) -> T:
        """Run ``write`` on the table's URI when ``delta`` is None (the write creates the table),
        otherwise on the table through :meth:`_rerun_after_maintenance`: the shape every write
        that may create its table shares."""
        if delta is None:
            return write(self.uri(table))
        return self._rerun_after_maintenance(table, write)

    # --- internals -------------------------------------------------------------------------------

    def _delta_options(self) -> dict[str, str] | None:
        return dict(self._options) if self._options else None

    def _where(self, action: str, table: str) -> str:
        return f"{action} {table!r} ({self.uri(table)})"

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

    @contextmanager
    def _audited(self, table: str) -> Iterator[None]:
        """Report the version a write inside committed to the run's collector, if one is open
        (see :mod:`.audit`); nothing is reported when nothing was committed."""
        if audit.active() is None:
            yield
            return
        before = self._load(table)
        version = None if before is None else before.version()
        yield
        try:
            after = self._load(table)
            if after is None or (version is not None and after.version() <= version):
                return
            last = after.history(1)
            metrics = last[0].get("operationMetrics") if last else None
            audit.note_write(table, after.version(), audit.row_counts(metrics))
        except Exception as exc:  # the write is committed; a lost report must not undo that
            _log.warning("run audit: could not read the version committed to %s: %s", table, exc)

    def _noted(self, table: str, delta: DeltaTable, version: int | None = None) -> DeltaTable:
        """``delta``, after reporting the version read (``version``, default current)."""
        if audit.active() is not None:
            audit.note_read(table, delta.version() if version is None else version)
        return delta

    def _error(self, table: str, action: str, exc: BaseException) -> LakeError:
        valid = isinstance(table, str) and bool(TABLE_NAME.fullmatch(table))
        location = self.uri(table) if valid else self._root
        return lake_error(
            exc,
            action=action,
            table=table,
            location=location,
            root=self._root,
            options=self._options,
            log_uri=f"{location}/_delta_log" if valid else None,
        )

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
        table_properties: Mapping[str, str] | None,
    ) -> int | None:
        """Create ``table`` from ``data``; None if another writer created it first."""
        try:
            writes.create_table(
                self.uri(table),
                data,
                partition_by=partition_by,
                options=self._delta_options(),
                properties=commit_properties(metadata),
                configuration=table_properties,
            )
        except Exception:
            if self._load(table) is not None:
                return None
            raise
        return self._require(table).version()

    def _prepare(self, table: str, df: pl.DataFrame, delta: DeltaTable | None) -> pl.DataFrame:
        where = self._where("write to", table)
        return writes.prepare_frame(df, delta, where=where, read_options=self._polars_options)


def _only_data_neutral_since(delta: DeltaTable, version: int) -> bool:
    """Whether every commit after ``version`` (at least one) is in DATA_NEUTRAL_OPERATIONS."""
    delta.update_incremental()
    newer = delta.version() - version
    if newer <= 0:
        return False
    return all(entry.get("operation") in DATA_NEUTRAL_OPERATIONS for entry in delta.history(newer))

"""Publish leases: an audience is claimed in the lake before anything is sent to it.

A lease is keyed by destination and audience (``mailchimp/list-123``). Its history is the Delta
table ``ops/publish_leases``: every claim, renewal and release appends one row, and every such
commit on a key carries the Delta application transaction ``publish-lease:<key>`` whose version
is the row's sequence number. delta-rs rejects a commit (``CommitFailedError``) when a commit
made after the version its writer read carries the same application id, and the store's
conditional PUT (``If-None-Match``, checked by ``audience-lake doctor``) makes commit order
total. So "read the lease, see it free, commit a claim" is atomic across processes and
machines: of two claimers that read the same state, exactly one commits; the other re-reads
and sees the winner's claim.

A claim expires after ``ttl`` seconds unless renewed, so a crashed holder blocks its audience
for at most one ``ttl``; the holder renews before each platform batch and stops (raising
:class:`LeaseLostError`) if someone else took the lease meanwhile. Expiry compares wall clocks:
keep the ttl well above the clock skew between machines.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFoundError

from tasks.connectors.lake import Lake, LakeError, clean, polars_storage_options
from tasks.core.tables import LEASE_SCHEMA as LEASE_SCHEMA
from tasks.core.tables import PUBLISH_LEASES as PUBLISH_LEASES
from tasks.errors import PublishError

LeaseEvent = Literal["claimed", "released"]

_MAX_CONFLICTS = 20  # re-reads after a lost race before giving up (each one saw a new commit)


class LeaseLostError(PublishError):
    """Another run took over a lease this run held (it expired before it was renewed)."""


def lease_key(destination: str, audience: str) -> str:
    """The key of the lease on one destination list."""
    return f"{destination}/{audience}"


@dataclass(frozen=True)
class LeaseState:
    """The newest row of a lease: who holds it (or last held it) and until when."""

    key: str
    seq: int
    holder: str
    event: LeaseEvent
    expires_at: datetime

    def blocks(self, holder: str, now: datetime) -> bool:
        """Whether this state keeps ``holder`` from claiming at ``now``."""
        return self.event == "claimed" and self.holder != holder and self.expires_at > now

    def describe(self) -> str:
        return f"claimed by {self.holder} until {self.expires_at:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(frozen=True)
class Lease:
    """A lease this process holds (as of ``seq``)."""

    key: str
    holder: str
    seq: int
    expires_at: datetime


class LeaseStore:
    """Claims, renews and releases publish leases in ``ops/publish_leases`` of a lake."""

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        self._uri = lake.uri(PUBLISH_LEASES)
        options = lake.storage_options
        self._options = options or None
        self._read_options = polars_storage_options(options)
        self._delta: DeltaTable | None = None
        self._lock = threading.Lock()

    # --- public -----------------------------------------------------------------------------

    def current(self, key: str) -> LeaseState | None:
        """The lease's newest state, or None if it was never claimed."""
        with self._lock:
            return self._state(self._table(), key)

    def try_claim(self, key: str, holder: str, *, ttl: float, now: datetime) -> Lease | LeaseState:
        """Claim ``key`` for ``holder``; the blocking state if someone else holds it.

        Re-claiming a lease ``holder`` already holds renews it.
        """
        with self._lock:
            for _ in range(_MAX_CONFLICTS):
                delta = self._table()
                state = self._state(delta, key)
                if state is not None and state.blocks(holder, now):
                    return state
                seq = 1 if state is None else state.seq + 1
                expires = now + timedelta(seconds=ttl)
                if self._commit(delta, key, seq, holder, "claimed", expires, now):
                    return Lease(key, holder, seq, expires)
        raise LakeError(
            f"claiming publish lease {key!r} in {self._uri}: lost {_MAX_CONFLICTS} races in a row"
        )

    def renew(self, lease: Lease, *, ttl: float, now: datetime) -> Lease:
        """Extend ``lease``; raises :class:`LeaseLostError` if another run took it meanwhile."""
        with self._lock:
            delta = self._table()
            state = self._state(delta, lease.key)
            if state is None or state.seq != lease.seq or state.holder != lease.holder:
                raise LeaseLostError(self._lost(lease, state))
            expires = now + timedelta(seconds=ttl)
            seq = lease.seq + 1
            if not self._commit(delta, lease.key, seq, lease.holder, "claimed", expires, now):
                after = self._state(self._table(), lease.key)
                # A commit whose response was lost is retried and then "conflicts" with itself.
                if after is None or (after.seq, after.holder) != (seq, lease.holder):
                    raise LeaseLostError(self._lost(lease, after))
            return Lease(lease.key, lease.holder, seq, expires)

    def release(self, lease: Lease, *, now: datetime) -> bool:
        """Give ``lease`` back; False (and nothing written) if it is no longer ours."""
        with self._lock:
            delta = self._table()
            state = self._state(delta, lease.key)
            if state is None or state.seq != lease.seq or state.holder != lease.holder:
                return False
            return self._commit(delta, lease.key, lease.seq + 1, lease.holder, "released", now, now)

    # --- internals ----------------------------------------------------------------------------

    def _lost(self, lease: Lease, state: LeaseState | None) -> str:
        now_held = state.describe() if state is not None else "no record"
        return (
            f"publish lease {lease.key!r} ({self._uri}) held by {lease.holder} was taken over "
            f"before it was renewed: now {now_held}; stopping before the next batch"
        )

    def _table(self) -> DeltaTable:
        """The lease table at its newest version (created empty if missing)."""
        try:
            if self._delta is None:
                self._delta = self._open_or_create()
            else:
                self._delta.update_incremental()
            return self._delta
        except LakeError:
            raise
        except Exception as exc:
            raise LakeError(f"reading publish leases {self._uri}: {clean(exc)}") from exc

    def _open_or_create(self) -> DeltaTable:
        try:
            return DeltaTable(self._uri, storage_options=self._options)
        except DeltaTableNotFoundError:
            pass
        # If another process creates it first this write fails; opening it below tells.
        with contextlib.suppress(Exception):
            write_deltalake(
                self._uri,
                pl.DataFrame(schema=LEASE_SCHEMA),
                mode="append",
                storage_options=self._options,
            )
        return DeltaTable(self._uri, storage_options=self._options)

    def _state(self, delta: DeltaTable, key: str) -> LeaseState | None:
        seq = delta.transaction_version(_app_id(key))
        if seq is None:
            return None
        try:
            rows = (
                pl.scan_delta(delta, storage_options=self._read_options)
                .filter((pl.col("lease_key") == key) & (pl.col("seq") == seq))
                .collect()
            )
        except Exception as exc:
            raise LakeError(f"reading publish lease {key!r} in {self._uri}: {clean(exc)}") from exc
        if rows.height != 1:
            raise LakeError(
                f"publish lease {key!r} in {self._uri}: {rows.height} rows for sequence {seq}"
            )
        row = rows.row(0, named=True)
        return LeaseState(key, seq, row["holder"], row["event"], row["expires_at"])

    def _commit(
        self,
        delta: DeltaTable,
        key: str,
        seq: int,
        holder: str,
        event: LeaseEvent,
        expires_at: datetime,
        now: datetime,
    ) -> bool:
        """Append one lease row as of ``delta``'s version; False if a concurrent commit won."""
        row = pl.DataFrame(
            [{"lease_key": key, "seq": seq, "holder": holder, "event": event,
              "expires_at": expires_at, "written_at": now}],
            schema=LEASE_SCHEMA,
        )  # fmt: skip
        try:
            write_deltalake(
                delta,
                row,
                mode="append",
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(app_id=_app_id(key), version=seq)]
                ),
            )
        except CommitFailedError:
            return False
        except Exception as exc:
            raise LakeError(
                f"committing publish lease {key!r} ({event}) to {self._uri}: {clean(exc)}"
            ) from exc
        return True


def _app_id(key: str) -> str:
    return f"publish-lease:{key}"

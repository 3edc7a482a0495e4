"""Pure pieces of the incremental transform: row changes, the staging log, keys, run state.

The transform runs in two stages, each with a watermark stored in the commit it writes:

1. **bronze -> staging.** Each source role has a staging table (``silver/staged_<role>``) holding
   its *valid canonical* rows: normalised and checked once, never again. A run diffs each bronze
   table between the version staged last time and now - the data files one version has and the
   other lacks (:func:`net_changes` cancels the rows a copy-on-write MERGE merely rewrote) - so
   only changed rows are normalised and checked. Staging is an append-only log: each run appends,
   per distinct canonical record (:data:`RECORD_HASH`), how many copies of it bronze now holds
   (:data:`COPIES`, 0 = gone), stamped with the run's sequence number (:data:`SEQ`);
   :func:`live_rows` reads the current rows back. Appending never rewrites a file, and a removed
   record is appended with its old content, so the next stage sees old and new values (the old
   email of a CRM record whose email changed).
2. **staging -> silver -> gold.** A run reads the log rows with a sequence number above the one it
   consumed last time, derives the people they affect (emails, orders, events and the anonymous
   ids linking events to people) and rebuilds only those people, orders and events from their
   complete staged history; gold follows for the affected contacts (see :mod:`tasks.engine`).

State lives in commit metadata written in the same commit as the data it describes
(:class:`StagingState`) or after everything it describes (:class:`TransformState`), so a crash
in between means work is redone, never skipped; every step is idempotent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

RECORD_HASH = "_record_hash"
COPIES = "_copies"
SEQ = "_seq"
LOG_COLUMNS = (RECORD_HASH, COPIES, SEQ)
"""Columns the staging log adds to canonical rows."""

STAGING_STATE_KEY = "audience_lake.staging"
TRANSFORM_STATE_KEY = "audience_lake.transform"

# Bumped whenever a change to normalisation, contracts or the silver/gold logic makes existing
# staged rows or built tables stale: a different value in the state forces a full rebuild.
CODE_VERSION = 1

_HASH_SEED = 0x5EED
_OCCURRENCE = "_occurrence"


def row_hash(columns: Sequence[str]) -> pl.Expr:
    """An Int64 hash of ``columns`` (by name, order-independent), null-safe.

    polars' hash is stable for one polars version only; the states record the version
    (:func:`fingerprint`), and a different one rebuilds instead of comparing hashes.
    """
    return pl.struct(sorted(columns)).hash(seed=_HASH_SEED).reinterpret(signed=True)


def net_changes(
    added: pl.LazyFrame, removed: pl.LazyFrame, *, columns: Sequence[str]
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The rows really added and really removed between two sets of data files.

    ``added`` holds the rows of the files a table gained, ``removed`` those of the files it lost.
    A MERGE rewrites whole files, copying unchanged rows into the new file: such a row is on both
    sides and cancels. Rows are compared as multisets on ``columns``: two identical rows on one
    side and one on the other leave one.
    """
    hashed = row_hash(columns).alias("_row_hash")

    def numbered(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(hashed).with_columns(
            pl.int_range(pl.len()).over("_row_hash").alias(_OCCURRENCE)
        )

    new, old = numbered(added), numbered(removed)
    keys = ["_row_hash", _OCCURRENCE]
    really_added = new.join(old.select(keys), on=keys, how="anti").drop(keys)
    really_removed = old.join(new.select(keys), on=keys, how="anti").drop(keys)
    return really_added, really_removed


def distinct_records(canonical: pl.LazyFrame) -> pl.LazyFrame:
    """One row per distinct canonical record with :data:`RECORD_HASH` and :data:`COPIES`."""
    columns = canonical.collect_schema().names()
    return (
        canonical.with_columns(row_hash(columns).alias(RECORD_HASH))
        .with_columns(pl.len().over(RECORD_HASH).cast(pl.Int64).alias(COPIES))
        .unique(RECORD_HASH, keep="any")
        .select(*columns, RECORD_HASH, COPIES)
    )


def staging_updates(
    current: pl.LazyFrame, added: pl.LazyFrame, removed: pl.LazyFrame, *, seq: int
) -> pl.LazyFrame:
    """Log rows to append: each record whose number of copies changed, with the new number.

    ``current`` is the live ``(RECORD_HASH, COPIES)`` of the records concerned (from the log),
    ``added``/``removed`` the :func:`distinct_records` of the valid rows bronze gained and lost.
    A removed record that was never staged (it failed its contract) changes nothing.
    """
    columns = [c for c in added.collect_schema().names() if c not in LOG_COLUMNS]
    content = pl.concat(
        [added.select(*columns, RECORD_HASH), removed.select(*columns, RECORD_HASH)]
    )
    content = content.unique(RECORD_HASH, keep="first")
    delta = (
        pl.concat(
            [
                added.select(RECORD_HASH, COPIES),
                removed.select(RECORD_HASH, (-pl.col(COPIES)).alias(COPIES)),
            ]
        )
        .group_by(RECORD_HASH)
        .agg(pl.col(COPIES).sum().alias("_delta"))
    )
    return (
        delta.join(current.select(RECORD_HASH, COPIES), on=RECORD_HASH, how="left")
        .with_columns(pl.col(COPIES).fill_null(0).alias("_old"))
        .with_columns(pl.max_horizontal(pl.col("_old") + pl.col("_delta"), 0).alias("_new"))
        .filter(pl.col("_new") != pl.col("_old"))
        .join(content, on=RECORD_HASH, how="left")
        .select(
            *columns,
            RECORD_HASH,
            pl.col("_new").cast(pl.Int64).alias(COPIES),
            pl.lit(seq, pl.Int64).alias(SEQ),
        )
    )


def latest_ops(log: pl.LazyFrame) -> pl.LazyFrame:
    """The newest log row of each record (copies may be 0: the record is gone)."""
    return log.filter(pl.col(SEQ) == pl.col(SEQ).max().over(RECORD_HASH)).unique(
        RECORD_HASH, keep="first"
    )


def live_rows(log: pl.LazyFrame) -> pl.LazyFrame:
    """The staged rows bronze currently holds: one row per copy, without the log columns.

    Ordered by record hash (then copy), the same order for any subset of the log, so
    order-sensitive steps downstream (ties in dedupe) resolve the same way in a full and an
    incremental run.
    """
    columns = [c for c in log.collect_schema().names() if c not in LOG_COLUMNS]
    return (
        latest_ops(log)
        .filter(pl.col(COPIES) > 0)
        .with_columns(pl.int_ranges(0, pl.col(COPIES)).alias("_copy"))
        .explode("_copy")
        .sort(RECORD_HASH, "_copy")
        .select(columns)
    )


def live_counts(log: pl.LazyFrame, *, by: str = "_source") -> pl.LazyFrame:
    """Live rows (copies included) per value of ``by``."""
    return latest_ops(log).group_by(by).agg(pl.col(COPIES).sum().cast(pl.Int64).alias("rows"))


def changed_rows(
    new: pl.LazyFrame, current: pl.LazyFrame, *, keys: Sequence[str]
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """What to write so that ``current`` (the table, within some scope) becomes ``new``.

    Returns ``(upserts, deletes)``: the rows of ``new`` that are not already in ``current``
    exactly (null-safe), and the keys of ``current`` that ``new`` lacks. Both frames must have
    the same columns.
    """
    columns = new.collect_schema().names()
    hashed = row_hash(columns).alias("_row_hash")
    key_list = list(keys)
    upserts = (
        new.with_columns(hashed)
        .join(current.select(*key_list, hashed), on=[*key_list, "_row_hash"], how="anti")
        .drop("_row_hash")
    )
    deletes = current.select(key_list).join(new.select(key_list), on=key_list, how="anti")
    return upserts, deletes


def fingerprint(parts: Mapping[str, Any]) -> str:
    """A short digest of everything a stored result depends on besides the data."""
    payload = {"code": CODE_VERSION, "polars": pl.__version__, **parts}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class StagingState:
    """What a staging table holds: the bronze versions it reflects and its sequence number.

    Written as commit metadata in the same commit as the staged rows, so rows and state never
    disagree. Per source: the bronze ``versions`` staged, a digest of the field ``mappings``
    used (a changed mapping restages the source), the ``live`` row count (volume metrics
    read it without a scan), and the ``rejected`` count: how many of the source's current
    bronze rows fail the role's contract (they are in ``ops/quarantine``, not in the log).
    Both counts describe what the table reflects, not what one run did, so a run that finds
    the table up to date (a rerun after a crash) reports what the run that staged it would
    have. ``rejected`` is None in a state written before it was recorded (restage the role).
    """

    fingerprint: str
    seq: int
    versions: dict[str, int] = field(default_factory=dict)
    mappings: dict[str, str] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] | None = None

    def to_metadata(self) -> dict[str, str]:
        return {STAGING_STATE_KEY: json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_commit(cls, commit: Mapping[str, Any]) -> StagingState | None:
        """The state in a commit's metadata (a history entry), or None if it has none."""
        raw = commit.get(STAGING_STATE_KEY)
        if not isinstance(raw, str):
            return None
        data = json.loads(raw)
        return cls(
            fingerprint=str(data["fingerprint"]),
            seq=int(data["seq"]),
            versions={str(k): int(v) for k, v in data.get("versions", {}).items()},
            mappings={str(k): str(v) for k, v in data.get("mappings", {}).items()},
            live={str(k): int(v) for k, v in data.get("live", {}).items()},
            rejected=(
                None
                if data.get("rejected") is None
                else {str(k): int(v) for k, v in data["rejected"].items()}
            ),
        )


@dataclass(frozen=True)
class TransformState:
    """What silver and gold were last built from: staging sequence numbers, ``as_of``, config.

    Written (as the metadata of an empty commit) after every table it describes, with their
    versions: a table whose version moved since (an erasure, a crashed run) means the tables
    may not match this state, and the next run rebuilds instead of trusting it.
    """

    fingerprint: str
    as_of: str
    seqs: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {TRANSFORM_STATE_KEY: json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_commit(cls, commit: Mapping[str, Any]) -> TransformState | None:
        raw = commit.get(TRANSFORM_STATE_KEY)
        if not isinstance(raw, str):
            return None
        data = json.loads(raw)
        return cls(
            fingerprint=str(data["fingerprint"]),
            as_of=str(data["as_of"]),
            seqs={str(k): int(v) for k, v in data.get("seqs", {}).items()},
            versions={str(k): int(v) for k, v in data.get("versions", {}).items()},
        )


def values_in(column: str, values: pl.Series) -> pl.Expr:
    """``column`` is one of ``values`` (never true for null)."""
    return pl.col(column).is_in(values.drop_nulls().unique().implode())


def keys_of(frame: pl.LazyFrame, column: str) -> pl.LazyFrame:
    """The distinct non-null values of ``column``."""
    return frame.select(column).drop_nulls().unique()

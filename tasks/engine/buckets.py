"""Buckets of people: a full silver build split so memory does not grow with the lake.

A full build reads every staged row at once; with ``engine.buckets`` above 1 it reads, builds,
checks and commits one bucket of people at a time instead (the buckets may be computed side
by side and are committed in order, :mod:`tasks.engine.silver_buckets`). A person's bucket is a
hash of the normalised email modulo the number of buckets, so a person's contact rows,
enrichment rows, orders and events land in the same bucket and identity resolution needs
nothing else.

Three things cross buckets, and a compact pass over the staging logs settles them before the
first bucket (:func:`cross_bucket_links`):

- **orders whose versions name different people** (an order corrected to another customer):
  every version of such an order goes to the bucket of the version that wins the dedupe, so
  dedupe sees the whole order and the order lands with its person;
- **events whose deliveries differ** in email, anonymous id or source: likewise, to the bucket
  of the winning delivery (an event without email to the bucket of its ``event_id``);
- **anonymous-id links** (:func:`tasks.core.entities.anonymous_links`): an id links to a person
  only if every event carrying it names the same email, which may sit in another bucket, so the
  links are computed over all events, one slice of anonymous ids at a time, and handed to every
  bucket (one row per linked id).

Then one streamed pass per staging log writes each bucket's log rows to a scratch file of its
own (:meth:`CrossLinks.split`), so a bucket reads its rows without reading the logs again.
Each bucket is built from exactly the staged rows a single pass would give its people, orders
and events, in the same order (:func:`tasks.core.incremental.live_rows` orders any subset like
the whole), so the tables come out identical. Records that route by something other than
their own email are found by scanning key and email columns only, one slice of keys at a time;
the set is small (orders and events that changed hands), but it counts every such key in the
staging history, not only live ones, which can only send more records through the winner rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import polars as pl

from tasks.connectors.lake import STALE_SCRATCH, Lake, Scratch
from tasks.core.entities import anonymous_links, dedupe_events, dedupe_orders
from tasks.core.incremental import live_rows, values_in
from tasks.core.tables import TABLES
from tasks.engine.delta import sync_table
from tasks.engine.reports import Logger
from tasks.engine.scope import live_where
from tasks.reports import TableReport

BUCKET = "_bucket"
_BUCKET_SEED = 0xB0C4E7
# When ``engine.buckets`` is left to the engine: staged rows per bucket of a silver build (about
# 250,000 people at the benchmark's 8 rows per person), contacts per bucket of a gold build.
ROWS_PER_BUCKET = 2_000_000
PEOPLE_PER_BUCKET = 250_000
_EVENT_IDENTITY = ("email", "anonymous_id", "_source")
_MOVED_ORDERS = "moved-orders.parquet"
_MOVED_EVENTS = "moved-events.parquet"
_STAGED = "staged"


def bucket_of(column: str, buckets: int) -> pl.Expr:
    """The bucket (0 .. ``buckets``-1) of each value of ``column`` (null has one too).

    polars' hash is stable within one polars version, which is all a build needs: buckets only
    split the work of one run and are never stored.
    """
    return (pl.col(column).hash(seed=_BUCKET_SEED) % buckets).cast(pl.Int64)


def event_bucket(buckets: int) -> pl.Expr:
    """An event's bucket: its person's (own email), else its ``event_id``'s."""
    return (
        pl.when(pl.col("email").is_not_null())
        .then(bucket_of("email", buckets))
        .otherwise(bucket_of("event_id", buckets))
    )


def bucket_count(configured: int | None, rows: int, *, per_bucket: int = ROWS_PER_BUCKET) -> int:
    """``engine.buckets`` if set, else one bucket per ``per_bucket`` rows."""
    if configured is not None:
        return configured
    return max(1, -(-rows // per_bucket))


def new_scratch(lake: Lake, kind: str, logger: Logger) -> Scratch:
    """A new scratch folder for one bucketed build (``kind``: silver or gold), after removing
    the folders killed builds left (nothing written in them for ``STALE_SCRATCH``): they hold
    copies of staged rows, emails included."""
    for name in lake.remove_scratch(older_than=STALE_SCRATCH):
        logger.info("removed the scratch folder %s, left by a build that did not finish", name)
    return lake.scratch(f"{kind}-{uuid4().hex}")


def add_reports(total: list[TableReport], part: list[TableReport]) -> list[TableReport]:
    """Balances of buckets added up (every bucket reports the same tables, in order)."""
    if not total:
        return part
    return [
        TableReport(
            a.table,
            rows_in=a.rows_in + b.rows_in,
            rows_out=a.rows_out + b.rows_out,
            quarantined=a.quarantined + b.quarantined,
            duplicates=a.duplicates + b.duplicates,
        )
        for a, b in zip(total, part, strict=True)
    ]


def replace_on_new_schema(lake: Lake, table: str, df: pl.DataFrame) -> bool:
    """Replace ``table`` by ``df`` if its schema differs (a full build after a change of
    schema: the first bucket's rows replace the table, the next buckets add theirs)."""
    if not lake.exists(table) or dict(lake.scan(table).collect_schema()) == dict(df.schema):
        return False
    entry = TABLES.get(table)
    lake.overwrite(table, df, partition_by=list(entry.partition_by) if entry else None)
    return True


@dataclass(frozen=True)
class CrossLinks:
    """What crosses buckets (see the module doc).

    ``orders``/``events``: ``(key, _bucket)`` of the records routed to their winning version's
    bucket; ``links``: ``(_source, anonymous_id, email)`` of every linked anonymous id (in the
    build's scratch folder when it gave one: they grow with the people).
    """

    buckets: int
    orders: pl.DataFrame
    events: pl.DataFrame
    links: pl.LazyFrame

    @classmethod
    def load(cls, scratch: Scratch, buckets: int) -> CrossLinks:
        """The links :func:`cross_bucket_links` left in ``scratch``, wherever it is read."""
        return cls(
            buckets=buckets,
            orders=scratch.read(_MOVED_ORDERS),
            events=scratch.read(_MOVED_EVENTS),
            links=scratch.scan("links-*.parquet"),
        )

    def bucket_columns(self) -> dict[str, pl.Expr]:
        """Per role, the bucket of each staged row: its person's by its own email, or, for the
        moved orders and events, the bucket of the version that wins their dedupe."""
        n = self.buckets
        person = bucket_of("email", n)
        return {
            "contacts": person,
            "enrichment": person,
            "orders": _routed("order_id", self.orders, person),
            "events": _routed("event_id", self.events, event_bucket(n)),
        }

    def split(self, logs: dict[str, pl.LazyFrame], scratch: Scratch) -> None:
        """Write each bucket's staged rows to ``scratch`` in one streamed pass per log: the log
        rows of every record of the bucket (``staged-<role>-<bucket>.parquet``), which
        :func:`staged_rows` reads back as the bucket's live rows."""
        for role, column in self.bucket_columns().items():
            scratch.split(f"{_STAGED}-{role}", logs[role].with_columns(column.alias(BUCKET)),
                          BUCKET, self.buckets)  # fmt: skip

    def links_of(self, bucket: int, events: pl.DataFrame) -> pl.LazyFrame:
        """The links a bucket uses, in the order of all links: those of its people (by email:
        the ids a person gathers) and those of the anonymous ids on its ``events`` (staged
        rows; an anonymous event lands in the bucket of its ``event_id``, not its person's).
        Each id has one link, so a join finds the same rows in this subset as in all links."""
        ids = events.lazy().select("_source", "anonymous_id").drop_nulls().unique()
        return (
            pl.concat(
                [
                    self.links.filter(bucket_of("email", self.buckets) == bucket),
                    self.links.join(ids, on=["_source", "anonymous_id"], how="semi"),
                ]
            )
            .unique(["_source", "anonymous_id"])
            .sort("_source", "anonymous_id")
        )


def _routed(key: str, moved: pl.DataFrame, own: pl.Expr) -> pl.Expr:
    """A row's bucket: the winner's bucket for ``moved`` keys, else ``own``."""
    return pl.col(key).replace_strict(
        moved.get_column(key), moved.get_column(BUCKET), default=own, return_dtype=pl.Int64
    )


def staged_file(role: str, bucket: int) -> str:
    """The scratch file of one bucket's staged rows of ``role`` (:meth:`CrossLinks.split`)."""
    return f"{_STAGED}-{role}-{bucket}.parquet"


def staged_rows(scratch: Scratch, roles: Sequence[str], bucket: int) -> dict[str, pl.DataFrame]:
    """Per role, the live staged rows of ``bucket``, from the files :meth:`CrossLinks.split`
    wrote: the same rows, in the same order, as the live rows of the whole log filtered to the
    bucket, since every log row of a record goes to the same bucket."""
    frames = pl.collect_all([live_rows(scratch.scan(staged_file(r, bucket))) for r in roles])
    return dict(zip(roles, frames, strict=True))


def cross_bucket_links(
    logs: dict[str, pl.LazyFrame], buckets: int, *, scratch: Scratch | None = None
) -> CrossLinks:
    """Settle what crosses buckets, from the staging logs (see the module doc); with
    ``scratch`` all of it is written there (the links a slice of anonymous ids per file) for
    :meth:`CrossLinks.load`, and the links are scanned from it."""
    moved_orders = _unsettled(logs["orders"], "order_id", ["email"], buckets)
    order_winners = (
        dedupe_orders(live_where(logs["orders"], values_in("order_id", moved_orders)))
        .select("order_id", bucket_of("email", buckets).alias(BUCKET))
        .collect()
    )
    moved_events = _unsettled(logs["events"], "event_id", _EVENT_IDENTITY, buckets)
    event_winners = dedupe_events(
        live_where(logs["events"], values_in("event_id", moved_events))
    ).collect()
    links = []
    for part in range(buckets):
        linked = anonymous_links(
            pl.concat(
                [
                    live_where(
                        logs["events"],
                        ~values_in("event_id", moved_events)
                        & pl.col("email").is_not_null()
                        & pl.col("anonymous_id").is_not_null()
                        & (bucket_of("anonymous_id", buckets) == part),
                    ).select(_EVENT_IDENTITY),
                    event_winners.lazy()
                    .filter(bucket_of("anonymous_id", buckets) == part)
                    .select(_EVENT_IDENTITY),
                ]
            )
        ).collect()
        if scratch is None:
            links.append(linked.lazy())
        else:
            scratch.write(f"links-{part}.parquet", linked)
    cross = CrossLinks(
        buckets=buckets,
        orders=order_winners,
        events=event_winners.select("event_id", event_bucket(buckets).alias(BUCKET)),
        links=pl.concat(links) if scratch is None else scratch.scan("links-*.parquet"),
    )
    if scratch is not None:
        scratch.write(_MOVED_ORDERS, cross.orders)
        scratch.write(_MOVED_EVENTS, cross.events)
    return cross


def _unsettled(log: pl.LazyFrame, key: str, columns: Sequence[str], buckets: int) -> pl.Series:
    """Keys whose staged rows disagree on ``columns`` (any row of the log, live or not), read
    one slice of keys at a time so no pass holds every key."""
    parts = [
        log.select(key, *columns)
        .filter(bucket_of(key, buckets) == part)
        .group_by(key)
        .agg(pl.struct(columns).n_unique().alias("_versions"))
        .filter(pl.col("_versions") > 1)
        .select(key)
        .collect(engine="streaming")
        .get_column(key)
        for part in range(buckets)
    ]
    return pl.concat(parts).sort() if parts else pl.Series(key, [], pl.String)


def sync_bucket(
    lake: Lake, table: str, df: pl.DataFrame, *, key: str, where: pl.Expr | None, spill: Path
) -> None:
    """Make ``table`` hold one bucket's built rows ``df``, writing only what changed.

    Contacts route by their own email, so the bucket's slice of the table is known (``where``)
    and its stale rows are deleted here. Orders and events may route by another version's
    email, so only their keys in ``df`` are synced here; their keys are spilled to ``spill``
    and :func:`drop_stale` deletes what no bucket built once all are done. A table whose schema
    differs (a full build after a schema change) is replaced by the first bucket's rows.
    """
    if replace_on_new_schema(lake, table, df):
        pass
    elif where is not None:
        sync_table(lake, table, df, keys=[key], where=where)
    else:
        sync_table(lake, table, df, keys=[key], where=values_in(key, df.get_column(key)))
    part = len(list(spill.glob(f"{_spill_name(table)}-*.parquet")))
    df.select(key).write_parquet(spill / f"{_spill_name(table)}-{part}.parquet")


def drop_stale(lake: Lake, table: str, *, key: str, spill: Path, buckets: int) -> int:
    """Delete the rows of ``table`` whose ``key`` no bucket built (see :func:`sync_bucket`),
    one slice of keys at a time; returns how many."""
    built = pl.scan_parquet(spill / f"{_spill_name(table)}-*.parquet")
    if not lake.exists(table):
        return 0
    gone = 0
    for part in range(buckets):
        stale = (
            lake.scan(table)
            .select(key)
            .filter(bucket_of(key, buckets) == part)
            .join(built.filter(bucket_of(key, buckets) == part), on=key, how="anti")
            .collect()
        )
        if stale.height:
            empty = pl.DataFrame(schema=lake.scan(table).collect_schema())
            lake.upsert(table, empty, keys=[key], delete=stale)
            gone += stale.height
    return gone


def _spill_name(table: str) -> str:
    return table.replace("/", "_")

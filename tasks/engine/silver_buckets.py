"""A full silver build in buckets of people: computed side by side, committed in order.

With ``engine.buckets`` above 1 a full build reads, builds and checks one bucket of people at a
time (:mod:`tasks.engine.buckets`). First, in the build's process, the pass over the staging
logs that settles what crosses buckets, then one streamed pass per log that writes each
bucket's staged rows to a file of its own in the build's scratch folder
(:meth:`~tasks.engine.buckets.CrossLinks.split`), so no bucket reads the whole logs again.
Then each bucket is split in two:

1. :func:`compute_silver_bucket` reads the lake and writes nothing to it, so buckets can run at
   the same time, in other processes or on other machines (the transform submits them to the
   configured task runner, :mod:`tasks.runners`). It reads the bucket's staged rows from its
   files, the cross-bucket links and its people's ledger rows; computes the ledger rows to
   append for its people and their consent once those are appended
   (:func:`tasks.engine.consent.bucket_statements`); builds and checks the silver rows; and
   leaves everything it would write in the build's scratch folder on the lake's storage
   (:meth:`tasks.connectors.lake.Lake.scratch`), returning only counts (:class:`BucketBuilt`).
2. :func:`commit_silver_bucket` runs in the build's process, bucket after bucket in bucket
   order, exactly the commits a bucket made when it ran alone: the ledger rows, then orders,
   events and contacts. Then the orphaned consent is withdrawn and the orders and events no
   bucket built are deleted, as before.

Everything a bucket task is given is a small value (:class:`SilverBucket`: the config, the
bucket's number, the scratch folder's name, the clock); it rebuilds the lake adapter and the
pepper from the environment where it runs. The scratch folder is removed
when the build ends, failed or not, once no bucket still writes to it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from tasks.connectors.lake import Lake, Scratch
from tasks.core.config import PipelineConfig
from tasks.core.tables import CONSENT_EVENTS_SCHEMA, CONTACTS, EVENTS, ORDERS, ROLES
from tasks.engine.buckets import (
    CrossLinks,
    add_reports,
    bucket_of,
    cross_bucket_links,
    drop_stale,
    new_scratch,
    staged_file,
    staged_rows,
    sync_bucket,
)
from tasks.engine.checks import Checker
from tasks.engine.consent import (
    PendingConsent,
    append_statements,
    bucket_statements,
    people_keys,
    record_pending,
    withdraw_unstated,
)
from tasks.engine.reports import Logger, StagingReport
from tasks.engine.scope import live_where
from tasks.engine.silver_rows import balances, silver_rows
from tasks.errors import OrchestratorError
from tasks.reports import TableReport
from tasks.resources import pepper

_PEOPLE = "people"
_BUCKET_FILES = (_PEOPLE, "statements", "orders", "events", "contacts", "quarantine")


@dataclass(frozen=True)
class SilverBucket:
    """One bucket's unit of work: small values only, as it may be pickled to another process.

    ``scratch``: the name of the build's scratch folder (where the bucket's staged rows are);
    ``rejected``: the staging rejects to count in the bucket's balances (bucket 0 carries
    them, the others none).
    """

    config: PipelineConfig
    bucket: int
    buckets: int
    scratch: str
    rejected: dict[str, int]
    now: datetime
    run_id: str


@dataclass(frozen=True)
class BucketBuilt:
    """What a bucket left in the scratch folder: its balances and how many rows of each kind."""

    bucket: int
    tables: list[TableReport]
    statements: int
    quarantined: int


RunBuckets = Callable[[Sequence[SilverBucket]], Iterator[BucketBuilt]]
"""Computes the buckets (:func:`compute_silver_bucket`) and yields their results in bucket order,
each as soon as it is done. The build closes the iterator when it stops early, so an iterator
that started work elsewhere must wait for it there (a generator's ``finally``)."""


def build_in_buckets(
    lake: Lake,
    logs: dict[str, pl.LazyFrame],
    config: PipelineConfig,
    buckets: int,
    staging: StagingReport,
    *,
    checker: Checker,
    secret: bytes,
    version: int,
    pending: PendingConsent,
    now: datetime,
    run_id: str,
    run_buckets: RunBuckets | None = None,
) -> list[TableReport]:
    """A full build one bucket of people at a time (see the module doc): the same tables as
    one pass. ``run_buckets`` computes the buckets (None: one after the other, here); the
    results are committed here in bucket order. Returns the summed balances.

    The pending platform and erasure statements are recorded before any bucket reads the
    ledger, and the chains of people no bucket holds are withdrawn last
    (:func:`tasks.engine.consent.withdraw_unstated`), as one pass would. What grows with the
    lake stays on disk: the links and each bucket's rows in the scratch folder, the keys each
    bucket committed in a local spill directory.
    """
    scratch = new_scratch(lake, "silver", checker.logger)
    no_rejects = dict.fromkeys(staging.rejected, 0)
    jobs = [
        SilverBucket(
            config=config,
            bucket=bucket,
            buckets=buckets,
            scratch=scratch.name,
            rejected=staging.rejected if bucket == 0 else no_rejects,
            now=now,
            run_id=run_id,
        )
        for bucket in range(buckets)
    ]
    run = run_buckets or _one_after_another(lake, checker.logger)
    reports: list[TableReport] = []
    try:
        cross_bucket_links(logs, buckets, scratch=scratch).split(logs, scratch)
        record_pending(lake, pending)
        with tempfile.TemporaryDirectory(prefix="silver-buckets-") as tmp:
            spill = Path(tmp)
            built = run(jobs)
            try:
                for done, job in zip(built, jobs, strict=True):
                    if done.bucket != job.bucket:
                        raise OrchestratorError(
                            f"silver bucket {job.bucket} expected, bucket {done.bucket} returned"
                        )
                    commit_silver_bucket(
                        lake,
                        scratch,
                        done,
                        buckets=buckets,
                        spill=spill,
                        checker=checker,
                        suppressions_version=pending.suppressions_version,
                    )
                    reports = add_reports(reports, done.tables)
            finally:
                _close(built)
            withdraw_unstated(
                lake,
                live_where(logs["contacts"], pl.lit(False)).collect(),
                pl.scan_parquet(spill / f"{_PEOPLE}-*.parquet"),
                slices=buckets,
                secret=secret,
                version=version,
                now=now,
                run_id=run_id,
                suppressions_version=pending.suppressions_version,
            )
            for table, key in ((ORDERS, "order_id"), (EVENTS, "event_id")):
                drop_stale(lake, table, key=key, spill=spill, buckets=buckets)
    finally:
        scratch.remove()
    return reports


def _one_after_another(lake: Lake, logger: Logger) -> RunBuckets:
    """Buckets computed in this process, each when the build asks for it (no runner)."""

    def run(jobs: Sequence[SilverBucket]) -> Iterator[BucketBuilt]:
        return (compute_silver_bucket(lake, job, logger=logger) for job in jobs)

    return run


def _close(results: Iterator[BucketBuilt]) -> None:
    """Stop a runner's results early (a generator waits there for the work it started)."""
    close = getattr(results, "close", None)
    if callable(close):
        close()


def compute_silver_bucket(lake: Lake, job: SilverBucket, *, logger: Logger) -> BucketBuilt:
    """One bucket of a full build, read-only on the lake (see the module doc): its staged rows
    read, its people's new ledger rows and consent computed, its silver rows built and checked,
    all of it written to the scratch folder ``job.scratch``."""
    secret, version = pepper()
    scratch = lake.scratch(job.scratch)
    cross = CrossLinks.load(scratch, job.buckets)
    rows = staged_rows(scratch, ROLES, job.bucket)
    # Every email the bucket's rows name that belongs to the bucket: moved orders and events
    # may carry other buckets' emails in the versions that lost; those people are decided in
    # their own bucket.
    emails = (
        pl.concat([rows[role].select("email") for role in ROLES])
        .filter(bucket_of("email", job.buckets) == job.bucket)
        .get_column("email")
        .drop_nulls()
        .unique()
        .sort()
    )
    people = people_keys(emails, secret=secret, version=version)
    statements, consent = bucket_statements(
        lake, rows["contacts"], people, secret=secret, version=version, now=job.now,
        run_id=job.run_id,
    )  # fmt: skip
    checker = Checker(run_id=job.run_id, now=job.now, logger=logger)
    built = silver_rows(
        rows, None, job.config, checker=checker, secret=secret, version=version,
        links=cross.links_of(job.bucket, rows["events"]), consent=consent,
    )  # fmt: skip
    quarantine = checker.records()
    b = job.bucket
    scratch.write(f"{_PEOPLE}-{b}.parquet", people.select("contact_key"))
    scratch.write(f"statements-{b}.parquet", statements)
    scratch.write(f"orders-{b}.parquet", built.orders.valid)
    scratch.write(f"events-{b}.parquet", built.events.valid)
    scratch.write(f"contacts-{b}.parquet", built.contacts.valid)
    scratch.write(f"quarantine-{b}.parquet", quarantine)
    return BucketBuilt(
        bucket=b,
        tables=balances(rows, built, job.rejected),
        statements=statements.height,
        quarantined=quarantine.height,
    )


def commit_silver_bucket(
    lake: Lake,
    scratch: Scratch,
    done: BucketBuilt,
    *,
    buckets: int,
    spill: Path,
    checker: Checker,
    suppressions_version: int | None,
) -> None:
    """Commit what bucket ``done`` left in ``scratch``: its people's ledger rows, then its
    orders, events and contacts (only what changed); its quarantine records join
    ``checker``'s, and its people's keys go to ``spill`` for the final withdrawal."""
    b = done.bucket
    statements = scratch.read(f"statements-{b}.parquet")
    if statements.height != done.statements:
        raise OrchestratorError(
            f"silver bucket {b}: scratch holds {statements.height} ledger rows, "
            f"the bucket built {done.statements}"
        )
    append_statements(
        lake, statements.select(list(CONSENT_EVENTS_SCHEMA)),
        suppressions_version=suppressions_version,
    )  # fmt: skip
    for table, key, where in (
        (ORDERS, "order_id", None),
        (EVENTS, "event_id", None),
        (CONTACTS, "contact_key", bucket_of("email", buckets) == b),
    ):
        rows = scratch.read(f"{table.split('/')[-1]}-{b}.parquet")
        sync_bucket(lake, table, rows, key=key, where=where, spill=spill)
    checker.quarantine.append(scratch.read(f"quarantine-{b}.parquet"))
    scratch.read(f"{_PEOPLE}-{b}.parquet").write_parquet(spill / f"{_PEOPLE}-{b}.parquet")
    scratch.delete(
        *(f"{kind}-{b}.parquet" for kind in _BUCKET_FILES),
        *(staged_file(role, b) for role in ROLES),
    )

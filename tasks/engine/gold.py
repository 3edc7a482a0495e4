"""Stage 3, silver -> gold: ``gold/customer_features`` and ``gold/audience_members``.

Gold is rebuilt for the contacts silver names as affected (every contact when it names none).
Two things depend on more than a contact's own rows and are handled explicitly:

- **time**: features are computed as of ``as_of`` (midnight UTC by default). Recency, windows
  and "days since" change for everyone when ``as_of`` moves, so the first run with a new
  ``as_of`` recomputes the features of *every* contact from silver (joins and aggregations over
  silver only - no normalisation, no identity resolution); later runs that day are incremental
  again (see :mod:`tasks.engine.state`);
- **RFM quintiles** rank contacts against each other: they are recomputed over the whole
  features table on every run (a rank over three columns), and the rows whose scores moved are
  rewritten with the affected ones; in buckets, from the value counts of all buckets.

``gold/audience_members`` (partitioned by segment) is rebuilt for every contact whose features
or contact row may have changed: one row per segment a contact is in, opted-in contacts only
(:mod:`tasks.core.segments`). As in silver, :func:`gold_rows` computes (frames in, frames out)
and :func:`commit_gold` writes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import polars as pl

from tasks.connectors.lake import Lake, Scratch
from tasks.core.config import PipelineConfig
from tasks.core.contracts import AudienceMember, CustomerFeatures, Split
from tasks.core.feature_catalog import FEATURE_COLUMNS, RANKS, SCORE_COLUMNS
from tasks.core.features import (
    add_rank_counts,
    customer_metrics,
    rank_counts,
    score_rfm,
    score_rfm_by_counts,
)
from tasks.core.incremental import changed_rows, values_in
from tasks.core.normalise import UTC_MICROS
from tasks.core.segments import audience_members
from tasks.core.tables import AUDIENCE, AUDIENCE_SCHEMA, CONTACTS, EVENTS, FEATURES, ORDERS
from tasks.engine.buckets import (
    PEOPLE_PER_BUCKET,
    add_reports,
    bucket_count,
    bucket_of,
    new_scratch,
    replace_on_new_schema,
)
from tasks.engine.checks import Checker
from tasks.engine.delta import sync_table
from tasks.engine.holdouts import build_holdouts
from tasks.engine.reports import Logger, Metric, StageReport
from tasks.errors import OrchestratorError
from tasks.reports import TableReport

# Columns gold reads from silver orders and events, for a lake that has none yet.
_EMPTY_ORDERS: dict[str, pl.DataType] = {
    "contact_key": pl.String(),
    "amount_reporting": pl.Float64(),
    "category": pl.String(),
    "status": pl.String(),
    "created_at": UTC_MICROS,
}
_EMPTY_EVENTS: dict[str, pl.DataType] = {"contact_key": pl.String(), "occurred_at": UTC_MICROS}
_BUCKET_FILES = ("metrics", "features", "members", "quarantine")  # scratch files per bucket


def build_gold_tables(
    lake: Lake,
    config: PipelineConfig,
    *,
    as_of: datetime,
    run_id: str,
    now: datetime,
    contact_keys: Sequence[str] | None,
    logger: Logger,
    runners: GoldRunners | None = None,
) -> StageReport:
    """Bring gold up to date with silver for ``contact_keys`` (None: every contact; empty:
    nothing changed, report the totals). RFM scores are re-ranked over all contacts either way.
    ``runners``: where the buckets of a full build in buckets are computed (None: here).
    """
    if not lake.exists(CONTACTS):
        logger.warning("%s does not exist yet: gold not built", CONTACTS)
        return StageReport(tables=[], metrics=[])
    checker = Checker(run_id=run_id, now=now, logger=logger)
    if contact_keys is not None and not contact_keys and lake.exists(FEATURES):
        build_holdouts(lake, config, logger=logger)  # a holdout share may have changed
        return _gold_totals(lake, config, checker)  # nothing changed: counts only
    keys = None if contact_keys is None else pl.Series("contact_key", contact_keys, pl.String)
    buckets = bucket_count(
        config.engine.buckets, lake.count(CONTACTS), per_bucket=PEOPLE_PER_BUCKET
    )
    if buckets > 1 and keys is None:
        logger.info("gold: every contact, in %d buckets of people", buckets)
        tables = build_gold_in_buckets(
            lake, config, as_of=as_of, buckets=buckets, checker=checker, runners=runners
        )
        build_holdouts(lake, config, logger=logger)
        return _gold_totals(lake, config, checker, tables=tables)

    def of_affected(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame if keys is None else frame.filter(values_in("contact_key", keys))

    contacts = lake.scan(CONTACTS)
    metrics = customer_metrics(
        of_affected(contacts),
        of_affected(_scan_or_empty(lake, ORDERS, _EMPTY_ORDERS)),
        of_affected(_scan_or_empty(lake, EVENTS, _EMPTY_EVENTS)),
        as_of=as_of,
        rfm_window_days=config.transform.features.rfm_window_days,
    ).collect()
    if buckets > 1 and keys is not None and lake.exists(FEATURES):
        logger.info("gold: %d changed contact(s), re-ranked in %d buckets", keys.len(), buckets)
        tables = build_gold_changes_in_buckets(
            lake, config, metrics, keys, buckets=buckets, checker=checker
        )
        build_holdouts(lake, config, logger=logger)
        return _gold_totals(lake, config, checker, tables=tables)
    current = (
        lake.read(FEATURES) if lake.exists(FEATURES) else pl.DataFrame(schema=FEATURE_COLUMNS)
    ).select(list(FEATURE_COLUMNS))
    built = gold_rows(metrics, current, contacts, keys, config, checker=checker)
    commit_gold(lake, built)
    build_holdouts(lake, config, logger=logger)
    return _gold_totals(lake, config, checker, tables=_reports(built))


def _reports(built: GoldRows) -> list[TableReport]:
    return [
        TableReport(
            FEATURES,
            rows_in=built.candidates.height,
            rows_out=built.features.valid.height,
            quarantined=built.features.rejected,
            duplicates=0,
        ),
        TableReport(
            AUDIENCE,
            rows_in=built.members_in,
            rows_out=built.members.height,
            quarantined=built.members_rejected,
            duplicates=0,
        ),
    ]


@dataclass(frozen=True)
class GoldBucket:
    """One bucket of contacts of a full gold build: small values only, as it may be pickled to
    another process (``scratch``: the name of the build's scratch folder)."""

    config: PipelineConfig
    bucket: int
    buckets: int
    as_of: datetime
    scratch: str
    run_id: str
    now: datetime


@dataclass(frozen=True)
class GoldRunners:
    """Where a full gold build's buckets are computed: ``metrics`` runs
    :func:`gold_bucket_metrics`, ``rows`` :func:`gold_bucket_rows`, each yielding results in
    bucket order (see :data:`tasks.engine.silver_buckets.RunBuckets`)."""

    metrics: Callable[[Sequence[GoldBucket]], Iterator[int]]
    rows: Callable[[Sequence[GoldBucket]], Iterator[list[TableReport]]]


def build_gold_in_buckets(
    lake: Lake,
    config: PipelineConfig,
    *,
    as_of: datetime,
    buckets: int,
    checker: Checker,
    runners: GoldRunners | None = None,
) -> list[TableReport]:
    """Every contact's gold rows, one bucket of contacts at a time: the same tables as one pass.

    The RFM scores rank each contact among all: a first pass computes each bucket's metrics and
    counts its ranked values (:func:`gold_bucket_metrics`); the counts of all are added up, and
    the second pass scores each bucket against them (:func:`tasks.core.features.
    score_rfm_by_counts`) and assigns segments (:func:`gold_bucket_rows`). Both passes only
    read the lake and leave their rows in the build's scratch folder, so ``runners`` may
    compute the buckets side by side (None: one after the other, here); the rows are committed
    here, in bucket order (:func:`commit_gold_bucket`).
    """
    scratch = new_scratch(lake, "gold", checker.logger)
    jobs = [
        GoldBucket(config, part, buckets, as_of, scratch.name, checker.run_id, checker.now)
        for part in range(buckets)
    ]
    run = runners or _gold_here(lake, checker.logger)
    tables: list[TableReport] = []
    try:
        _drain(run.metrics(jobs), buckets)
        parts = [
            {name: scratch.read(f"counts-{name}-{part}.parquet") for name in RANKS}
            for part in range(buckets)
        ]
        for name, counts in add_rank_counts(parts).items():
            scratch.write(f"ranked-{name}.parquet", counts)
        scratch.delete(
            *(f"counts-{name}-{part}.parquet" for name in RANKS for part in range(buckets))
        )
        results = run.rows(jobs)
        try:
            for part, reports in zip(range(buckets), results, strict=True):
                commit_gold_bucket(lake, scratch, part, buckets=buckets, checker=checker)
                tables = add_reports(tables, reports)
        finally:
            _close(results)
    finally:
        scratch.remove()
    return tables


def build_gold_changes_in_buckets(
    lake: Lake,
    config: PipelineConfig,
    metrics: pl.DataFrame,
    keys: pl.Series,
    *,
    buckets: int,
    checker: Checker,
) -> list[TableReport]:
    """An incremental gold build one bucket of contacts at a time: the changed contacts'
    ``metrics`` (of ``keys``) replace theirs in the features table, and every contact is
    re-ranked, without holding the table at once.

    A first pass reads each bucket's current features (kept on local disk) and counts the
    ranked values of the bucket as it will be (its unchanged rows and the new metrics); the
    second scores each bucket against the counts of all (as :func:`gold_rows` would rank the
    whole table) and commits the rows whose features or audience changed.
    """
    contacts = lake.scan(CONTACTS)

    def bucket(frame: pl.DataFrame, part: int) -> pl.DataFrame:
        return frame.filter(bucket_of("contact_key", buckets) == part)

    keyed = keys.to_frame("contact_key")
    tables: list[TableReport] = []
    with tempfile.TemporaryDirectory(prefix="gold-changes-") as tmp:
        spill = Path(tmp)
        counts = []
        for part in range(buckets):
            current = (
                lake.scan(FEATURES)
                .filter(bucket_of("contact_key", buckets) == part)
                .select(list(FEATURE_COLUMNS))
                .collect()
            )
            current.write_parquet(spill / f"features-{part}.parquet")
            kept = current.filter(~values_in("contact_key", keys)).drop(SCORE_COLUMNS)
            population = pl.concat([kept, bucket(metrics, part)], how="vertical")
            counts.append(pl.collect_all(rank_counts(population.lazy()).values()))
            del current, kept, population
        ranked = add_rank_counts([dict(zip(RANKS, c, strict=True)) for c in counts])
        for part in range(buckets):
            built = gold_rows(
                bucket(metrics, part),
                pl.read_parquet(spill / f"features-{part}.parquet"),
                contacts,
                bucket(keyed, part).get_column("contact_key"),
                config,
                checker=checker,
                score=partial(score_rfm_by_counts, counts=ranked),
            )
            commit_gold(lake, built, where=bucket_of("contact_key", buckets) == part)
            tables = add_reports(tables, _reports(built))
    return tables


def _gold_here(lake: Lake, logger: Logger) -> GoldRunners:
    return GoldRunners(
        metrics=lambda jobs: (gold_bucket_metrics(lake, job) for job in jobs),
        rows=lambda jobs: (gold_bucket_rows(lake, job, logger=logger) for job in jobs),
    )


def _drain(results: Iterator[int], buckets: int) -> None:
    """Wait for every bucket of a pass (a pass that returns too few or too many fails)."""
    try:
        done = sum(1 for _ in results)
    finally:
        _close(results)
    if done != buckets:
        raise OrchestratorError(f"gold: {done} bucket(s) of {buckets} computed")


def _close(results: Iterator[object]) -> None:
    close = getattr(results, "close", None)
    if callable(close):
        close()


def _bucket_of(frame: pl.LazyFrame, job: GoldBucket) -> pl.LazyFrame:
    return frame.filter(bucket_of("contact_key", job.buckets) == job.bucket)


def gold_bucket_metrics(lake: Lake, job: GoldBucket) -> int:
    """Pass 1 of a bucket, read-only on the lake: its contacts' metrics and the counts of
    their ranked values, left in the scratch folder. Returns the bucket's contacts."""
    scratch = lake.scratch(job.scratch)
    metrics = customer_metrics(
        _bucket_of(lake.scan(CONTACTS), job),
        _bucket_of(_scan_or_empty(lake, ORDERS, _EMPTY_ORDERS), job),
        _bucket_of(_scan_or_empty(lake, EVENTS, _EMPTY_EVENTS), job),
        as_of=job.as_of,
        rfm_window_days=job.config.transform.features.rfm_window_days,
    ).collect()
    scratch.write(f"metrics-{job.bucket}.parquet", metrics)
    counts = rank_counts(metrics.lazy())
    for name, frame in zip(counts, pl.collect_all(counts.values()), strict=True):
        scratch.write(f"counts-{name}-{job.bucket}.parquet", frame)
    return metrics.height


def gold_bucket_rows(lake: Lake, job: GoldBucket, *, logger: Logger) -> list[TableReport]:
    """Pass 2 of a bucket, read-only on the lake: its metrics scored against the counts of all,
    checked, its audience assigned; the rows and quarantine records left in the scratch folder.
    Returns its balances."""
    scratch = lake.scratch(job.scratch)
    ranked = {name: scratch.read(f"ranked-{name}.parquet") for name in RANKS}
    checker = Checker(run_id=job.run_id, now=job.now, logger=logger)
    built = gold_rows(
        scratch.read(f"metrics-{job.bucket}.parquet"),
        pl.DataFrame(schema=FEATURE_COLUMNS),
        _bucket_of(lake.scan(CONTACTS), job),
        None,
        job.config,
        checker=checker,
        score=partial(score_rfm_by_counts, counts=ranked),
    )
    scratch.write(f"features-{job.bucket}.parquet", built.features.valid)
    scratch.write(f"members-{job.bucket}.parquet", built.members)
    scratch.write(f"quarantine-{job.bucket}.parquet", checker.records())
    return _reports(built)


def commit_gold_bucket(
    lake: Lake, scratch: Scratch, part: int, *, buckets: int, checker: Checker
) -> None:
    """Write what bucket ``part`` left in ``scratch``: its features, then its audience rows
    (changed rows only, within the bucket); its quarantine records join ``checker``'s."""
    features = scratch.read(f"features-{part}.parquet")
    members = scratch.read(f"members-{part}.parquet")
    where = bucket_of("contact_key", buckets) == part
    replace_on_new_schema(lake, FEATURES, features)
    replace_on_new_schema(lake, AUDIENCE, members)
    sync_table(lake, FEATURES, features, keys=["contact_key"], where=where)
    sync_table(
        lake, AUDIENCE, members, keys=["segment", "contact_key"], scope_column="contact_key",
        where=where,
    )  # fmt: skip
    checker.quarantine.append(scratch.read(f"quarantine-{part}.parquet"))
    scratch.delete(*(f"{kind}-{part}.parquet" for kind in _BUCKET_FILES))


@dataclass(frozen=True)
class GoldRows:
    """Gold rows built and checked: what :func:`commit_gold` writes.

    ``features``: the checked feature rows to write (``candidates`` before checks) for the keys
    in ``features_scope`` (None: the whole table); ``members``: the valid audience rows of the
    contacts in ``members_scope`` (None: everyone), of ``members_in`` built.
    """

    candidates: pl.DataFrame
    features: Split
    features_scope: pl.Series | None
    members: pl.DataFrame
    members_scope: pl.Series | None
    members_in: int
    members_rejected: int


def gold_rows(
    metrics: pl.DataFrame,
    current: pl.DataFrame,
    contacts: pl.LazyFrame,
    keys: pl.Series | None,
    config: PipelineConfig,
    *,
    checker: Checker,
    score: Callable[[pl.LazyFrame], pl.LazyFrame] = score_rfm,
) -> GoldRows:
    """Score, check and assign segments: the affected contacts' ``metrics`` (every contact's
    when ``keys`` is None) against the ``current`` features table. ``score`` adds the RFM
    scores (by default ranking the rows given against each other)."""
    if keys is None:
        population = metrics
    else:
        kept = current.filter(~values_in("contact_key", keys)).drop(SCORE_COLUMNS)
        population = pl.concat([kept, metrics], how="vertical")
    # Quintiles rank every contact against the others: always scored over the whole table.
    scored = score(population.lazy()).collect()
    rescored, _ = changed_rows(scored.lazy(), current.lazy(), keys=["contact_key"])
    candidates = (
        scored
        if keys is None
        else scored.filter(
            values_in("contact_key", keys)
            | values_in("contact_key", rescored.select("contact_key").collect().to_series())
        )
    )
    checked = checker.check(candidates, CustomerFeatures, table=FEATURES)
    rejected_keys = candidates.join(checked.valid, on="contact_key", how="anti").get_column(
        "contact_key"
    )
    features_scope = (
        None
        if keys is None
        else candidates.get_column("contact_key").append(
            current.filter(values_in("contact_key", keys)).get_column("contact_key")
        )
    )
    # The audience of every contact whose features or contact row may have changed.
    changed_keys = (
        None
        if keys is None
        else pl.concat([keys, candidates.get_column("contact_key"), rejected_keys]).unique()
    )
    members = audience_members(
        checked.valid.lazy(),
        contacts
        if changed_keys is None
        else contacts.filter(values_in("contact_key", changed_keys)),
        config.segments,
    ).collect()
    checked_members = checker.check(members, AudienceMember, table=AUDIENCE)
    return GoldRows(
        candidates=candidates,
        features=checked,
        features_scope=features_scope,
        members=checked_members.valid.select(list(AUDIENCE_SCHEMA)),
        members_scope=changed_keys,
        members_in=members.height,
        members_rejected=checked_members.rejected,
    )


def commit_gold(lake: Lake, built: GoldRows, *, where: pl.Expr | None = None) -> None:
    """Write the features, then the audience (changed keys only; ``where``: the bucket of
    contacts ``built`` holds, see :func:`tasks.engine.delta.sync_table`)."""
    if where is not None:
        replace_on_new_schema(lake, FEATURES, built.features.valid)
        replace_on_new_schema(lake, AUDIENCE, built.members)
    sync_table(
        lake, FEATURES, built.features.valid, keys=["contact_key"], scope=built.features_scope,
        where=where,
    )  # fmt: skip
    sync_table(
        lake, AUDIENCE, built.members, keys=["segment", "contact_key"],
        scope=built.members_scope, scope_column="contact_key", where=where,
    )  # fmt: skip


def _scan_or_empty(lake: Lake, table: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    return lake.scan(table) if lake.exists(table) else pl.LazyFrame(schema=schema)


def _gold_totals(
    lake: Lake, config: PipelineConfig, checker: Checker, *, tables: list[TableReport] | None = None
) -> StageReport:
    """Gold's report: this run's balances and the tables' totals (for volume metrics)."""
    rejected = sum(t.quarantined for t in tables or [] if t.table == FEATURES)
    sizes = {s.name: 0 for s in config.segments}
    if lake.exists(AUDIENCE):
        counts = lake.scan(AUDIENCE).group_by("segment").len().collect()
        sizes.update({str(segment): int(n) for segment, n in counts.iter_rows()})
    volume: list[Metric] = [
        {"table": FEATURES, "source": None, "rows": lake.count(FEATURES), "quarantined": rejected},
        *(
            {"table": AUDIENCE, "segment": name, "rows": size, "quarantined": 0}
            for name, size in sorted(sizes.items())
        ),
    ]
    if tables is None:
        tables = [TableReport(FEATURES, 0, 0, 0, 0), TableReport(AUDIENCE, 0, 0, 0, 0)]
    return StageReport(
        tables=tables,
        metrics=volume,
        rule_counts=checker.write(lake, stage="gold"),
        audience_sizes=sizes,
    )

"""Transform tasks: the Prefect face of the engine in :mod:`tasks.engine`.

Each task is a thin wrapper over one stage function: it opens the configured lake, takes
Prefect's run logger and calls the function, which holds all the logic (the benchmark calls
the same functions without Prefect). The ``transform`` flow runs them in this order:

1. :func:`stage_sources` - bronze -> ``silver/staged_<role>``, one :func:`stage_role` task per
   role on the configured task runner (:mod:`tasks.engine.roles`, :mod:`tasks.runners`);
2. :func:`build_silver` - staging -> silver (:mod:`tasks.engine.silver`); a full build in
   buckets of people runs one :func:`silver_bucket` task per bucket on the same task runner
   and commits their results in bucket order (:mod:`tasks.engine.silver_buckets`);
3. :func:`build_gold` - silver -> gold (:mod:`tasks.engine.gold`); a full build in buckets
   runs its two passes as :func:`gold_metrics` and :func:`gold_bucket` tasks on the runner;
4. :func:`commit_transform_state` - records what was built from (:mod:`tasks.engine.state`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import Any, TypeVar

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import TaskRunner

from tasks.core.config import PipelineConfig
from tasks.core.tables import ROLES
from tasks.engine.gold import (
    GoldBucket,
    GoldRunners,
    build_gold_tables,
    gold_bucket_metrics,
    gold_bucket_rows,
)
from tasks.engine.reports import SilverReport, StageReport, StagingReport
from tasks.engine.roles import RoleStaged, prepare_quarantine, stage_one_role, staging_report
from tasks.engine.silver import build_silver_tables
from tasks.engine.silver_buckets import (
    BucketBuilt,
    RunBuckets,
    SilverBucket,
    compute_silver_bucket,
)
from tasks.engine.state import record_transform_state
from tasks.reports import TableReport
from tasks.resources import open_lake
from tasks.runners import units_ahead

_Job = TypeVar("_Job")
_Result = TypeVar("_Result")


@task(name="stage-role", cache_policy=NO_CACHE, task_run_name="stage-{role}")
def stage_role(
    config: PipelineConfig, role: str, *, run_id: str, now: datetime, full_refresh: bool = False
) -> RoleStaged:
    """bronze -> ``silver/staged_<role>`` for one role, wherever the task runner runs it."""
    return stage_one_role(
        open_lake(),
        config,
        role,
        run_id=run_id,
        now=now,
        full_refresh=full_refresh,
        logger=get_run_logger(),
    )


def stage_sources(
    runner: TaskRunner[Any],
    config: PipelineConfig,
    *,
    run_id: str,
    now: datetime,
    full_refresh: bool = False,
) -> StagingReport:
    """bronze -> ``silver/staged_<role>``: every role as its own :func:`stage_role` task on
    ``runner``; waits for all, then combines their reports.

    Every role is waited for before a failure is raised, so a failed role never leaves another
    cut off mid-commit by the runner shutting down.
    """
    prepare_quarantine(open_lake())
    futures = {
        role: runner.submit(
            stage_role,
            parameters={
                "config": config,
                "role": role,
                "run_id": run_id,
                "now": now,
                "full_refresh": full_refresh,
            },
        )
        for role in ROLES
    }
    wait(list(futures.values()))
    return staging_report({role: future.result() for role, future in futures.items()})


@task(name="silver-bucket", cache_policy=NO_CACHE, task_run_name="silver-bucket-{job.bucket}")
def silver_bucket(job: SilverBucket) -> BucketBuilt:
    """One bucket of a full silver build, wherever the task runner runs it: read-only on the
    lake, its results left in the build's scratch folder (:mod:`tasks.engine.silver_buckets`)."""
    return compute_silver_bucket(open_lake(), job, logger=get_run_logger())


def buckets_on(runner: TaskRunner[Any], *, ahead: int | None = None) -> RunBuckets:
    """Run the buckets of a full silver build as :func:`silver_bucket` tasks on ``runner``,
    their results yielded in bucket order as each is done (``ahead``: see :func:`_in_order`).

    Stopped early (a bucket failed, or a commit did), it waits for every bucket still running
    before returning, so none writes to a scratch folder the build is removing.
    """

    def run(jobs: Sequence[SilverBucket]) -> Iterator[BucketBuilt]:
        return _in_order(runner, silver_bucket, jobs, ahead=ahead)

    return run


def _in_order(
    runner: TaskRunner[Any],
    unit: Task[[_Job], _Result],
    jobs: Sequence[_Job],
    *,
    ahead: int | None = None,
) -> Iterator[_Result]:
    """Submit ``unit`` for the jobs; yield the results in job order as each is done.

    ``ahead``: how many units may be submitted beyond the result the caller is committing
    (None: every job at once). Units that run in the flow's process (the inline and thread
    runners) get the runner's own width, so a bucket is not computed while the previous one
    is committed beside it: the process holds the buckets its runner runs, never one more.
    Stopped early (a unit failed, or the caller did), it waits for every unit still running,
    so none writes to a scratch folder the build is removing.
    """
    queue = iter(jobs)
    futures: list[PrefectFuture[_Result]] = []

    def submit(count: int) -> None:
        futures.extend(runner.submit(unit, parameters={"job": j}) for j in islice(queue, count))

    submit(len(jobs) if ahead is None else max(1, ahead))
    try:
        for done in range(len(jobs)):
            result = futures[done].result()
            yield result
            submit(1)  # the caller has committed ``result``
    finally:
        wait(futures)


def build_silver(
    runner: TaskRunner[Any] | None,
    config: PipelineConfig,
    *,
    staging: StagingReport,
    run_id: str,
    now: datetime,
    as_of: datetime,
    full_refresh: bool = False,
) -> SilverReport:
    """staging -> ``silver/orders``, ``silver/events``, ``silver/contacts`` (changed keys only);
    the buckets of a full build in buckets as :func:`silver_bucket` tasks on ``runner`` (in
    this process, one after the other, if None)."""
    return build_silver_tables(
        open_lake(),
        config,
        staging=staging,
        run_id=run_id,
        now=now,
        as_of=as_of,
        full_refresh=full_refresh,
        logger=get_run_logger(),
        run_buckets=None
        if runner is None
        else buckets_on(runner, ahead=units_ahead(config.engine)),
    )


@task(name="gold-metrics", cache_policy=NO_CACHE, task_run_name="gold-metrics-{job.bucket}")
def gold_metrics(job: GoldBucket) -> int:
    """Pass 1 of a bucket of a full gold build (metrics and rank counts), wherever it runs."""
    return gold_bucket_metrics(open_lake(), job)


@task(name="gold-bucket", cache_policy=NO_CACHE, task_run_name="gold-bucket-{job.bucket}")
def gold_bucket(job: GoldBucket) -> list[TableReport]:
    """Pass 2 of a bucket of a full gold build (scores, checks, audience), wherever it runs."""
    return gold_bucket_rows(open_lake(), job, logger=get_run_logger())


def gold_on(runner: TaskRunner[Any], *, ahead: int | None = None) -> GoldRunners:
    """Both passes of a full gold build in buckets as tasks on ``runner`` (``ahead``: of the
    second pass, whose results are committed one by one, see :func:`_in_order`)."""
    return GoldRunners(
        metrics=lambda jobs: _in_order(runner, gold_metrics, jobs),
        rows=lambda jobs: _in_order(runner, gold_bucket, jobs, ahead=ahead),
    )


def build_gold(
    runner: TaskRunner[Any] | None,
    config: PipelineConfig,
    *,
    as_of: datetime,
    run_id: str,
    now: datetime | None = None,
    contact_keys: Sequence[str] | None = None,
) -> StageReport:
    """silver -> ``gold/customer_features`` and ``gold/audience_members`` (by segment), for
    ``contact_keys`` (None: every contact); the buckets of a full build in buckets as tasks on
    ``runner`` (in this process, one after the other, if None)."""
    return build_gold_tables(
        open_lake(),
        config,
        as_of=as_of,
        run_id=run_id,
        now=now or as_of,
        contact_keys=contact_keys,
        logger=get_run_logger(),
        runners=None if runner is None else gold_on(runner, ahead=units_ahead(config.engine)),
    )


@task(cache_policy=NO_CACHE)
def commit_transform_state(state: dict[str, str], *, run_id: str) -> bool:
    """Record the transform state once gold is built (an empty commit carrying it)."""
    return record_transform_state(open_lake(), state, run_id=run_id)

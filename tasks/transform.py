"""Transform tasks: the Prefect face of the engine in :mod:`tasks.engine`.

Each task is a thin wrapper over one stage function: it opens the configured lake, takes
Prefect's run logger and calls the function, which holds all the logic (the benchmark calls
the same functions without Prefect). The ``transform`` flow runs them in this order:

1. :func:`stage_sources` - bronze -> ``silver/staged_<role>`` (:mod:`tasks.engine.staging`);
2. :func:`build_silver` - staging -> silver (:mod:`tasks.engine.silver`);
3. :func:`build_gold` - silver -> gold (:mod:`tasks.engine.gold`);
4. :func:`commit_transform_state` - records what was built from (:mod:`tasks.engine.state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.core.config import PipelineConfig
from tasks.engine.gold import build_gold_tables
from tasks.engine.reports import SilverReport, StageReport, StagingReport
from tasks.engine.silver import build_silver_tables
from tasks.engine.staging import stage_bronze
from tasks.engine.state import record_transform_state
from tasks.resources import open_lake


@task(cache_policy=NO_CACHE)
def stage_sources(
    config: PipelineConfig, *, run_id: str, now: datetime, full_refresh: bool = False
) -> StagingReport:
    """bronze -> ``silver/staged_<role>``: normalise and check only rows bronze gained or lost."""
    return stage_bronze(
        open_lake(),
        config,
        run_id=run_id,
        now=now,
        full_refresh=full_refresh,
        logger=get_run_logger(),
    )


@task(cache_policy=NO_CACHE)
def build_silver(
    config: PipelineConfig,
    *,
    staging: StagingReport,
    run_id: str,
    now: datetime,
    as_of: datetime,
    full_refresh: bool = False,
) -> SilverReport:
    """staging -> ``silver/orders``, ``silver/events``, ``silver/contacts`` (changed keys only)."""
    return build_silver_tables(
        open_lake(),
        config,
        staging=staging,
        run_id=run_id,
        now=now,
        as_of=as_of,
        full_refresh=full_refresh,
        logger=get_run_logger(),
    )


@task(cache_policy=NO_CACHE)
def build_gold(
    config: PipelineConfig,
    *,
    as_of: datetime,
    run_id: str,
    now: datetime | None = None,
    contact_keys: Sequence[str] | None = None,
) -> StageReport:
    """silver -> ``gold/customer_features`` and ``gold/audience_members`` (by segment), for
    ``contact_keys`` (None: every contact)."""
    return build_gold_tables(
        open_lake(),
        config,
        as_of=as_of,
        run_id=run_id,
        now=now or as_of,
        contact_keys=contact_keys,
        logger=get_run_logger(),
    )


@task(cache_policy=NO_CACHE)
def commit_transform_state(state: dict[str, str], *, run_id: str) -> bool:
    """Record the transform state once gold is built (an empty commit carrying it)."""
    return record_transform_state(open_lake(), state, run_id=run_id)

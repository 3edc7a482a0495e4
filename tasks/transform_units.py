"""The transform's independent units as Prefect tasks, for any task runner (:mod:`tasks.runners`).

Today a unit is one staging role: ``bronze -> silver/staged_<role>`` for ``contacts``,
``enrichment``, ``orders`` and ``events`` touches only its own staging table, its sources' bronze
and (appends only) ``ops/quarantine``, so the roles run side by side - on threads, or on the
worker processes of a Dask cluster - and their reports are combined into the one
:class:`~tasks.transform.StagingReport` silver is built from. Buckets of people will be units
of the same kind, submitted to the same runner.

A unit's parameters are small and safe to pickle (the validated config, a role name, the run id
and clock); the lake adapter and any secret are rebuilt from the environment of the process
that runs it (:func:`tasks.resources.open_lake`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import TaskRunner

from tasks.connectors.lake import Lake
from tasks.core.canonical import NormaliseOptions
from tasks.core.config import PipelineConfig
from tasks.core.contracts import (
    QUARANTINE_SCHEMA,
    ContactCandidate,
    Contract,
    EnrichmentCandidate,
    EventCandidate,
    order_contract,
)
from tasks.quarantine import write_quarantine_records
from tasks.resources import open_lake
from tasks.transform import (
    QUARANTINE,
    ROLE_TABLES,
    ROLES,
    Checker,
    Logger,
    StagingReport,
    _stage_role,
)
from tasks.volume import Metric

QUARANTINE_CREATED = "transform-quarantine-created"
"""Batch id of the empty commit that creates ``ops/quarantine`` before units run side by side."""


@dataclass(frozen=True)
class RoleStaged:
    """What staging one role did: small, picklable, combined by :func:`staging_report`."""

    role: str
    mode: str
    checked: int
    rejected: int
    live: dict[str, int]
    quarantined: dict[str, int]
    losses: list[dict[str, Any]] = field(default_factory=list)
    rule_counts: list[dict[str, Any]] = field(default_factory=list)


def role_contract(config: PipelineConfig, role: str) -> Contract:
    """The contract a role's canonical rows must meet to be staged."""
    contracts: dict[str, Contract] = {
        "contacts": ContactCandidate,
        "enrichment": EnrichmentCandidate,
        "orders": order_contract(config.transform.currency.to_reporting()),
        "events": EventCandidate,
    }
    return contracts[role]


def stage_one_role(
    lake: Lake,
    config: PipelineConfig,
    role: str,
    *,
    run_id: str,
    now: datetime,
    full_refresh: bool,
    logger: Logger,
) -> RoleStaged:
    """Bring ``silver/staged_<role>`` up to bronze (see :func:`tasks.transform.stage_bronze`)."""
    checker = Checker(run_id=run_id, now=now, logger=logger)
    options = NormaliseOptions(default_phone_region=config.transform.default_phone_region)
    staged = _stage_role(
        lake,
        config,
        role,
        contract=role_contract(config, role),
        checker=checker,
        options=options,
        full_refresh=full_refresh,
        logger=logger,
    )
    return RoleStaged(
        role=role,
        mode=staged.mode,
        checked=staged.checked,
        rejected=staged.rejected,
        live=dict(staged.live),
        quarantined=dict(staged.quarantined),
        losses=[] if staged.losses is None else staged.losses.to_dicts(),
        rule_counts=checker.write(lake, stage=f"staging-{role}"),
    )


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


def prepare_quarantine(lake: Lake) -> None:
    """Create ``ops/quarantine`` (empty) if missing, before units that append to it run.

    Appends by concurrent writers to an existing Delta table commit one after the other, but two
    writers *creating* the table at once conflict; creating it first, on every runner, keeps
    the tables of a parallel run identical to those of an inline one.
    """
    if not lake.exists(QUARANTINE):
        write_quarantine_records(
            lake, pl.DataFrame(schema=QUARANTINE_SCHEMA), batch_id=QUARANTINE_CREATED
        )


def stage_roles(
    runner: TaskRunner[Any],
    config: PipelineConfig,
    *,
    run_id: str,
    now: datetime,
    full_refresh: bool = False,
) -> StagingReport:
    """Stage every role as its own task on ``runner``; wait for all, then combine their reports.

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


def staging_report(staged: Mapping[str, RoleStaged]) -> StagingReport:
    """One :class:`StagingReport` from the roles' reports, in the order of ``ROLES``."""
    ordered = [staged[role] for role in ROLES]
    metrics: list[Metric] = [
        {
            "table": ROLE_TABLES[result.role],
            "source": source,
            "rows": rows,
            "quarantined": result.quarantined.get(source, 0),
        }
        for result in ordered
        for source, rows in sorted(result.live.items())
    ]
    rules = [rule for result in ordered for rule in result.rule_counts]
    return StagingReport(
        checked={r.role: r.checked for r in ordered},
        rejected={r.role: r.rejected for r in ordered},
        modes={r.role: r.mode for r in ordered},
        metrics=metrics,
        rule_counts=sorted(rules, key=_rule_order),
        losses=[loss for result in ordered for loss in result.losses],
    )


def _rule_order(rule: Mapping[str, Any]) -> tuple[int, str, str, str, str]:
    """Most frequent first, then by name: the order one combined count would have."""
    return (
        -int(rule["rows"]),
        str(rule["table"]),
        str(rule["source"]),
        str(rule["rule"]),
        str(rule["column"]),
    )

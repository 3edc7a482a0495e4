"""Stage 1 as units: each role's staging on its own, and the report that combines them.

A *unit* is one role: ``bronze -> silver/staged_<role>`` for ``contacts``, ``enrichment``,
``orders`` and ``events`` touches only its own staging table, its sources' bronze and (appends
only) ``ops/quarantine``. So the roles can run one after the other (:func:`stage_bronze`, what
the benchmark and the fault tests call) or side by side as Prefect tasks on threads or the
worker processes of a Dask cluster (:func:`tasks.transform.stage_sources`) - the same
:func:`stage_one_role` either way, and the same :func:`staging_report` from their results.
Buckets of people will be units of the same kind.

A unit's result (:class:`RoleStaged`) is small and picklable; its inputs are the validated
config, a role name, the run id and clock - the lake and any secret are rebuilt from the
environment of the process that runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

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
from tasks.core.tables import QUARANTINE, ROLE_TABLES, ROLES
from tasks.engine.checks import Checker
from tasks.engine.reports import Logger, Metric, StagingReport
from tasks.engine.staging import stage_role
from tasks.quarantine import write_quarantine_records

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
    """Bring ``silver/staged_<role>`` up to the current bronze of the role's sources."""
    checker = Checker(run_id=run_id, now=now, logger=logger)
    options = NormaliseOptions(default_phone_region=config.transform.default_phone_region)
    staged = stage_role(
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


def stage_bronze(
    lake: Lake,
    config: PipelineConfig,
    *,
    run_id: str,
    now: datetime,
    full_refresh: bool = False,
    logger: Logger,
) -> StagingReport:
    """Bring every role's staging log up to the current bronze of its sources, one role after
    the other in this process."""
    prepare_quarantine(lake)
    staged = {
        role: stage_one_role(
            lake, config, role, run_id=run_id, now=now, full_refresh=full_refresh, logger=logger
        )
        for role in ROLES
    }
    return staging_report(staged)

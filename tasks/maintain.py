"""Prefect task wrappers for lake maintenance: one table per task run.

The work (compaction, Z-order, checkpoint, vacuum, and how it stays safe next to writers) is
:func:`tasks.connectors.lake.maintain_table`; deleting expired rows is :mod:`tasks.retention`;
this module picks the tables and the settings.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.lake import Lake, TableMaintenance, maintain_table
from tasks.core.config import PipelineConfig
from tasks.core.config_maintenance import MaintenanceConfig
from tasks.core.retention import RetentionRule, retention_rules
from tasks.resources import open_lake
from tasks.retention import TableExpiry, expire_table, prune_staging_logs
from tasks.retries import retry_unless_permanent


def tables_to_maintain(lake: Lake, settings: MaintenanceConfig) -> list[str]:
    """The configured tables that exist, or every table of the lake when none is configured."""
    present = lake.tables()
    if not settings.tables:
        return present
    return [table for table in settings.tables if table in present]


def rules_for(tables: list[str], config: PipelineConfig) -> list[RetentionRule]:
    """The retention rules of ``tables`` (catalogue defaults, then ``maintenance.retention``)."""
    return retention_rules(tables, config.maintenance.retention, config.sources)


@task(
    retries=1,
    retry_delay_seconds=[30],
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,
    task_run_name="expire-{rule.table}",
)
def expire_lake_table(rule: RetentionRule, *, now: datetime) -> list[TableExpiry]:
    """Delete the rows of ``rule.table`` older than its retention at ``now`` (and, for an
    events source, its expired events in silver)."""
    return expire_table(open_lake(), rule, now=now)


@task(
    retries=1,
    retry_delay_seconds=[30],
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,
)
def prune_staging(tables: list[str]) -> list[TableExpiry]:
    """Remove built removals from the staging logs among ``tables`` (see
    :func:`prune_staging_logs`)."""
    return prune_staging_logs(open_lake(), tables=tables)


@task(
    retries=1,
    retry_delay_seconds=[30],
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,
    task_run_name="maintain-{table}",
)
def maintain_lake_table(
    table: str, settings: MaintenanceConfig, *, retention_hours: int | None = None
) -> TableMaintenance:
    """Compact or Z-order, checkpoint and vacuum ``table`` as ``settings`` say.

    ``retention_hours`` overrides the configured vacuum retention for this run.
    """
    return maintain_table(
        open_lake(),
        table,
        z_order=settings.z_order.get(table, ()),
        target_size=settings.target_size,
        retention_hours=settings.retention_hours if retention_hours is None else retention_hours,
        checkpoint=settings.checkpoint,
        max_attempts=settings.max_attempts,
    )

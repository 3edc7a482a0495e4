"""``maintain`` flow: expire old rows, then compact, Z-order, checkpoint and vacuum the tables.

Expiry first (:mod:`tasks.retention`): each table's rows older than its retention are deleted
and the staging logs are pruned of records bronze no longer holds, so the compaction that
follows rewrites the smaller tables and vacuum later removes the files the deletes replaced.

Scheduled daily (``prefect.yaml``: ``maintain-daily``) away from the hourly pipeline, but safe
at any time: a compaction that loses its commit race to a writer is retried or skipped, and a
lake write that loses its race to a compaction is rerun (see
:mod:`tasks.connectors.lake.maintenance`). The run page shows each table's rows expired and
files and bytes before and after (artifact ``lake-maintenance``); ``ops/runs`` records the
rows each delete removed per table and the run's totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger

from flows.audit import audited
from flows.common import load_config, table_artifact
from tasks.connectors.lake import TableMaintenance, TableNotFoundError
from tasks.core.config import PipelineConfig
from tasks.core.tables import STAGED
from tasks.errors import ConfigError, LakeError
from tasks.maintain import (
    expire_lake_table,
    maintain_lake_table,
    prune_staging,
    rules_for,
    tables_to_maintain,
)
from tasks.resources import open_lake
from tasks.retention import TableExpiry

MIB = 1024 * 1024


@dataclass(frozen=True)
class MaintainReport:
    """What a maintenance run did: one entry per table maintained, the rows expired per table
    (``rows_expired``: their total), and the tables that failed (table -> error)."""

    tables: list[TableMaintenance]
    failed: dict[str, str] = field(default_factory=dict)
    expired: list[TableExpiry] = field(default_factory=list)
    rows_expired: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One row per table for the artifact and the CLI."""
        expired: dict[str, TableExpiry] = {}
        for e in self.expired:  # one table may lose rows to several rules (silver/events)
            seen = expired.get(e.table)
            expired[e.table] = e if seen is None else replace(seen, rows=seen.rows + e.rows)
        return [
            {
                "table": t.table,
                "rows_expired": expired[t.table].rows if t.table in expired else 0,
                "expired_before": _cutoff(expired.get(t.table)),
                "files_before": t.before.files,
                "files_after": t.after.files,
                "mib_before": round(t.before.bytes / MIB, 2),
                "mib_after": round(t.after.bytes / MIB, 2),
                "optimized": t.optimized or "-",
                "z_order": ", ".join(t.z_order) or "-",
                "vacuumed_files": t.vacuumed_files,
                "note": t.skipped or "",
            }
            for t in self.tables
        ]


def _cutoff(expiry: TableExpiry | None) -> str:
    if expiry is None:
        return "-"
    if expiry.cutoff is None:
        return "records bronze no longer holds"
    return f"{expiry.cutoff:%Y-%m-%d %H:%M} UTC ({expiry.column}, {expiry.days} d)"


def maintenance_summary(report: MaintainReport) -> str:
    """Plain aligned text: per table files and size before -> after."""
    lines = [f"{'table':<32} {'files':>15} {'MiB':>19}  done"]
    for row in report.rows():
        files = f"{row['files_before']} -> {row['files_after']}"
        size = f"{row['mib_before']:.2f} -> {row['mib_after']:.2f}"
        done = row["optimized"] + (f" by {row['z_order']}" if row["z_order"] != "-" else "")
        if row["rows_expired"]:
            done = f"{row['rows_expired']} row(s) expired, " + done
        if row["vacuumed_files"]:
            done += f", {row['vacuumed_files']} file(s) vacuumed"
        if row["note"]:
            done += f" ({row['note']})"
        lines.append(f"{row['table']:<32} {files:>15} {size:>19}  {done}")
    lines.extend(f"{table:<32} FAILED: {error}" for table, error in report.failed.items())
    return "\n".join(lines)


@flow(name="maintain", log_prints=True)
@audited
def maintain(
    config_path: str | None = None,
    tables: list[str] | None = None,
    retention_hours: int | None = None,
    expire: bool = True,
) -> MaintainReport:
    """Delete expired rows, then compact (or Z-order), checkpoint and vacuum the lake's tables.

    Args:
        config_path: The pipeline.yaml to run (empty: the AUDIENCE_LAKE_CONFIG setting).
        tables: Only these tables, e.g. ["gold/audience_members"] (empty: the configured ones,
            or every table).
        retention_hours: Vacuum retention for this run (empty: maintenance.retention_hours).
        expire: Delete rows older than their table's retention first (maintenance.retention
            and the catalogue's defaults); false: only compact and vacuum.
    """
    config = load_config(config_path)
    settings = config.maintenance
    if retention_hours is not None and retention_hours < 0:
        raise ConfigError(f"maintain: retention_hours must be 0 or more, not {retention_hours}")
    lake = open_lake()
    if tables:
        missing = sorted(set(tables) - set(lake.tables()))
        if missing:
            raise TableNotFoundError(f"maintain: no table(s) {missing} in lake {lake.root}")
        settings = settings.model_copy(update={"tables": list(dict.fromkeys(tables))})
    logger = get_run_logger()
    done: list[TableMaintenance] = []
    failed: dict[str, str] = {}
    selected = tables_to_maintain(lake, settings)
    expired = expire_rows(config, selected, failed) if expire else []
    for table in selected:
        try:
            done.append(maintain_lake_table(table, settings, retention_hours=retention_hours))
        except LakeError as exc:
            logger.error("maintain %s failed: %s", table, exc)
            failed[table] = str(exc)
    report = MaintainReport(
        tables=done, failed=failed, expired=expired, rows_expired=sum(e.rows for e in expired)
    )
    table_artifact(
        "lake-maintenance",
        report.rows(),
        "Rows expired, data files and size per table before and after compaction and vacuum",
    )
    if failed:
        raise LakeError(f"maintenance failed for {len(failed)} table(s): {', '.join(failed)}")
    return report


def expire_rows(
    config: PipelineConfig, tables: list[str], failed: dict[str, str]
) -> list[TableExpiry]:
    """Delete the expired rows of ``tables``, then prune the staging logs among them; a table
    that fails is added to ``failed`` (its maintenance still runs)."""
    logger = get_run_logger()
    now = datetime.now(UTC)
    expired: list[TableExpiry] = []
    for rule in rules_for(tables, config):
        if rule.warning:
            logger.warning("retention: %s", rule.warning)
        try:
            expiries = expire_lake_table(rule, now=now)
        except LakeError as exc:
            logger.error("retention: %s failed: %s", rule.table, exc)
            failed[rule.table] = str(exc)
            continue
        for expiry in expiries:
            logger.info(
                "retention: %s: %d row(s) older than %d days (%s) deleted",
                expiry.table,
                expiry.rows,
                rule.days,
                expiry.column,
            )
        expired.extend(expiries)
    if any(table in STAGED.values() for table in tables):
        expired.extend(prune_staging(tables))
    return expired

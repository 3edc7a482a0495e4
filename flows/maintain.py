"""``maintain`` flow: compact, Z-order, checkpoint and vacuum the lake's tables.

Scheduled daily (``prefect.yaml``: ``maintain-daily``) away from the hourly pipeline, but safe
at any time: a compaction that loses its commit race to a writer is retried or skipped, and a
lake write that loses its race to a compaction is rerun (see
:mod:`tasks.connectors.lake.maintenance`). The run page shows each table's files and bytes
before and after (artifact ``lake-maintenance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from flows.audit import audited
from flows.common import load_config, table_artifact
from tasks.connectors.lake import TableMaintenance, TableNotFoundError
from tasks.errors import ConfigError, LakeError
from tasks.maintain import maintain_lake_table, tables_to_maintain
from tasks.resources import open_lake

MIB = 1024 * 1024


@dataclass(frozen=True)
class MaintainReport:
    """What a maintenance run did: one entry per table maintained, and the tables that failed
    (table -> error)."""

    tables: list[TableMaintenance]
    failed: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per table for the artifact and the CLI."""
        return [
            {
                "table": t.table,
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


def maintenance_summary(report: MaintainReport) -> str:
    """Plain aligned text: per table files and size before -> after."""
    lines = [f"{'table':<32} {'files':>15} {'MiB':>19}  done"]
    for row in report.rows():
        files = f"{row['files_before']} -> {row['files_after']}"
        size = f"{row['mib_before']:.2f} -> {row['mib_after']:.2f}"
        done = row["optimized"] + (f" by {row['z_order']}" if row["z_order"] != "-" else "")
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
) -> MaintainReport:
    """Compact (or Z-order), checkpoint and vacuum the lake's tables.

    Args:
        config_path: The pipeline.yaml to run (empty: the AUDIENCE_LAKE_CONFIG setting).
        tables: Only these tables, e.g. ["gold/audience_members"] (empty: the configured ones,
            or every table).
        retention_hours: Vacuum retention for this run (empty: maintenance.retention_hours).
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
    for table in tables_to_maintain(lake, settings):
        try:
            done.append(maintain_lake_table(table, settings, retention_hours=retention_hours))
        except LakeError as exc:
            logger.error("maintain %s failed: %s", table, exc)
            failed[table] = str(exc)
    report = MaintainReport(tables=done, failed=failed)
    table_artifact(
        "lake-maintenance",
        report.rows(),
        "Data files and size per table before and after compaction and vacuum",
    )
    if failed:
        raise LakeError(f"maintenance failed for {len(failed)} table(s): {', '.join(failed)}")
    return report

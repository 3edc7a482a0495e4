"""``transform`` flow: bronze -> silver -> gold, with quarantine, row balance and volume metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger

from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.anomaly import check_volumes
from tasks.core.anomaly import VolumeAnomaly
from tasks.reports import TableReport
from tasks.transform import build_gold, build_silver, record_volumes

TOP_FAILURES = 20


@dataclass(frozen=True)
class TransformReport:
    """What a transform run did.

    ``tables``: the row balance of every silver and gold table; ``rule_counts``: quarantined
    rows per table, source, rule and column (this run's checks, most frequent first);
    ``losses``: source values normalisation could not read (set to null, row kept).
    """

    tables: list[TableReport]
    audience_sizes: dict[str, int]
    anomalies: list[VolumeAnomaly] = field(default_factory=list)
    rule_counts: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)


def default_as_of() -> datetime:
    """Midnight UTC today: features stay stable across reruns on the same day."""
    today = datetime.now(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC)


@flow(name="transform", log_prints=True)
def transform(
    config_path: str | None = None,
    full_refresh: bool = False,
    as_of: datetime | None = None,
    run_id: str | None = None,
) -> TransformReport:
    """Rebuild silver and gold from bronze.

    ``full_refresh`` is accepted for UI reruns; this version always recomputes from bronze and
    writes only what changed, so it behaves the same either way.
    """
    del full_refresh
    config = load_config(config_path)
    run_id = current_run_id(run_id)
    now = utc_now()
    silver = build_silver(config, run_id=run_id, now=now)
    gold = build_gold(config, as_of=as_of or default_as_of(), run_id=run_id, now=now)
    record_volumes([*silver.metrics, *gold.metrics], run_id=run_id, stage="transform", now=now)
    tables = [*silver.tables, *gold.tables]
    rules = [*silver.rule_counts, *gold.rule_counts]
    unbalanced = [t.table for t in tables if not t.balanced]
    if unbalanced:
        get_run_logger().error("row balance broken (rows lost or invented) in %s", unbalanced)
    table_artifact(
        "transform-balance",
        [{**asdict(t), "balanced": t.balanced} for t in tables],
        "Row balance: rows_in = rows_out + quarantined + duplicates (merged)",
    )
    table_artifact(
        "quarantine-top-failures",
        sorted(rules, key=lambda r: -int(r["rows"]))[:TOP_FAILURES],
        "Rows quarantined this run, by table, source, rule and column (ops/quarantine)",
    )
    table_artifact(
        "normalisation-losses",
        silver.losses,
        "Source values that could not be normalised (set to null; the row was kept)",
    )
    table_artifact(
        "audience-sizes",
        [{"segment": k, "members": v} for k, v in gold.audience_sizes.items()],
        "Publishable members per segment",
    )
    anomalies = check_volumes(config, run_id=run_id, now=now)
    return TransformReport(
        tables=tables,
        audience_sizes=gold.audience_sizes,
        anomalies=anomalies,
        rule_counts=rules,
        losses=silver.losses,
    )

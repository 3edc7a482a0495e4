"""``transform`` flow: bronze -> silver -> gold, with quarantine, row balance and volume metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger

from flows.audit import audited
from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.anomaly import check_volumes
from tasks.core.anomaly import VolumeAnomaly
from tasks.lineage import materialise_tables
from tasks.reports import TableReport
from tasks.resources import open_lake
from tasks.runners import open_task_runner
from tasks.transform import build_gold, build_silver, commit_transform_state, stage_sources
from tasks.volume import record_volumes

TOP_FAILURES = 20


@dataclass(frozen=True)
class TransformReport:
    """What a transform run did.

    ``tables``: the row balance of every silver and gold table; ``rule_counts``: quarantined
    rows per table, source, rule and column (this run's checks, most frequent first);
    ``run_id``: what its rows were stamped with; ``losses``: source values normalisation
    could not read (set to null, row kept);
    ``mode``: ``full``, ``incremental`` or ``unchanged`` (silver); ``contacts_rebuilt``: the
    contacts gold recomputed (None: all of them); ``staging``: per role, ``full``,
    ``incremental`` or ``unchanged``.
    """

    run_id: str
    tables: list[TableReport]
    audience_sizes: dict[str, int]
    anomalies: list[VolumeAnomaly] = field(default_factory=list)
    rule_counts: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "full"
    contacts_rebuilt: int | None = None
    staging: dict[str, str] = field(default_factory=dict)


def default_as_of() -> datetime:
    """Midnight UTC today: features stay stable across reruns on the same day."""
    today = datetime.now(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC)


@flow(name="transform", log_prints=True)
@audited
def transform(
    config_path: str | None = None,
    full_refresh: bool = False,
    as_of: datetime | None = None,
) -> TransformReport:
    """Bring silver and gold up to date with bronze.

    Incremental: only rows bronze gained or lost since the last run are normalised and checked,
    and only the people, orders and events they affect are rebuilt and rewritten (see
    :mod:`tasks.engine`). The first run with a new ``as_of`` (default: midnight UTC today)
    recomputes every contact's time-relative features. ``full_refresh`` rebuilds everything
    from bronze and yields the same tables. Staging runs one task per role, and a full
    silver build in buckets of people one task per bucket, on the task runner ``engine`` in
    pipeline.yaml chooses (inline, threads, or a Dask cluster).

    Args:
        config_path: The pipeline.yaml to run (empty: the AUDIENCE_LAKE_CONFIG setting).
        full_refresh: Rebuild silver and gold from all of bronze instead of from what changed.
        as_of: The moment time-relative features are computed at (empty: midnight UTC today).
    """
    config = load_config(config_path)
    run_id = current_run_id()
    now = utc_now()
    as_of = as_of or default_as_of()
    # Independent units (staging roles, the buckets of full silver and gold builds) run on the
    # configured task runner (engine in pipeline.yaml).
    with open_task_runner(config.engine) as runner:
        staging = stage_sources(runner, config, run_id=run_id, now=now, full_refresh=full_refresh)
        silver = build_silver(
            runner,
            config,
            staging=staging,
            run_id=run_id,
            now=now,
            as_of=as_of,
            full_refresh=full_refresh,
        )
        gold = build_gold(
            runner, config, as_of=as_of, run_id=run_id, now=now, contact_keys=silver.contact_keys
        )
    if silver.state is not None:
        commit_transform_state(silver.state, run_id=run_id)
    record_volumes(
        [*staging.metrics, *silver.metrics, *gold.metrics],
        run_id=run_id,
        stage="transform",
        now=now,
    )
    tables = [*silver.tables, *gold.tables]
    rules = [*staging.rule_counts, *silver.rule_counts, *gold.rule_counts]
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
        staging.losses,
        "Source values that could not be normalised (set to null; the row was kept)",
    )
    table_artifact(
        "audience-sizes",
        [{"segment": k, "members": v} for k, v in gold.audience_sizes.items()],
        "Publishable members per segment",
    )
    materialise_tables(
        config,
        open_lake().root,
        {
            t.table: {"rows_out": t.rows_out, "quarantined": t.quarantined, "run_id": run_id}
            for t in tables
        },
    )
    anomalies = check_volumes(config, run_id=run_id, now=now)
    return TransformReport(
        run_id=run_id,
        tables=tables,
        audience_sizes=gold.audience_sizes,
        anomalies=anomalies,
        rule_counts=rules,
        losses=staging.losses,
        mode=silver.mode,
        contacts_rebuilt=None if silver.contact_keys is None else len(silver.contact_keys),
        staging=staging.modes,
    )

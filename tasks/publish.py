"""Publish tasks: gold audiences -> email platforms, sending only what changed.

Each audience is planned against ``ops/sync_ledger`` (what the platform last received), sent in
the platform's batch sizes, and every contact's result is merged back into the ledger, so a
failed contact is retried on the next run and a rerun on unchanged data sends nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.destinations import AudienceSink, MemberChange, open_destination
from tasks.connectors.lake import Lake
from tasks.core.config import Destination, PipelineConfig
from tasks.core.sync import LEDGER_KEYS, LEDGER_SCHEMA, plan_sync
from tasks.reports import PublishReport
from tasks.resources import open_lake
from tasks.retries import retry_unless_permanent
from tasks.transform import AUDIENCE, CONTACTS, VOLUME_METRICS

SYNC_LEDGER = "ops/sync_ledger"
LEDGER_COMMIT_EVERY = 5_000  # contacts per ledger commit: progress survives a crash


def publish_hold(lake: Lake, config: PipelineConfig) -> str | None:
    """Why publishing must wait, judged from the latest transform's volume metrics, or None.

    A source whose share of quarantined rows exceeds ``thresholds.quarantine_max_ratio`` means
    a broken upstream load; publishing from it could empty or corrupt a mailing list.
    """
    if not lake.exists(VOLUME_METRICS):
        return None
    metrics = lake.scan(VOLUME_METRICS).filter(pl.col("source").is_not_null())
    latest = metrics.select(pl.col("measured_at").max()).collect().item()
    if latest is None:
        return None
    limit = config.thresholds.quarantine_max_ratio
    bad = (
        metrics.filter(pl.col("measured_at") == latest)
        .group_by("source")
        .agg(pl.col("rows").sum(), pl.col("quarantined").sum())
        .with_columns((pl.col("quarantined") / (pl.col("rows") + pl.col("quarantined"))).alias("r"))
        .filter(pl.col("r") > limit)
        .sort("source")
        .collect()
    )
    if bad.is_empty():
        return None
    worst = ", ".join(f"{r['source']} {r['r']:.0%}" for r in bad.iter_rows(named=True))
    return f"quarantined share above {limit:.0%}: {worst}"


def _ledger(lake: Lake) -> pl.LazyFrame:
    if lake.exists(SYNC_LEDGER):
        return lake.scan(SYNC_LEDGER)
    return pl.LazyFrame(schema=LEDGER_SCHEMA)


@task(
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_permanent,
    cache_policy=NO_CACHE,
    task_run_name="publish-{segment}",
)
def publish_audience(
    destination_name: str,
    destination: Destination,
    segment: str,
    *,
    run_id: str,
    dry_run: bool = False,
    hold: str | None = None,
) -> PublishReport:
    """Send the changes of one segment's audience to one destination list."""
    logger = get_run_logger()
    lake = open_lake()
    audience = destination.audiences[segment]
    members = lake.scan(AUDIENCE).filter(pl.col("segment") == segment)
    member_count = members.select(pl.len()).collect().item()
    plan = plan_sync(
        members,
        lake.scan(CONTACTS),
        _ledger(lake),
        destination=destination_name,
        audience=audience,
    ).collect()
    base = dict(
        destination=destination_name, segment=segment, audience=audience, members=member_count
    )
    if hold is not None or dry_run:
        logger.warning("publish %s/%s not sent: %s", destination_name, segment, hold or "dry run")
        return PublishReport(
            **base, planned=plan.height, sent=0, failed=0, unsubscribed=0, held=hold,
            dry_run=dry_run,
        )  # fmt: skip
    sink = open_destination(destination)
    try:
        sent, failed, unsubscribed, errors = _send_and_record(
            lake, sink, plan, destination_name=destination_name, segment=segment,
            audience=audience, run_id=run_id,
        )  # fmt: skip
    finally:
        sink.close()
    logger.info(
        "publish %s/%s -> %s: %d sent (%d unsubscribed), %d failed",
        destination_name, segment, audience, sent, unsubscribed, failed,
    )  # fmt: skip
    return PublishReport(
        **base, planned=plan.height, sent=sent, failed=failed, unsubscribed=unsubscribed,
        errors=tuple(errors),
    )  # fmt: skip


def _send_and_record(
    lake: Lake,
    sink: AudienceSink,
    plan: pl.DataFrame,
    *,
    destination_name: str,
    segment: str,
    audience: str,
    run_id: str,
) -> tuple[int, int, int, list[str]]:
    """Send the plan; merge each contact's result into the ledger every few thousand."""
    logger = get_run_logger()
    changes = [MemberChange(**row) for row in plan.drop("payload_hash").iter_rows(named=True)]
    hashes = dict(zip(plan["contact_key"], plan["payload_hash"], strict=True))
    actions = dict(zip(plan["contact_key"], plan["action"], strict=True))
    sent = failed = unsubscribed = 0
    errors: list[str] = []
    pending: list[dict[str, object]] = []
    for result in sink.send(audience, changes):
        pending.append(
            {
                "destination": destination_name,
                "audience": audience,
                "segment": segment,
                "contact_key": result.contact_key,
                "action": actions[result.contact_key],
                "payload_hash": hashes[result.contact_key],
                "status": "ok" if result.ok else "error",
                "error": result.error,
                "run_id": run_id,
                "synced_at": datetime.now(UTC),
            }
        )
        if result.ok:
            sent += 1
            unsubscribed += actions[result.contact_key] == "unsubscribe"
        else:
            failed += 1
            if len(errors) < 20:
                errors.append(f"{result.contact_key}: {result.error}")
        if len(pending) >= LEDGER_COMMIT_EVERY:
            _commit_ledger(lake, pending)
            logger.info(
                "%s/%s: %d of %d sent", destination_name, segment, sent + failed, len(changes)
            )
            pending = []
    if pending:
        _commit_ledger(lake, pending)
    return sent, failed, unsubscribed, errors


def _commit_ledger(lake: Lake, rows: list[dict[str, object]]) -> None:
    lake.merge(SYNC_LEDGER, pl.DataFrame(rows, schema=LEDGER_SCHEMA), keys=LEDGER_KEYS)

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

from tasks.anomaly import volume_anomalies
from tasks.connectors.destinations import AudienceSink, MemberChange, open_destination
from tasks.connectors.lake import Lake
from tasks.core.anomaly import audience_removals, held_segments, removal_hold, source_audiences
from tasks.core.config import Destination, PipelineConfig
from tasks.core.sync import LEDGER_KEYS, LEDGER_SCHEMA, plan_sync
from tasks.reports import PublishReport
from tasks.resources import open_lake
from tasks.retries import retry_unless_permanent
from tasks.source_runs import failed_source_holds
from tasks.transform import AUDIENCE, CONTACTS
from tasks.volume import VOLUME_METRICS

SYNC_LEDGER = "ops/sync_ledger"
LEDGER_COMMIT_EVERY = 5_000  # contacts per ledger commit: progress survives a crash


def publish_holds(lake: Lake, config: PipelineConfig) -> dict[tuple[str, str], str]:
    """Why each held audience must wait: ``(destination, segment) -> reason``.

    An audience is held (ARCHITECTURE §5.6) when, in the latest run,

    * a source feeding it had more than ``thresholds.quarantine_max_ratio`` of its rows
      quarantined (a broken upstream load could empty or corrupt the list),
    * an error-level volume anomaly hit a source, table or segment feeding it (see
      :func:`tasks.core.anomaly.audiences_fed`), or
    * its publish would take more than ``volume.removals.max_share`` of the contacts its list
      holds off the list (an opt-out storm from a broken CRM mapping is hard to undo: Mailchimp
      will not re-subscribe an unsubscribed member without their consent), or
    * a source feeding it failed in its latest ingest (:mod:`tasks.source_runs`).

    Warnings never hold. The ``override_hold`` flow parameter publishes anyway.
    """
    by_segment: dict[str, list[str]] = {}
    for segment, reason in _quarantine_holds(lake, config):
        by_segment.setdefault(segment, []).append(reason)
    for segment, reasons in held_segments(volume_anomalies(lake, config)).items():
        by_segment.setdefault(segment, []).extend(f"volume anomaly: {r}" for r in reasons)
    for segment, reason in failed_source_holds(lake, config):
        by_segment.setdefault(segment, []).append(reason)
    holds: dict[tuple[str, str], str] = {}
    for name, destination in config.destinations.items():
        for segment, audience in destination.audiences.items():
            reasons = list(by_segment.get(segment, []))
            removal = _removal_hold(
                lake, config, destination=name, segment=segment, audience=audience
            )
            if removal is not None:
                reasons.append(removal)
            if reasons:
                holds[(name, segment)] = "; ".join(reasons)
    return holds


def _quarantine_holds(lake: Lake, config: PipelineConfig) -> list[tuple[str, str]]:
    """(segment, reason) for segments fed by a source quarantined above the limit."""
    if not lake.exists(VOLUME_METRICS):
        return []
    # Transform counts only: ingest rows (bronze/) are never quarantined and run at other times.
    metrics = lake.scan(VOLUME_METRICS).filter(
        pl.col("source").is_not_null() & ~pl.col("table").str.starts_with("bronze/")
    )
    latest = metrics.select(pl.col("measured_at").max()).collect().item()
    if latest is None:
        return []
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
    held = []
    for row in bad.iter_rows(named=True):
        reason = f"quarantined share above {limit:.0%}: {row['source']} {row['r']:.0%}"
        held += [(segment, reason) for segment in source_audiences(config, row["source"])]
    return held


def _removal_hold(
    lake: Lake, config: PipelineConfig, *, destination: str, segment: str, audience: str
) -> str | None:
    if not lake.exists(SYNC_LEDGER) or not lake.exists(AUDIENCE):
        return None
    ledger = lake.scan(SYNC_LEDGER)
    members = lake.scan(AUDIENCE).filter(pl.col("segment") == segment)
    plan = plan_sync(
        members, lake.scan(CONTACTS), ledger, destination=destination, audience=audience
    )
    counts = audience_removals(plan, ledger, destination=destination, audience=audience).collect()
    on_list, removals = counts.row(0)
    return removal_hold(on_list, removals, config.volume.removals)


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

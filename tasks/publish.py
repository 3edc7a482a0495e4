"""Publish tasks: gold audiences -> email platforms, sending only what changed.

Which audiences must wait (:func:`publish_holds`) and the task that publishes one audience
(:func:`publish_audience`, a wrapper of :func:`tasks.publishing.publish_segment`: claim the
list, plan against ``ops/sync_ledger``, send batch by batch with the intent recorded first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.states import Completed

from tasks.anomaly import volume_anomalies
from tasks.connectors.lake import Lake
from tasks.core.anomaly import held_segments
from tasks.core.audience_lineage import source_audiences
from tasks.core.config import Destination, PipelineConfig, PublishConfig
from tasks.core.removal_guard import removal_hold
from tasks.core.tables import AUDIENCE, BRONZE_PREFIX, SYNC_LEDGER, VOLUME_METRICS
from tasks.publish_reads import ReadPins
from tasks.publishing import list_removals, plan_audience, publish_segment
from tasks.reports import AudiencePreview, PublishReport, publish_state_name
from tasks.resources import open_lake
from tasks.retries import retry_unless_permanent
from tasks.source_runs import failed_source_holds

__all__ = [
    "PUBLISH_EVENT_PREFIX",
    "SYNC_LEDGER",
    "emit_publish_event",
    "publish_audience",
    "publish_holds",
    "with_outcome",
]


def publish_holds(
    lake: Lake,
    config: PipelineConfig,
    *,
    pins: ReadPins | None = None,
    previews: Sequence[AudiencePreview] = (),
) -> dict[tuple[str, str], str]:
    """Why each held audience must wait: ``(destination, segment) -> reason``.

    An audience is held (docs/architecture.md, *Safety rules*) when, in the latest run,

    * a source feeding it had more than ``thresholds.quarantine_max_ratio`` of its rows
      quarantined (a broken upstream load could empty or corrupt the list),
    * an error-level volume anomaly hit a source, table or segment feeding it (see
      :func:`tasks.core.anomaly.audiences_fed`), or
    * its publish would take more than ``volume.removals.max_share`` of the contacts its list
      holds off the list, by unsubscribes and (mirror mode) removals (an opt-out storm from a
      broken CRM mapping is hard to undo: Mailchimp will not re-subscribe an unsubscribed
      member without their consent), or
    * a source feeding it failed in its latest ingest (:mod:`tasks.source_runs`).

    A hold delays subscribes, updates and removals: the unsubscribes of people who opted out are
    sent hold or no hold (:data:`tasks.core.sync.NEVER_HELD`). Warnings never hold. The
    ``override_hold`` flow parameter publishes anyway. Removals are counted on gold at ``pins``
    (taken from ``previews`` of this run's plans at those pins when given, else planned here).
    """
    by_segment: dict[str, list[str]] = {}
    for segment, reason in _quarantine_holds(lake, config):
        by_segment.setdefault(segment, []).append(reason)
    for segment, reasons in held_segments(volume_anomalies(lake, config)).items():
        by_segment.setdefault(segment, []).extend(f"volume anomaly: {r}" for r in reasons)
    for segment, reason in failed_source_holds(lake, config):
        by_segment.setdefault(segment, []).append(reason)
    counted = {(p.destination, p.segment): p.removals for p in previews}
    holds: dict[tuple[str, str], str] = {}
    for name, destination in config.destinations.items():
        for segment in destination.audiences:
            reasons = list(by_segment.get(segment, []))
            counts = counted.get((name, segment))
            removal = _removal_hold(lake, config, name, destination, segment, pins, counts)
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
        pl.col("source").is_not_null() & ~pl.col("table").str.starts_with(BRONZE_PREFIX)
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
    lake: Lake,
    config: PipelineConfig,
    name: str,
    destination: Destination,
    segment: str,
    pins: ReadPins | None,
    counts: tuple[int, int] | None = None,
) -> str | None:
    if not lake.exists(SYNC_LEDGER) or not lake.exists(AUDIENCE):
        return None
    if counts is None:
        plan = plan_audience(lake, name, destination, segment, pins=pins)
        audience = destination.audiences[segment].list_id
        counts = list_removals(lake, plan, destination=name, audience=audience)
    return removal_hold(*counts, config.volume.removals)


PUBLISH_EVENT_PREFIX = "audience-lake.publish"


def emit_publish_event(report: PublishReport, *, run_id: str) -> None:
    """``audience-lake.publish.held`` / ``.skipped`` for one audience kept back, for automations.

    The resource is the destination list (``audience-lake.audience.<destination>.<list>``),
    labelled with destination, segment and list so an automation can match any of them.
    """
    resource = {
        "prefect.resource.id": f"audience-lake.audience.{report.destination}.{report.audience}",
        "prefect.resource.name": f"{report.destination}/{report.segment}",
        "audience-lake.destination": report.destination,
        "audience-lake.segment": report.segment,
        "audience-lake.audience": report.audience,
    }
    emit_event(
        event=f"{PUBLISH_EVENT_PREFIX}.{report.outcome}",
        resource=resource,
        related=[
            {
                "prefect.resource.id": f"audience-lake.segment.{report.segment}",
                "prefect.resource.role": "segment",
            }
        ],
        payload={
            "run_id": run_id,
            "reason": report.held or report.skipped,
            "planned": report.planned,
            "sent": report.sent,
            "unsubscribed": report.unsubscribed,
            "held_back": report.held_back,
        },
    )


T = TypeVar("T")


def with_outcome(reports: Sequence[PublishReport], data: T) -> T:
    """``data``, as a COMPLETED state named ``Held``/``Skipped`` if an audience was kept back.

    Returned from a task or flow, a state becomes the run's final state (shown in the UI, seen
    by automations) and Prefect hands its caller the state's data; so the value is annotated as
    ``data``'s type, which is what a caller of the task or flow receives.
    """
    name = publish_state_name(reports)
    if name is None:
        return data
    kept = [f"{r.destination}/{r.segment}: {r.held or r.skipped}" for r in reports
            if r.outcome in ("held", "skipped")]  # fmt: skip
    return cast(T, Completed(data=data, name=name, message="; ".join(kept)))


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
    settings: PublishConfig | None = None,
    pins: ReadPins | None = None,
) -> PublishReport:
    """Send the changes of one segment's audience to one destination list (gold read at
    ``pins``, default the versions current when it starts).

    Ends ``Completed`` when the audience was published, ``Held`` when a hold kept its
    subscribes and updates back (its unsubscribes were still sent) and ``Skipped`` when another
    run held the list for longer than ``publish.lease_wait_seconds``.
    """
    report = publish_segment(
        open_lake(), destination_name, destination, segment, run_id=run_id,
        settings=settings or PublishConfig(), dry_run=dry_run, hold=hold, pins=pins,
    )  # fmt: skip
    return with_outcome([report], report)

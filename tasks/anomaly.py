"""Volume-anomaly check: judge this run's row counts, record and announce what is out of line.

Reads ``ops/volume_metrics``, runs the pure detector (:mod:`tasks.core.anomaly`), and for the
anomalies it finds:

* records them in ``ops/volume_alerts`` (once per checking run: a rerun records nothing new),
* emits a Prefect event ``audience-lake.volume.anomaly`` per anomaly, for automations,
* shows expected range vs actual in a markdown artifact,
* sends them to the configured notifiers (``volume.notifiers``).

Publishing reads the same verdict through :func:`volume_anomalies` (see
:func:`tasks.publish.publish_holds`): an error holds the audiences its series feeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from tasks.connectors.lake import Lake
from tasks.connectors.notifiers import Notification, NotifierError, Severity, open_notifier
from tasks.core.anomaly import CHECK_SCHEMA, VolumeAnomaly, anomalies_from, score_volumes
from tasks.core.anomaly_report import event_payload, render_markdown, render_message
from tasks.core.config import PipelineConfig
from tasks.core.tables import ALERT_SCHEMA as ALERT_SCHEMA
from tasks.core.tables import TABLE_ROLES as TABLE_ROLES
from tasks.core.tables import VOLUME_ALERTS as VOLUME_ALERTS
from tasks.core.tables import VOLUME_METRICS
from tasks.resources import open_lake

EVENT_NAME = "audience-lake.volume.anomaly"
ARTIFACT_KEY = "volume-anomalies"


_RANK = {"warning": 1, "error": 2}


def volume_checks(lake: Lake, config: PipelineConfig) -> pl.DataFrame:
    """Every current point of ``ops/volume_metrics`` with its verdict (empty without metrics)."""
    if not lake.exists(VOLUME_METRICS):
        return pl.DataFrame(schema=CHECK_SCHEMA)
    return score_volumes(
        lake.scan(VOLUME_METRICS),
        config.volume,
        sources=[name for name, source in config.sources.items() if source.enabled],
        segments=[segment.name for segment in config.segments],
    ).collect()


def volume_anomalies(lake: Lake, config: PipelineConfig) -> list[VolumeAnomaly]:
    """The current anomalies, errors first, each with the audiences it holds."""
    return anomalies_from(volume_checks(lake, config), config, table_roles=TABLE_ROLES)


@task(cache_policy=NO_CACHE)
def check_volumes(config: PipelineConfig, *, run_id: str, now: datetime) -> list[VolumeAnomaly]:
    """Judge the newest row counts; record, show, emit and send the anomalies found.

    Raises:
        NotifierError: after every notifier was tried, if any could not deliver (the anomalies
            are recorded and the events emitted by then).
    """
    logger = get_run_logger()
    lake = open_lake()
    checks = volume_checks(lake, config)
    anomalies = anomalies_from(checks, config, table_roles=TABLE_ROLES)
    for anomaly in anomalies:
        log = logger.error if anomaly.severity == "error" else logger.warning
        held = f" (holds {', '.join(anomaly.holds)})" if anomaly.holds else ""
        log("volume %s%s", anomaly.describe(), held)
    record_alerts(lake, anomalies, run_id=run_id, now=now)
    if config.volume.artifact:
        learning = checks.filter(pl.col("severity") == "insufficient_history").height
        create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=render_markdown(
                anomalies, run_id=run_id, checked=checks.height, learning=learning
            ),
            description="Volume anomalies: expected range vs actual row counts",
        )
    if config.volume.emit_events:
        for anomaly in anomalies:
            emit_anomaly_event(anomaly)
    send_notifications(config, anomalies, run_id=run_id)
    return anomalies


def record_alerts(
    lake: Lake, anomalies: Sequence[VolumeAnomaly], *, run_id: str, now: datetime
) -> bool:
    """Append the anomalies to ``ops/volume_alerts`` once per checking run (True if written)."""
    if not anomalies:
        return False
    rows = [
        {
            "checked_run_id": run_id,
            "checked_at": now,
            **{k: v for k, v in a.__dict__.items() if k != "holds"},
            "holds": list(a.holds),
        }
        for a in anomalies
    ]
    frame = pl.DataFrame(rows, schema=ALERT_SCHEMA)
    return lake.append_once(VOLUME_ALERTS, frame, batch_id=f"volume_alerts:{run_id}")


def anomaly_resource(anomaly: VolumeAnomaly) -> dict[str, str]:
    """The event's resource: one series, labelled so automations can match on any part of it."""
    resource_id = f"audience-lake.volume.{anomaly.table}"
    labels = {
        "audience-lake.table": anomaly.table,
        "audience-lake.severity": anomaly.severity,
        "audience-lake.rule": anomaly.rule,
    }
    if anomaly.source is not None:
        resource_id += f".source.{anomaly.source}"
        labels["audience-lake.source"] = anomaly.source
    if anomaly.segment is not None:
        resource_id += f".segment.{anomaly.segment}"
        labels["audience-lake.segment"] = anomaly.segment
    return {"prefect.resource.id": resource_id, "prefect.resource.name": anomaly.series, **labels}


def emit_anomaly_event(anomaly: VolumeAnomaly) -> None:
    """``audience-lake.volume.anomaly`` for one anomaly; held audiences are related resources."""
    related = [_related(f"audience-lake.table.{anomaly.table}", "table")]
    if anomaly.source is not None:
        related.append(_related(f"audience-lake.source.{anomaly.source}", "source"))
    related += [_related(f"audience-lake.segment.{s}", "held-audience") for s in anomaly.holds]
    emit_event(
        event=EVENT_NAME,
        resource=anomaly_resource(anomaly),
        related=related,
        payload=event_payload(anomaly),
    )


def _related(resource_id: str, role: str) -> dict[str, str]:
    return {"prefect.resource.id": resource_id, "prefect.resource.role": role}


def send_notifications(
    config: PipelineConfig, anomalies: Sequence[VolumeAnomaly], *, run_id: str
) -> int:
    """Send each notifier the anomalies at or above its ``min_severity``; returns messages sent.

    Every notifier is tried; failures are raised together afterwards, naming each notifier.
    """
    logger = get_run_logger()
    failures: list[str] = []
    sent = 0
    for name, notifier_config in config.volume.notifiers.items():
        floor = _RANK[notifier_config.min_severity]
        chosen = [a for a in anomalies if _RANK[a.severity] >= floor]
        if not chosen:
            continue
        subject, body = render_message(chosen, run_id=run_id)
        worst: Severity = "error" if any(a.severity == "error" for a in chosen) else "warning"
        notifier = open_notifier(name, notifier_config)
        try:
            notifier.notify(Notification(subject, body, worst))
            sent += 1
            logger.info("volume anomalies sent to notifier %r (%d)", name, len(chosen))
        except NotifierError as exc:
            logger.error("%s", exc)
            failures.append(str(exc))
        finally:
            notifier.close()
    if failures:
        raise NotifierError("; ".join(failures))
    return sent

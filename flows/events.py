"""``land_events`` flow: landed event micro-batches -> ``bronze/<source>``, for event sources only.

Near-real-time path, separate from the hourly pipeline: the ``land-events`` deployment in
``prefect.yaml`` is triggered by the ``audience-lake.events.landed`` event that the receiver
(``audience-lake receive-events``) emits for every accepted batch, with a one-minute schedule as
the fallback. A run lands every file not yet in bronze (each exactly once, each event id once),
so overlapping or missed triggers cost nothing but a quick no-op run.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.events import emit_event

from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.connectors.webhook import LandedBatch
from tasks.core.config import PipelineConfig
from tasks.errors import ConfigError
from tasks.ingest import ingest_source
from tasks.reports import IngestReport

LANDED_EVENT = "audience-lake.events.landed"


def event_sources(config: PipelineConfig, names: list[str] | None = None) -> list[str]:
    """Names of the enabled ``kind: events`` sources (only ``names``, if given).

    Raises:
        ConfigError: for a name that is not an event source.
    """
    kinds = {name: source.kind for name, source in config.sources.items()}
    wrong = sorted(n for n in names or [] if kinds.get(n) != "events")
    if wrong:
        known = sorted(n for n, kind in kinds.items() if kind == "events")
        raise ConfigError(f"land_events: {wrong} are not event sources; event sources: {known}")
    return [
        name
        for name, source in config.sources.items()
        if source.kind == "events" and source.enabled and (not names or name in names)
    ]


@flow(name="land-events", log_prints=True)
def land_events(
    config_path: str | None = None,
    sources: list[str] | None = None,
    run_id: str | None = None,
) -> list[IngestReport]:
    """Land every new event micro-batch of each event source (or only ``sources``) in bronze."""
    config = load_config(config_path)
    run_id = current_run_id(run_id)
    started_at = utc_now()
    reports = [
        ingest_source(name, config.sources[name], run_id=run_id, started_at=started_at)
        for name in event_sources(config, sources)
    ]
    table_artifact("land-events-summary", [asdict(r) for r in reports], "Event batches landed")
    return reports


def announce_landed(batch: LandedBatch) -> None:
    """Emit the Prefect event that triggers ``land-events`` (the receiver's ``on_landed``).

    A redelivered body emits nothing: its file is already landed (and announced).
    """
    if batch.duplicate:
        return
    emit_event(
        event=LANDED_EVENT,
        resource={
            "prefect.resource.id": f"audience-lake.source.{batch.source}",
            "prefect.resource.name": batch.source,
        },
        payload={"batch": batch.name, "events": batch.events, "location": batch.location},
    )

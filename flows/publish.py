"""``publish`` flow: gold audiences -> each configured destination."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from flows.common import current_run_id, load_config, table_artifact
from tasks.errors import ConfigError
from tasks.publish import publish_audience, publish_hold
from tasks.reports import PublishReport
from tasks.resources import open_lake


@flow(name="publish", log_prints=True)
def publish(
    config_path: str | None = None,
    segments: list[str] | None = None,
    dry_run: bool = False,
    override_hold: bool = False,
    run_id: str | None = None,
) -> list[PublishReport]:
    """Send each audience's changes; ``dry_run`` plans without sending.

    Publishing is held when the latest transform quarantined too much of a source (see
    ``thresholds`` in pipeline.yaml); ``override_hold`` sends anyway, and says so in the report.
    """
    config = load_config(config_path)
    run_id = current_run_id(run_id)
    known = {s.name for s in config.segments}
    unknown = sorted(set(segments or []) - known)
    if unknown:
        raise ConfigError(f"publish: unknown segment(s) {unknown}; known: {sorted(known)}")
    hold = None if override_hold else publish_hold(open_lake(), config)
    if hold:
        print(f"publish held: {hold} (rerun with override_hold=true to send anyway)")
    reports = [
        publish_audience(name, destination, segment, run_id=run_id, dry_run=dry_run, hold=hold)
        for name, destination in config.destinations.items()
        for segment in destination.audiences
        if not segments or segment in segments
    ]
    table_artifact(
        "publish-results",
        [{k: v for k, v in asdict(r).items() if k != "errors"} for r in reports],
        "Contacts sent per destination and segment",
    )
    return reports

"""``ingest`` flow: every configured source -> ``bronze/<source>``."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.errors import ConfigError
from tasks.ingest import ingest_source
from tasks.reports import IngestReport
from tasks.volume import record_volumes


@flow(name="ingest", log_prints=True)
def ingest(
    config_path: str | None = None,
    sources: list[str] | None = None,
    full_refresh: bool = False,
    run_id: str | None = None,
) -> list[IngestReport]:
    """Pull each source (or only ``sources``) incrementally; ``full_refresh`` re-reads all."""
    config = load_config(config_path)
    run_id = current_run_id(run_id)
    unknown = sorted(set(sources or []) - set(config.sources))
    if unknown:
        raise ConfigError(f"ingest: unknown source(s) {unknown}; known: {sorted(config.sources)}")
    selected = {
        name: source
        for name, source in config.sources.items()
        if source.enabled and (not sources or name in sources)
    }
    started_at = utc_now()
    reports = [
        ingest_source(name, source, run_id=run_id, started_at=started_at, full_refresh=full_refresh)
        for name, source in selected.items()
    ]
    # Rows each source landed this run: the bronze series of the volume-anomaly check.
    landed = [
        {"table": r.table, "source": r.source, "rows": r.rows, "quarantined": 0} for r in reports
    ]
    record_volumes(landed, run_id=run_id, stage="ingest", now=started_at)
    table_artifact("ingest-summary", [asdict(r) for r in reports], "Rows landed in bronze")
    return reports

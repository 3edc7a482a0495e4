"""The ``volume-charts`` artifact: each volume series drawn with its expected band and alerts."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.anomaly import volume_checks
from tasks.core.charts import render_volume_charts, series_charts
from tasks.core.config import PipelineConfig
from tasks.core.tables import VOLUME_ALERTS, VOLUME_METRICS
from tasks.resources import open_lake

VOLUME_CHARTS_KEY = "volume-charts"


@task(cache_policy=NO_CACHE)
def show_volume_charts(config: PipelineConfig, *, run_id: str) -> int:
    """Draw every judged series of ``ops/volume_metrics`` on the run page; returns how many."""
    lake = open_lake()
    checks = volume_checks(lake, config)
    history = lake.read(VOLUME_METRICS) if lake.exists(VOLUME_METRICS) else pl.DataFrame()
    alerts = lake.read(VOLUME_ALERTS) if lake.exists(VOLUME_ALERTS) else None
    charts = series_charts(history, checks, alerts) if history.height else []
    create_markdown_artifact(
        key=VOLUME_CHARTS_KEY,
        markdown=render_volume_charts(charts, run_id=run_id),
        description="Rows per run of each volume series, its expected band and its alerts",
    )
    return len(charts)

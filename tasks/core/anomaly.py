"""Volume anomalies: is this run's row count for a table, source or segment out of line?

Every run appends counts to ``ops/volume_metrics`` (``run_id, measured_at, table, source,
segment, rows``); each distinct ``(table, source, segment)`` is a *series*. The detector judges
each series' newest point against that series' own history:

* the score is robust: ``(log1p(rows) - median) / (1.4826 * MAD)`` over the training window, with
  the spread floored at ``scale_floor`` so a perfectly steady history (MAD = 0) stays usable;
  log counts make a 50 % drop weigh the same on a list of 100 as on one of 1 M;
* the training window holds the points of the last ``lookback_days`` *before* the current point
  (never the point itself), optionally only those on the same weekday;
* an alert needs ``min_history`` training points, a change of at least ``min_abs_change`` rows
  *and* ``min_rel_change`` of the expected count, in an alerting ``direction``; the score picks
  warning vs error;
* zero rows is its own rule: a series whose history normally has rows and now has 0 is an error.

The current point of a series is its newest one, so an ingest outage stays current until that
source is ingested again (rerunning only the transform does not clear it); series of sources or
segments no longer configured are not judged.

An error on a series holds the audiences it feeds (:func:`audiences_fed`): a segment's own series
holds that segment; a source holds the segments whose predicates read columns its role feeds
(contacts feed every audience: identity and consent come from them). The lineage itself is in
:mod:`tasks.core.audience_lineage`; the artifact, message and event in
:mod:`tasks.core.anomaly_report`; the large-removal guard in :mod:`tasks.core.removal_guard`.

Everything here is pure: polars LazyFrames in, LazyFrames out; no IO, no Prefect.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from tasks.core.audience_lineage import segment_roles, series_roles
from tasks.core.config import PipelineConfig
from tasks.core.config_anomaly import (
    VolumeConfig,
    VolumeOverride,
    glob_regex,
)

SERIES = ["table", "source", "segment"]
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution * 1.4826 = its standard deviation
ALERTING = ("warning", "error")

CHECK_SCHEMA: dict[str, pl.DataType] = {
    "table": pl.String(),
    "source": pl.String(),
    "segment": pl.String(),
    "run_id": pl.String(),
    "measured_at": pl.Datetime("us", "UTC"),
    "rows": pl.Int64(),
    "history": pl.UInt32(),
    "expected": pl.Float64(),
    "lower": pl.Float64(),
    "upper": pl.Float64(),
    "score": pl.Float64(),
    "severity": pl.String(),
    "rule": pl.String(),
}

_THRESHOLD_DTYPES: dict[str, pl.DataType] = {
    "min_history": pl.Int64(),
    "lookback_days": pl.Int64(),
    "same_weekday": pl.Boolean(),
    "direction": pl.String(),
    "min_abs_change": pl.Int64(),
    "min_rel_change": pl.Float64(),
    "warning_score": pl.Float64(),
    "error_score": pl.Float64(),
    "scale_floor": pl.Float64(),
    "zero_rows": pl.Boolean(),
}


# --- thresholds per series ---------------------------------------------------------------------


def _selects(override: VolumeOverride) -> pl.Expr:
    """True for rows of the series ``override`` applies to (a null value never matches)."""
    matches = [
        pl.col(column).str.contains(glob_regex(pattern)).fill_null(False)
        for column, pattern in override.selectors().items()
    ]
    return pl.all_horizontal(matches)


def with_thresholds(series: pl.LazyFrame, config: VolumeConfig) -> pl.LazyFrame:
    """Add one column per threshold: the defaults, overridden by every matching override.

    Later overrides win, as in :meth:`VolumeConfig.thresholds_for`.
    """
    columns = []
    for name, dtype in _THRESHOLD_DTYPES.items():
        expr: pl.Expr = pl.lit(getattr(config.defaults, name), dtype=dtype)
        for override in config.overrides:  # each later match wraps (and so wins over) the last
            value = override.settings().get(name)
            if value is not None:
                expr = pl.when(_selects(override)).then(pl.lit(value, dtype=dtype)).otherwise(expr)
        columns.append(expr.alias(name))
    return series.with_columns(columns)


# --- which points are current -------------------------------------------------------------------


def current_points(
    metrics: pl.LazyFrame,
    *,
    sources: Collection[str] | None = None,
    segments: Collection[str] | None = None,
) -> pl.LazyFrame:
    """The newest point of every series, keeping only series of the given sources/segments.

    ``None`` keeps every source (or segment); series without a source (or segment) are always
    kept.
    """
    latest = metrics.sort("measured_at", "run_id").unique(
        subset=SERIES, keep="last", maintain_order=True
    )
    if sources is not None:
        latest = latest.filter(pl.col("source").is_null() | pl.col("source").is_in(list(sources)))
    if segments is not None:
        latest = latest.filter(
            pl.col("segment").is_null() | pl.col("segment").is_in(list(segments))
        )
    return latest


# --- the detector --------------------------------------------------------------------------------


def score_volumes(
    metrics: pl.LazyFrame,
    config: VolumeConfig,
    *,
    sources: Collection[str] | None = None,
    segments: Collection[str] | None = None,
) -> pl.LazyFrame:
    """Judge every current point against its series' history (see the module docstring).

    Args:
        metrics: ``ops/volume_metrics`` rows (``run_id, measured_at, table, source, segment,
            rows``; other columns are ignored).
        config: thresholds (defaults and per-series overrides).
        sources, segments: the configured ones (see :func:`current_points`); None for all.

    Returns:
        One row per current point, :data:`CHECK_SCHEMA`: ``severity`` is ``ok``,
        ``insufficient_history``, ``warning`` or ``error``; ``rule`` says why it alerts
        (``zero_rows``, ``drop``, ``spike``); ``lower``/``upper`` bound the counts that would not
        alert (null when that direction never alerts); ``expected`` is the history's median.
    """
    points = metrics.select(*SERIES, "run_id", "measured_at", pl.col("rows").cast(pl.Int64))
    current = (
        current_points(points, sources=sources, segments=segments)
        .rename({"measured_at": "_at", "rows": "_rows", "run_id": "_run"})
        .pipe(with_thresholds, config)
    )
    training = (
        current.join(points.drop("run_id"), on=SERIES, how="inner", nulls_equal=True)
        .filter(
            (pl.col("measured_at") < pl.col("_at"))  # the current point never trains itself
            & (pl.col("measured_at") >= pl.col("_at") - pl.duration(days=pl.col("lookback_days")))
            & (
                ~pl.col("same_weekday")
                | (pl.col("measured_at").dt.weekday() == pl.col("_at").dt.weekday())
            )
        )
        .with_columns(pl.col("rows").cast(pl.Float64).log1p().alias("_log"))
        .group_by(SERIES)
        .agg(
            pl.len().alias("history"),
            pl.col("_log").median().alias("_median"),
            (pl.col("_log") - pl.col("_log").median()).abs().median().alias("_mad"),
        )
    )
    return (
        current.join(training, on=SERIES, how="left", nulls_equal=True)
        .with_columns(pl.col("history").fill_null(0))
        .pipe(_judge)
        .rename({"_at": "measured_at", "_rows": "rows", "_run": "run_id"})
        .select(list(CHECK_SCHEMA))
        .sort(SERIES, nulls_last=False)
    )


def _judge(lf: pl.LazyFrame) -> pl.LazyFrame:
    median = pl.col("_median")
    sigma = pl.max_horizontal(MAD_TO_SIGMA * pl.col("_mad"), pl.col("scale_floor"))
    rows = pl.col("_rows").cast(pl.Float64)
    expected = median.exp() - 1
    delta = rows - expected
    relative = (
        pl.when(expected > 0)
        .then(delta.abs() / expected)
        .when(delta.abs() > 0)
        .then(float("inf"))
        .otherwise(0.0)
    )
    direction = pl.col("direction")
    in_direction = (
        (direction == "both")
        | ((direction == "drop") & (delta < 0))
        | ((direction == "spike") & (delta > 0))
    )
    large = (delta.abs() >= pl.col("min_abs_change")) & (relative >= pl.col("min_rel_change"))
    score = (rows.log1p() - median) / sigma
    enough = pl.col("history") >= pl.col("min_history")
    zero = pl.col("zero_rows") & (pl.col("_rows") == 0) & (median > 0)
    alerting = in_direction & large
    severity = (
        pl.when(~enough)
        .then(pl.lit("insufficient_history"))
        .when(zero | alerting & (score.abs() >= pl.col("error_score")))
        .then(pl.lit("error"))
        .when(alerting & (score.abs() >= pl.col("warning_score")))
        .then(pl.lit("warning"))
        .otherwise(pl.lit("ok"))
    )
    # Counts strictly inside (lower, upper) never alert: an alert needs the score, the absolute
    # and the relative change all past their thresholds, so the band is the widest of the three.
    band = pl.col("warning_score") * sigma
    lower = pl.max_horizontal(
        pl.lit(0.0),
        pl.min_horizontal(
            (median - band).exp() - 1,
            expected * (1 - pl.col("min_rel_change")),
            expected - pl.col("min_abs_change"),
        ),
    )
    upper = pl.max_horizontal(
        (median + band).exp() - 1,
        expected * (1 + pl.col("min_rel_change")),
        expected + pl.col("min_abs_change"),
    )
    return lf.with_columns(
        expected.alias("expected"),
        pl.when(direction != "spike").then(lower).alias("lower"),
        pl.when(direction != "drop").then(upper).alias("upper"),
        score.alias("score"),
        severity.alias("severity"),
    ).with_columns(
        pl.when(pl.col("severity").is_in(ALERTING))
        .then(
            pl.when(zero)
            .then(pl.lit("zero_rows"))
            .when(delta < 0)
            .then(pl.lit("drop"))
            .otherwise(pl.lit("spike"))
        )
        .alias("rule")
    )


# --- anomalies as values -------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeAnomaly:
    """One alerting point: what was counted, what was expected, and which audiences it holds."""

    table: str
    source: str | None
    segment: str | None
    severity: str
    rule: str
    rows: int
    expected: float
    lower: float | None
    upper: float | None
    score: float
    history: int
    run_id: str
    measured_at: datetime
    holds: tuple[str, ...] = ()

    @property
    def series(self) -> str:
        """e.g. ``bronze/web_events source=web_events`` or ``gold/audience_members segment=x``."""
        parts = [self.table]
        if self.source is not None:
            parts.append(f"source={self.source}")
        if self.segment is not None:
            parts.append(f"segment={self.segment}")
        return " ".join(parts)

    @property
    def expected_range(self) -> str:
        """The counts that would not have alerted, e.g. ``1,650-2,410`` or ``>= 1,650``."""
        low = None if self.lower is None else f"{self.lower:,.0f}"
        high = None if self.upper is None else f"{self.upper:,.0f}"
        if low is not None and high is not None:
            return f"{low}-{high}"
        return f">= {low}" if low is not None else f"<= {high}"

    def describe(self) -> str:
        """One line for logs, hold reasons and chat messages."""
        why = "zero rows" if self.rule == "zero_rows" else f"{self.rule}, score {self.score:+.1f}"
        return (
            f"{self.severity} {self.series}: {self.rows:,} rows, expected ~{self.expected:,.0f} "
            f"(normal {self.expected_range}, {self.history} points of history; {why})"
        )


def anomalies_from(
    checks: pl.DataFrame,
    config: PipelineConfig,
    *,
    table_roles: Mapping[str, str],
) -> list[VolumeAnomaly]:
    """The alerting rows of :func:`score_volumes` as values, errors first, with their holds."""
    rows = checks.filter(pl.col("severity").is_in(ALERTING)).sort(
        pl.col("severity") == "warning", *SERIES, nulls_last=False
    )
    anomalies = []
    for row in rows.iter_rows(named=True):
        anomaly = VolumeAnomaly(**{k: row[k] for k in _ANOMALY_FIELDS})
        if anomaly.severity == "error":
            anomaly = _with_holds(anomaly, audiences_fed(anomaly, config, table_roles=table_roles))
        anomalies.append(anomaly)
    return anomalies


_ANOMALY_FIELDS = (
    "table", "source", "segment", "severity", "rule", "rows", "expected", "lower", "upper",
    "score", "history", "run_id", "measured_at",
)  # fmt: skip


def _with_holds(anomaly: VolumeAnomaly, holds: Sequence[str]) -> VolumeAnomaly:
    return VolumeAnomaly(**{**anomaly.__dict__, "holds": tuple(holds)})


# --- which audiences an anomaly holds ------------------------------------------------------------


def audiences_fed(
    anomaly: VolumeAnomaly, config: PipelineConfig, *, table_roles: Mapping[str, str]
) -> list[str]:
    """Names of the segments whose audiences the anomaly's series feeds.

    ``table_roles`` maps source-less tables to the role they hold (``silver/orders`` ->
    ``orders``); any other source-less table (features, audiences) feeds every segment.
    """
    if anomaly.segment is not None:
        return [s.name for s in config.segments if s.name == anomaly.segment]
    roles = series_roles(
        config, table=anomaly.table, source=anomaly.source, table_roles=table_roles
    )
    return [s.name for s in config.segments if roles & segment_roles(config, s)]


def held_segments(anomalies: Iterable[VolumeAnomaly]) -> dict[str, list[str]]:
    """Segment -> descriptions of the error anomalies holding it."""
    held: dict[str, list[str]] = {}
    for anomaly in anomalies:
        for segment in anomaly.holds:
            held.setdefault(segment, []).append(anomaly.describe())
    return held

"""The ``volume:`` section of ``pipeline.yaml``: anomaly detection, alerting and publish holds.

Every run appends row counts per (table, source, segment) to ``ops/volume_metrics``; the detector
(:mod:`tasks.core.anomaly`) compares each series' newest count with its own history using the
thresholds below. ``defaults`` apply to every series; each entry of ``overrides`` applies to the
series its selectors match (``table``, ``source``, ``segment``; ``*`` and ``?`` globs allowed),
later entries winning over earlier ones. Example::

    volume:
      defaults: {min_history: 5, warning_score: 3.5, error_score: 6}
      overrides:
        - table: bronze/web_events          # a weekly rhythm: compare Sundays with Sundays
          same_weekday: true
        - table: gold/audience_members
          segment: big_spenders
          direction: drop
      removals: {max_share: 0.2, min_count: 10}
      notifiers:
        ops_channel:
          kind: slack_webhook
          url: {secret: slack_webhook_url}   # AUDIENCE_LAKE_SECRET_SLACK_WEBHOOK_URL

This module builds on :class:`tasks.core.config_base.Model` and ``SecretRef``;
:mod:`tasks.core.config` puts :class:`VolumeConfig` in :class:`PipelineConfig`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from tasks.core.config_base import Model, Name, SecretRef
from tasks.core.transport import TransportOptions

Direction = Literal["drop", "spike", "both"]
Severity = Literal["warning", "error"]


class DetectorThresholds(Model):
    """How one series is judged. Every field may be overridden per table, source or segment."""

    min_history: int = Field(
        default=5,
        ge=1,
        description="Points of history a series needs (in its training window) before it alerts.",
    )
    lookback_days: int = Field(
        default=42,
        ge=1,
        description="Training window: points measured this many days before the current one.",
    )
    same_weekday: bool = Field(
        default=False,
        description="Train only on points measured on the current point's weekday (UTC), for "
        "series with a weekly rhythm; needs ~min_history weeks of history.",
    )
    direction: Direction = Field(
        default="both", description="Which changes alert: a drop, a spike, or both."
    )
    min_abs_change: int = Field(
        default=10,
        ge=0,
        description="An alert needs the count to differ from the expected one by at least this "
        "many rows...",
    )
    min_rel_change: float = Field(
        default=0.2,
        ge=0,
        description="...and by at least this share of the expected count (0.2 = 20 %).",
    )
    warning_score: float = Field(
        default=3.5,
        gt=0,
        description="Robust score |log1p(rows) - median| / (1.4826 * MAD) from which a warning "
        "is raised.",
    )
    error_score: float = Field(
        default=6.0,
        gt=0,
        description="Robust score from which an error is raised (errors hold publishing).",
    )
    scale_floor: float = Field(
        default=0.05,
        gt=0,
        description="Smallest spread assumed, in log1p units (0.05 ~ 5 %), so a perfectly "
        "steady history (MAD = 0) does not make every small change an infinite score.",
    )
    zero_rows: bool = Field(
        default=True,
        description="A series that normally has rows (median of its history > 0) and now has "
        "0 is an error, whatever the score or direction.",
    )

    @model_validator(mode="after")
    def _error_above_warning(self) -> DetectorThresholds:
        if self.error_score < self.warning_score:
            raise ValueError(
                f"error_score ({self.error_score}) must be >= warning_score ({self.warning_score})"
            )
        return self


THRESHOLD_FIELDS: tuple[str, ...] = tuple(DetectorThresholds.model_fields)
SELECTOR_FIELDS: tuple[str, ...] = ("table", "source", "segment")


class VolumeOverride(Model):
    """Thresholds for the series matching every given selector (globs ``*``/``?`` allowed)."""

    table: str | None = Field(default=None, description="e.g. 'gold/audience_members', 'bronze/*'")
    source: str | None = None
    segment: str | None = None
    min_history: int | None = Field(default=None, ge=1)
    lookback_days: int | None = Field(default=None, ge=1)
    same_weekday: bool | None = None
    direction: Direction | None = None
    min_abs_change: int | None = Field(default=None, ge=0)
    min_rel_change: float | None = Field(default=None, ge=0)
    warning_score: float | None = Field(default=None, gt=0)
    error_score: float | None = Field(default=None, gt=0)
    scale_floor: float | None = Field(default=None, gt=0)
    zero_rows: bool | None = None

    @model_validator(mode="after")
    def _selects_and_sets_something(self) -> VolumeOverride:
        if all(getattr(self, f) is None for f in SELECTOR_FIELDS):
            raise ValueError("an override needs at least one of table, source, segment")
        if not self.settings():
            raise ValueError("an override must set at least one threshold")
        return self

    def selectors(self) -> dict[str, str]:
        """The selectors given, e.g. ``{"table": "bronze/*"}``."""
        return {f: v for f in SELECTOR_FIELDS if (v := getattr(self, f)) is not None}

    def settings(self) -> dict[str, Any]:
        """The thresholds this override sets."""
        return {f: v for f in THRESHOLD_FIELDS if (v := getattr(self, f)) is not None}


class RemovalGuard(Model):
    """Large removals: an audience whose publish would remove many of its list's members waits."""

    max_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Hold an audience when its publish would take more than this share of "
        "the contacts its list holds (per the sync ledger) off the list...",
    )
    min_count: int = Field(
        default=10,
        ge=0,
        description="...and at least this many contacts (small lists churn).",
    )


class SlackWebhookNotifier(Model, TransportOptions):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat, Zulip's Slack API)."""

    kind: Literal["slack_webhook"]
    url: SecretRef = Field(
        description="The webhook URL is a credential: it comes from a secret (https, or "
        "allow_insecure_http; checked when the notifier opens, since the URL is secret)."
    )
    min_severity: Severity = Field(
        default="warning", description="Send anomalies of this severity and above."
    )
    timeout_seconds: float = Field(default=10, gt=0, le=120)


Notifier = Annotated[SlackWebhookNotifier, Field(discriminator="kind")]


class VolumeConfig(Model):
    """Volume-anomaly detection, where alerts go, and when publishing is held."""

    defaults: DetectorThresholds = Field(default_factory=DetectorThresholds)
    overrides: list[VolumeOverride] = Field(
        default_factory=list, description="Per table/source/segment thresholds; later wins."
    )
    removals: RemovalGuard = Field(default_factory=RemovalGuard)
    notifiers: dict[Name, Notifier] = Field(
        default_factory=dict, description="Where alerts are sent, by name."
    )
    emit_events: bool = Field(
        default=True,
        description="Emit a Prefect event 'audience-lake.volume.anomaly' per anomaly, so "
        "automations can react to it.",
    )
    artifact: bool = Field(
        default=True, description="Show expected range vs actual as a markdown artifact."
    )

    @model_validator(mode="after")
    def _overrides_are_consistent(self) -> VolumeConfig:
        base = self.defaults.model_dump()
        for index, override in enumerate(self.overrides):
            merged = {**base, **override.settings()}
            if merged["error_score"] < merged["warning_score"]:
                raise ValueError(
                    f"overrides[{index}] {override.selectors()}: error_score "
                    f"({merged['error_score']}) must be >= warning_score "
                    f"({merged['warning_score']})"
                )
        return self

    def thresholds_for(
        self, *, table: str, source: str | None = None, segment: str | None = None
    ) -> DetectorThresholds:
        """The thresholds of one series (defaults, then every matching override in order)."""
        values = {"table": table, "source": source, "segment": segment}
        merged = self.defaults.model_dump()
        for override in self.overrides:
            if all(
                (value := values[key]) is not None and re.fullmatch(glob_regex(pattern), value)
                for key, pattern in override.selectors().items()
            ):
                merged.update(override.settings())
        return DetectorThresholds.model_validate(merged)


_REGEX_SPECIAL = frozenset(".^$|()[]{}+\\")


def glob_regex(pattern: str) -> str:
    """``*``/``?`` glob -> an anchored regex that Python's ``re`` and polars (Rust) agree on."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char in _REGEX_SPECIAL:
            parts.append("\\" + char)
        else:
            parts.append(char)
    return "^" + "".join(parts) + "$"

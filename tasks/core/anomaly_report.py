"""Volume anomalies as the reader sees them: the run artifact, the chat message, the event.

:func:`render_markdown` is the markdown artifact (expected range vs actual per anomaly),
:func:`render_message` the subject and body of a notification, :func:`event_payload` the JSON of
the ``audience-lake.volume.anomaly`` Prefect event. Each takes :class:`VolumeAnomaly` values from
:mod:`tasks.core.anomaly`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.core.anomaly import VolumeAnomaly


def render_markdown(
    anomalies: Sequence[VolumeAnomaly], *, run_id: str, checked: int, learning: int
) -> str:
    """The markdown artifact: expected range vs actual for every anomaly."""
    lines = [
        f"# Volume anomalies, run `{run_id}`",
        "",
        f"{checked} series checked; {learning} still learning (too little history); "
        f"{sum(a.severity == 'error' for a in anomalies)} error(s), "
        f"{sum(a.severity == 'warning' for a in anomalies)} warning(s).",
        "",
    ]
    if not anomalies:
        return "\n".join([*lines, "No anomalies."])
    lines += [
        "| severity | series | actual | expected | normal range | score | history | rule | holds |",
        "|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    for a in anomalies:
        holds = ", ".join(a.holds) or "-"
        lines.append(
            f"| **{a.severity}** | `{a.series}` | {a.rows:,} | {a.expected:,.0f} | "
            f"{a.expected_range} | {a.score:+.1f} | {a.history} | {a.rule} | {holds} |"
        )
    return "\n".join(lines)


def render_message(anomalies: Sequence[VolumeAnomaly], *, run_id: str) -> tuple[str, str]:
    """Subject and body of a chat notification (plain text with light Slack mrkdwn)."""
    errors = sum(a.severity == "error" for a in anomalies)
    warnings = len(anomalies) - errors
    subject = f"Audience Lake: {errors} volume error(s), {warnings} warning(s) in run {run_id}"
    body = []
    for a in anomalies:
        line = f"• *{a.severity.upper()}* `{a.series}`: {a.describe().split(': ', 1)[1]}"
        if a.holds:
            line += f" — holds publishing of {', '.join(a.holds)}"
        body.append(line)
    return subject, "\n".join(body)


def event_payload(anomaly: VolumeAnomaly) -> dict[str, Any]:
    """JSON-safe payload of the ``audience-lake.volume.anomaly`` event."""
    return {
        "severity": anomaly.severity,
        "rule": anomaly.rule,
        "rows": anomaly.rows,
        "expected": anomaly.expected,
        "lower": anomaly.lower,
        "upper": anomaly.upper,
        "score": anomaly.score,
        "history": anomaly.history,
        "run_id": anomaly.run_id,
        "measured_at": anomaly.measured_at.isoformat(),
        "holds": list(anomaly.holds),
        "description": anomaly.describe(),
    }

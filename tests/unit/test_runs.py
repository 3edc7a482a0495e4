"""Pure parts of the run audit: parameter masking, result counts, --since, the collector."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from flows.status import parse_since
from tasks.connectors.lake.audit import collecting, note_read, note_write, row_counts
from tasks.connectors.redact import register_secret
from tasks.errors import ConfigError
from tasks.runs import kept_back, redact_parameters, result_counts


def test_parameters_are_masked_by_name_and_by_value() -> None:
    register_secret("resolved-secret-value")
    masked = redact_parameters(
        {
            "config_path": "/etc/pipeline.yaml",
            "api_key": "k-123",
            "nested": {"client_secret": "x", "url": "https://u:p@host/?token=abc"},
            "note": "uses resolved-secret-value",
            "sources": ["crm"],
            "empty_token": None,
        }
    )
    assert masked == {
        "config_path": "/etc/pipeline.yaml",
        "api_key": "***",
        "nested": {"client_secret": "***", "url": "https://***@host/?token=***"},
        "note": "uses ***",
        "sources": ["crm"],
        "empty_token": None,
    }


@dataclass
class Report:
    destination: str
    segment: str
    sent: int
    dry_run: bool = False
    held: str | None = None


@dataclass
class Whole:
    run_id: str
    publish: list[Report]


def test_result_counts_sum_reports_and_name_nested_ones() -> None:
    reports = [Report("m", "a", 3, held="drop"), Report("m", "b", 4)]
    assert result_counts(reports) == {"sent": 7}
    assert result_counts(Whole("r", reports)) == {"publish.sent": 7}
    assert result_counts(None) == {}
    assert kept_back(Whole("r", reports)) == ["m/a: drop"]


def test_since_takes_an_age_or_an_iso_time() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_since("6h", now=now) == now - timedelta(hours=6)
    assert parse_since("2d", now=now) == now - timedelta(days=2)
    assert parse_since("2026-12-01T08:00", now=now) == datetime(2026, 12, 1, 8, tzinfo=UTC)
    with pytest.raises(ConfigError, match="--since 'yesterday'"):
        parse_since("yesterday", now=now)


def test_nested_collectors_report_to_their_parents_and_threads_inherit_them() -> None:
    note_read("ops/t", 1)  # no collector: nothing to report to, no error
    with collecting("outer") as outer:
        with collecting("inner") as inner:
            note_write("ops/t", 4, row_counts({"num_target_rows_inserted": 2, "num_files": 9}))
            import contextvars

            context = contextvars.copy_context()
            worker = threading.Thread(target=context.run, args=(note_read, "bronze/x", 7))
            worker.start()
            worker.join(10)
        note_read("bronze/x", 8)
    assert inner.written() == {"ops/t": {"versions": [4], "inserted": 2}}
    assert inner.read_versions() == {"bronze/x": [7]}
    assert outer.written() == inner.written()
    assert outer.read_versions() == {"bronze/x": [7, 8]}

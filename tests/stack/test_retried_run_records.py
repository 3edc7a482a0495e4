"""A flow run retried from the UI keeps its id; what its retry ingested must still be recorded.

Found by ``test_stack_e2e.py``: a pipeline run failed while the CRM was down, the UI's Retry
re-ran it (same flow run id), the CRM landed, yet ``ops/source_runs`` kept the failed attempt
only, because its ``append_once`` key was the run id, so every audience the CRM feeds stayed held
on a run that reported Completed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.resources import open_lake
from tasks.source_runs import SOURCE_RUNS, latest_failures, record_source_runs

T = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def lake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
    return tmp_path / "lake"


def test_a_retried_run_that_lands_the_source_lifts_its_failure(lake_dir: Path) -> None:
    record_source_runs.fn({"crm_contacts": "SourceError: down", "orders": None}, run_id="r1", now=T)
    retry_at = T + timedelta(minutes=3)
    record_source_runs.fn({"crm_contacts": None, "orders": None}, run_id="r1", now=retry_at)
    runs = open_lake().scan(SOURCE_RUNS)
    assert latest_failures(runs).collect().height == 0
    assert runs.collect().height == 4


def test_a_task_retry_of_the_same_attempt_records_once(lake_dir: Path) -> None:
    for _ in range(2):
        record_source_runs.fn({"crm_contacts": "SourceError: down"}, run_id="r1", now=T)
    assert open_lake().scan(SOURCE_RUNS).collect().height == 1

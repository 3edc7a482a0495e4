"""``audience-lake status`` and ``history`` on a lake built by a real pipeline run (stand-ins,
sample data, this session's Prefect server), run as a user runs them: a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from prefect.settings import PREFECT_API_URL

from flows.pipeline import pipeline
from flows.progress import ProgressFeed, feeding
from tests.flows.conftest import CONFIG, ROOT, Sandbox

pytestmark = pytest.mark.flow


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),  # this session's server
        DO_NOT_TRACK="1",
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "audience-lake"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_status_and_history_after_a_pipeline_run(sandbox: Sandbox, tmp_path: Path) -> None:
    with feeding(ProgressFeed()) as feed:  # the CLI's progress line, fed by this real run
        report = pipeline(config_path=CONFIG)
    assert feed.tally.rows_staged == {i.source: i.rows for i in report.ingest}
    assert feed.tally.batches == sum(i.batches for i in report.ingest)
    assert feed.tally.contacts_sent == sum(p.sent for p in report.publish) > 0
    lake = sandbox.lake
    members = lake.read("gold/audience_members")
    sizes = dict(members.group_by("segment").len().iter_rows())

    status = _cli(tmp_path, "status", "--config", CONFIG)
    assert status.returncode == 0, status.stderr[-3000:]
    out = status.stdout
    for stage in ("ingest", "transform", "publish"):
        assert f"  {stage} " in out and f"run {report.run_id}" in out, out
    for source in ("crm_contacts", "orders", "web_events", "enrichment"):
        assert f"  {source}" in out and "landed" in out, out
    assert "holds in force: none" in out
    assert "newest updated_at 20" in out  # orders: the source's own clock, from its cursor
    assert any(line.split()[:2] == ["pipeline", "Completed"] for line in out.splitlines()), out
    for segment, size in sizes.items():
        assert any(line.split()[:2] == [segment, f"{size:,}"] for line in out.splitlines()), (
            segment,
            size,
            out,
        )
    assert "@" not in out

    audience = _cli(tmp_path, "history", "--audience", "big_spenders")
    assert audience.returncode == 0, audience.stderr[-3000:]
    sent = [line.split() for line in audience.stdout.splitlines() if "list-big-spenders" in line]
    assert sent and all(row[2] == report.run_id for row in sent), audience.stdout
    assert sum(int(row[-1]) for row in sent if row[5] == "subscribe") == sizes["big_spenders"]
    assert "@" not in audience.stdout

    person = members.filter(pl.col("segment") == "big_spenders").row(0, named=True)
    shouted = f"  {person['email'].upper()} "  # typed as a person might: case, spaces
    history = _cli(tmp_path, "history", "--email", shouted)
    assert history.returncode == 0, history.stderr[-3000:]
    assert f"contact {person['contact_key']}:" in history.stdout
    rows = [line.split() for line in history.stdout.splitlines()[2:]]
    assert ["mailchimp", "list-big-spenders", "big_spenders", "subscribe", "ok"] in [
        row[:5] for row in rows
    ]
    assert "@" not in history.stdout  # not even the address asked about

    bad = _cli(tmp_path, "history", "--email", "not-an-address")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: history: --email is not a valid email address"

"""The ``audience-lake`` command: clear errors and exit codes, doctor, schema, and the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import flows.ingest
from flows.cli import main
from flows.pipeline import pipeline
from tasks.connectors.lake import Lake, LakeError
from tasks.connectors.storage import check_store
from tasks.core.settings import load_settings
from tasks.ingest import ingest_source
from tasks.resources import lake_for
from tests.authenticating_s3 import authenticating_s3
from tests.conftest import S3Endpoint, free_port
from tests.flows.conftest import CONFIG, ROOT, Sandbox

pytestmark = pytest.mark.flow


def test_malformed_pipeline_yaml_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "pipeline.yaml"
    text = Path(CONFIG).read_text().replace("    table: orders", "    table: orders\n    tabel: x")
    bad.write_text(text)
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sources.orders.tabel: Extra inputs are not permitted" in err
    assert main(["validate", "--config", str(bad)]) == 2


def test_unreachable_lake_fails_clearly_without_partial_commit(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # capsys is not used around flow runs: Prefect's console handler would keep writing to the
    # captured stream after pytest closes it. The exit code is checked through main(), the
    # message through the flow's exception.
    # Task retries would replay the same failure with back-off; this test is about the message.
    monkeypatch.setattr(flows.ingest, "ingest_source", ingest_source.with_options(retries=0))
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", "s3://nowhere/lake")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    # Nor does the store client retry a refused connection (3 retries by default): every lake
    # call of both runs, the run audit's included, fails on its first request, with the same
    # error a retried one ends with.
    monkeypatch.setenv("AUDIENCE_LAKE_S3_MAX_RETRIES", "0")
    assert main(["run", "--config", CONFIG]) == 2
    with pytest.raises(LakeError, match=r"s3://nowhere/lake"):
        pipeline(config_path=CONFIG)
    assert sandbox.mailchimp.members("list-big-spenders") == {}  # nothing was published
    results = check_store("s3://nowhere/lake", lake_for(load_settings()).storage_options)
    assert (results[0].name, results[0].ok) == ("reachable", False)
    assert main(["doctor"]) == 1


def test_doctor_passes_on_local_and_s3(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
    assert main(["doctor", "--check", "lake"]) == 0
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", s3_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    assert main(["doctor", "--check", "lake"]) == 0
    out = capsys.readouterr().out
    assert "[ok] lake conditional put" in out
    assert s3_endpoint.secret_access_key not in out or s3_endpoint.managed


def test_schema_command_writes_json_schema(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    assert main(["schema", "--output", str(target)]) == 0
    schema = json.loads(target.read_text())
    assert "sources" in schema["properties"]


def test_demo_runs_twice_and_the_second_run_publishes_nothing(tmp_path: Path) -> None:
    """`make demo` as a user runs it: a fresh process, ephemeral Prefect, embedded defaults."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUDIENCE_LAKE_", "PREFECT_API", "AWS_"))
    }
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    command = [
        sys.executable, "-m", "flows.cli", "demo", "--contacts", "150",
        "--data", str(tmp_path / "data"), "--lake", str(tmp_path / "lake"),
    ]  # fmt: skip
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs.append(done.stdout)
    first = int(re.search(r"contacts published: ([\d,]+)", outputs[0]).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert first > 0
    assert "contacts published: 0" in outputs[1]
    assert "gold/audience_members" in outputs[1]


# --- the errors a new user meets first: one line, exit 2, no traceback unless --debug -----------


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: this session's Prefect server, nothing else set."""
    from prefect.settings import PREFECT_API_URL

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUDIENCE_LAKE_", "PREFECT_", "AWS_"))
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # `run` refuses to start with a referenced secret unset; a user's shell has them.
        AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET="x",
        AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY="x",
        AUDIENCE_LAKE_SECRET_KLAVIYO_API_KEY="x",
        AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN="x",
        AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC="x",
    )
    env.update(extra)
    return env


def _audience_lake(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "audience-lake"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line; and no traceback anywhere in the output."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), done.stderr[-3000:]
    return last


def test_unreachable_prefect_api_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = _cli_env(tmp_path, PREFECT_API_URL=url, AUDIENCE_LAKE_LAKE_URI=str(tmp_path / "lake"))
    line = _error_line(_audience_lake(env, "run", "--config", CONFIG, "--dry-run"))
    assert line.startswith(f"error: Prefect API at {url} is unreachable: "), line
    assert "unset PREFECT_API_URL to run ephemerally" in line
    # --debug shows where it came from, and still exits 2.
    debug = _audience_lake(env, "run", "--config", CONFIG, "--dry-run", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s3:/bucket/lake", "is missing a '/' after 's3:' (write s3://bucket/lake)"),
        ("s3//bucket/lake", "looks like a URI without its ':' (write s3://bucket/lake)"),
        ("s3://", "names no bucket"),
        ("s3:///lake", "names no bucket"),
        ("s3://localhost:9000/lake", "is not a valid S3 bucket name"),
        ("gs://bucket/lake", "unsupported scheme 'gs'"),
        ("S3://bucket/lake", "write the scheme in lowercase"),
    ],
)
def test_a_mistyped_lake_uri_is_refused_not_made_a_local_folder(
    uri: str,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", uri)
    for name in (
        "CRM_CLIENT_SECRET",
        "MAILCHIMP_API_KEY",
        "KLAVIYO_API_KEY",
        "HUBSPOT_TOKEN",
        "WEB_EVENTS_HMAC",
    ):
        monkeypatch.setenv(f"AUDIENCE_LAKE_SECRET_{name}", "x")  # `run` checks secrets first
    for command in (["doctor"], ["run", "--config", CONFIG]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith("error: environment: AUDIENCE_LAKE_LAKE_URI: "), err
        assert says in err[0]
    assert list(tmp_path.iterdir()) == []  # no folder named after the typo


def _landed_events(sandbox_dir: Path, count: int) -> None:
    landing = sandbox_dir / "drops" / "events"
    landing.mkdir(parents=True)
    lines = (
        json.dumps(
            {
                "event_id": f"evt-{i:07d}-{'x' * 40}",
                "event_type": "page_view",
                "occurred_at": "2026-11-30T12:00:00Z",
                "user_email": f"user{i}@example.com",
            }
        )
        for i in range(count)
    )
    (landing / "batch-1.ndjson").write_text("\n".join(lines) + "\n")


def test_a_corrupt_delta_log_is_one_line_naming_the_table_and_the_file(tmp_path: Path) -> None:
    lake_root = tmp_path / "lake"
    lake = Lake(str(lake_root))
    lake.append_once("bronze/web_events", pl.DataFrame({"event_id": ["a"]}), batch_id="one")
    lake.append_once("bronze/web_events", pl.DataFrame({"event_id": ["b"]}), batch_id="two")
    commit = sorted((lake_root / "bronze" / "web_events" / "_delta_log").glob("*.json"))[-1]
    commit.write_bytes(commit.read_bytes()[:100])  # a torn write
    _landed_events(tmp_path / "sandbox", 3)
    env = _cli_env(
        tmp_path,
        AUDIENCE_LAKE_LAKE_URI=str(lake_root),
        AUDIENCE_LAKE_SANDBOX_DIR=str(tmp_path / "sandbox"),
    )
    done = _audience_lake(env, "run", "--config", CONFIG, "--source", "web_events", "--dry-run")
    line = _error_line(done)
    assert "the Delta log of table 'bronze/web_events' is corrupt" in line, line
    assert f"commit file {commit} is not valid JSON" in line, line


def test_a_full_disk_is_one_line_naming_the_table(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(tiny)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    try:
        _landed_events(tmp_path / "sandbox", 60_000)  # several MiB of parquet: more than 1 MiB
        env = _cli_env(
            tmp_path,
            AUDIENCE_LAKE_LAKE_URI=str(tiny / "lake"),
            AUDIENCE_LAKE_SANDBOX_DIR=str(tmp_path / "sandbox"),
        )
        done = _audience_lake(env, "run", "--config", CONFIG, "--source", "web_events", "--dry-run")
    finally:
        subprocess.run(["umount", str(tiny)], check=True, timeout=30)
    line = _error_line(done)
    assert f"no space left on the volume holding lake {tiny / 'lake'}" in line, line
    assert re.search(r"table '[a-z_]+/[a-z_]+'", line), line
    assert "parquet" not in line


def test_a_store_refusing_credentials_is_not_retried(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.events import land_events
    from tasks.errors import StoreAccessError

    with authenticating_s3(tmp_path / "moto.log") as server:
        key_id, secret = server.credentials("unknown key")
        monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", "s3://lake-bucket/lake")
        monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        started = time.monotonic()
        state = land_events(config_path=CONFIG, return_state=True)
        elapsed = time.monotonic() - started
    assert state.is_failed()
    with pytest.raises(StoreAccessError, match=r"bronze/web_events.*HTTP 403 InvalidAccessKeyId"):
        state.result()
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    ingest = [t for t in task_runs if t.name.startswith("ingest-web_events")]
    assert [t.run_count for t in ingest] == [1], [(t.name, t.run_count) for t in task_runs]
    assert elapsed < 5  # the first retry alone would wait 5 s

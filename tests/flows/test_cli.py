"""The ``audience-lake`` command: clear errors and exit codes, doctor, schema, and the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flows.ingest
from flows.cli import main
from flows.pipeline import pipeline
from tasks.connectors.lake import LakeError
from tasks.connectors.storage import check_store
from tasks.core.settings import load_settings
from tasks.ingest import ingest_source
from tasks.resources import lake_for
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
    assert main(["doctor", "--config", CONFIG]) == 0
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{s3_bucket}/lake")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", s3_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[ok] conditional put" in out
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

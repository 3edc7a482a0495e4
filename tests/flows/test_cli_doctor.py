"""``audience-lake doctor`` against the real stand-ins on loopback and this session's real Prefect
server (``prefect_test_harness``): every check one line, exit 1 on any FAIL, secrets never shown.

A live worker is a worker heartbeat sent through the same API call a ``prefect worker`` makes
(``send_worker_heartbeat``); starting a real worker process per test would cost ~20 s each.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.cli import main
from flows.doctor import work_pool_names
from tests.conftest import free_port
from tests.flows.conftest import CONFIG, ROOT, Sandbox

pytestmark = pytest.mark.flow


def _prefect_yaml(tmp_path: Path, pool: str) -> Path:
    path = tmp_path / "prefect.yaml"
    path.write_text(
        "deployments:\n"
        "  - name: d\n    entrypoint: flows/pipeline.py:pipeline\n"
        f"    work_pool: {{name: {pool}}}\n",
        encoding="utf-8",
    )
    return path


def _pool_with_worker(tmp_path: Path) -> Path:
    pool = f"doctor-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        client.send_worker_heartbeat(pool, "worker-1", heartbeat_interval_seconds=30)
    return _prefect_yaml(tmp_path, pool)


def _doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["doctor", "--config", CONFIG, *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out.strip().splitlines()


def _line(lines: list[str], name: str) -> str:
    found = [line for line in lines if line.split("] ", 1)[-1].startswith(f"{name}:")]
    assert len(found) == 1, lines
    return found[0]


def test_the_prefect_yaml_of_the_repo_names_its_work_pool() -> None:
    assert work_pool_names(ROOT / "prefect.yaml") == ["audience-lake"]


def test_everything_ok_against_the_stand_ins(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefect_yaml = _pool_with_worker(tmp_path)
    code, lines = _doctor(capsys, "--prefect-yaml", str(prefect_yaml))
    assert code == 0, "\n".join(lines)
    assert all(line.startswith("[ok]") for line in lines), lines
    for name in ("crm_contacts", "orders", "web_events", "enrichment"):
        assert _line(lines, f"source {name}")
    assert "lists readable" in _line(lines, "destination mailchimp")
    assert "live worker" in "\n".join(lines)
    text = "\n".join(lines)
    for secret in ("flow-secret", "flow-key-us1", "flow-hmac-key"):
        assert secret not in text


def test_a_wrong_client_secret_fails_the_source_and_is_not_shown(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET", "wrong-secret-xyz")
    code, lines = _doctor(capsys, "--check", "sources")
    assert code == 1
    line = _line(lines, "source crm_contacts")
    assert line.startswith("[FAIL]"), line
    assert "-> check base_url, the client id/secret" in line
    assert "wrong-secret-xyz" not in "\n".join(lines)
    assert _line(lines, "source orders").startswith("[ok]")


def test_a_stopped_destination_fails_naming_it(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_MAILCHIMP_URL", f"http://127.0.0.1:{free_port()}")
    code, lines = _doctor(capsys, "--check", "destinations")
    assert code == 1
    assert _line(lines, "destination mailchimp").startswith("[FAIL]")


def test_a_wrong_api_key_or_unknown_list_fails_the_destination(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY", "bad-key-us1")
    code, lines = _doctor(capsys, "--check", "destinations")
    line = _line(lines, "destination mailchimp")
    assert (code, line.startswith("[FAIL]"), "401" in line) == (1, True, True), line
    assert "bad-key-us1" not in line


def test_a_missing_secret_fails_naming_the_variable(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY")
    code, lines = _doctor(capsys, "--check", "secrets")
    assert code == 1
    line = _line(lines, "secret mailchimp_api_key")
    assert line.startswith("[FAIL]")
    assert "AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY is not set" in line


def test_a_missing_drop_folder_and_sql_table_fail_their_sources(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import sqlite3

    shutil.rmtree(sandbox.data_dir / "drops" / "enrichment")
    with sqlite3.connect(sandbox.data_dir / "orders.db") as db:
        db.execute("ALTER TABLE orders RENAME TO orders_old")
    code, lines = _doctor(capsys, "--check", "sources")
    assert code == 1
    assert "cannot list" in _line(lines, "source enrichment")
    assert "table 'orders' not found" in _line(lines, "source orders")


def test_work_pool_missing_then_without_worker_then_alive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = f"doctor-{uuid.uuid4().hex[:8]}"
    prefect_yaml = str(_prefect_yaml(tmp_path, pool))
    code, lines = _doctor(capsys, "--check", "prefect", "--prefect-yaml", prefect_yaml)
    assert code == 1
    assert _line(lines, "prefect api").startswith("[ok]")
    line = _line(lines, f"work pool {pool}")
    assert line.startswith("[FAIL]") and f"prefect work-pool create {pool}" in line
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    code, lines = _doctor(capsys, "--check", "prefect", "--prefect-yaml", prefect_yaml)
    line = _line(lines, f"work pool {pool}")
    assert (code, line) == (1, f"[FAIL] work pool {pool}: no worker -> start one: "
                                f"prefect worker start --pool {pool}")  # fmt: skip
    with get_client(sync_client=True) as client:
        client.send_worker_heartbeat(pool, "worker-1", heartbeat_interval_seconds=30)
    code, lines = _doctor(capsys, "--check", "prefect", "--prefect-yaml", prefect_yaml)
    assert code == 0, lines


def test_unreachable_prefect_api_fails_and_no_api_is_ephemeral(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        code, lines = _doctor(capsys, "--check", "prefect")
    assert code == 1
    assert _line(lines, "prefect api").startswith(f"[FAIL] prefect api: {url} is unreachable")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code, lines = _doctor(capsys, "--check", "prefect")
    assert code == 0
    assert _line(lines, "prefect api").startswith("[ok] prefect api: ephemeral")
    assert _line(lines, "work pool") == "[skipped] work pool: no PREFECT_API_URL"

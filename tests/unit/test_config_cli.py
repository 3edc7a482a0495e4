"""The errors a new user meets first, through the real ``audience-lake`` command (a subprocess):
exit status 2 and one line on stderr naming the thing, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("audience-lake"))
SECRETS = {
    "AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET": "s3cret-crm",
    "AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY": "key-us1",
    "AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC": "hmac-key",
    "AUDIENCE_LAKE_SECRET_KLAVIYO_API_KEY": "pk-key",
    "AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN": "hs-token",
}


def run_cli(args: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_LAKE_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        AUDIENCE_LAKE_LAKE_URI=str(tmp_path / "lake"),
        **extra,
    )
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_validate_fails_on_a_missing_secret_naming_it_and_its_variable(tmp_path: Path) -> None:
    config = str(ROOT / "pipeline.yaml")
    all_but_mailchimp = {
        k: v for k, v in SECRETS.items() if k != "AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY"
    }
    line = assert_one_line_error(
        run_cli(["validate", "--config", config], tmp_path, **all_but_mailchimp)
    )
    assert line == (
        f"error: {config}: destinations.mailchimp.api_key: secret 'mailchimp_api_key' is not set "
        "(export AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY)"
    )
    ok = run_cli(["validate", "--config", config], tmp_path, **SECRETS)
    assert ok.returncode == 0 and ": ok (" in ok.stdout, ok.stderr


def test_run_with_a_missing_secret_fails_before_anything_starts(tmp_path: Path) -> None:
    result = run_cli(["run", "--config", str(ROOT / "pipeline.yaml")], tmp_path)
    line = assert_one_line_error(result)
    assert "sources.crm_contacts.auth.client_secret: secret 'crm_client_secret' is not set" in line
    assert "(export AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET)" in line
    assert "destinations.mailchimp.api_key" in line
    assert not (tmp_path / "lake").exists()  # nothing ran


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    primary_key: order_id\n",
            "    primary_key: order_id\n    primary_key: id\n",
            ": sources.orders.primary_key: duplicate key (first defined at line ",
        ),
        ("segments:\n", "segments: [\n", ": not valid YAML: "),
    ],
)
def test_duplicate_keys_and_syntax_errors_are_one_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = (ROOT / "pipeline.yaml").read_text(encoding="utf-8")
    assert old in text
    bad = tmp_path / "pipeline.yaml"
    bad.write_text(text.replace(old, new, 1), encoding="utf-8")
    line = assert_one_line_error(run_cli(["validate", "--config", str(bad)], tmp_path, **SECRETS))
    assert line.startswith(f"error: {bad}: line ")
    assert ", column " in line and expected in line

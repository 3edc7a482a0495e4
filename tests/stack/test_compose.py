"""infra/docker-compose.yml against the compose specification, and what issue 11 demands of it.

No Docker engine runs here, so the file is checked two ways: against the compose specification's
JSON schema (``tests/stack/compose-spec.json``: ``schema/compose-spec.json`` of
https://github.com/compose-spec/compose-spec at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6,
Apache License 2.0, copied unchanged), and structurally: images pinned by digest, healthchecks
with tools the images ship, restart policies, an init that fails loudly, a worker that waits for
healthy dependencies, a sandbox profile whose services the env file points the pipeline at.
``test_stack_e2e.py`` runs the same services natively.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from infra.sandbox.serve import _parse_args, config_list_ids, port_of
from tasks.core.config import load_pipeline
from tests.stack_harness import read_env_file

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
SCHEMA = Path(__file__).with_name("compose-spec.json")
DIGEST = re.compile(r"^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$")
# Images this repository builds itself (infra/Dockerfile); everything pulled is pinned by digest.
BUILT_HERE = "audience-lake:local"
# Services that run once and exit (no healthcheck; compose waits for them to complete).
ONE_SHOT = {"minio-init", "sandbox-data"}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _scripts() -> list[Path]:
    return sorted([*INFRA.glob("bin/*.sh"), *INFRA.glob("minio/*.sh")])


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_the_schema_rejects_what_compose_would_reject() -> None:
    # The check has teeth: an unknown key and a bad depends_on condition fail validation.
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = _compose()
    broken["services"]["worker"]["depends_on"]["prefect-server"]["condition"] = "healthy"
    broken["services"]["minio"]["helthcheck"] = {}
    messages = [e.message for e in validator.iter_errors(broken)]
    assert messages, "the schema accepted an invalid compose file"


def test_every_pulled_image_is_pinned_by_digest() -> None:
    for name, service in _services().items():
        image = service["image"]
        if image == BUILT_HERE:
            assert "build" in service, f"{name}: {image} is built here but has no build"
            continue
        assert DIGEST.match(image), f"{name}: image {image!r} is not pinned by tag@sha256 digest"
    dockerfile = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert base is not None
    # The one base without a verified published digest says so where it is pinned.
    if not DIGEST.match(base.group(1)):
        assert "No published digest" in dockerfile, "an unpinned base must say why"


def test_long_running_services_have_healthchecks_with_shipped_tools_and_restart() -> None:
    for name, service in _services().items():
        assert "restart" in service, f"{name}: no restart policy"
        if name in ONE_SHOT:
            assert service["restart"].startswith("on-failure"), name
            continue
        check = service.get("healthcheck")
        assert check is not None, f"{name}: no healthcheck"
        test = check["test"]
        assert test[0] == "CMD", f"{name}: healthcheck runs through a shell: {test}"
        # curl and wget are not in the MinIO, PostgreSQL-alpine or Prefect images reliably.
        tool = test[1]
        expected = {"minio": "mc", "postgres": "pg_isready"}.get(name, "python")
        assert tool == expected, f"{name}: healthcheck uses {tool!r}, expected {expected!r}"


def test_nothing_hides_a_failure() -> None:
    texts = {COMPOSE.name: COMPOSE.read_text()} | {p.name: p.read_text() for p in _scripts()}
    for name, text in texts.items():
        assert not re.search(r"\|\|\s*(true|:)\b", text), f"{name} swallows a failure"
    for script in _scripts():
        body = [ln for ln in script.read_text().splitlines() if ln and not ln.startswith("#")]
        assert body[0] == "set -eu", f"{script.name}: first command must be `set -eu`"


def test_the_bucket_init_runs_the_checked_script_and_is_idempotent() -> None:
    init = _services()["minio-init"]
    assert init["entrypoint"] == ["/bin/sh", "/init.sh"]
    assert "./minio/init.sh:/init.sh:ro" in init["volumes"]
    script = (INFRA / "minio" / "init.sh").read_text()
    # Each create is guarded by an explicit existence check, never by ignoring its error.
    for create, check in [
        ("mc mb", "mc stat"),
        ("mc admin policy create", "mc admin policy info"),
        ("mc admin user add", "mc admin user info"),
    ]:
        assert create in script and check in script
        assert script.index(check) < script.index(create), f"{create} before {check}"
    assert "--ignore-existing" not in script


def test_worker_waits_for_healthy_dependencies_and_deploys_prefect_yaml() -> None:
    services = _services()
    worker = services["worker"]
    depends = worker["depends_on"]
    assert depends["prefect-server"] == {"condition": "service_healthy"}
    assert depends["minio-init"] == {"condition": "service_completed_successfully"}
    # Present only with the sandbox profile: required false, but waited for when present.
    assert depends["sandbox-apis"] == {"condition": "service_healthy", "required": False}
    assert depends["sandbox-data"]["condition"] == "service_completed_successfully"
    assert worker["command"] == ["/bin/sh", "infra/bin/worker.sh"]
    script = (INFRA / "bin" / "worker.sh").read_text()
    assert "prefect --no-prompt deploy --all" in script
    assert "exec prefect worker start" in script and "--with-healthcheck" in script
    assert services["minio-init"]["depends_on"]["minio"] == {"condition": "service_healthy"}


def test_prefect_server_runs_on_postgresql() -> None:
    services = _services()
    server = services["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert server["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert server["ports"] == ["4200:4200"]  # the UI on localhost:4200


def test_sandbox_profile_provides_every_service_the_env_file_points_at() -> None:
    services = _services()
    sandbox = {name for name, s in services.items() if "sandbox" in s.get("profiles", [])}
    assert sandbox == {"sandbox-data", "sandbox-apis", "events-receiver"}
    env = read_env_file(ENV_EXAMPLE)
    for key in ("AUDIENCE_LAKE_CRM_URL", "AUDIENCE_LAKE_MAILCHIMP_URL"):
        url = env[key]
        host = url.split("//", 1)[1].split(":", 1)[0]
        assert host in sandbox, f".env.example {key}={url}: no sandbox service {host!r}"
        port = port_of(url, 0)
        assert f"{port}:{port}" in services[host]["ports"], f"{key}: {host} does not serve {port}"
    # The sandbox data the sources read lives on a volume the worker and the stand-ins mount.
    data_dir = env["AUDIENCE_LAKE_SANDBOX_DIR"]
    for name in ("worker", "sandbox-data", "sandbox-apis", "events-receiver"):
        assert f"sandbox-data:{data_dir}" in services[name]["volumes"], name
    pipeline = load_pipeline(str(ROOT / "pipeline.yaml"), env=env)
    orders = pipeline.sources["orders"]
    assert data_dir in str(getattr(orders, "url", "")), "orders.db is not under the data dir"


def test_env_example_points_no_source_at_a_real_vendor_without_credentials() -> None:
    env = read_env_file(ENV_EXAMPLE)
    for key, value in env.items():
        if key.endswith("_URL"):
            assert not re.search(r"hubapi\.com|mailchimp\.com", value), f"{key}={value}"
    # Every secret pipeline.yaml names is set (stand-in values), none left empty.
    config = "\n".join(
        line.split("#", 1)[0] for line in (ROOT / "pipeline.yaml").read_text().splitlines()
    )
    secrets = re.findall(r"\{secret:\s*(\w+)\}", config)
    assert secrets, "pipeline.yaml names no secret?"
    keys = [f"AUDIENCE_LAKE_SECRET_{name.upper()}" for name in secrets]
    for key in ["AUDIENCE_LAKE_CRM_CLIENT_ID", *keys]:
        assert env.get(key), f"{key} is empty in .env.example"


def test_env_example_sets_every_variable_compose_requires() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required, "compose requires no variable?"
    missing = required - set(read_env_file(ENV_EXAMPLE))
    assert not missing, f"compose requires {sorted(missing)} but .env.example does not set them"


@pytest.mark.parametrize("lists", [None, "a,b"])
def test_stand_in_serves_the_lists_pipeline_yaml_publishes_to(lists: str | None) -> None:
    env = read_env_file(ENV_EXAMPLE) | {"AUDIENCE_LAKE_HOME": str(ROOT)}
    argv = [] if lists is None else ["--lists", lists]
    args = _parse_args(argv, env)
    assert args.crm_port == 8711 and args.mailchimp_port == 8712
    assert args.client_secret == env["AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET"]
    if lists is None:
        assert args.lists is None
        ids = config_list_ids(args.config)
        configured = load_pipeline(str(ROOT / "pipeline.yaml"), env={}).destinations
        assert set(ids) == {i for d in configured.values() for i in d.list_ids()}

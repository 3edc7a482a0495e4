"""``{secret: NAME}`` from Prefect Secret blocks, against this session's real Prefect server
(``prefect_test_harness``), and a guard that ``prefect.yaml`` passes no secret to a run.

Secrets reach a flow run through the worker's environment or a Secret block, never as a
deployment parameter or a job variable: Prefect stores both with the run and the UI shows them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prefect import flow
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from tasks.core.config import SecretRef
from tasks.core.config_yaml import is_secret_name
from tasks.core.settings import resolve_secret
from tasks.errors import ConfigError
from tasks.secret_blocks import load_secret_block, secret_block_name
from tests.conftest import free_port
from tests.flows.conftest import ROOT

pytestmark = pytest.mark.flow


@pytest.fixture
def secret_in_block() -> Iterator[tuple[SecretRef, str]]:
    """A secret that only a Secret block holds (its variable is not set)."""
    ref = SecretRef(secret=f"block_test_{uuid.uuid4().hex[:8]}")
    value = f"from-the-block-{uuid.uuid4().hex}"
    Secret(value=value).save(secret_block_name(ref.secret), _sync=True)  # type: ignore[call-arg]
    yield ref, value
    with get_client(sync_client=True) as client:
        block = client.read_block_document_by_name(
            secret_block_name(ref.secret), block_type_slug="secret"
        )
        client.delete_block_document(block.id)


def test_block_names_follow_the_secret_names() -> None:
    assert secret_block_name("mailchimp_api_key") == "audience-lake-mailchimp-api-key"


def test_a_secret_missing_from_the_environment_is_read_from_its_block(
    secret_in_block: tuple[SecretRef, str],
) -> None:
    ref, value = secret_in_block
    assert resolve_secret(ref, env={}).get_secret_value() == value


def test_the_environment_wins_over_the_block(secret_in_block: tuple[SecretRef, str]) -> None:
    ref, _ = secret_in_block
    env = {ref.env_var: "from-the-environment"}
    assert resolve_secret(ref, env=env).get_secret_value() == "from-the-environment"


def test_neither_environment_nor_block_is_a_clear_error() -> None:
    ref = SecretRef(secret=f"nowhere_{uuid.uuid4().hex[:8]}")
    with pytest.raises(
        ConfigError, match=f"secret '{ref.secret}' is not set: export {ref.env_var}"
    ):
        resolve_secret(ref, env={})


def test_without_a_prefect_api_no_block_is_looked_up(
    secret_in_block: tuple[SecretRef, str],
) -> None:
    ref, _ = secret_in_block
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert load_secret_block(ref.secret) is None


def test_a_flow_run_reads_the_block_and_the_run_does_not_show_it(
    secret_in_block: tuple[SecretRef, str],
) -> None:
    ref, value = secret_in_block

    @flow(name=f"secret-block-reader-{uuid.uuid4().hex[:6]}")
    def reader(secret: str) -> int:
        return len(resolve_secret(SecretRef(secret=secret), env={}).get_secret_value())

    state = reader(ref.secret, return_state=True)  # type: ignore[call-overload]
    assert state.result() == len(value)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    shown = repr(run.parameters) + repr(run.job_variables) + repr(run.state)
    assert value not in shown


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}", key
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}.{index}")
    else:
        yield path, value


_TEMPLATE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


def _names_a_secret(text: str) -> bool:
    """A key like ``AWS_SECRET_ACCESS_KEY``, or a ``{{ $AWS_SECRET_ACCESS_KEY }}`` template."""
    names = [text, *_TEMPLATE.findall(text)]
    return any(is_secret_name(name) for name in names if re.fullmatch(r"\w+", name))


def test_the_guard_sees_the_usual_way_of_leaking_a_key() -> None:
    leaked = {"env": {"AWS_SECRET_ACCESS_KEY": "{{ $AWS_SECRET_ACCESS_KEY }}"}}
    assert [p for p, item in _walk(leaked, "d.job_variables") if _names_a_secret(str(item))]
    assert not _names_a_secret("PREFECT_SERVER_ANALYTICS_ENABLED")


def test_prefect_yaml_passes_no_secret_as_a_parameter_or_job_variable() -> None:
    document = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    found = []
    for deployment in document["deployments"]:
        for part in ("parameters", "job_variables"):
            sections = [deployment.get(part), (deployment.get("work_pool") or {}).get(part)]
            for section in sections:
                for path, item in _walk(section or {}, f"{deployment['name']}.{part}"):
                    if isinstance(item, str) and _names_a_secret(item):
                        found.append((path, item))
    assert not found, f"prefect.yaml hands secrets to runs the UI shows: {found}"


def test_an_unreachable_prefect_api_is_a_clear_error_naming_the_block() -> None:
    ref = SecretRef(secret="unreachable_key")
    closed = f"http://127.0.0.1:{free_port()}/api"
    unreachable = {PREFECT_API_URL: closed, PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(updates=unreachable), pytest.raises(ConfigError) as caught:
        resolve_secret(ref, env={})
    message = str(caught.value)
    assert message.startswith(
        "secret 'unreachable_key': reading the Prefect Secret block "
        "'audience-lake-unreachable-key' failed: "
    )

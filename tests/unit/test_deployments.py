"""prefect.yaml stays in step with the code: entrypoints exist, parameters are real."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_and_parameters(deployment: dict[str, object]) -> None:
    path, _, name = str(deployment["entrypoint"]).partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert isinstance(flow, Flow)
    accepted = set(inspect.signature(flow.fn).parameters)
    parameters = deployment.get("parameters") or {}
    assert isinstance(parameters, dict)
    assert set(parameters) <= accepted, set(parameters) - accepted


def test_pipeline_is_scheduled_on_a_process_pool() -> None:
    scheduled = [d for d in DEPLOYMENTS if d.get("schedules")]
    assert any(d["entrypoint"] == "flows/pipeline.py:pipeline" for d in scheduled)
    for deployment in scheduled:
        assert deployment["work_pool"]["name"] == "audience-lake"
        for schedule in deployment["schedules"]:
            assert len(schedule["cron"].split()) == 5

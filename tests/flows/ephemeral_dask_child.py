"""Child process of ``test_transform_dask``: a flow on a temporary Prefect server with Dask units.

Run as ``python -m tests.flows.ephemeral_dask_child`` with no ``PREFECT_API_URL``: the flow
submits one unit to a local Dask cluster through :func:`tasks.runners.open_task_runner` and
prints, as JSON, the flow's and the unit's process ids, the API each used, and the state the
flow's own server recorded for the unit's task run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

from tasks.core.config_engine import EngineConfig
from tasks.runners import open_task_runner


@task(name="where-am-i")
def where_am_i() -> dict[str, Any]:
    return {"pid": os.getpid(), "api": get_current_settings().api.url}


@flow(name="ephemeral-dask")
def ephemeral_dask() -> dict[str, Any]:
    with open_task_runner(EngineConfig(task_runner="dask", n_workers=1)) as runner:
        future = runner.submit(where_am_i, parameters={})
        unit = future.result()
    with get_client(sync_client=True) as client:  # the flow's server, not a worker's
        recorded = client.read_task_run(future.task_run_id)
    return {
        "flow_pid": os.getpid(),
        "flow_api": SubprocessASGIServer().api_url,
        "unit_pid": unit["pid"],
        "unit_api": unit["api"],
        "recorded_state": recorded.state.type.value if recorded.state else None,
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(ephemeral_dask()))

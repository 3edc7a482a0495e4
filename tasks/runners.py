"""Task runners: where the transform's independent units of work run (``engine`` in pipeline.yaml).

:func:`open_task_runner` turns :class:`~tasks.core.config_engine.EngineConfig` into a started
Prefect task runner - a thread pool in the flow's process, or a ``prefect-dask``
``DaskTaskRunner`` on a local cluster of worker processes or on an existing cluster by address -
and a flow submits its units to it with ``runner.submit(task, parameters)``.

What crosses to a Dask worker is pickled, so units take small values (the validated config,
names, run ids) and rebuild everything else where they run: the lake adapter from the
``AUDIENCE_LAKE_*``/``AWS_*`` environment of the worker (:func:`tasks.resources.open_lake`),
the contact-key pepper from ``AUDIENCE_LAKE_PEPPER`` there too. No client, connection or
secret travels in a task's parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dask.config
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask.task_runners import DaskTaskRunner

from tasks.core.config_engine import EngineConfig, TaskRunnerKind
from tasks.errors import OrchestratorError

# Worker processes start with `spawn`: the delta-rs runtime does not survive a `fork`.
_SPAWN = {"distributed.worker.multiprocessing-method": "spawn"}


class ClusterUnreachableError(OrchestratorError):
    """The Dask scheduler named by ``engine.dask_address`` did not answer."""


def machine_cores() -> int:
    """CPU cores this process may use (its affinity, where the platform reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def local_cluster_kwargs(engine: EngineConfig) -> dict[str, Any]:
    """Arguments of the ``distributed.LocalCluster`` a run starts: sized to the machine.

    Worker processes (not threads: each unit's polars work holds the GIL little, but its memory
    is released for sure only when a process ends), bound to loopback with no dashboard. Each
    worker's polars thread pool gets its share of the cores, so N workers do not each start a
    pool as large as the machine.
    """
    cores = machine_cores()
    workers = engine.n_workers or cores
    env = (
        {}
        if "POLARS_MAX_THREADS" in os.environ
        else {"POLARS_MAX_THREADS": str(max(1, cores // workers))}
    )
    return {
        "n_workers": workers,
        "threads_per_worker": engine.threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        # No dashboard, and the scheduler's HTTP routes (/metrics, /health) on a free port:
        # with no address the scheduler binds 8787, and a second cluster on the machine (another
        # flow run) would only get a fallback port with a warning.
        "dashboard_address": "127.0.0.1:0",
        "scheduler_kwargs": {"dashboard": False},
        "memory_limit": engine.memory_limit or "auto",
        "env": env,
    }


def _inline(engine: EngineConfig) -> TaskRunner[Any]:
    return ThreadPoolTaskRunner(max_workers=1)


def _threads(engine: EngineConfig) -> TaskRunner[Any]:
    return ThreadPoolTaskRunner(max_workers=engine.n_workers or machine_cores())


def _dask(engine: EngineConfig) -> TaskRunner[Any]:
    if engine.dask_address is not None:
        return DaskTaskRunner(
            address=engine.dask_address,
            client_kwargs={"timeout": engine.connect_timeout_seconds},
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(engine)
    )


TASK_RUNNERS: dict[TaskRunnerKind, Callable[[EngineConfig], TaskRunner[Any]]] = {
    "inline": _inline,
    "threads": _threads,
    "dask": _dask,
}


def units_ahead(engine: EngineConfig) -> int | None:
    """How many units a build may have running while it commits another's results: the
    runner's width where units run in the flow's process (inline: 1, threads: their number),
    so the flow never holds more buckets than it computes at once; None (no limit) on Dask,
    whose workers are other processes, each running its own units one by one."""
    if engine.task_runner == "inline":
        return 1
    if engine.task_runner == "threads":
        return engine.n_workers or machine_cores()
    return None


def task_runner_for(engine: EngineConfig) -> TaskRunner[Any]:
    """The (not yet started) task runner ``engine`` asks for."""
    return TASK_RUNNERS[engine.task_runner](engine)


@contextmanager
def open_task_runner(engine: EngineConfig) -> Iterator[TaskRunner[Any]]:
    """A started task runner for the units of one run; a local cluster is stopped on exit.

    A Dask runner connects (or starts its local cluster) here, before any unit is submitted, so
    an unreachable ``dask_address`` fails the run at once with the address in the message.

    Raises:
        ClusterUnreachableError: the scheduler at ``engine.dask_address`` did not answer.
    """
    runner = task_runner_for(engine)
    with _prefect_api_for_workers(engine), dask.config.set(_SPAWN), runner:
        if isinstance(runner, DaskTaskRunner):
            _connect(runner, engine)
        yield runner


@contextmanager
def _prefect_api_for_workers(engine: EngineConfig) -> Iterator[None]:
    """Make the Prefect API the flow talks to one its Dask workers can name.

    Workers report their task runs to the API in the settings the flow sends them. A flow run
    without ``PREFECT_API_URL`` talks to a temporary server on loopback whose address the
    settings do not hold, and each worker would start a temporary server of its own (seconds
    of start-up, and task runs recorded where nobody looks): name the flow's server instead.
    Workers elsewhere cannot reach a loopback server at all, so that is refused up front.
    """
    url = None if engine.task_runner != "dask" else _temporary_server_url()
    if url is None:
        yield
        return
    if engine.dask_address is not None and not _is_loopback(engine.dask_address):
        raise OrchestratorError(
            f"engine.dask_address {engine.dask_address}: the Dask workers must report to a "
            "Prefect server they can reach, and this run uses a temporary one on loopback; "
            "set PREFECT_API_URL to a Prefect server (or run the flow on a work pool)"
        )
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _temporary_server_url() -> str | None:
    """The API URL of the temporary local server this process runs flows on, if it does."""
    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one instance a flow run without an API URL started
    return server.api_url if server.server_process is not None else None


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in {"127.0.0.1", "localhost", "::1"}


def _connect(runner: DaskTaskRunner, engine: EngineConfig) -> None:
    try:
        runner.client  # noqa: B018 - connects, or starts the local cluster
    except OSError as exc:  # distributed's connect timeout is an OSError
        if engine.dask_address is None:
            raise
        raise ClusterUnreachableError(
            f"Dask scheduler at {engine.dask_address} (engine.dask_address in pipeline.yaml) "
            f"did not answer within {engine.connect_timeout_seconds:g} s: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; start the "
            "cluster, fix the address, or set engine.task_runner to inline"
        ) from exc

"""Bucket units on a runner in the flow's process: none is computed while another is committed.

A full build in buckets submits its units to the task runner and commits their results in
order (:func:`tasks.transform._in_order`). On the inline runner (one thread in the flow's
process) a unit submitted ahead would be computed while the flow commits the previous one:
two buckets in memory. Real Prefect task runs on real runners; each unit and each "commit"
(a pause in the caller) records when it ran, and the test compares the intervals.
"""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.core.config_engine import EngineConfig
from tasks.runners import units_ahead
from tasks.transform import _in_order

pytestmark = pytest.mark.flow

_LOCK = threading.Lock()
_RUNS: list[tuple[str, int, float, float]] = []  # (what, job, started, ended)
UNIT_S, COMMIT_S, JOBS = 0.2, 0.3, 4


def _record(what: str, job: int, started: float) -> None:
    with _LOCK:
        _RUNS.append((what, job, started, time.monotonic()))


@task(cache_policy=NO_CACHE)
def unit(job: int) -> int:
    started = time.monotonic()
    time.sleep(UNIT_S)
    _record("unit", job, started)
    return job


@flow
def build(width: int, ahead: int | None) -> list[int]:
    done = []
    runner: ThreadPoolTaskRunner[int] = ThreadPoolTaskRunner(max_workers=width)
    with runner:
        for result in _in_order(runner, unit, list(range(JOBS)), ahead=ahead):
            started = time.monotonic()
            time.sleep(COMMIT_S)  # the commit of ``result``, in the flow's process
            _record("commit", result, started)
            done.append(result)
    return done


def most_at_once(runs: list[tuple[str, int, float, float]]) -> int:
    """The most units and commits running at the same moment."""
    edges = sorted(
        [(start, 1) for _, _, start, _ in runs] + [(end, -1) for _, _, _, end in runs],
        key=lambda edge: (edge[0], edge[1]),
    )
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize(
    ("engine", "width", "expected"),
    [
        (EngineConfig(task_runner="inline"), 1, 1),
        (EngineConfig(task_runner="threads", n_workers=2), 2, 2),
    ],
)
def test_the_flow_holds_no_more_buckets_than_its_runner_runs(
    engine: EngineConfig, width: int, expected: int
) -> None:
    _RUNS.clear()
    assert build(width, units_ahead(engine)) == list(range(JOBS))
    assert most_at_once(_RUNS) == expected, sorted(_RUNS, key=lambda r: r[2])
    # Without the window every unit is submitted at once: one is computed beside a commit.
    _RUNS.clear()
    assert build(width, None) == list(range(JOBS))
    assert most_at_once(_RUNS) == expected + 1


def test_dask_units_are_all_submitted_at_once() -> None:
    """Dask workers are other processes: the flow holds only the bucket it commits."""
    assert units_ahead(EngineConfig(task_runner="dask")) is None

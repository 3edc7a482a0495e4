"""Dask benchmark: the transform flow with its units inline vs on a 2-worker local Dask cluster.

Not a test. Generates ``--contacts`` people into a local lake's bronze
(:mod:`benchmarks.bronze_gen`), copies it once per mode and runs the real ``transform`` flow
(Prefect, temporary local server) on each copy in a fresh ``spawn`` process:

* ``inline``: every unit in the flow's process (``engine: {task_runner: inline}``);
* ``dask (cluster given)``: a ``LocalCluster`` of ``--workers`` processes started beforehand
  (its start-up timed apart) and named by address, as a team's cluster would be; then a
  ``full_refresh`` run on the same, now warm, workers (imports done, Prefect client up); after
  both, each worker reports its own peak RSS;
* ``dask (run starts it)``: ``engine: {task_runner: dask, n_workers: N}`` - the run starts and
  stops its cluster, start-up included in the wall time.

Every mode talks to one temporary Prefect server the benchmark starts (not counted); wall is
the flow call; staging, silver and gold are the spans of its units' task runs - ``stage-<role>``,
``silver-bucket-<n>``, ``gold-metrics-<n>`` with ``gold-bucket-<n>`` - first start to last end,
as Prefect recorded them (a unit's wait for a worker and the worker's imports come before; a
full build has buckets when the lake is large enough or ``--buckets`` asks for them), peak
MB is the high-water mark (``VmHWM``, :mod:`benchmarks.peak`) of the flow's process and, for
the given cluster, of each worker. The tables of every mode are compared with the inline
run's.

    .venv/bin/python -m benchmarks.dask_bench --contacts 20000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bronze_parts import generate
from benchmarks.peak import peak_mb
from benchmarks.transform_bench import AS_OF, CONFIG, PEPPER, compare_tables

MODES = ("inline", "dask (cluster given)", "dask (run starts it)")


def _config_file(work: Path, engine: dict[str, Any]) -> str:
    import yaml

    raw = yaml.safe_load(Path(CONFIG).read_text())
    raw["engine"] = engine
    path = work / f"pipeline-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


# The units of a run, by the start of their task run names: staging roles, silver buckets, and
# gold's two passes per bucket.
UNITS = {"staging": "stage-", "silver": "silver-bucket-", "gold": "gold-"}


def _timed_transform(config: str, *, full_refresh: bool = False) -> dict[str, Any]:
    """The flow's wall time, and per kind of unit the span of its task runs (first start to
    last end) and their number."""
    from flows.transform import transform

    started = time.perf_counter()
    report = transform(config_path=config, as_of=AS_OF, full_refresh=full_refresh)
    return {"wall": time.perf_counter() - started, **_unit_spans(report.run_id)}


def _unit_spans(flow_run_id: str) -> dict[str, Any]:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            limit=200,
        )
    spans: dict[str, Any] = {}
    for kind, prefix in UNITS.items():
        units = [r for r in runs if r.name.startswith(prefix) and r.start_time and r.end_time]
        spans[kind] = (
            (max(r.end_time for r in units) - min(r.start_time for r in units)).total_seconds()
            if units
            else float("nan")
        )
        spans[f"{kind}_units"] = len(units)
    return spans


def lake_dir(work: Path, mode: str) -> Path:
    """The copy of bronze a mode transforms."""
    return work / mode.replace(" ", "_").replace("(", "").replace(")", "")


def _mode(name: str, work: str, workers: int, buckets: int | None) -> dict[str, Any]:
    root = Path(work)
    sized = {} if buckets is None else {"buckets": buckets}
    lake = lake_dir(root, name)
    os.environ["AUDIENCE_LAKE_LAKE_URI"] = str(lake)
    os.environ.setdefault("AUDIENCE_LAKE_PEPPER", PEPPER)
    if name == "inline":
        timed = _timed_transform(_config_file(root, {"task_runner": "inline", **sized}))
        return {**timed, "peak_mb": peak_mb(), "lake": str(lake)}
    if name == "dask (run starts it)":
        config = _config_file(root, {"task_runner": "dask", "n_workers": workers, **sized})
        return {**_timed_transform(config), "peak_mb": peak_mb(), "lake": str(lake)}

    import dask.config
    from distributed import Client, LocalCluster

    from tasks.core.config_engine import EngineConfig
    from tasks.runners import local_cluster_kwargs

    started = time.perf_counter()
    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}),
        LocalCluster(**local_cluster_kwargs(EngineConfig(n_workers=workers))) as cluster,
        Client(cluster) as client,
    ):
        startup = time.perf_counter() - started
        config = _config_file(
            root, {"task_runner": "dask", "dask_address": cluster.scheduler_address, **sized}
        )
        timed = _timed_transform(config)
        warm = _timed_transform(config, full_refresh=True)  # the same workers, imports done
        worker_peaks = client.run(peak_mb)
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    return {
        **timed,
        "startup": startup,
        "warm": warm,
        "peak_mb": peak_mb(),
        "worker_peak_mb": sorted(worker_peaks.values()),
        "executed": sorted(executed.values()),
        "lake": str(lake),
    }


def _child(name: str, work: str, workers: int, buckets: int | None, conn: Any) -> None:
    try:
        conn.send(_mode(name, work, workers, buckets))
    except BaseException as exc:  # report, don't hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def run_isolated(
    name: str, work: Path, workers: int, timeout: float, buckets: int | None = None
) -> dict[str, Any]:
    """Run one mode in a fresh spawned process (its own peak RSS; delta-rs needs spawn)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(name, str(work), workers, buckets, send))
    process.start()
    result: dict[str, Any] = (
        receive.recv() if receive.poll(timeout) else {"error": f"timed out after {timeout:.0f} s"}
    )
    if process.is_alive() and "error" in result:
        process.terminate()
    process.join(60)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mode")
    parser.add_argument(
        "--buckets",
        type=int,
        help="engine.buckets for every mode (default: sized to the lake, one silver bucket per "
        "2 M staged rows and one gold bucket per 250,000 contacts)",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dask-bench-"))
    print(f"dask benchmark: {args.contacts:,} contacts, {args.workers} workers, work dir {work}")
    print(f"machine: {os.cpu_count()} CPU(s)")
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    try:
        harness = prefect_test_harness(server_startup_timeout=180)
        harness.__enter__()
        os.environ["PREFECT_API_URL"] = str(get_current_settings().api.url)
        rows, seconds = generate(work, args.contacts, args.seed)
        print(f"bronze: {sum(rows.values()):,} rows (generated in {seconds:.1f} s)")
        results: dict[str, dict[str, Any]] = {}
        for name in MODES:
            shutil.copytree(work / "bronze", lake_dir(work, name))
            print(f"running {name} ...", flush=True)
            results[name] = run_isolated(name, work, args.workers, args.timeout, args.buckets)
        print()
        print(
            f"{'mode':<22} {'wall s':>7} {'staging s':>9} {'silver s':>8} {'gold s':>7} "
            f"{'flow MB':>8}  workers' peak MB    same tables"
        )
        for name, result in results.items():
            if "error" in result:
                print(f"{name:<22} FAILED: {result['error']}")
                continue
            lake = Path(result["lake"])
            peaks = ", ".join(f"{mb:.0f}" for mb in result.get("worker_peak_mb", [])) or "-"
            differ = [] if name == "inline" else compare_tables(lake_dir(work, "inline"), lake)
            same = "-" if name == "inline" else "NO: " + ", ".join(differ) if differ else "yes"
            figures = (
                f"{result['wall']:>7.1f} {result['staging']:>9.1f} {result['silver']:>8.1f} "
                f"{result['gold']:>7.1f} {result['peak_mb']:>8.0f}"
            )
            print(f"{name:<22} {figures}  {peaks:<18} {same}")
            if name == "inline":
                counts = ", ".join(f"{result[f'{k}_units']} {k}" for k in UNITS)
                print(f"{'':<22} units per run: {counts}")
            if "startup" in result:
                print(
                    f"{'':<22} cluster start-up {result['startup']:.1f} s (not in wall); "
                    f"units per worker {result['executed']}"
                )
                warm = result["warm"]
                print(
                    f"{'':<22} again on the warm workers (full_refresh): wall "
                    f"{warm['wall']:.1f} s, staging {warm['staging']:.1f} s, silver "
                    f"{warm['silver']:.1f} s, gold {warm['gold']:.1f} s"
                )
    finally:
        harness.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Transform benchmark: the project's transform against the same computation in bare polars,
DuckDB SQL and pandas, and an incremental run after 1 % of the contacts change.

Not a test. Generates ``--contacts`` people with proportional orders (~1.5 each), events (~5)
and enrichment rows (~0.4) straight into a local lake's bronze tables (vectorised polars,
:mod:`benchmarks.bronze_gen`), then runs each contender in a fresh ``spawn`` subprocess, so
every peak-memory figure (``VmHWM`` of that process, interpreter and imports included:
:mod:`benchmarks.peak`) is its own, and prints them side by side:

* ``audience-lake full``: the real code path - ``stage_bronze`` + ``build_silver_tables`` +
  ``build_gold_tables`` + ``record_transform_state`` from :mod:`tasks.engine` (the functions
  the Prefect tasks of :mod:`tasks.transform` wrap), *without* Prefect: no server, no task
  runs. Contracts, quarantine, the staging log and Delta MERGEs included, on an empty lake (a
  first run).
* ``bare polars`` / ``DuckDB SQL`` / ``pandas``: the same computation written directly
  (:mod:`benchmarks.contenders`), reading the same bronze files and writing the
  five result tables to files; no contracts, no quarantine, no state for the next run.
* ``audience-lake incremental``: after ``--change`` (default 1 %) of the people got CRM edits
  (a third change email, a third opt out, a third rename), new and refunded orders, new events
  and enrichment rows - written to bronze the way ingest writes them (MERGE on the key for CRM
  and orders, insert-new for events, an appended file for enrichment, the change data feed on)
  - the same functions run incrementally on the lake the full run left, reading bronze's
  changes from the feed.

With ``--verify`` a full refresh of the changed lake also runs and every silver/gold table is
compared with the incremental result (they must be identical).

    .venv/bin/python -m benchmarks.transform_bench --contacts 100000
    .venv/bin/python -m benchmarks.transform_bench --contacts 1000000 --skip pandas
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bronze_parts import apply_change, bronze_for, record_changes
from benchmarks.peak import peak_mb

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
CONTENDERS = ("audience-lake full", "bare polars", "DuckDB SQL", "pandas")
INCREMENTAL = "audience-lake incremental"
BRONZE = ("crm_contacts", "orders", "web_events", "enrichment")
CONFIG = str(Path(__file__).resolve().parents[1] / "pipeline.yaml")
PEPPER = "benchmark-pepper"
BUCKETED = "audience-lake full, buckets="


def _config() -> Any:
    from tasks.core.config import load_pipeline

    return load_pipeline(CONFIG, env={})


def _project(lake_dir: str, *, full_refresh: bool, buckets: int | None = None) -> dict[str, Any]:
    """The project's transform functions on ``lake_dir`` (no Prefect); ``buckets`` overrides
    ``engine.buckets`` (None: the configuration's, by default sized to the lake)."""
    from tasks.connectors.lake import Lake
    from tasks.engine.gold import build_gold_tables
    from tasks.engine.roles import stage_bronze
    from tasks.engine.silver import build_silver_tables
    from tasks.engine.state import record_transform_state

    logger = logging.getLogger("transform_bench")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    lake, config, now = Lake(lake_dir), _config(), datetime.now(UTC)
    if buckets is not None:
        config = config.model_copy(
            update={"engine": config.engine.model_copy(update={"buckets": buckets})}
        )
    started = time.perf_counter()
    staging = stage_bronze(
        lake, config, run_id="bench", now=now, full_refresh=full_refresh, logger=logger
    )
    staged, peaks = time.perf_counter(), {"staging": peak_mb()}
    _progress(lake_dir, "staging", staged - started, peaks["staging"])
    silver = build_silver_tables(
        lake,
        config,
        staging=staging,
        run_id="bench",
        now=now,
        as_of=AS_OF,
        full_refresh=full_refresh,
        logger=logger,
    )
    built, peaks["silver"] = time.perf_counter(), peak_mb()
    _progress(lake_dir, "silver", built - staged, peaks["silver"])
    gold = build_gold_tables(
        lake,
        config,
        as_of=AS_OF,
        run_id="bench",
        now=now,
        contact_keys=silver.contact_keys,
        logger=logger,
    )
    if silver.state is not None:
        record_transform_state(lake, silver.state, run_id=f"bench-{now:%H%M%S%f}")
    done, peaks["gold"] = time.perf_counter(), peak_mb()
    _progress(lake_dir, "gold", done - built, peaks["gold"])
    sizes = gold.audience_sizes
    from tasks.core.tables import CONTACTS, EVENTS, FEATURES, ORDERS

    return {
        "wall": done - started,
        "stages": {
            "staging": staged - started,
            "silver": built - staged,
            "gold": done - built,
        },
        "peaks": peaks,
        "mode": silver.mode,
        "rebuilt": None if silver.contact_keys is None else len(silver.contact_keys),
        "checked": sum(staging.checked.values()),
        "counts": {
            "contacts": lake.count(CONTACTS),
            "orders": lake.count(ORDERS),
            "events": lake.count(EVENTS),
            "features": lake.count(FEATURES),
            "audience": {k: v for k, v in sorted(sizes.items()) if v},
            "lifetime_value": round(
                float(lake.read(FEATURES, columns=["lifetime_value"]).sum().item()), 2
            ),
        },
    }


def _progress(lake_dir: str, stage: str, seconds: float, peak: float) -> None:
    """A stage's line as it ends (a run at 10 M people takes hours)."""
    print(
        f"  {Path(lake_dir).name}: {stage} done in {seconds:.1f} s, peak {peak:,.0f} MB "
        f"({datetime.now(UTC):%H:%M:%S} UTC)",
        flush=True,
    )


def _contender(name: str, work: str) -> dict[str, Any]:
    """Run one contender (in its own process) and return its figures."""
    os.environ.setdefault("AUDIENCE_LAKE_PEPPER", PEPPER)
    root = Path(work)
    if name.startswith(BUCKETED):
        buckets = int(name.removeprefix(BUCKETED))
        result = _project(str(root / f"buckets-{buckets}"), full_refresh=True, buckets=buckets)
        result["peak_mb"] = peak_mb()
        return result
    if name in ("audience-lake full", INCREMENTAL, "full refresh (verify)"):
        lake = {
            "audience-lake full": "project",
            INCREMENTAL: "incremental",
            "full refresh (verify)": "verify",
        }[name]
        result = _project(str(root / lake), full_refresh=name != INCREMENTAL)
        result["peak_mb"] = peak_mb()
        return result

    from benchmarks.contenders import bare_polars, duckdb_sql, pandas_transform

    config = _config()
    out = root / "out" / name.split()[-1].lower()
    out.mkdir(parents=True, exist_ok=True)
    bronze = {s: str(root / "bronze" / "bronze" / s) for s in BRONZE}
    started = time.perf_counter()
    if name == "bare polars":
        counts = bare_polars(bronze, out, config, PEPPER.encode(), AS_OF)
    elif name == "DuckDB SQL":
        from tasks.connectors.lake import Lake

        lake = Lake(str(root / "bronze"))
        files = {s: lake.file_uris(f"bronze/{s}") for s in BRONZE}
        counts = duckdb_sql(files, out, config, PEPPER.encode(), AS_OF)
    else:
        counts = pandas_transform(bronze, out, config, PEPPER.encode(), AS_OF)
    wall = time.perf_counter() - started
    counts["audience"] = {k: v for k, v in sorted(counts["audience"].items()) if v}
    return {"wall": wall, "peak_mb": peak_mb(), "counts": counts}


def _child(target: Callable[..., dict[str, Any]], args: tuple[Any, ...], conn: Any) -> None:
    try:
        conn.send(target(*args))
    except BaseException as exc:  # report, don't hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def run_spawned(
    target: Callable[..., dict[str, Any]], *args: Any, timeout: float | None = None
) -> dict[str, Any]:
    """``target(*args)`` in a fresh spawned process (its own peak; delta-rs needs spawn): its
    result, with ``process_wall``. A process past ``timeout`` is terminated, and one that ends
    without answering (killed, out of memory) gives an error naming its exit code."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, args, send))
    started = time.perf_counter()
    process.start()
    send.close()  # the child's end only: a child that dies without sending reads as EOF
    result: dict[str, Any] = {}
    if receive.poll(timeout):
        with contextlib.suppress(EOFError):
            result = receive.recv()
    else:
        process.terminate()
        result = {"error": f"timed out after {timeout:.0f} s"}
    process.join(30)
    if not result:
        result = {"error": f"the process ended with exit code {process.exitcode}, no result"}
    result.setdefault("process_wall", time.perf_counter() - started)
    return result


def run_isolated(name: str, work: Path, timeout: float) -> dict[str, Any]:
    """Run a contender in a fresh spawned process (:func:`run_spawned`)."""
    return run_spawned(_contender, name, str(work), timeout=timeout)


LAKES = ("project", "incremental", "verify")


def compare_tables(left: Path, right: Path) -> list[str]:
    """Silver/gold tables (and staged rows) that differ between two lakes."""
    import polars as pl

    from tasks.connectors.lake import Lake
    from tasks.core.incremental import live_rows
    from tasks.core.tables import AUDIENCE, CONTACTS, EVENTS, FEATURES, ORDERS, STAGED

    a, b = Lake(str(left)), Lake(str(right))
    differ = []
    for table in (CONTACTS, ORDERS, EVENTS, FEATURES, AUDIENCE, *STAGED.values()):

        def rows(lake: Lake, table: str = table) -> pl.DataFrame:
            frame = lake.scan(table)
            if table in STAGED.values():
                frame = live_rows(frame).drop("_ingested_at")
            return frame.collect().sort(pl.all())

        if not rows(a).equals(rows(b)):
            differ.append(table)
    return differ


def _fmt_counts(counts: dict[str, Any]) -> str:
    audience = sum(counts["audience"].values())
    return (
        f"{counts['contacts']:>9,} {counts['orders']:>9,} {counts['events']:>10,} "
        f"{counts['features']:>9,} {audience:>8,} {counts['lifetime_value']:>16,.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--change", type=float, default=0.01, help="share of people changed")
    parser.add_argument("--skip", nargs="*", default=[], choices=["polars", "duckdb", "pandas"])
    parser.add_argument("--verify", action="store_true", help="also compare with a full refresh")
    parser.add_argument(
        "--buckets",
        type=int,
        nargs="*",
        default=[],
        help="also run the full transform with engine.buckets set to each of these numbers "
        "(1: one pass), each on its own copy of bronze",
    )
    parser.add_argument(
        "--compare-buckets",
        action="store_true",
        help="compare every table of each --buckets run with audience-lake full's (the "
        "configured number of buckets), row for row",
    )
    parser.add_argument("--work", help="working directory (default: a temporary one, removed)")
    parser.add_argument(
        "--reuse-bronze",
        action="store_true",
        help="with --work: keep the bronze an earlier run generated there for the same "
        "--contacts and --seed (10 M people take minutes to generate)",
    )
    parser.add_argument(
        "--incremental-only",
        action="store_true",
        help="with --work and --reuse-bronze: run only the incremental, on a copy of the "
        "project lake an earlier full run left there (10 M people take over an hour in full)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per contender")
    args = parser.parse_args(argv)
    if args.incremental_only and not (args.work and args.reuse_bronze):
        parser.error("--incremental-only needs --work and --reuse-bronze")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="transform-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"transform benchmark: {args.contacts:,} contacts, seed {args.seed}, work dir {work}")
    print(f"machine: {os.cpu_count()} CPU(s), python {sys.version.split()[0]}")
    try:
        rows, seconds = bronze_for(work, args.contacts, args.seed, reuse=args.reuse_bronze)
        print(
            "bronze: "
            + ", ".join(f"{t.split('/')[1]} {n:,}" for t, n in rows.items())
            + f" rows ({sum(rows.values()):,} in all; "
            + (f"generated and written in {seconds:.1f} s)" if seconds else "reused)")
        )
        if args.incremental_only and not (seconds == 0 and (work / "project").is_dir()):
            raise SystemExit(f"--incremental-only: no full run's project lake in {work}")
        kept = ("project",) if args.incremental_only else ()
        for old in (*LAKES, *(f"buckets-{b}" for b in args.buckets)):
            if old not in kept:
                shutil.rmtree(work / old, ignore_errors=True)
        if not args.incremental_only:
            shutil.copytree(work / "bronze", work / "project")
            record_changes(work / "project", BRONZE)
        skipped = {"polars": "bare polars", "duckdb": "DuckDB SQL", "pandas": "pandas"}
        names = [n for n in CONTENDERS if n not in {skipped[s] for s in args.skip}]
        names = [] if args.incremental_only else names
        results: dict[str, dict[str, Any]] = {}
        for buckets in args.buckets:
            shutil.copytree(work / "bronze", work / f"buckets-{buckets}")
            names.append(f"{BUCKETED}{buckets}")
        for name in names:
            print(f"running {name} ...", flush=True)
            results[name] = run_isolated(name, work, args.timeout)
            _finished(name, results[name])
        if args.compare_buckets:
            for buckets in args.buckets:
                differ = compare_tables(work / "project", work / f"buckets-{buckets}")
                print(
                    f"buckets: {buckets} == the configured number for every silver/gold table "
                    "and staged rows"
                    if not differ
                    else f"buckets: {buckets}: DIFFERENT tables: {differ}"
                )
        if args.incremental_only or "error" not in results.get("audience-lake full", {"error": ""}):
            shutil.copytree(work / "project", work / "incremental")
            changed, ingest_s = apply_change(
                work / "incremental", args.contacts, args.seed, args.change
            )
            print(
                f"change of {args.change:.0%} of the people written to bronze in {ingest_s:.1f} s: "
                + ", ".join(f"{t.split('/')[1]} {n:,}" for t, n in changed.items())
                + " rows"
            )
            if args.verify:
                shutil.copytree(work / "incremental", work / "verify")
            print(f"running {INCREMENTAL} ...", flush=True)
            results[INCREMENTAL] = run_isolated(INCREMENTAL, work, args.timeout)
            _finished(INCREMENTAL, results[INCREMENTAL])
            if args.verify:
                print("running full refresh (verify) ...", flush=True)
                results["full refresh (verify)"] = run_isolated(
                    "full refresh (verify)", work, args.timeout
                )
                _finished("full refresh (verify)", results["full refresh (verify)"])
        report(results, args)
        if args.verify and "full refresh (verify)" in results:
            differ = compare_tables(work / "incremental", work / "verify")
            print(
                "verify: incremental == full refresh for every silver/gold table and staged rows"
                if not differ
                else f"verify: DIFFERENT tables: {differ}"
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _finished(name: str, result: dict[str, Any]) -> None:
    """A contender's figures as soon as it ends; the table comes at the end."""
    if "error" in result:
        print(f"  {name}: FAILED: {result['error']}", flush=True)
    else:
        print(f"  {name}: {result['wall']:.1f} s, peak {result['peak_mb']:,.0f} MB", flush=True)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    base = results.get("audience-lake full", {}).get("wall")
    print()
    print(
        f"{'contender':<32} {'wall s':>8} {'peak MB':>8} {'vs full':>8}   "
        f"{'contacts':>9} {'orders':>9} {'events':>10} {'features':>9} {'audience':>8} "
        f"{'lifetime value':>16}"
    )
    for name, result in results.items():
        if "error" in result:
            print(f"{name:<32} FAILED: {result['error']}")
            continue
        ratio = f"{result['wall'] / base:7.2f}x" if base else "     n/a"
        print(
            f"{name:<32} {result['wall']:8.1f} {result['peak_mb']:8.0f} {ratio:>8}   "
            + _fmt_counts(result["counts"])
        )
    for name, result in results.items():
        if "stages" in result:
            stages = ", ".join(
                f"{k} {v:.1f} s (peak {result['peaks'][k]:,.0f} MB)"
                for k, v in result["stages"].items()
            )
            extra = (
                f"; {result['checked']:,} bronze rows normalised and checked, "
                f"{'all' if result['rebuilt'] is None else format(result['rebuilt'], ',')} "
                "contacts rebuilt"
            )
            print(f"  {name}: {stages}{extra} (silver mode: {result['mode']})")
    full, incremental = results.get("audience-lake full", {}), results.get(INCREMENTAL, {})
    if "wall" in full and "wall" in incremental:
        print(
            f"incremental after a {args.change:.0%} change: {incremental['wall']:.1f} s vs "
            f"{full['wall']:.1f} s full = {full['wall'] / incremental['wall']:.1f}x faster"
        )
    contenders = {
        n: r
        for n, r in results.items()
        if "counts" in r and (n in CONTENDERS or n.startswith(BUCKETED))
    }
    counts = {
        n: {k: v for k, v in r["counts"].items() if k != "lifetime_value"}
        for n, r in contenders.items()
    }
    agree = len({repr(c) for c in counts.values()}) <= 1
    print(
        "row counts (contacts, orders, events, features, audience per segment): "
        + ("identical across contenders" if agree else "DIFFER: " + repr(counts))
    )


RunFn = Callable[[str, str], dict[str, Any]]

if __name__ == "__main__":
    raise SystemExit(main())

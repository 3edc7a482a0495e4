"""Erasure benchmark: erase ``--erase`` people from a lake of ``--contacts`` people.

Not a test. Three steps, each in a fresh ``spawn`` process so each peak-memory figure
(``VmHWM``, :mod:`benchmarks.peak`: interpreter and imports included) is the step's own:

1. **build**: bronze from :mod:`benchmarks.bronze_gen` (change data feed on, as ingest creates
   it), then one full transform with the project's functions (no Prefect).
2. **erase**: one :func:`tasks.erasure.erase_people` call for a random sample of the contacts
   (no platform configured: this measures the lake): delete from every table, purge every
   table's history.
3. **next transform**: the run after the erasure (an erasure changes silver and gold outside a
   build, so it is a full rebuild).

Then the **proof scan**: every object under the lake root (data files decoded, Delta log JSON
and checkpoints, change data files) is searched for the erased people's emails and phone
numbers, in any case (names are not unique in the generated data, so they prove nothing here).

Prints the erasure's time, rows deleted, data files rewritten, objects deleted from storage,
bytes written and deleted, each step's wall time and peak memory, and the scan's result.

    .venv/bin/python -m benchmarks.erase_bench --contacts 20000 --erase 100
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.peak import peak_mb
from benchmarks.transform_bench import AS_OF, PEPPER, _config, _project

MIB = 1024 * 1024


def _build(lake_dir: str, contacts: int, seed: int) -> dict[str, Any]:
    """Bronze with the change data feed on, then one full transform."""
    from benchmarks.bronze_gen import bronze_tables
    from tasks.connectors.lake import Lake

    started = time.perf_counter()
    lake = Lake(lake_dir)
    rows = 0
    for table, frame in bronze_tables(contacts, seed).items():
        rows += frame.height
        lake.overwrite(table, frame)
        lake.enable_change_feed(table)
    transform = _project(lake_dir, full_refresh=True)
    return {"wall": time.perf_counter() - started, "bronze_rows": rows, "transform": transform}


def _people(lake_dir: str, erase: int, seed: int) -> dict[str, Any]:
    """A random sample of silver contacts: their emails and phones (the scan's needles)."""
    import polars as pl

    from tasks.connectors.lake import Lake
    from tasks.core.tables import CONTACTS

    sample = (
        Lake(lake_dir).read(CONTACTS, columns=["email", "phone"]).sample(erase, seed=seed)
    ).with_columns(pl.col("phone").str.replace_all(r"\D", "").alias("digits"))
    return {
        "emails": sample.get_column("email").to_list(),
        "phones": [p for p in sample.get_column("digits").to_list() if p and len(p) >= 8],
    }


def _erase(lake_dir: str, emails: list[str]) -> dict[str, Any]:
    """One erasure of ``emails`` (no platform configured)."""
    from tasks.connectors.lake import Lake
    from tasks.erasure import erase_people
    from tasks.resources import pepper

    config = _config().model_copy(update={"destinations": {}})
    secret, version = pepper()
    started = time.perf_counter()
    receipts = erase_people(
        Lake(lake_dir),
        config,
        emails,
        pepper=secret,
        version=version,
        run_id="erase-bench",
        now=datetime.now(UTC),
        log=lambda _: None,
    )
    first = receipts[0]
    return {
        "wall": time.perf_counter() - started,
        "people": len(receipts),
        "statuses": sorted({r.status for r in receipts}),
        "rows_deleted": first.rows_deleted,
        "files_rewritten": first.files_rewritten,
        "files_deleted": first.files_deleted,
        "tables": first.tables,
    }


def _next_transform(lake_dir: str) -> dict[str, Any]:
    return _project(lake_dir, full_refresh=False)


def _child(target: Callable[..., dict[str, Any]], args: tuple[Any, ...], conn: Any) -> None:
    os.environ.setdefault("AUDIENCE_LAKE_PEPPER", PEPPER)
    try:
        result = target(*args)
        result["peak_mb"] = peak_mb()
        conn.send(result)
    except BaseException as exc:  # report, don't hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def isolated(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``target(*args)`` in a fresh spawned process (delta-rs needs spawn, not fork)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, args, send))
    started = time.perf_counter()
    process.start()
    result: dict[str, Any] = receive.recv()
    process.join(60)
    result["process_wall"] = time.perf_counter() - started
    if "error" in result:
        raise SystemExit(f"{target.__name__} failed: {result['error']}")
    return result


def objects(root: Path) -> dict[str, int]:
    """Every object under ``root``: relative path -> size in bytes."""
    found: dict[str, int] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.path.getsize(path)
    return found


def _texts(path: Path) -> Iterator[Any]:
    """The object's searchable text as polars string Series: the raw bytes (JSON commits,
    parquet footers with their statistics) and, for parquet, every string value decoded
    (checkpoints: every nested field too)."""
    import polars as pl

    content = path.read_bytes()
    yield pl.Series([content.decode("utf-8", "replace")])
    if path.suffix != ".parquet":
        return
    frame = pl.read_parquet(content)
    if any(isinstance(t, pl.Struct | pl.List) for t in frame.schema.values()):
        yield pl.Series(frame.write_ndjson().splitlines())  # checkpoints: small, nested
        return
    for name, dtype in frame.schema.items():
        if dtype == pl.String:
            yield frame.get_column(name)


def proof_scan(root: Path, needles: list[str]) -> tuple[int, dict[str, int], float]:
    """(objects scanned, needle -> objects holding it, seconds), case-insensitive."""
    started = time.perf_counter()
    lowered = [n.lower() for n in needles]
    found: dict[str, int] = {}
    scanned = 0
    for relative in objects(root):
        scanned += 1
        hits: set[str] = set()
        for series in _texts(root / relative):
            matched = series.str.to_lowercase().str.extract_many(lowered).explode().drop_nulls()
            hits.update(matched.to_list())
        for needle in hits:
            found[needle] = found.get(needle, 0) + 1
    return scanned, found, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20000, help="people (default 20000)")
    parser.add_argument("--erase", type=int, default=100, help="people erased (default 100)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--work", help="keep the lake in this directory")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="erase-bench-"))
    lake_dir = work / "lake"
    try:
        total = time.perf_counter()
        built = isolated(_build, str(lake_dir), args.contacts, args.seed)
        chosen = isolated(_people, str(lake_dir), args.erase, args.seed)
        needles = chosen["emails"] + chosen["phones"]
        _, control, _ = proof_scan(lake_dir / "silver" / "contacts", needles)
        before = objects(lake_dir)
        erased = isolated(_erase, str(lake_dir), chosen["emails"])
        after = objects(lake_dir)
        scanned, left, scan_wall = proof_scan(lake_dir, needles)
        rebuild = isolated(_next_transform, str(lake_dir))
        _report(args, built, erased, rebuild, before, after)
        print(
            f"proof scan: {scanned} objects, {len(needles)} needles ({len(chosen['emails'])} "
            f"emails, {len(chosen['phones'])} phones) in {scan_wall:.1f} s: "
            f"{sum(left.values())} occurrence(s) left" + (f" {sorted(left)[:5]}" if left else "")
        )
        print(
            f"  control (silver/contacts before the erasure): {len(control)} of "
            f"{len(needles)} needles found"
        )
        print(f"whole benchmark: {time.perf_counter() - total:.0f} s")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _report(
    args: argparse.Namespace,
    built: dict[str, Any],
    erased: dict[str, Any],
    rebuild: dict[str, Any],
    before: dict[str, int],
    after: dict[str, int],
) -> None:
    removed = {p: s for p, s in before.items() if p not in after}
    added = {p: s for p, s in after.items() if p not in before}
    print(
        f"lake: {args.contacts:,} contacts, {built['bronze_rows']:,} bronze rows, "
        f"{AS_OF:%Y-%m-%d}; built in {built['wall']:.1f} s (peak {built['peak_mb']:.0f} MB)"
    )
    print(
        f"erased {erased['people']} people in {erased['wall']:.1f} s "
        f"(process {erased['process_wall']:.1f} s, peak {erased['peak_mb']:.0f} MB; "
        f"receipts: {', '.join(erased['statuses'])})"
    )
    print(f"  rows deleted       {erased['rows_deleted']:,} in {len(erased['tables'])} tables")
    print(f"  files rewritten    {erased['files_rewritten']:,} (data files removed by the deletes)")
    print(f"  files deleted      {erased['files_deleted']:,} (vacuum, old commits, change data)")
    print(
        f"  objects            {len(before):,} -> {len(after):,}: {len(removed):,} deleted "
        f"({sum(removed.values()) / MIB:,.1f} MiB), {len(added):,} written "
        f"({sum(added.values()) / MIB:,.1f} MiB); lake {sum(before.values()) / MIB:,.1f} -> "
        f"{sum(after.values()) / MIB:,.1f} MiB"
    )
    for table, counts in erased["tables"].items():
        print(f"    {table:<28} {counts}")
    print(
        f"next transform: {rebuild['mode']} in {rebuild['wall']:.1f} s "
        f"(peak {rebuild['peak_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Bronze write benchmark: a day's change written into bronze the way ingest writes it.

Not a test. Generates bronze for ``--contacts`` people (:mod:`benchmarks.bronze_parts`, a
million at a time), computes the change of ``--change`` of them (CRM edits, new and refunded
orders, new events) and writes it, one write per fresh ``spawn`` process so each wall time and
peak (``VmHWM``, :mod:`benchmarks.peak`) is the write's own, each into its own copy of the
table with the change data feed on, as ingest creates bronze:

* ``crm_contacts merge``: ``Lake.merge`` on ``id`` (updates; unchanged rows are not rewritten);
* ``orders merge``: ``Lake.merge`` on ``order_id`` (updates and inserts);
* ``web_events insert_new``: ``Lake.insert_new`` on ``event_id`` (the table's keys streamed
  against the batch's, then one append);
* ``web_events MERGE`` (with ``--merge-insert``): the same insert as the delta-rs insert-only
  MERGE ``Lake.insert_new`` was until December 2026 - side by side, for the ratio. At 10 M
  people it took more than 21 GB; leave it out there.

    .venv/bin/python -m benchmarks.bronze_writes_bench --contacts 1000000 --merge-insert
    .venv/bin/python -m benchmarks.bronze_writes_bench --contacts 10000000 --work DIR
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bronze_parts import bronze_for, change_file, write_change
from benchmarks.peak import peak_mb
from benchmarks.transform_bench import run_spawned

WRITES = {
    "crm_contacts merge": ("bronze/crm_contacts", "id"),
    "orders merge": ("bronze/orders", "order_id"),
    "web_events insert_new": ("bronze/web_events", "event_id"),
    "web_events MERGE": ("bronze/web_events", "event_id"),
}


def _write(name: str, lake_dir: str, change_dir: str) -> dict[str, Any]:
    """One write of the change into its table (in a fresh process)."""
    import polars as pl
    from deltalake import DeltaTable

    from tasks.connectors.lake import Lake

    table, key = WRITES[name]
    change = pl.read_parquet(sorted(Path(change_dir).glob(f"{change_file(table)}-*.parquet")))
    lake = Lake(lake_dir)
    started = time.perf_counter()
    if name.endswith("merge"):
        stats = lake.merge(table, change, keys=[key])
        written = stats.inserted + stats.updated
    elif name.endswith("insert_new"):
        written = lake.insert_new(table, change, keys=[key], batch_id="day-2") or 0
    else:  # the insert-only MERGE insert_new was
        metrics = (
            DeltaTable(lake.uri(table))
            .merge(
                change,
                predicate=f"s.{key} = t.{key}",
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                streamed_exec=False,
            )
            .when_not_matched_insert_all()
            .execute()
        )
        written = int(metrics["num_target_rows_inserted"])
    wall = time.perf_counter() - started
    return {"wall": wall, "peak_mb": peak_mb(), "change": change.height, "written": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--change", type=float, default=0.01, help="share of people changed")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--merge-insert", action="store_true", help="also the insert as a MERGE")
    parser.add_argument("--work", help="keep bronze here (reused by a later run)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bronze-writes-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows, seconds = bronze_for(work, args.contacts, args.seed, reuse=bool(args.work))
        print(
            f"bronze: {args.contacts:,} people, {sum(rows.values()):,} rows "
            + (f"(generated in {seconds:.1f} s)" if seconds else "(reused)"),
            flush=True,
        )
        change_dir = work / "change"
        shutil.rmtree(change_dir, ignore_errors=True)
        started = time.perf_counter()
        changed = write_change(args.contacts, args.seed, args.change, change_dir)
        print(
            f"change of {args.change:.0%} of the people computed in "
            f"{time.perf_counter() - started:.1f} s: "
            + ", ".join(f"{t.split('/')[1]} {n:,}" for t, n in changed.items()),
            flush=True,
        )
        names = [n for n in WRITES if args.merge_insert or n != "web_events MERGE"]
        results = {name: _run(name, work, change_dir) for name in names}
        _report(results)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _run(name: str, work: Path, change_dir: Path) -> dict[str, Any]:
    """``name``'s write into a fresh copy of its bronze table, change data feed on."""
    import polars as pl

    from tasks.connectors.lake import Lake

    table = WRITES[name][0]
    lake_dir = work / "writes"
    shutil.rmtree(lake_dir, ignore_errors=True)
    shutil.copytree(work / "bronze" / table, lake_dir / table)
    lake = Lake(str(lake_dir))
    lake.enable_change_feed(table)
    # Counted here, not in the write's process: reading a key column would set its peak.
    rows = lake.scan(table).select(pl.len()).collect().item()
    result = {"rows": rows, **run_spawned(_write, name, str(lake_dir), str(change_dir))}
    shutil.rmtree(lake_dir, ignore_errors=True)
    if "error" in result:
        print(f"  {name}: FAILED: {result['error']}", flush=True)
    else:
        print(f"  {name}: {result['wall']:.1f} s, peak {result['peak_mb']:,.0f} MB", flush=True)
    return result


def _report(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'write':<24} {'table rows':>12} {'change':>9} {'written':>9} {'wall s':>8} "
          f"{'peak MB':>8}")  # fmt: skip
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<24} {'-':>12} {'-':>9} {'-':>9} {'-':>8} {'-':>8}   {r['error']}")
            continue
        print(f"{name:<24} {r['rows']:>12,} {r['change']:>9,} {r['written']:>9,} "
              f"{r['wall']:>8.1f} {r['peak_mb']:>8,.0f}")  # fmt: skip
    new, old = results.get("web_events insert_new"), results.get("web_events MERGE")
    if new and old and "error" not in new and "error" not in old:
        print(
            f"insert_new vs the insert-only MERGE: {new['wall'] / old['wall']:.2f}x the time, "
            f"{new['peak_mb'] / old['peak_mb']:.2f}x the peak; "
            + ("same rows inserted" if new["written"] == old["written"] else "DIFFERENT rows")
        )


if __name__ == "__main__":
    raise SystemExit(main())

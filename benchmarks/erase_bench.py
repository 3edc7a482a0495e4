"""Erasure benchmark: erase ``--erase`` people from a lake of ``--contacts`` people.

Not a test. Generates bronze (:mod:`benchmarks.bronze_gen`, change data feed on, as ingest
creates it), builds silver and gold with the project's transform (no Prefect), then times one
:func:`tasks.erasure.erase_people` call for a random sample of the contacts (no platform is
configured: this measures the lake) and the full transform the next run has to do afterwards.
Prints rows deleted, files rewritten and files deleted from storage.

    .venv/bin/python -m benchmarks.erase_bench --contacts 20000 --erase 100
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.transform_bench import AS_OF, PEPPER, _config, _project


def build(lake_dir: Path, contacts: int, seed: int) -> float:
    """Bronze with the change data feed on, then one full transform; returns seconds."""
    from benchmarks.bronze_gen import bronze_tables
    from tasks.connectors.lake import Lake

    started = time.perf_counter()
    lake = Lake(str(lake_dir))
    for table, frame in bronze_tables(contacts, seed).items():
        lake.overwrite(table, frame)
        lake.enable_change_feed(table)
    _project(str(lake_dir), full_refresh=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20000, help="people (default 20000)")
    parser.add_argument("--erase", type=int, default=100, help="people erased (default 100)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--work", help="keep the lake in this directory")
    args = parser.parse_args(argv)
    os.environ.setdefault("AUDIENCE_LAKE_PEPPER", PEPPER)
    logging.getLogger("transform_bench").addHandler(logging.NullHandler())

    import polars as pl

    from tasks.connectors.lake import Lake
    from tasks.core.tables import CONTACTS
    from tasks.erasure import erase_people
    from tasks.resources import pepper

    work = Path(args.work or tempfile.mkdtemp(prefix="erase-bench-"))
    lake_dir = work / "lake"
    try:
        built = build(lake_dir, args.contacts, args.seed)
        lake = Lake(str(lake_dir))
        emails = (
            lake.read(CONTACTS, columns=["email"])
            .sample(args.erase, seed=args.seed)
            .get_column("email")
            .to_list()
        )
        files_before = sum(len(files) for _, _, files in os.walk(lake_dir))
        config = _config().model_copy(update={"destinations": {}})
        secret, version = pepper()
        started = time.perf_counter()
        receipts = erase_people(
            lake,
            config,
            emails,
            pepper=secret,
            version=version,
            run_id="erase-bench",
            now=datetime.now(UTC),
            log=lambda _: None,
        )
        erased = time.perf_counter() - started
        files_after = sum(len(files) for _, _, files in os.walk(lake_dir))
        rebuild = _project(str(lake_dir), full_refresh=False)
        first = receipts[0]
        print(f"lake: {args.contacts} contacts, built in {built:.1f} s; {AS_OF:%Y-%m-%d}")
        print(f"erased {len(receipts)} people in {erased:.1f} s")
        print(f"  rows deleted       {first.rows_deleted} in {len(first.tables)} tables")
        print(f"  files rewritten    {first.files_rewritten}")
        print(f"  files deleted      {first.files_deleted} (vacuum, old commits, change data)")
        print(f"  objects on disk    {files_before} -> {files_after}")
        for table, counts in first.tables.items():
            print(f"    {table:<28} {counts}")
        print(f"next transform: {rebuild['mode']} in {rebuild['wall']:.1f} s")
        left = lake.read(CONTACTS).filter(pl.col("email").is_in(emails)).height
        print(f"erased people left in {CONTACTS}: {left}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

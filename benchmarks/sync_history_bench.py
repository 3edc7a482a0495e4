"""Sync history benchmark: what appending each batch's results to ``ops/sync_history`` costs.

Not a test. A publish appends one batch of results per platform batch (before the ledger
records them). This appends ``--batches`` batches of ``--size`` results to a fresh local
``ops/sync_history`` through :func:`tasks.sync_history.record_sends`, as a publish of
``batches x size`` contacts would, and prints the time of the first, median and last append
and the total: the log grows by one commit per batch, and so does the cost of each append.

    .venv/bin/python -m benchmarks.sync_history_bench --batches 200 --size 500
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime

import polars as pl


def main() -> None:
    from tasks.connectors.lake import Lake
    from tasks.core.tables import AUDIENCE, CONTACTS, LEDGER_SCHEMA
    from tasks.sync_history import SendReads, record_sends

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=200, help="batches appended")
    parser.add_argument("--size", type=int, default=500, help="results per batch")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="sync-history-bench-")
    try:
        lake = Lake(root)
        reads = SendReads({AUDIENCE: 3, CONTACTS: 7})
        times = []
        for batch in range(args.batches):
            rows = pl.DataFrame(
                {"destination": "mailchimp", "audience": "list", "segment": "segment",
                 "contact_key": [f"k{batch}-{i}" for i in range(args.size)],
                 "action": "subscribe", "payload_hash": "hash", "status": "ok", "error": None,
                 "run_id": "bench", "synced_at": datetime.now(UTC)},
                schema=LEDGER_SCHEMA,
            )  # fmt: skip
            started = time.perf_counter()
            record_sends(lake, rows, reads)
            times.append(time.perf_counter() - started)
        ordered = sorted(times)
        print(
            f"{args.batches} appends of {args.size} results: first {times[0] * 1000:.0f} ms, "
            f"median {ordered[len(ordered) // 2] * 1000:.0f} ms, last {times[-1] * 1000:.0f} ms, "
            f"total {sum(times):.1f} s ({args.batches * args.size:,} contacts)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

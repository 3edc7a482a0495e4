"""What the dry-run view costs: planning with per-field hashes, and the change summary.

Builds ``--contacts`` audience members with six mapped fields (as the publish engine's
``payload`` JSON), then times, in this process and without Prefect or a lake:

1. a first plan against an empty ledger (every member a create,
   :func:`tasks.core.sync.plan_sync`);
2. the ledger rows of that plan (:func:`tasks.core.sync.ledger_rows`), without and with the
   keyed field hashes (``field_key``) a publish records;
3. the change summary of the first plan (the dry-run view: every row a create);
4. a second plan after ``--change`` of the members changed one field, and its change summary
   (:func:`tasks.core.change_summary.classify_changes` + ``summarise_changes``).

Prints one line per step with seconds and rows. Field hashes are computed only for the rows a
publish sends (when it writes their ledger rows) or a plan shows, so step 4 follows the change,
not the audience.

    .venv/bin/python -m benchmarks.plan_bench --contacts 100000 --change 0.01
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import polars as pl

from tasks.core.change_summary import classify_changes, summarise_changes
from tasks.core.sync import (
    LEDGER_SCHEMA,
    field_hash_key,
    ledger_rows,
    plan_sync,
    with_field_hashes,
)

KEY = field_hash_key(b"benchmark-pepper")


def members(n: int, changed: set[int]) -> pl.LazyFrame:
    payloads = [
        json.dumps(
            {"fields": {"FNAME": f"Ann{i}", "LNAME": "Lake", "LTV": round(i * 1.5, 2) + (
                100.0 if i in changed else 0.0), "LASTORDER": "2026-11-30", "CATEGORY": "books",
                "SCORE": i % 5}, "tags": ["lake"]},
            separators=(",", ":"),
        )
        for i in range(n)
    ]  # fmt: skip
    keys = [f"v1:{i:064x}" for i in range(n)]
    return pl.DataFrame(
        {
            "contact_key": keys,
            "email": [f"p{i}@example.com" for i in range(n)],
            "payload": payloads,
        }
    ).lazy()


def contacts(n: int) -> pl.LazyFrame:
    return pl.DataFrame(
        {
            "contact_key": [f"v1:{i:064x}" for i in range(n)],
            "email": [f"p{i}@example.com" for i in range(n)],
            "consent_status": ["subscribed"] * n,
        }
    ).lazy()


def timed(label: str, rows: int, started: float) -> None:
    print(f"{label:<44} {time.perf_counter() - started:7.2f} s  {rows:>9,} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--change", type=float, default=0.01)
    args = parser.parse_args()
    n = args.contacts
    people, everyone = members(n, set()), contacts(n)
    empty = pl.LazyFrame(schema=LEDGER_SCHEMA)
    where = dict(destination="mc", audience="L")

    started = time.perf_counter()
    plan = plan_sync(people, everyone, empty, **where).collect()
    timed("first plan (all creates)", plan.height, started)
    stamp = dict(segment="s", run_id="r", synced_at=datetime.now(UTC))
    ok = dict.fromkeys(plan["contact_key"])
    started = time.perf_counter()
    ledger_rows(plan, **where, **stamp, errors=ok)  # type: ignore[arg-type]
    timed("ledger rows, no field hashes", plan.height, started)
    started = time.perf_counter()
    sent = ledger_rows(with_field_hashes(plan, KEY), **where, **stamp, errors=ok)  # type: ignore[arg-type]
    timed("ledger rows, with field hashes", sent.height, started)
    started = time.perf_counter()
    summarise_changes(classify_changes(plan, empty, **where, field_key=KEY))
    timed("change summary of the first plan", plan.height, started)

    changed = set(range(0, n, max(1, round(1 / args.change)))) if args.change > 0 else set()
    people = members(n, changed)
    started = time.perf_counter()
    second = plan_sync(people, everyone, sent.lazy(), **where).collect()
    timed(f"second plan ({len(changed):,} changed)", second.height, started)
    started = time.perf_counter()
    summary = summarise_changes(classify_changes(second, sent.lazy(), **where, field_key=KEY))
    timed("change summary of the second plan", second.height, started)
    print(f"updates {summary.updates:,}, fields changing most: {summary.describe_fields()}")


if __name__ == "__main__":
    main()

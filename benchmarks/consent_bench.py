"""The consent ledger's cost in the transform: a first build, an incremental change, a rerun.

Runs the functions the silver build calls (:mod:`tasks.engine.consent`) on a local lake, on
generated staged contact rows (``--contacts`` people, one CRM record each; 60 % opted in,
10 % opted out, the rest stating nothing), plus ``--suppressions`` platform suppressions:

1. **first build**: every statement recorded and every person decided (a full transform);
2. **incremental**: ``--change`` of the people change their consent and the platform reports
   new unsubscribes; only those people's statements are compared with the ledger and decided;
3. **rerun**: the same again: nothing appended, nothing committed.

Prints seconds per step, ledger rows and data files after each step (an append adds files; it
never rewrites the table). Example::

    .venv/bin/python -m benchmarks.consent_bench --contacts 1000000 --change 0.01
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.tables import CONSENT_EVENTS, PLATFORM_SUPPRESSIONS, PLATFORM_SUPPRESSIONS_SCHEMA
from tasks.engine.consent import pending_external, record_and_decide

PEPPER = b"benchmark-pepper"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def contacts(n: int, *, seed: int, shift: int = 0) -> pl.DataFrame:
    """Staged contact rows: one record per person, consent fields as a CRM maps them."""
    i = pl.int_range(0, n)
    draw = i.hash(seed) % 100
    return pl.select(
        pl.lit("crm").alias("_source"),
        i.cast(pl.String).alias("source_id"),
        pl.format("person{}@example.com", i).alias("email"),
        (draw < 60).alias("opted_in"),
        pl.lit(T0 + timedelta(hours=shift)).dt.cast_time_unit("us").alias("opted_in_at"),
        ((draw >= 60) & (draw < 70)).alias("opted_out"),
        pl.lit(T0 + timedelta(days=1, hours=shift)).dt.cast_time_unit("us").alias("updated_at"),
    )


def suppressions(emails: pl.Series, *, at: datetime, tag: str) -> pl.DataFrame:
    values = {
        "destination": pl.lit("mailchimp"),
        "platform": pl.lit("mailchimp"),
        "audience": pl.lit("list-1"),
        "email": pl.col("email"),
        "status": pl.lit("unsubscribed"),
        "occurred_at": pl.lit(at),
        "platform_record_id": pl.lit(f"{tag}-") + pl.col("email"),
        "read_at": pl.lit(at),
        "run_id": pl.lit(tag),
    }
    return emails.to_frame("email").select(
        values[name].cast(dtype).alias(name) for name, dtype in PLATFORM_SUPPRESSIONS_SCHEMA.items()
    )


def step(lake: Lake, name: str, rows: pl.DataFrame, emails: pl.Series | None, run: str) -> None:
    started = time.perf_counter()
    now = datetime.now(UTC)
    pending = pending_external(
        lake, full=emails is None, secret=PEPPER, version=1, now=now, run_id=run
    )
    scope = emails if emails is None else pl.concat([emails, pending.emails]).unique()
    decided = record_and_decide(
        lake, pending, rows, scope, secret=PEPPER, version=1, now=now, run_id=run
    )
    seconds = time.perf_counter() - started
    files = len(lake.file_uris(CONSENT_EVENTS))
    print(
        f"{name:<12} {seconds:7.2f} s  people decided {decided.height:>9,}  "
        f"ledger rows {lake.count(CONSENT_EVENTS):>9,}  files {files:>4}  "
        f"version {lake.version(CONSENT_EVENTS)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--suppressions", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        lake = Lake(work)
        people = contacts(args.contacts, seed=args.seed)
        first = suppressions(people["email"].head(args.suppressions), at=T0, tag="a")
        lake.insert_new(
            PLATFORM_SUPPRESSIONS,
            first,
            keys=["destination", "audience", "email", "status", "occurred_at"],
            batch_id="s1",
        )
        print(f"{args.contacts:,} contacts, {args.suppressions:,} platform suppressions")
        step(lake, "first build", people, None, "r1")

        changed = max(1, int(args.contacts * args.change))
        moved = contacts(changed, seed=args.seed + 1, shift=48)
        later = T0 + timedelta(days=5)
        tail = people["email"].tail(changed)
        lake.insert_new(
            PLATFORM_SUPPRESSIONS,
            suppressions(tail, at=later, tag="b"),
            keys=["destination", "audience", "email", "status", "occurred_at"],
            batch_id="s2",
        )
        emails = pl.concat([moved["email"], tail]).unique()
        rows = pl.concat([moved, people.filter(pl.col("email").is_in(tail.implode()))])
        rows = rows.unique("source_id", keep="first")
        step(lake, "incremental", rows, emails, "r2")
        step(lake, "rerun", rows, emails, "r3")


if __name__ == "__main__":
    main()

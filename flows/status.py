"""``audience-lake status`` and ``history``: what the ops tables (and Prefect) say happened.

The queries are pure (:mod:`tasks.core.status`); this module reads the tables and prints plain,
aligned text. No email address is ever printed.
"""

from __future__ import annotations

import polars as pl


def show_status(config_path: str, *, points: int = 5) -> int:
    """Print what the lake (and the Prefect API, if configured) says about recent runs."""
    from datetime import UTC, datetime

    import polars as pl

    from tasks.core.config import load_pipeline
    from tasks.core.status import audience_trend, last_source_runs, last_stage_runs, source_lag
    from tasks.core.tables import (
        LEDGER_SCHEMA,
        SOURCE_RUNS,
        SOURCE_RUNS_SCHEMA,
        SYNC_LEDGER,
        VOLUME_METRICS,
        VOLUME_SCHEMA,
        bronze_table,
    )
    from tasks.publish import publish_holds
    from tasks.resources import open_lake

    config = load_pipeline(config_path)
    lake = open_lake()

    def scan(table: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        return lake.scan(table) if lake.exists(table) else pl.LazyFrame(schema=schema)

    volume = scan(VOLUME_METRICS, VOLUME_SCHEMA)
    ledger = scan(SYNC_LEDGER, LEDGER_SCHEMA)
    now = datetime.now(UTC)
    print(f"lake: {lake.root}")
    print("last run per stage:")
    for row in last_stage_runs(volume, ledger).collect().iter_rows(named=True):
        print(f"  {row['stage']:<10} {_ago(now, row['last_at'])}  run {row['run_id']}")
    from flows.doctor import last_flow_runs

    flow_runs = last_flow_runs()
    if flow_runs is None:
        print("last run per flow (Prefect): no PREFECT_API_URL")
    else:
        print("last run per flow (Prefect):")
        for flow, state, started, name in flow_runs:
            print(f"  {flow:<22} {state:<10} {_ago(now, started)}  {name}")
    print("last ingest per source:")
    runs = last_source_runs(scan(SOURCE_RUNS, SOURCE_RUNS_SCHEMA)).collect()
    by_source = {r["source"]: r for r in runs.iter_rows(named=True)}
    for name in config.sources:
        run = by_source.get(name)
        table = bronze_table(name)
        lag = "no data yet"
        if lake.exists(table):
            bronze = lake.scan(table)
            cursor = getattr(config.sources[name], "cursor_field", None)
            if cursor not in bronze.collect_schema().names():
                cursor = None  # files and events: no incremental cursor
            newest = source_lag(bronze, source=name, now=pl.lit(now), cursor=cursor).collect()
            lag = f"newest row landed {_ago(now, newest['newest'][0])}"
            if newest["cursor"][0] is not None:
                lag += f", newest {cursor} {newest['cursor'][0]}"
        state = "never ran" if run is None else f"{run['status']} {_ago(now, run['finished_at'])}"
        error = f" ({run['error']})" if run is not None and run["error"] else ""
        print(f"  {name:<16} {state}; {lag}{error}")
    holds = publish_holds(lake, config)
    print("holds in force:" if holds else "holds in force: none")
    for (destination, segment), reason in sorted(holds.items()):
        print(f"  {destination}/{segment}: {reason}")
    print("audience sizes (last runs, oldest first):")
    for row in audience_trend(volume, points=points).collect().iter_rows(named=True):
        trend = " -> ".join(f"{n:,}" for n in row["trend"])
        print(f"  {row['segment']:<18} {row['rows']:>8,}   {trend}")
    return 0


def _ago(now: object, moment: object) -> str:
    from datetime import datetime

    if not isinstance(moment, datetime) or not isinstance(now, datetime):
        return "never"
    seconds = int((now - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{moment:%Y-%m-%d %H:%M:%S}Z ({seconds // size}{unit} ago)"
    return f"{moment:%Y-%m-%d %H:%M:%S}Z ({seconds}s ago)"


def show_history(*, audience: str | None, email: str | None, limit: int = 50) -> int:
    """Print what the sync ledger says was sent to ``audience`` or to the person at ``email``
    (found by contact key; no email is printed)."""
    import polars as pl

    from tasks.core.normalise import contact_key, is_valid_email, normalise_email
    from tasks.core.status import audience_history, contact_history
    from tasks.core.tables import LEDGER_SCHEMA, SYNC_LEDGER
    from tasks.errors import ConfigError
    from tasks.resources import open_lake, pepper

    lake = open_lake()
    ledger = (
        lake.scan(SYNC_LEDGER) if lake.exists(SYNC_LEDGER) else pl.LazyFrame(schema=LEDGER_SCHEMA)
    )
    if audience:
        frame = audience_history(ledger, audience).collect()
        if frame.is_empty():
            print(f"nothing was sent to audience {audience!r} (a list id or segment)")
            return 0
        print(f"sent to {audience} (each contact under the run that last sent to it):")
    else:
        secret, version = pepper()
        address = normalise_email(pl.lit(email, dtype=pl.String))
        valid, key = pl.select(
            is_valid_email(address).alias("valid"),
            contact_key(address, pepper=secret, version=version).alias("key"),
        ).row(0)
        if not valid:  # the address itself is not repeated: it may be someone's typo'd PII
            raise ConfigError("history: --email is not a valid email address")
        frame = contact_history(ledger, key).collect()
        print(f"contact {key}: {frame.height} ledger row(s)")
    _print_table(frame.head(limit))
    return 0


def _print_table(frame: pl.DataFrame) -> None:
    """Plain aligned columns: easy to read, to grep and to paste into a ticket."""
    cells = [[_cell(v) for v in row] for row in frame.iter_rows()]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(frame.columns)]
    for row in [frame.columns, *cells]:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    from datetime import datetime

    if value is None:
        return "-"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}Z"
    return str(value)

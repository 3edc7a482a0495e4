"""``audience-lake consent``: read the consent ledger (``ops/consent_events``).

- ``consent show EMAIL``: one person's consent history and the decision it leads to, found by
  contact key (the email is hashed with the lake's pepper and never printed): the answer to an
  access request about consent;
- ``consent export``: the ledger rows of a time range as CSV or Parquet, for an auditor.

Neither command runs a flow or needs Prefect: they read the lake.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import polars as pl

    from tasks.connectors.lake import Lake

ExportFormat = Literal["csv", "parquet"]
TimeColumn = Literal["occurred_at", "recorded_at"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``consent show`` and ``consent export`` to the ``audience-lake`` parser."""
    consent = sub.add_parser("consent", help="consent history of a person; ledger export")
    commands = consent.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")

    show = commands.add_parser("show", help="a person's consent statements and the decision")
    show.add_argument("email", help="the person's email (looked up by contact key, not printed)")
    show.set_defaults(func=_cmd_show)

    export = commands.add_parser("export", help="write the ledger of a time range (CSV/Parquet)")
    export.add_argument("--since", help="from this ISO date or time, inclusive (default: start)")
    export.add_argument("--until", help="to this ISO date or time, exclusive (default: now)")
    export.add_argument(
        "--by",
        choices=("occurred_at", "recorded_at"),
        default="occurred_at",
        help="the time the range applies to: when a statement was made (default) or recorded",
    )
    export.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format")
    export.add_argument("--out", required=True, help="file to write")
    export.set_defaults(func=_cmd_export)

    for command in (show, export):
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )


def _cmd_show(args: argparse.Namespace) -> int:
    from tasks.resources import open_lake, pepper

    secret, version = pepper()
    for line in show_consent(open_lake(), args.email, pepper=secret, version=version):
        print(line)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tasks.resources import open_lake

    rows = export_consent(
        open_lake(),
        Path(args.out),
        since=parse_time(args.since, "--since"),
        until=parse_time(args.until, "--until"),
        by=args.by,
        file_format=args.format,
    )
    print(f"wrote {rows} consent event(s) to {args.out}")
    return 0


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO date or time (naive means UTC); None for None.

    Raises:
        ConfigError: naming ``option`` if ``value`` is not one.
    """
    from tasks.errors import ConfigError

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        message = f"consent export: {option} {value!r} is not an ISO date or time"
        raise ConfigError(message) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def show_consent(lake: Lake, email: str, *, pepper: bytes, version: int) -> list[str]:
    """The lines ``consent show`` prints for ``email`` (which they never contain)."""
    import polars as pl

    from tasks.core.consent import decide, history
    from tasks.core.normalise import contact_key, is_valid_email, normalise_email
    from tasks.core.tables import CONSENT_EVENTS, CONSENT_EVENTS_SCHEMA
    from tasks.errors import ConfigError

    address = normalise_email(pl.lit(email, dtype=pl.String))
    valid, key = pl.select(
        is_valid_email(address).alias("valid"),
        contact_key(address, pepper=pepper, version=version).alias("key"),
    ).row(0)
    if not valid:  # not repeated: a mistyped address may still be someone's
        raise ConfigError("consent show: EMAIL is not a valid email address")
    ledger = (
        lake.scan(CONSENT_EVENTS)
        if lake.exists(CONSENT_EVENTS)
        else pl.LazyFrame(schema=CONSENT_EVENTS_SCHEMA)
    )
    rows = history(ledger, key).collect()
    decision = decide(ledger.filter(pl.col("contact_key") == key)).collect()
    lines = [f"contact {key}: {rows.height} consent statement(s) in {CONSENT_EVENTS}"]
    shown = rows.select(
        "occurred_at",
        "status",
        "source",
        "source_record_id",
        "lawful_basis",
        "in_force",
        pl.col("event_id").str.slice(0, 16).alias("event_id"),
        "supersedes",
        "evidence",
        "recorded_at",
    ).with_columns(pl.col("supersedes").str.slice(0, 16))
    lines.extend(_table(shown))
    if decision.is_empty():
        lines.append("decision: unknown (no statement in force): never published")
    else:
        d = decision.row(0, named=True)
        published = "may be published" if d["consent_status"] == "subscribed" else "not published"
        lines.append(
            f"decision: {d['consent_status']} as of {_text(d['consent_at'])} "
            f"(source {d['consent_source']}, event {d['consent_event_id']}): {published}"
        )
    return lines


def export_consent(
    lake: Lake,
    out: Path,
    *,
    since: datetime | None,
    until: datetime | None,
    by: TimeColumn = "occurred_at",
    file_format: ExportFormat = "csv",
) -> int:
    """Write the ledger rows whose ``by`` time is in ``[since, until)`` to ``out``, ordered by
    that time; returns the number of rows written (the file is written even when 0)."""
    import polars as pl

    from tasks.core.tables import CONSENT_EVENTS, CONSENT_EVENTS_SCHEMA

    ledger = (
        lake.scan(CONSENT_EVENTS)
        if lake.exists(CONSENT_EVENTS)
        else pl.LazyFrame(schema=CONSENT_EVENTS_SCHEMA)
    )
    if since is not None:
        ledger = ledger.filter(pl.col(by) >= since)
    if until is not None:
        ledger = ledger.filter(pl.col(by) < until)
    rows = ledger.sort(by, "event_id").collect()
    out.parent.mkdir(parents=True, exist_ok=True)
    if file_format == "parquet":
        rows.write_parquet(out)
    else:
        rows.write_csv(out)
    return rows.height


def _table(frame: pl.DataFrame) -> list[str]:
    """Plain aligned columns (easy to read and to paste into an answer)."""
    cells = [[_text(v) for v in row] for row in frame.iter_rows()]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(frame.columns)]
    return [
        "  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [frame.columns, *cells]
    ]


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)

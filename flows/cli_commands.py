"""What each ``audience-lake`` subcommand does (except ``doctor`` and ``consent``).

One ``cmd_<name>(args) -> int`` per subcommand, returning the exit status; :mod:`flows.cli`
builds the parser and dispatches to them. Flows, Prefect and the heavier libraries are imported
inside each command, so ``audience-lake --help`` and a config error stay fast. Also here: what
runs before any flow (:func:`_before_flows`: the Prefect API must answer; one-line errors without
``--debug``) and :func:`describe_error`, the one line an error becomes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tasks.errors import AudienceLakeError

__all__ = [
    "EXIT_DOCTOR_FAILED",
    "EXIT_HELD",
    "cmd_demo",
    "cmd_erase",
    "cmd_history",
    "cmd_maintain",
    "cmd_publish",
    "cmd_receive_events",
    "cmd_run",
    "cmd_runs",
    "cmd_schema",
    "cmd_status",
    "cmd_sync_history",
    "cmd_validate",
    "describe_error",
    "use_secret_blocks",
]

EXIT_DOCTOR_FAILED = 1  # `doctor` ran every check and at least one said FAIL
EXIT_HELD = 3  # `run` completed but an audience was held/skipped; `erase`: a platform is pending


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo
    from flows.progress import progress_line

    _before_flows(args)
    started = time.monotonic()
    with progress_line():
        run_demo(
            config=Path(args.config),
            data_dir=Path(args.data).resolve(),
            lake_dir=Path(args.lake).resolve(),
            contacts=args.contacts,
            seed=args.seed,
        )
    print(f"demo finished in {time.monotonic() - started:.1f}s")
    return 0


def use_secret_blocks() -> None:
    """Let ``{secret: NAME}`` come from Prefect Secret blocks when a Prefect server is named.

    Without ``PREFECT_API_URL`` there are no blocks to read, so Prefect is not imported.
    """
    if os.environ.get("PREFECT_API_URL"):
        import tasks.secret_blocks  # noqa: F401  (registers the block source)


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.core.config import load_pipeline

    use_secret_blocks()
    load_pipeline(args.config, check_secrets=True)  # fail fast, before the flows are imported

    from flows.pipeline import pipeline
    from flows.progress import progress_line
    from flows.summary import lake_summary
    from tasks.resources import open_lake

    _before_flows(args)
    with progress_line():
        report = pipeline(
            config_path=args.config,
            full_refresh=args.full_refresh,
            dry_run=args.dry_run,
            sources=args.source or None,
            segments=args.segment or None,
            override_hold=args.override_hold,
        )
    print(lake_summary(open_lake(), report))
    kept = [p for p in report.publish if p.outcome in ("held", "skipped")]
    for p in kept:
        print(f"{p.outcome}: {p.destination}/{p.segment}: {p.held or p.skipped}", file=sys.stderr)
    return EXIT_HELD if kept else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from tasks.core.config import load_pipeline
    from tasks.core.pins import parse_version_pins

    use_secret_blocks()
    load_pipeline(args.config, check_secrets=True)  # fail fast, before the flows are imported
    try:
        versions = parse_version_pins(args.version or [])
    except ValueError as exc:
        raise AudienceLakeError(str(exc)) from None

    from flows.publish import publish
    from flows.summary import publish_summary

    _before_flows(args)
    reports = publish(
        config_path=args.config,
        segments=args.segment or None,
        dry_run=args.dry_run,
        override_hold=args.override_hold,
        as_of_run=args.as_of_run,
        versions=versions or None,
    )
    print("\n".join(publish_summary(reports)))
    kept = [p for p in reports if p.outcome in ("held", "skipped")]
    for p in kept:
        print(f"{p.outcome}: {p.destination}/{p.segment}: {p.held or p.skipped}", file=sys.stderr)
    return EXIT_HELD if kept else 0


def cmd_sync_history(args: argparse.Namespace) -> int:
    from flows.sync_history import show_sync_history

    return show_sync_history(args.config, email=args.email, contact_key=args.contact_key)


def cmd_maintain(args: argparse.Namespace) -> int:
    from tasks.core.config import load_pipeline

    load_pipeline(args.config)  # fail fast on a bad maintenance section, before Prefect

    from flows.maintain import maintain, maintenance_summary

    _before_flows(args)
    report = maintain(
        config_path=args.config,
        tables=args.table or None,
        retention_hours=args.retention_hours,
        expire=not args.no_expire,
    )
    print(maintenance_summary(report))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from flows.common import current_run_id, utc_now
    from flows.erase import read_request_file
    from tasks.core.config import load_pipeline
    from tasks.erasure import erase_people
    from tasks.resources import open_lake, pepper

    use_secret_blocks()
    config = load_pipeline(args.config)
    emails = list(args.email or [])
    for name in args.file or []:
        emails.extend(read_request_file(Path(name)))
    if not emails:
        raise AudienceLakeError("erase: name at least one person (--email or --file)")
    secret, version = pepper()
    # No Prefect flow run here: its parameters would keep the emails in Prefect's database.
    receipts = erase_people(
        open_lake(),
        config,
        emails,
        pepper=secret,
        version=version,
        run_id=current_run_id(),
        now=utc_now(),
        origin="the command line",
    )
    for receipt in receipts:
        platforms = "; ".join(f"{k}: {v}" for k, v in receipt.platforms.items()) or "-"
        print(
            f"{receipt.request_id}  {receipt.contact_key}  {receipt.status}  "
            f"rows {receipt.rows_deleted}  tables {len(receipt.tables)}  "
            f"files rewritten {receipt.files_rewritten}  deleted {receipt.files_deleted}  "
            f"platforms: {platforms}"
        )
    return 0 if all(r.status != "platforms-pending" for r in receipts) else EXIT_HELD


def _before_flows(args: argparse.Namespace) -> None:
    """Before a command runs flows: the Prefect API must answer, and (without ``--debug``)
    failures print one line, not Prefect's console tracebacks."""
    from flows.common import require_prefect_api

    require_prefect_api()
    if not args.debug:
        _quiet_tracebacks()


def cmd_status(args: argparse.Namespace) -> int:
    from flows.status import show_status

    return show_status(args.config, points=args.points)


def cmd_history(args: argparse.Namespace) -> int:
    from flows.status import show_history

    return show_history(audience=args.audience, email=args.email, limit=args.limit)


def cmd_runs(args: argparse.Namespace) -> int:
    from flows.status import show_runs

    return show_runs(since=args.since, flow=args.flow, limit=args.limit)


def cmd_schema(args: argparse.Namespace) -> int:
    from tasks.core.config import pipeline_json_schema

    text = json.dumps(pipeline_json_schema(), indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from tasks.core.config import load_pipeline

    use_secret_blocks()
    config = load_pipeline(args.config, check_secrets=True)
    print(
        f"{args.config}: ok ({len(config.sources)} sources, {len(config.segments)} segments, "
        f"{len(config.destinations)} destinations)"
    )
    return 0


def cmd_receive_events(args: argparse.Namespace) -> int:
    import signal
    import threading

    from flows.events import LandedAnnouncer, event_sources
    from tasks.connectors.sources.events import landing_for
    from tasks.connectors.webhook import receiver_from_options
    from tasks.core.config import load_pipeline
    from tasks.core.config_events import EventSource
    from tasks.errors import ConfigError

    config = load_pipeline(args.config)
    names = event_sources(config, [args.source] if args.source else None)
    if len(names) != 1:
        raise ConfigError(
            f"receive-events: name one enabled event source with --source (found {names})"
        )
    name = names[0]
    source = config.sources[name]
    if not isinstance(source, EventSource):  # event_sources() returns only kind: events
        raise ConfigError(f"receive-events: source {name!r} is not an event source")
    options = source.receiver
    if options is None:
        raise ConfigError(
            f"{args.config}: sources.{name}.receiver is not set: add a receiver with a "
            "signing_secret: {secret: NAME} (or signing: none to accept unsigned batches)"
        )
    # Emit Prefect events only to a real API: an ephemeral one would vanish with this process.
    emit = not args.no_prefect_events and bool(os.environ.get("PREFECT_API_URL"))
    announcer = LandedAnnouncer()  # a burst of batches -> a few events -> a few runs
    receiver = receiver_from_options(
        landing_for(source),
        options,
        source_name=name,
        event_id_field=source.event_id_column,
        host=args.host,
        port=args.port,
        on_landed=announcer if emit else None,
    )
    if options.signing_secret is None:
        signature = "NOT VERIFIED (signing: none): anyone who can connect can land events"
    elif options.timestamp_header is None:
        signature = f"HMAC-SHA256 of the body in {options.signature_header} (no replay window)"
    else:
        signature = (
            f"HMAC-SHA256 in {options.signature_header} over '<{options.timestamp_header}>."
            f"<body>', replay window {options.tolerance_seconds:g}s"
        )

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with announcer, receiver:
        print(f"receiving {name!r} events at POST {receiver.url}", flush=True)
        print(f"  landing: {receiver.landing.location}", flush=True)
        print(f"  signature: {signature}", flush=True)
        print(
            "  prefect events: "
            + ("emitting audience-lake.events.landed" if emit else "off (no PREFECT_API_URL)"),
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(
                f"stopping ({receiver.accepted} batches landed, {receiver.redelivered} "
                f"redelivered, {receiver.rejected} rejected)",
                flush=True,
            )
    return 0


def describe_error(exc: BaseException) -> str:
    """One line for the user: our own errors already name the thing; anything else gets its
    type and first line, and a pointer to ``--debug``."""
    text = " ".join(str(exc).split())
    if isinstance(exc, AudienceLakeError):
        return text or type(exc).__name__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first} (rerun with --debug for the traceback)"


class _NoTraceback(logging.Filter):
    """Keeps a log record's message and drops its traceback (on the console only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def _quiet_tracebacks() -> None:
    """Prefect's console logs print a task's or flow's traceback when it fails; without
    ``--debug`` the one-line error is the whole story (the Prefect UI keeps the traceback)."""
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    quiet = _NoTraceback()
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.addFilter(quiet)

"""``audience-lake``: run the pipeline, the demo, and the operational checks.

Exit status: 0 when the command succeeded; 1 when ``doctor`` ran and a check failed; 2 for any
error, reported as one line on stderr (``error: ...`` naming the thing: key path, source, table,
lake URI, Prefect URL); 3 when ``run`` completed but an audience was held or skipped, or when
``erase`` cleaned the lake but a platform did not confirm the erasure.
``--debug`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli_consent import register as register_consent
from tasks.errors import AudienceLakeError

if TYPE_CHECKING:
    from tasks.connectors.doctor import Check
    from tasks.core.config import PipelineConfig

EXIT_DOCTOR_FAILED = 1  # `doctor` ran every check and at least one said FAIL
EXIT_HELD = 3  # `run` completed but an audience was held/skipped; `erase`: a platform is pending

# Offline-friendly Prefect defaults; a user's own settings win.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Ephemeral mode starts a temporary server; on a loaded 2-core machine it can take over 30 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _cmd_demo(args: argparse.Namespace) -> int:
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


def _use_secret_blocks() -> None:
    """Let ``{secret: NAME}`` come from Prefect Secret blocks when a Prefect server is named.

    Without ``PREFECT_API_URL`` there are no blocks to read, so Prefect is not imported.
    """
    if os.environ.get("PREFECT_API_URL"):
        import tasks.secret_blocks  # noqa: F401  (registers the block source)


def _cmd_run(args: argparse.Namespace) -> int:
    from tasks.core.config import load_pipeline

    _use_secret_blocks()
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


def _cmd_publish(args: argparse.Namespace) -> int:
    from tasks.core.config import load_pipeline
    from tasks.core.pins import parse_version_pins

    _use_secret_blocks()
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


def _cmd_sync_history(args: argparse.Namespace) -> int:
    from flows.sync_history import show_sync_history

    return show_sync_history(args.config, email=args.email, contact_key=args.contact_key)


def _cmd_maintain(args: argparse.Namespace) -> int:
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


def _cmd_erase(args: argparse.Namespace) -> int:
    from flows.common import current_run_id, utc_now
    from flows.erase import read_request_file
    from tasks.core.config import load_pipeline
    from tasks.erasure import erase_people
    from tasks.resources import open_lake, pepper

    _use_secret_blocks()
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


DOCTOR_CHECKS = ("lake", "prefect", "secrets", "sources", "destinations")


def _doctor_lake(args: argparse.Namespace, config: PipelineConfig | None) -> list[Check]:
    from tasks.connectors.doctor import Check, check_lake
    from tasks.core.settings import load_settings
    from tasks.resources import lake_for

    settings = load_settings()
    lake = lake_for(settings)
    checks = [Check("lake", "ok", lake.root), *check_lake(lake.root, lake.storage_options)]
    if settings.uses_demo_pepper and not settings.lake_is_local:
        checks.append(
            Check(
                "pepper",
                "warn",
                "AUDIENCE_LAKE_PEPPER is not set: contact keys use the public demo pepper",
                "export AUDIENCE_LAKE_PEPPER (a long random secret) before the first real run",
            )
        )
    return checks


def _doctor_prefect(args: argparse.Namespace, config: PipelineConfig | None) -> list[Check]:
    from flows.doctor import check_prefect

    return check_prefect(Path(args.prefect_yaml))


def _doctor_secrets(args: argparse.Namespace, config: PipelineConfig | None) -> list[Check]:
    from tasks.connectors.doctor import check_secrets

    return [] if config is None else check_secrets(config)


def _doctor_sources(args: argparse.Namespace, config: PipelineConfig | None) -> list[Check]:
    from tasks.connectors.doctor import check_sources

    return [] if config is None else check_sources(config)


def _doctor_destinations(args: argparse.Namespace, config: PipelineConfig | None) -> list[Check]:
    from tasks.connectors.doctor import check_destinations

    return [] if config is None else check_destinations(config)


_DOCTOR: dict[str, Callable[[argparse.Namespace, PipelineConfig | None], list[Check]]] = {
    "lake": _doctor_lake,
    "prefect": _doctor_prefect,
    "secrets": _doctor_secrets,
    "sources": _doctor_sources,
    "destinations": _doctor_destinations,
}


def _cmd_doctor(args: argparse.Namespace) -> int:
    from tasks.connectors.doctor import Check
    from tasks.core.config import load_pipeline

    wanted = args.check or list(DOCTOR_CHECKS)
    checks: list[Check] = []
    config = None
    _use_secret_blocks()
    if {"secrets", "sources", "destinations"} & set(wanted):
        try:
            # Secrets are reported one by one below, not as one load error.
            config = load_pipeline(args.config)
            checks.append(Check("config", "ok", f"{args.config} is valid"))
        except Exception as exc:  # an unreadable config is a FAIL line; the rest still runs
            hint = "audience-lake validate --config ... shows the key path"
            checks.append(Check("config", "FAIL", describe_error(exc), hint))
        print(checks[-1].line(), flush=True)
    for name in wanted:
        found = _DOCTOR[name](args, config)
        for check in found:
            print(check.line(), flush=True)
        checks.extend(found)
    failed = [c.name for c in checks if c.failed]
    if failed:
        print(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_DOCTOR_FAILED
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from flows.status import show_status

    return show_status(args.config, points=args.points)


def _cmd_history(args: argparse.Namespace) -> int:
    from flows.status import show_history

    return show_history(audience=args.audience, email=args.email, limit=args.limit)


def _cmd_runs(args: argparse.Namespace) -> int:
    from flows.status import show_runs

    return show_runs(since=args.since, flow=args.flow, limit=args.limit)


def _cmd_schema(args: argparse.Namespace) -> int:
    from tasks.core.config import pipeline_json_schema

    text = json.dumps(pipeline_json_schema(), indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from tasks.core.config import load_pipeline

    _use_secret_blocks()
    config = load_pipeline(args.config, check_secrets=True)
    print(
        f"{args.config}: ok ({len(config.sources)} sources, {len(config.segments)} segments, "
        f"{len(config.destinations)} destinations)"
    )
    return 0


def _cmd_receive_events(args: argparse.Namespace) -> int:
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audience-lake")
    except PackageNotFoundError:  # a checkout run without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``audience-lake`` argument parser (every option and subcommand has a help text)."""
    config_default = os.environ.get("AUDIENCE_LAKE_CONFIG", "pipeline.yaml")
    config_help = "pipeline.yaml to use (default: $AUDIENCE_LAKE_CONFIG or pipeline.yaml)"
    parser = argparse.ArgumentParser(
        prog="audience-lake", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the pipeline on sample data and local stand-ins")
    demo.add_argument("--config", default="pipeline.yaml", help="pipeline.yaml to use")
    demo.add_argument("--data", default=".demo", help="where sample data is generated")
    demo.add_argument("--lake", default=".lake", help="local lake directory")
    demo.add_argument(
        "--contacts", type=int, default=2000, help="sample contacts to generate (default 2000)"
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed of the sample data")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="run the pipeline once against the configured lake")
    run.add_argument("--config", default=config_default, help=config_help)
    run.add_argument(
        "--full-refresh", action="store_true", help="re-read every source from the beginning"
    )
    run.add_argument("--dry-run", action="store_true", help="plan the publish, send nothing")
    run.add_argument("--source", action="append", help="only this source (repeatable)")
    run.add_argument("--segment", action="append", help="only this segment (repeatable)")
    run.add_argument("--override-hold", action="store_true", help="publish audiences that are held")
    run.set_defaults(func=_cmd_run)

    publish = sub.add_parser(
        "publish",
        help="publish the gold audiences only (no ingest or transform), optionally pinned to "
        "past gold versions; --dry-run shows the plan: changes, fields, API calls and send time",
    )
    publish.add_argument("--config", default=config_default, help=config_help)
    publish.add_argument("--segment", action="append", help="only this segment (repeatable)")
    publish.add_argument("--dry-run", action="store_true", help="plan the publish, send nothing")
    publish.add_argument(
        "--override-hold", action="store_true", help="publish audiences that are held"
    )
    publish.add_argument(
        "--as-of-run",
        metavar="RUN_ID",
        help="read gold at the versions this past run read (consent is always the latest)",
    )
    publish.add_argument(
        "--version",
        action="append",
        metavar="TABLE=N",
        help="read this gold table at version N, e.g. gold/audience_members=12 (repeatable)",
    )
    publish.set_defaults(func=_cmd_publish)

    sync = sub.add_parser("sync", help="the sync history: what each send carried, and why")
    sync_sub = sync.add_subparsers(dest="sync_command", required=True, metavar="SUBCOMMAND")
    sync_history = sync_sub.add_parser(
        "history", help="every send to one person: action, status, run, gold version, values"
    )
    sync_history.add_argument("--config", default=config_default, help=config_help)
    person = sync_history.add_mutually_exclusive_group(required=True)
    person.add_argument("--email", help="the person's email (never printed)")
    person.add_argument("--contact-key", help="the person's contact key")
    sync_history.set_defaults(func=_cmd_sync_history)

    maintain = sub.add_parser(
        "maintain",
        help="delete expired rows, compact, Z-order, checkpoint and vacuum the lake's tables",
    )
    maintain.add_argument("--config", default=config_default, help=config_help)
    maintain.add_argument(
        "--table", action="append", help="only this table, e.g. gold/audience_members (repeatable)"
    )
    maintain.add_argument(
        "--retention-hours",
        type=int,
        default=None,
        help="vacuum retention for this run (default: maintenance.retention_hours)",
    )
    maintain.add_argument(
        "--no-expire",
        action="store_true",
        help="keep rows older than their retention this run (only compact and vacuum)",
    )
    maintain.set_defaults(func=_cmd_maintain)

    erase = sub.add_parser(
        "erase",
        help="erase people from every lake table and every platform, with a receipt",
    )
    erase.add_argument("--config", default=config_default, help=config_help)
    erase.add_argument("--email", action="append", help="a person's email (repeatable)")
    erase.add_argument(
        "--file", action="append", help="a file of emails, one per line (repeatable)"
    )
    erase.set_defaults(func=_cmd_erase)

    doctor = sub.add_parser(
        "doctor",
        help="check lake, Prefect, secrets, sources and destinations (exit 1 on a FAIL)",
    )
    doctor.add_argument("--config", default=config_default, help=config_help)
    doctor.add_argument(
        "--check",
        action="append",
        choices=DOCTOR_CHECKS,
        help="run only this group of checks (repeatable; default: all)",
    )
    doctor.add_argument(
        "--prefect-yaml",
        default="prefect.yaml",
        help="prefect.yaml whose work pools must exist with a live worker",
    )
    doctor.set_defaults(func=_cmd_doctor)

    status = sub.add_parser(
        "status", help="last runs, holds, audience sizes and their trend, source lag"
    )
    status.add_argument("--config", default=config_default, help=config_help)
    status.add_argument(
        "--points", type=int, default=5, help="runs shown in each audience's trend (default 5)"
    )
    status.set_defaults(func=_cmd_status)

    history = sub.add_parser("history", help="what was sent to an audience or to one person")
    who = history.add_mutually_exclusive_group(required=True)
    who.add_argument("--audience", help="a list id or segment name: sends per run and action")
    who.add_argument(
        "--email", help="one person's email: their ledger rows (looked up by contact key)"
    )
    history.add_argument(
        "--limit", type=int, default=50, help="at most this many rows (default 50)"
    )
    history.set_defaults(func=_cmd_history)

    runs = sub.add_parser("runs", help="recent flow runs from ops/runs: trigger, outcome, tables")
    runs.add_argument(
        "--since", help="only runs started since: an ISO time or an age such as 30m, 6h, 2d"
    )
    runs.add_argument("--flow", help="only runs of this flow (pipeline, ingest, publish...)")
    runs.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    runs.set_defaults(func=_cmd_runs)

    schema = sub.add_parser("schema", help="write the JSON schema of pipeline.yaml")
    schema.add_argument("--output", "-o", default="-", help="file to write ('-' = stdout)")
    schema.set_defaults(func=_cmd_schema)

    validate = sub.add_parser(
        "validate", help="validate pipeline.yaml (and that its secrets are set) and exit"
    )
    validate.add_argument("--config", default="pipeline.yaml", help="pipeline.yaml to validate")
    validate.set_defaults(func=_cmd_validate)

    receive = sub.add_parser(
        "receive-events", help="run the webhook receiver that lands event micro-batches"
    )
    receive.add_argument("--config", default=config_default, help=config_help)
    receive.add_argument("--source", help="the event source (needed if there are several)")
    receive.add_argument("--host", default=None, help="bind address (default: from the config)")
    receive.add_argument("--port", type=int, default=None, help="port (0 = any free port)")
    receive.add_argument(
        "--no-prefect-events", action="store_true", help="do not emit events.landed to Prefect"
    )
    receive.set_defaults(func=_cmd_receive_events)

    register_consent(sub)

    for command in [*sub.choices.values(), sync_history]:  # `run --debug` works as well
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug: bool = args.debug
    try:
        code: int = args.func(args)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 2
    return code


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


if __name__ == "__main__":
    raise SystemExit(main())

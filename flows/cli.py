"""``audience-lake``: run the pipeline, the demo, and the operational checks.

Exit status: 0 when the command succeeded; 1 when ``doctor`` ran and a check failed; 2 for any
error, reported as one line on stderr (``error: ...`` naming the thing: key path, source, table,
lake URI, Prefect URL); 3 when ``run`` completed but an audience was held or skipped, or when
``erase`` cleaned the lake but a platform did not confirm the erasure.
``--debug`` also prints the traceback.
"""

# This module builds the parser and dispatches; the docstring above is the help text. What each
# subcommand does is in flows.cli_commands, flows.cli_doctor and flows.cli_consent.

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from flows.cli_commands import EXIT_DOCTOR_FAILED as EXIT_DOCTOR_FAILED
from flows.cli_commands import EXIT_HELD as EXIT_HELD
from flows.cli_commands import (
    cmd_demo,
    cmd_erase,
    cmd_history,
    cmd_maintain,
    cmd_publish,
    cmd_receive_events,
    cmd_run,
    cmd_runs,
    cmd_schema,
    cmd_status,
    cmd_sync_history,
    cmd_validate,
)
from flows.cli_commands import describe_error as describe_error
from flows.cli_consent import register as register_consent
from flows.cli_doctor import DOCTOR_CHECKS, cmd_doctor

# Offline-friendly Prefect defaults; a user's own settings win.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Ephemeral mode starts a temporary server; on a loaded 2-core machine it can take over 30 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


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
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the pipeline once against the configured lake")
    run.add_argument("--config", default=config_default, help=config_help)
    run.add_argument(
        "--full-refresh", action="store_true", help="re-read every source from the beginning"
    )
    run.add_argument("--dry-run", action="store_true", help="plan the publish, send nothing")
    run.add_argument("--source", action="append", help="only this source (repeatable)")
    run.add_argument("--segment", action="append", help="only this segment (repeatable)")
    run.add_argument("--override-hold", action="store_true", help="publish audiences that are held")
    run.set_defaults(func=cmd_run)

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
    publish.set_defaults(func=cmd_publish)

    sync = sub.add_parser("sync", help="the sync history: what each send carried, and why")
    sync_sub = sync.add_subparsers(dest="sync_command", required=True, metavar="SUBCOMMAND")
    sync_history = sync_sub.add_parser(
        "history", help="every send to one person: action, status, run, gold version, values"
    )
    sync_history.add_argument("--config", default=config_default, help=config_help)
    person = sync_history.add_mutually_exclusive_group(required=True)
    person.add_argument("--email", help="the person's email (never printed)")
    person.add_argument("--contact-key", help="the person's contact key")
    sync_history.set_defaults(func=cmd_sync_history)

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
    maintain.set_defaults(func=cmd_maintain)

    erase = sub.add_parser(
        "erase",
        help="erase people from every lake table and every platform, with a receipt",
    )
    erase.add_argument("--config", default=config_default, help=config_help)
    erase.add_argument("--email", action="append", help="a person's email (repeatable)")
    erase.add_argument(
        "--file", action="append", help="a file of emails, one per line (repeatable)"
    )
    erase.set_defaults(func=cmd_erase)

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
    doctor.set_defaults(func=cmd_doctor)

    status = sub.add_parser(
        "status", help="last runs, holds, audience sizes and their trend, source lag"
    )
    status.add_argument("--config", default=config_default, help=config_help)
    status.add_argument(
        "--points", type=int, default=5, help="runs shown in each audience's trend (default 5)"
    )
    status.set_defaults(func=cmd_status)

    history = sub.add_parser("history", help="what was sent to an audience or to one person")
    who = history.add_mutually_exclusive_group(required=True)
    who.add_argument("--audience", help="a list id or segment name: sends per run and action")
    who.add_argument(
        "--email", help="one person's email: their ledger rows (looked up by contact key)"
    )
    history.add_argument(
        "--limit", type=int, default=50, help="at most this many rows (default 50)"
    )
    history.set_defaults(func=cmd_history)

    runs = sub.add_parser("runs", help="recent flow runs from ops/runs: trigger, outcome, tables")
    runs.add_argument(
        "--since", help="only runs started since: an ISO time or an age such as 30m, 6h, 2d"
    )
    runs.add_argument("--flow", help="only runs of this flow (pipeline, ingest, publish...)")
    runs.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    runs.set_defaults(func=cmd_runs)

    schema = sub.add_parser("schema", help="write the JSON schema of pipeline.yaml")
    schema.add_argument("--output", "-o", default="-", help="file to write ('-' = stdout)")
    schema.set_defaults(func=cmd_schema)

    validate = sub.add_parser(
        "validate", help="validate pipeline.yaml (and that its secrets are set) and exit"
    )
    validate.add_argument("--config", default="pipeline.yaml", help="pipeline.yaml to validate")
    validate.set_defaults(func=cmd_validate)

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
    receive.set_defaults(func=cmd_receive_events)

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


if __name__ == "__main__":
    raise SystemExit(main())

"""``audience-lake doctor``: the groups of checks and the report.

Each group in :data:`DOCTOR_CHECKS` (lake, Prefect, secrets, sources, destinations) is a function
returning :class:`~tasks.connectors.doctor.Check` rows; ``--check`` picks groups. The config is
loaded once for the groups that need it, and an unreadable config is a FAIL line rather than an
error, so the other groups still run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli_commands import EXIT_DOCTOR_FAILED, describe_error, use_secret_blocks

if TYPE_CHECKING:
    from tasks.connectors.doctor import Check
    from tasks.core.config import PipelineConfig


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


def cmd_doctor(args: argparse.Namespace) -> int:
    from tasks.connectors.doctor import Check
    from tasks.core.config import load_pipeline

    wanted = args.check or list(DOCTOR_CHECKS)
    checks: list[Check] = []
    config = None
    use_secret_blocks()
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

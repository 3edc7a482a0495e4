"""The Prefect checks of ``audience-lake doctor``: the API answers, and every work pool that
``prefect.yaml`` deploys to exists and has a live worker.

Without ``PREFECT_API_URL`` flows run on a temporary local server: the API is reported as
``ephemeral`` and the work pool check as ``skipped``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tasks.connectors.doctor import Check

# A worker heartbeats every 30 s by default; three missed beats and it counts as gone.
HEARTBEAT_MISSES = 3
DEFAULT_HEARTBEAT_SECONDS = 30


def work_pool_names(prefect_yaml: Path) -> list[str]:
    """The work pools the deployments of ``prefect.yaml`` run on, in order of appearance."""
    document: Any = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    names: dict[str, None] = {}
    for deployment in document.get("deployments") or []:
        pool = (deployment or {}).get("work_pool") or {}
        if isinstance(pool, dict) and pool.get("name"):
            names[str(pool["name"])] = None
    return list(names)


def check_prefect(prefect_yaml: Path | None, *, now: datetime | None = None) -> list[Check]:
    """The API, then each work pool of ``prefect_yaml`` and its workers."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return [
            Check(
                "prefect api", "ok", "ephemeral (no PREFECT_API_URL): flows start a local server"
            ),
            Check("work pool", "skipped", "no PREFECT_API_URL"),
        ]
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            reason = " ".join(str(problem).split())[:300] or type(problem).__name__
            return [
                Check(
                    "prefect api",
                    "FAIL",
                    f"{url} is unreachable: {reason}",
                    "start the server (prefect server start) or fix PREFECT_API_URL",
                )
            ]
        checks = [Check("prefect api", "ok", f"{url} answers")]
        if prefect_yaml is None or not prefect_yaml.exists():
            checks.append(Check("work pool", "skipped", "no prefect.yaml found"))
            return checks
        moment = now or datetime.now(UTC)
        for pool in work_pool_names(prefect_yaml):
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                checks.append(
                    Check(
                        f"work pool {pool}",
                        "FAIL",
                        f"not found at {url} (prefect.yaml deploys to it)",
                        f"prefect work-pool create {pool} --type process",
                    )
                )
                continue
            workers = client.read_workers_for_work_pool(pool)
            live = [
                w
                for w in workers
                if _alive(w.last_heartbeat_time, w.heartbeat_interval_seconds, moment)
            ]
            if live:
                checks.append(
                    Check(f"work pool {pool}", "ok", f"{len(live)} live worker(s): {live[0].name}")
                )
            else:
                seen = (
                    f"{len(workers)} worker(s), none heard from recently"
                    if workers
                    else "no worker"
                )
                checks.append(
                    Check(
                        f"work pool {pool}",
                        "FAIL",
                        seen,
                        f"start one: prefect worker start --pool {pool}",
                    )
                )
    return checks


def _alive(last: datetime | None, interval: int | None, now: datetime) -> bool:
    if last is None:
        return False
    window = timedelta(seconds=(interval or DEFAULT_HEARTBEAT_SECONDS) * HEARTBEAT_MISSES)
    return now - last <= window


def last_flow_runs(*, scan: int = 200) -> list[tuple[str, str, datetime | None, str]] | None:
    """``(flow, state, started, flow run name)`` of the latest run of each flow the Prefect API
    knows (among its newest ``scan`` runs), or None without ``PREFECT_API_URL``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=scan)
        names = {flow.id: flow.name for flow in client.read_flows(limit=200)}
    latest: dict[str, tuple[str, str, datetime | None, str]] = {}
    for run in runs:
        flow = names.get(run.flow_id, str(run.flow_id))
        if flow not in latest:
            state = (run.state.name if run.state is not None else None) or "unknown"
            latest[flow] = (flow, state, run.start_time, run.name)
    return sorted(latest.values())

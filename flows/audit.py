"""``@audited``: the run audit of a flow, applied under its ``@flow`` decorator.

Each run of an audited flow gets one ``ops/runs`` row (see :mod:`tasks.runs`): written when it
starts, rewritten when it ends (completed, held, skipped or failed, with the error's class and a
masked one-line message), with the Delta versions it read and wrote, collected by the lake
itself while the flow body runs (:mod:`tasks.connectors.lake.audit`). Called outside a Prefect
flow run (a plain function call), the wrapper does nothing.

The trigger comes from the run as Prefect created it:

- ``schedule``: a deployment run its schedule created (``auto_scheduled``);
- ``event``: a deployment run an automation created (a deployment trigger reacting to an event);
- ``ui``: any other deployment run (Run button in the UI, ``prefect deployment run``, the API);
- ``cli``: a flow called directly, not from a deployment (``audience-lake run``, a script);
- a sub-flow inherits the trigger of the run that called it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from prefect import State, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext

from tasks.connectors.lake.audit import RunTables, active, collecting
from tasks.runs import RunOutcome, RunRecord, RunTrigger, kept_back, write_run

P = ParamSpec("P")
R = TypeVar("R")

KEPT_BACK_STATES = {"Held": "held", "Skipped": "skipped"}


def audited(fn: Callable[P, R]) -> Callable[P, R]:
    """Record each run of the flow ``fn`` in ``ops/runs`` (apply it under ``@flow``)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return fn(*args, **kwargs)
        parent = active()
        record = start_record(context, parent)
        _write(record, "start")
        with collecting(record.flow_run_id, record.trigger, record.root_run_id) as tables:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                record.finish(tables, outcome="failed", ended_at=_now(), error=exc)
                _write(record, "end")
                raise
        _finish(record, tables, result)
        _write(record, "end")
        return result

    return run


def start_record(context: FlowRunContext, parent: RunTables | None) -> RunRecord:
    """The ``running`` row of the flow run in ``context`` (``parent``: the calling run's)."""
    flow_run = context.flow_run
    assert flow_run is not None
    parent_id = parent.flow_run_id if parent is not None else _parent_run_id(flow_run)
    if parent is not None and parent.trigger is not None:
        trigger: RunTrigger = parent.trigger  # type: ignore[assignment]
    elif flow_run.parent_task_run_id is not None and flow_run.deployment_id is None:
        trigger = "subflow"  # its caller runs in another process and is not audited here
    else:
        trigger = run_trigger(flow_run)
    return RunRecord(
        flow_run_id=str(flow_run.id),
        flow=context.flow.name if context.flow is not None else "unknown",
        flow_run_name=flow_run.name,
        deployment=_deployment_name(flow_run),
        parent_run_id=parent_id,
        root_run_id=(parent.root_run_id if parent is not None else None)
        or _root_run_id(flow_run, parent_id),
        trigger=trigger,
        triggered_by=_created_by(flow_run),
        parameters=dict(context.parameters or {}),
        attempt=max(1, flow_run.run_count or 1),
        started_at=_now(),
    )


def run_trigger(flow_run: FlowRun) -> RunTrigger:
    """What started ``flow_run``: schedule, event (an automation), UI (or API) or CLI."""
    if flow_run.deployment_id is None:
        return "cli"
    if flow_run.auto_scheduled:
        return "schedule"
    created_by = flow_run.created_by
    if created_by is not None and (created_by.type or "").upper() == "AUTOMATION":
        return "event"
    return "ui"


def _finish(record: RunRecord, tables: RunTables, result: Any) -> None:
    outcome: RunOutcome = "completed"
    holds: list[str] = []
    data = result
    if isinstance(result, State):
        name = result.name or ""
        if name in KEPT_BACK_STATES:
            outcome = "held" if KEPT_BACK_STATES[name] == "held" else "skipped"
            holds = kept_back(result.data) or [result.message or name]
        elif result.is_failed() or result.is_crashed():
            outcome = "failed"
            record.error_class = name or "Failed"
            record.error = result.message
        data = result.data
    record.finish(tables, outcome=outcome, ended_at=_now(), result=data, holds=holds)


def _write(record: RunRecord, when: str) -> None:
    """Write the row; a failure is logged, never raised (the run's own work stands)."""
    from tasks.resources import open_lake

    try:
        write_run(open_lake(), record)
    except Exception as exc:
        get_run_logger().error(
            "run audit: could not write the %s row of run %s to ops/runs: %s",
            when,
            record.flow_run_id,
            exc,
        )


def _parent_run_id(flow_run: FlowRun) -> str | None:
    if flow_run.parent_task_run_id is None:
        return None
    from prefect.runtime import flow_run as runtime

    parent = runtime.get_parent_flow_run_id()
    return str(parent) if parent else None


def _root_run_id(flow_run: FlowRun, parent_id: str | None) -> str:
    if parent_id is None:
        return str(flow_run.id)
    from prefect.runtime import flow_run as runtime

    return str(runtime.get_root_flow_run_id())


def _deployment_name(flow_run: FlowRun) -> str | None:
    if flow_run.deployment_id is None:
        return None
    from prefect.runtime import deployment

    name = deployment.get_name()
    return str(name) if name else str(flow_run.deployment_id)


def _created_by(flow_run: FlowRun) -> str | None:
    created_by = flow_run.created_by
    if created_by is None:
        return None
    label = created_by.display_value or (str(created_by.id) if created_by.id else "")
    return f"{created_by.type}: {label}" if created_by.type else label or None


def _now() -> datetime:
    return datetime.now(UTC)

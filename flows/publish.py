"""``publish`` flow: gold audiences -> each configured destination."""

from __future__ import annotations

from dataclasses import asdict, replace

from prefect import State, flow

from flows.audit import audited
from flows.common import current_run_id, load_config, table_artifact
from tasks.core.tables import AUDIENCE
from tasks.errors import ConfigError
from tasks.lineage import destination_asset_key, lake_asset_key, materialise
from tasks.publish import emit_publish_event, publish_audience, publish_holds, with_outcome
from tasks.publish_reads import resolve_pins
from tasks.publish_report import budget_holds, preview_publish, show_publish_plan
from tasks.readback import ReadbackReport, read_before_push
from tasks.reports import PublishReport
from tasks.resources import open_lake


@flow(name="publish", log_prints=True)
@audited
def publish(
    config_path: str | None = None,
    segments: list[str] | None = None,
    dry_run: bool = False,
    override_hold: bool = False,
    as_of_run: str | None = None,
    versions: dict[str, int] | None = None,
) -> list[PublishReport]:
    """Send each audience's changes; ``dry_run`` plans without sending.

    First every audience is planned and priced (:mod:`tasks.publish_report`): the run page gets
    a ``publish-plan`` table and a ``publish-plan-detail`` markdown artifact (creates, updates
    and the fields they change, removals, unsubscribes, holdouts, a masked sample, API calls and
    the minimum send time), and an audience over a ``send_budget`` is held.

    An audience is held when a source feeding it was quarantined too much, an error-level
    volume anomaly hit what feeds it, or it would lose too many members at once (see
    :func:`tasks.publish.publish_holds`); ``override_hold`` sends anyway, and says so. A held
    audience still sends its unsubscribes. An audience whose publish fails does not stop the
    others (their opt-outs must go out): the run fails after every audience was tried, with the
    first failure. When any audience was held (or skipped because another run held its list),
    the flow ends in a COMPLETED state named ``Held`` (``Skipped``) and emits
    ``audience-lake.publish.held`` (``.skipped``) per audience; called from another flow it
    returns the reports either way.

    Args:
        config_path: The pipeline.yaml to run (empty: the AUDIENCE_LAKE_CONFIG setting).
        segments: Only these segments (names from pipeline.yaml); empty: every audience.
        dry_run: Plan the changes and report them without sending anything.
        override_hold: Publish held audiences anyway (the run says so); use after checking why.
        as_of_run: Read gold at the Delta versions this past run read (its run id in
            ``ops/sync_history`` or ``ops/runs``): send what it sent. Consent is still read at
            its latest version, so an opt-out made since always wins.
        versions: Read these gold tables at these versions (``{table: version}``);
            wins over ``as_of_run`` for the tables it names.
    """
    config = load_config(config_path)
    run_id = current_run_id()
    known = {s.name for s in config.segments}
    unknown = sorted(set(segments or []) - known)
    if unknown:
        raise ConfigError(f"publish: unknown segment(s) {unknown}; known: {sorted(known)}")
    pins = resolve_pins(open_lake(), as_of_run=as_of_run, versions=versions)
    print(f"publish reads {pins.describe()}; consent at its latest version")
    previews = preview_publish(config, segments, pins)
    holds = publish_holds(open_lake(), config, pins=pins, previews=previews)
    for key, reason in budget_holds(config, previews).items():
        holds[key] = f"{holds[key]}; {reason}" if key in holds else reason
    show_publish_plan(previews, holds, run_id=run_id, dry_run=dry_run)
    planned = {(p.destination, p.segment): p for p in previews}
    for (name, segment), reason in sorted(holds.items()):
        if segments and segment not in segments:
            continue
        if override_hold:
            print(f"override_hold: publishing {name}/{segment} despite: {reason}")
        else:
            print(
                f"publish {name}/{segment} held: {reason} (unsubscribes still go out; "
                "override_hold=true sends everything)"
            )
    active = {} if override_hold else holds
    reports: list[PublishReport] = []
    failed: list[State[PublishReport]] = []
    reads: dict[tuple[str, str], ReadbackReport | str] = {}
    unreachable: dict[str, str] = {}  # destinations no read could connect to, this run
    for name, destination in config.destinations.items():
        for segment in destination.audiences:
            if segments and segment not in segments:
                continue
            hold = active.get((name, segment))
            if not dry_run:
                read = read_before_push(
                    name, destination, destination.audiences[segment].list_id,
                    run_id=run_id, done=reads, unreachable=unreachable,
                )  # fmt: skip
                if isinstance(read, str):
                    print(f"publish {name}/{segment} held: {read}")
                    hold = read if hold is None else f"{hold}; {read}"
            # A task that returns a state (Held/Skipped) hands that state to a direct caller:
            # ask for the state always and read its result.
            state = publish_audience(
                name,
                destination,
                segment,
                run_id=run_id,
                dry_run=dry_run,
                hold=hold,
                settings=config.publish,
                pins=pins,
                return_state=True,
            )
            if not state.is_completed():
                # One platform failing must not keep the other audiences (their opt-outs
                # above all) from going out: the run fails once every audience was tried.
                failed.append(state)
                continue
            reports.append(replace(state.result(), preview=planned.get((name, segment))))
    for report in reports:
        if report.outcome in ("held", "skipped"):
            emit_publish_event(report, run_id=run_id)
    audience = lake_asset_key(open_lake().root, AUDIENCE)
    for r in reports:
        if r.outcome in ("sent", "held"):  # a held audience still sent its unsubscribes
            materialise(
                destination_asset_key(
                    config.destinations[r.destination].kind, r.destination, r.audience
                ),
                name=f"{r.destination}/{r.segment}",
                upstream=[audience],
                metadata={
                    "sent": r.sent,
                    "unsubscribed": r.unsubscribed,
                    "removed": r.removed,
                    "held_out": r.held_out,
                    "failed": r.failed,
                },
            )
    if reads:
        table_artifact(
            "platform-opt-outs-read",
            [_read_row(where, read) for where, read in sorted(reads.items())],
            "Platform opt-outs read back before the push, per destination list",
        )
    table_artifact(
        "publish-results",
        [
            {k: v for k, v in asdict(r).items() if k not in ("errors", "preview")}
            | {"outcome": r.outcome}
            for r in reports
        ],
        "Contacts sent per destination and segment",
    )
    for state in failed:
        state.result()  # raises the first failure, with its own message
    return with_outcome(reports, reports)


def _read_row(where: tuple[str, str], read: ReadbackReport | str) -> dict[str, object]:
    if isinstance(read, str):
        return {"destination": where[0], "audience": where[1], "read": None, "new": None,
                "since": None, "statuses": None, "error": read}  # fmt: skip
    return {"destination": where[0], "audience": where[1], "read": read.read,
            "new": read.inserted, "since": str(read.since or "the beginning"),
            "statuses": ", ".join(f"{s}: {n}" for s, n in read.statuses),
            "error": None}  # fmt: skip

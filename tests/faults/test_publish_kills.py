"""A publish killed at every commit boundary, and right after every platform batch, then rerun.

An uninterrupted run of the scenario (:mod:`tests.faults.publish_world`: opt-outs, renames and
newcomers in two audiences, batches of 5, windows of 2 batches) is recorded once: its ledger,
its platform state, and every point a crash can follow (each lease commit: claim, renewals,
release; each ledger commit: a window's intent with the previous window's results, the last
results; each platform batch). Then, for each point, a fresh lake and a fresh Mailchimp
stand-in get the same scenario, a child process dies right after that point (``os._exit``: no
``finally`` runs, like SIGKILL), and the publish is run again.

The verdict, from the stand-in's own log of member payloads: no contact was sent more than twice,
at most one window (``WINDOW_BATCHES`` batches) per audience was sent twice, every contact ends
as the uninterrupted run left it (opted-out people unsubscribed), and the ledger equals the
uninterrupted run's, nothing pending.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.logging import disable_run_logger

from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.publishing import publish_segment
from tests.faults.publish_child import EXIT_CODE
from tests.faults.publish_world import (
    API_KEY,
    BATCH_SIZE,
    LISTS,
    WINDOW_BATCHES,
    PublishChildPool,
    changed,
    expected_points,
    in_window_order,
    initial,
    ledger_view,
    pipeline_yaml,
    printed_point,
    write_people,
)
from tests.faults.world import environment

LEASE_SECONDS = 1.0  # a killed holder blocks its list this long
LEASE_WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PublishChildPool]:
    children = PublishChildPool(tmp_path_factory.mktemp("publish-children"))
    try:
        yield children
    finally:
        children.close()


@dataclass
class Outcome:
    """What one scenario left behind."""

    lake: Lake
    mailchimp: MailchimpStandIn
    setup_requests: dict[str, int]  # member payloads per list before the run under test
    points: list[str]

    def sends(self, list_id: str) -> list[tuple[str, str | None]]:
        return self.mailchimp.member_requests(list_id)[self.setup_requests[list_id] :]

    def members(self) -> dict[str, dict[str, tuple[str, Any]]]:
        return {
            list_id: {
                m["email_address"]: (m["status"], m["merge_fields"].get("FNAME"))
                for m in self.mailchimp.members(list_id).values()
            }
            for list_id in LISTS.values()
        }


def run_scenario(root: Path, pool: PublishChildPool, fault: dict[str, Any] | None) -> Outcome:
    """Publish the initial people, change them, then publish in a child (dying on ``fault``)."""
    root.mkdir(parents=True)
    lake_uri = str(root / "lake")
    mailchimp = MailchimpStandIn(api_key=API_KEY, lists=LISTS.values())
    mailchimp.start()
    try:
        config_path = root / "pipeline.yaml"
        config_path.write_text(pipeline_yaml(
            mailchimp.url, lease_seconds=LEASE_SECONDS, lease_wait_seconds=LEASE_WAIT_SECONDS
        ))  # fmt: skip
        lake = Lake(lake_uri)
        write_people(lake, initial())
        _publish_here(lake, config_path)
        setup = {list_id: len(mailchimp.member_requests(list_id)) for list_id in LISTS.values()}
        write_people(lake, changed())
        spec = {
            "config": str(config_path),
            "run_id": f"run-{uuid.uuid4().hex[:6]}",
            "fault": fault or {"kind": "none"},
            "env": {"AUDIENCE_LAKE_LAKE_URI": lake_uri},
        }
        child = pool.take(spec)
        code = child.finish()
        points = child.points()
        if fault is not None:
            assert code == EXIT_CODE, f"the child did not die at {fault}:\n{child.describe()}"
            # The rerun (in this process: a fresh process is not needed to start clean) waits
            # for the dead holder's claim to expire.
            _publish_here(Lake(lake_uri), config_path, run_id="rerun")
        else:
            assert code == 0 and child.lines[-1] == "done", child.describe()
        return Outcome(Lake(lake_uri), mailchimp, setup, points)
    finally:
        mailchimp.stop()


def _publish_here(lake: Lake, config_path: Path, *, run_id: str = "setup") -> None:
    config = load_pipeline(str(config_path), env={"AUDIENCE_LAKE_SECRET_FAULT_MAILCHIMP": API_KEY})
    with disable_run_logger(), environment({"AUDIENCE_LAKE_SECRET_FAULT_MAILCHIMP": API_KEY}):
        for name, destination in config.destinations.items():
            for segment in destination.audiences:
                publish_segment(lake, name, destination, segment, run_id=run_id,
                                settings=config.publish)  # fmt: skip


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, pool: PublishChildPool) -> Iterator[Outcome]:
    yield run_scenario(tmp_path_factory.mktemp("baseline") / "run", pool, None)


def _faults() -> list[Any]:
    """One fault per point of :func:`expected_points`: exit right after that commit or send."""
    params = []
    seen = {"commit": 0, "send": 0}
    for kind, what in expected_points():
        seen[kind] += 1
        fault = {"kind": f"exit_after_{kind}s", "n": seen[kind]}
        params.append(pytest.param(fault, id=f"{kind}{seen[kind]}-{what.replace(' ', '-')}"))
    return params


def test_the_uninterrupted_run_is_what_the_kills_are_measured_against(baseline: Outcome) -> None:
    points = baseline.points
    # The kill tests below cover exactly the points the real run goes through.
    assert in_window_order([printed_point(p) for p in points]) == in_window_order(expected_points())
    # Every kind of boundary is there: claim, renewals, release, intents (alone and with the
    # previous window's results), the last results, sends.
    for needle in ("lease mailchimp/list-a claimed", "lease mailchimp/list-a released",
                   "pending", "ok,pending", " ok", " list-a 5"):  # fmt: skip
        assert any(needle in p for p in points), (needle, points)
    renewals = [p for p in points if "lease mailchimp/list-a claimed" in p]
    assert len(renewals) >= 2  # the claim and a renewal before each later window
    # Some window sends several batches at once (between two ledger commits).
    kinds = "".join(p[0] for p in points)
    assert "ss" in kinds, points
    for list_id in LISTS.values():
        sent = Counter(email for email, _ in baseline.sends(list_id))
        assert sent and max(sent.values()) == 1, sent
    # Opted-out people are unsubscribed; renamed ones updated.
    members = baseline.members()
    for person in changed():
        for segment, list_id in LISTS.items():
            before = [p for p in initial() if p.n == person.n and segment in p.segments]
            if person.consent == "unsubscribed" and before:
                assert members[list_id][person.email][0] == "unsubscribed"
    assert "pending" not in set(ledger_view(baseline.lake)["status"])


@pytest.mark.parametrize("fault", _faults())
def test_a_publish_killed_at_any_point_resends_at_most_one_window(
    baseline: Outcome, pool: PublishChildPool, tmp_path: Path, fault: dict[str, Any]
) -> None:
    outcome = run_scenario(tmp_path / "kill", pool, fault)
    for list_id in LISTS.values():
        sends = Counter(email for email, _ in outcome.sends(list_id))
        twice = sorted(e for e, n in sends.items() if n == 2)
        assert max(sends.values(), default=0) <= 2, f"{list_id}: {dict(sends)}"
        bound = BATCH_SIZE * WINDOW_BATCHES
        assert len(twice) <= bound, f"{list_id} re-sent more than one window: {twice}"
        assert set(sends) == set(Counter(e for e, _ in baseline.sends(list_id))), list_id
    assert outcome.members() == baseline.members()
    ledger = ledger_view(outcome.lake)
    assert ledger.equals(ledger_view(baseline.lake)), ledger
    assert "pending" not in set(ledger["status"])

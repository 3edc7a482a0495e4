"""Opt-outs made at a platform between two runs are read back and never overwritten.

Real ``publish`` flow runs against each platform's stand-in (Mailchimp, Klaviyo, HubSpot):
people are published, then opt out *at the platform* the way a person does there (a member
status change, a suppression, a communication-preference change), then their attributes change
in the lake so an update would be planned. The next run reads the platform's opt-outs into
``bronze/platform_suppressions`` first, sends no subscribe or update for them (every request the
stand-in received is recorded and checked), records them in the sync ledger as ``suppressed``,
and never plans them again. A read that fails holds the audience's subscribes and updates while
its unsubscribes still go out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

import tasks.readback
from flows.publish import publish
from infra.sandbox.hubspot_marketing import DEFAULT_SUBSCRIPTION_ID, HubSpotMarketingStandIn
from infra.sandbox.klaviyo import KlaviyoStandIn
from infra.sandbox.mailchimp import MailchimpStandIn, subscriber_hash
from tasks.connectors.lake import Lake
from tasks.core.config import load_pipeline
from tasks.core.tables import PLATFORM_SUPPRESSIONS, SYNC_LEDGER
from tasks.readback import ReadbackReport, read_before_push
from tasks.reports import PublishReport
from tests.conftest import free_port
from tests.flows.conftest import CONFIG
from tests.flows.test_publish_platforms import Platform as PlatformBase
from tests.flows.test_publish_platforms import World as PlatformWorld
from tests.flows.test_publish_platforms import (
    _hubspot,
    _klaviyo,
    _mailchimp,
    email,
    key,
)

pytestmark = pytest.mark.flow

PEOPLE = 8
SEGMENT = "buyers"
CONSENTED = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Stand:
    """A platform fixture plus what this test needs: how a person opts out there (per status
    the platform reports), whether it holds them opted out, and the writes naming them."""

    base: PlatformBase
    opt_outs: dict[str, Callable[[str], None]]  # expected status -> how the person does it
    opted_out: Callable[[str], bool]
    writes_naming: Callable[[str], int]
    fail_reads: Callable[[], None]  # a 500/429 storm long enough to fail one read


def _body(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").lower()


def _mailchimp_stand(base: PlatformBase) -> Stand:
    mc: MailchimpStandIn = base.server
    lst = base.list_id

    def status(e: str) -> str | None:
        m = next((m for m in mc.members(lst).values() if m["email_address"] == e), None)
        return None if m is None else str(m["status"])

    def writes(e: str) -> int:
        by_batch = sum(1 for who, _ in mc.member_requests(lst) if who == e)
        by_path = sum(1 for method, path in mc.requests
                      if method != "GET" and subscriber_hash(e) in path)  # fmt: skip
        return by_batch + by_path

    return Stand(
        base,
        opt_outs={
            "unsubscribed": lambda e: mc.member_unsubscribes(lst, e),
            "spam_complaint": lambda e: mc.member_reports_spam(lst, e),
            "cleaned": lambda e: mc.member_bounces(lst, e),
        },
        opted_out=lambda e: status(e) in ("unsubscribed", "cleaned"),
        writes_naming=writes,
        fail_reads=lambda: mc.fail_next(8, status=500),
    )


def _klaviyo_stand(base: PlatformBase) -> Stand:
    kl: KlaviyoStandIn = base.server

    def opted_out(e: str) -> bool:
        p = kl.profile(e)
        marketing = p["attributes"]["subscriptions"]["email"]["marketing"] if p else {}
        return bool(p) and marketing["can_receive_email_marketing"] is False

    def writes(e: str) -> int:
        return sum(1 for x in kl.exchanges
                   if x.request.method != "GET" and e in _body(x.request.body))  # fmt: skip

    return Stand(
        base,
        opt_outs={
            "unsubscribed": kl.person_unsubscribes,
            "spam_complaint": kl.person_complains,
            "bounced": kl.person_bounces,
        },
        opted_out=opted_out,
        writes_naming=writes,
        fail_reads=lambda: kl.fail_next(8, status=429, retry_after=1),
    )


def _hubspot_stand(base: PlatformBase) -> Stand:
    hs: HubSpotMarketingStandIn = base.server

    def writes(e: str) -> int:
        return sum(1 for x in hs.exchanges if x.method != "GET" and "/read" not in x.path
                   and "/search" not in x.path and e in _body(x.body))  # fmt: skip

    return Stand(
        base,
        opt_outs={
            # one subscription type, and "unsubscribe from all email"
            "unsubscribed": lambda e: hs.person_unsubscribes(e, DEFAULT_SUBSCRIPTION_ID),
            "unsubscribed-all": hs.person_unsubscribes,
        },
        opted_out=lambda e: hs.subscription_status(e, DEFAULT_SUBSCRIPTION_ID) == "UNSUBSCRIBED",
        writes_naming=writes,
        fail_reads=lambda: hs.fail_next(8, status=500),
    )


STANDS: dict[str, tuple[Callable[[], Iterator[PlatformBase]], Callable[[PlatformBase], Stand]]] = {
    "mailchimp": (_mailchimp, _mailchimp_stand),
    "klaviyo": (_klaviyo, _klaviyo_stand),
    "hubspot": (_hubspot, _hubspot_stand),
}


@pytest.fixture(params=sorted(STANDS))
def stand(request: pytest.FixtureRequest) -> Iterator[Stand]:
    start, extend = STANDS[request.param]
    for base in start():
        yield extend(base)


def write_gold(
    lake: Lake, *, ltv: dict[int, float], opted_out: frozenset[int] = frozenset()
) -> None:
    """Contacts (with the time of their consent), the audience and the features."""
    people = range(PEOPLE)
    consent = ["unsubscribed" if n in opted_out else "subscribed" for n in people]
    lake.overwrite("silver/contacts", pl.DataFrame(
        {"contact_key": [key(n) for n in people], "email": [email(n) for n in people],
         "consent_status": consent, "consent_at": [CONSENTED] * PEOPLE},
    ))  # fmt: skip
    inside = [n for n in people if n not in opted_out]
    lake.overwrite("gold/audience_members", pl.DataFrame(
        {"segment": [SEGMENT] * len(inside), "contact_key": [key(n) for n in inside],
         "email": [email(n) for n in inside], "first_name": [f"Ann{n}" for n in inside],
         "last_name": ["Lake"] * len(inside), "consent_at": [CONSENTED] * len(inside)},
    ))  # fmt: skip
    lake.overwrite("gold/customer_features", pl.DataFrame(
        {"contact_key": [key(n) for n in people],
         "lifetime_value": [ltv.get(n, 10.0 * n + 0.123) for n in people]},
    ))  # fmt: skip


class Run:
    """The pipeline.yaml of :class:`PlatformWorld` run through the real ``publish`` flow."""

    def __init__(self, stand: Stand, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.world = PlatformWorld(stand.base, root, "upsert")
        self.config = str(root / "pipeline.yaml")
        self.destination = stand.base.kind
        monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", self.world.lake.root)
        for name, value in self.world.env.items():
            monkeypatch.setenv(name, value)

    @property
    def lake(self) -> Lake:
        return self.world.lake

    def publish(self) -> tuple[PublishReport, str]:
        state = publish(config_path=self.config, return_state=True)
        reports: list[PublishReport] = state.result()
        assert len(reports) == 1
        return reports[0], str(state.state_details.flow_run_id)

    def ledger(self, n: int) -> tuple[str, str]:
        row = self.lake.read(SYNC_LEDGER).filter(pl.col("contact_key") == key(n))
        return row["action"].item(), row["status"].item()


def test_a_platform_opt_out_between_runs_is_read_back_and_never_overwritten(
    stand: Stand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(stand, tmp_path, monkeypatch)
    write_gold(run.lake, ltv={})
    first, _ = run.publish()
    assert first.sent == PEOPLE and first.failed == 0, first.errors
    assert run.lake.read(PLATFORM_SUPPRESSIONS).height == 0  # the first read found nobody

    # Between runs, people opt out at the platform, one per status it reports; then all of
    # them (and person 0, who did not opt out) change an attribute in our lake.
    opting = dict(zip(stand.opt_outs, range(3, 3 + len(stand.opt_outs)), strict=True))
    for status, n in opting.items():
        stand.opt_outs[status](email(n))
    before = {n: stand.writes_naming(email(n)) for n in opting.values()}
    write_gold(run.lake, ltv={n: 1000.0 + n for n in [0, *opting.values()]})

    # A dry run neither reads the platform nor writes the lake.
    calls = len(stand.base.server.requests)
    dry = publish(config_path=run.config, dry_run=True)
    assert dry[0].dry_run and len(stand.base.server.requests) == calls
    assert run.lake.read(PLATFORM_SUPPRESSIONS).height == 0

    second, _ = run.publish()
    assert second.suppressed == len(opting) and second.sent == 1, second
    assert second.failed == 0 and second.unsubscribed == 0, second.errors
    assert float(stand.base.fields(email(0))["amount"]) == 1000.0  # type: ignore[index]
    for n in opting.values():
        assert stand.opted_out(email(n)), f"the platform opt-out of person {n} was overwritten"
        assert stand.writes_naming(email(n)) == before[n], f"a write named person {n}"
        assert float(stand.base.fields(email(n))["amount"]) != 1000.0 + n  # type: ignore[index]
        assert run.ledger(n) == ("suppressed", "suppressed")
    rows = run.lake.read(PLATFORM_SUPPRESSIONS)
    got = {(r["email"], r["status"]) for r in rows.iter_rows(named=True)}
    expected = {(email(n), status.split("-")[0]) for status, n in opting.items()}
    assert got == expected
    assert set(rows["destination"]) == {run.destination}
    assert set(rows["audience"]) == {stand.base.list_id}
    assert rows["read_cursor"].null_count() == 0

    # They change again: the ledger plans nothing for them, and nothing reaches the platform.
    write_gold(run.lake, ltv={0: 1000.0} | {n: 2000.0 + n for n in opting.values()})
    third, _ = run.publish()
    assert third.planned == 0 and third.sent == 0, third
    for n in opting.values():
        assert stand.writes_naming(email(n)) == before[n]
        assert stand.opted_out(email(n))
    assert run.lake.read(PLATFORM_SUPPRESSIONS).height == rows.height  # read twice, kept once


def test_a_failed_read_holds_subscribes_and_updates_but_not_unsubscribes(
    stand: Stand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(stand, tmp_path, monkeypatch)
    write_gold(run.lake, ltv={})
    assert run.publish()[0].sent == PEOPLE
    stand.base.unsubscribe_at_platform(email(5))
    write_gold(run.lake, ltv={2: 999.0, 5: 555.0}, opted_out=frozenset({6}))
    calls = {n: stand.writes_naming(email(n)) for n in (2, 5)}

    stand.fail_reads()  # the read meets a storm longer than the client's retries
    held, flow_run = run.publish()
    assert held.outcome == "held" and "could not be read" in (held.held or ""), held
    assert held.unsubscribed == 1 and stand.base.unsubscribed(email(6))  # the opt-out went out
    assert {n: stand.writes_naming(email(n)) for n in (2, 5)} == calls  # no update at all
    assert stand.base.unsubscribed(email(5))
    assert "@" not in (held.held or "")  # the reason names no address
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run]))
        )
    states = {t.name: t.state.type.value for t in tasks if t.state is not None}
    read_task = f"read-suppressions-{run.destination}-{stand.base.list_id}"
    assert states[read_task] == "FAILED", states

    # The next run reads again (from the same cursor) and goes ahead, honouring person 5.
    resumed, _ = run.publish()
    assert resumed.outcome == "sent" and resumed.suppressed == 1, resumed
    assert float(stand.base.fields(email(2))["amount"]) == 999.0  # type: ignore[index]
    assert stand.base.unsubscribed(email(5))
    assert json.dumps(run.ledger(5)) == json.dumps(["suppressed", "suppressed"])


def test_a_destination_that_cannot_be_reached_is_tried_once_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every list of an unreachable destination is held, but only the first read spends the
    HTTP client's retries: the others are held naming it, and the next run tries again."""
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY", "key-us1")
    env = {"AUDIENCE_LAKE_MAILCHIMP_URL": f"http://127.0.0.1:{free_port()}"}  # nothing listens
    destination = load_pipeline(CONFIG, env=env).destinations["mailchimp"]
    lists = [audience.list_id for audience in destination.audiences.values()][:3]
    reads: list[str] = []
    read = tasks.readback.read_suppressions

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(args[3])
        return read(*args, **kwargs)

    monkeypatch.setattr(tasks.readback, "read_suppressions", counted)

    def one_run() -> dict[tuple[str, str], ReadbackReport | str]:
        done: dict[tuple[str, str], ReadbackReport | str] = {}
        unreachable: dict[str, str] = {}
        for list_id in lists:
            read_before_push(
                "mailchimp", destination, list_id, run_id="r", done=done, unreachable=unreachable
            )
        return done

    held = one_run()
    assert reads == lists[:1]
    first, *others = (held[("mailchimp", list_id)] for list_id in lists)
    assert isinstance(first, str) and "could not be read" in first, first
    for reason in others:
        assert isinstance(reason, str), reason
        assert f"mailchimp could not be reached when {lists[0]} was read this run" in reason
        assert "subscribes and updates wait" in reason
    one_run()
    assert reads == [lists[0], lists[0]]  # a new run tries again

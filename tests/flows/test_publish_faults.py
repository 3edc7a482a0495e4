"""Publishing through faults, per platform: real flow runs and the real engine on the stand-ins.

For Mailchimp, Klaviyo and HubSpot alike (one test body, three stand-ins on loopback, the real
adapters, real Delta tables):

* a day-by-day sync in real ``publish`` flow runs: fields go out, a member the platform refuses
  is recorded as an error and sent again next run, a field change sends only the changed
  person, a leaver (mirror mode) is removed and not unsubscribed, and opt-outs in our sources
  are unsubscribed at the platform even while a large-removal hold keeps everything else back;
* per-record errors inside an accepted batch are retried next run, and only those;
* a 429 storm the retries ride out: every contact is applied exactly once, each 429 costs one
  wait (as long as the platform asked), and the run finishes;
* a 429 storm that outlasts the retries (one batch spends its retry budget, then the run stops
  knocking: Mailchimp fails the rest retryably, Klaviyo and HubSpot stop the publish), and a
  batch the platform fails as a whole (Klaviyo import job ``cancelled``/``failed``, Mailchimp
  batch call 5xx, HubSpot 207 partial or 5xx): nothing is recorded as sent that the platform
  did not apply, and the next run sends exactly what is missing, once;
* a destination that fails the run (HubSpot refusing the token) does not keep the opt-outs of
  the other destinations from going out.

Retry policies come from the tests (no real sleeps: waits are recorded, not slept), so a storm
costs milliseconds. Platform-side unsubscribes between runs are covered elsewhere.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.logging import disable_run_logger

from flows.publish import publish
from tasks.connectors.destinations.protocol import Destination, Member, RecordResult
from tasks.connectors.http import RetryPolicy
from tasks.connectors.lake import Lake
from tasks.core.config import PublishConfig, load_pipeline
from tasks.errors import PublishError
from tasks.publishing import publish_segment
from tasks.reports import PublishReport
from tests.connectors.klaviyo_support import RecordingSleep
from tests.faults.world import environment
from tests.flows.platform_faults import (
    PEOPLE,
    PLATFORMS,
    SECRET_ENV,
    SEGMENT,
    Platform,
    email,
    key,
    ledger,
    pipeline_yaml,
    write_gold,
)

pytestmark = pytest.mark.flow

ATTEMPTS = 4
"""Attempts per request in the tests' retry policy."""
EXHAUSTED_STOPS_THE_RUN = {"klaviyo", "hubspot"}
"""Platforms whose adapter stops the publish (``PublishError``) when a write call's retries run
out; Mailchimp's instead fails that batch's members retryably and carries on (see each
adapter's module docstring). Either way nothing is recorded as sent."""


@pytest.fixture(params=sorted(PLATFORMS))
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield from PLATFORMS[request.param]()


def retry_policy(sleep: RecordingSleep, attempts: int = ATTEMPTS) -> RetryPolicy:
    """Short backoff whose waits are recorded, never slept."""
    return RetryPolicy(max_attempts=attempts, base=0.01, cap=0.05, deadline=30.0,
                       sleep=sleep, rng=random.Random(0))  # fmt: skip


class Hooked:
    """The real adapter, with ``before_upsert(n)`` run before its ``n``-th upsert call (from 0):
    where a test injects a fault at the platform, so it meets that batch and no other."""

    def __init__(self, inner: Destination, before_upsert: Callable[[int], None]) -> None:
        self._inner = inner
        self._before = before_upsert
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        self._before(self.calls)
        self.calls += 1
        return self._inner.upsert(audience, members)


class EngineWorld:
    """One destination and its lake, published with ``publish_segment`` (the engine itself)."""

    def __init__(self, platform: Platform, root: Path, *, batch_size: int = 3) -> None:
        self.platform = platform
        self.lake = Lake(str(root / "lake"))
        (root / "pipeline.yaml").write_text(pipeline_yaml(platform, batch_size=batch_size))
        self.config = load_pipeline(str(root / "pipeline.yaml"), env=SECRET_ENV)
        self.sleep = RecordingSleep()
        self.hook: Callable[[int], None] = lambda _n: None
        self.attempts = ATTEMPTS
        # One batch per window: these tests aim faults at the n-th batch and check what the
        # batches after it do, so batches go one after another. Windows of concurrent batches
        # under faults and kills: tests/flows/test_publish_windows.py, tests/faults/.
        self.settings = PublishConfig(window_batches=1)

    def open(self, config: Any) -> Destination:
        adapter = self.platform.open(config, retry_policy(self.sleep, self.attempts))
        return cast(Destination, Hooked(adapter, self.hook))

    def publish(self, run_id: str) -> PublishReport:
        destination = self.config.destinations[self.platform.kind]
        with disable_run_logger(), environment(SECRET_ENV):
            return publish_segment(self.lake, self.platform.kind, destination, SEGMENT,
                                   run_id=run_id, settings=self.settings,
                                   open_sink=self.open)  # fmt: skip


def everyone_once() -> Counter[str]:
    return Counter({email(n): 1 for n in range(PEOPLE)})


def assert_ledger_true_to_platform(world: EngineWorld) -> None:
    """Every contact the ledger calls sent holds its sent amount at the platform; every one it
    does not is absent there (the injected faults never apply anything)."""
    for contact, (action, status, _error) in ledger(world.lake).items():
        n = int(contact.removeprefix("v1:"), 16)
        held = world.platform.fields(email(n))
        if action == "subscribe" and status == "ok":
            assert held is not None and float(held["amount"]) == round(10.0 * n + 0.123, 2)
            assert world.platform.on_list(email(n))
        else:
            assert held is None, f"{email(n)} is {status} in the ledger but the platform has it"


# -- real flow runs ---------------------------------------------------------------------------


def flow_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """A fresh lake the flows find through the environment, and the platforms' secret."""
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(tmp_path / "lake"))
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    return Lake(str(tmp_path / "lake"))


def test_a_week_of_syncs_in_real_flow_runs(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = flow_lake(tmp_path, monkeypatch)
    config = tmp_path / "pipeline.yaml"
    # Two removals out of the list's seven (28 %) trip the breaker; one (14 %) does not.
    guard = "volume:\n  removals: {max_share: 0.2, min_count: 2}\n"
    config.write_text(pipeline_yaml(platform, mode="mirror", extra=guard))

    def run(**parameters: Any) -> tuple[str, PublishReport, Counter[str]]:
        before = platform.upserts()
        state = publish(config_path=str(config), return_state=True, **parameters)
        assert state.is_completed(), state
        (report,) = state.result()
        return str(state.name), report, platform.upserts() - before

    # Day 1: everyone goes out with their fields; the platform refuses person 3.
    write_gold(lake)
    platform.refuse_once(email(3))
    state, report, sent = run()
    assert state == "Completed" and (report.sent, report.failed) == (PEOPLE - 1, 1), report
    assert sent == everyone_once()
    got = platform.fields(email(5))
    assert got is not None and got["name"] == "Ann5" and float(got["amount"]) == 50.12
    assert not platform.on_list(email(3))
    action, status, error = ledger(lake)[key(3)]
    assert (action, status) == ("subscribe", "error") and error
    assert email(3) not in error  # the platform's message quoted the address: masked

    # Day 2: person 2's amount changes and person 4 leaves the segment. Only 2 and the refused
    # 3 are sent; 4 is taken off the list, not unsubscribed.
    write_gold(lake, ltv={2: 999.999}, members=set(range(PEOPLE)) - {4})
    state, report, sent = run()
    assert state == "Completed", report
    assert sent == Counter({email(2): 1, email(3): 1})
    assert (report.sent, report.removed, report.unsubscribed, report.failed) == (3, 1, 0, 0)
    assert float(platform.fields(email(2))["amount"]) == 1000.0  # type: ignore[index]
    assert platform.on_list(email(3))
    assert not platform.on_list(email(4)) and not platform.unsubscribed(email(4))

    # Day 3: persons 5 and 6 opt out in our sources, person 1's amount changes. Two removals
    # hold the audience: the opt-outs still go out, the update waits.
    write_gold(lake, ltv={2: 999.999, 1: 77.7}, members=set(range(PEOPLE)) - {4},
               opted_out=frozenset({5, 6}))  # fmt: skip
    state, report, sent = run()
    assert state == "Held" and report.held is not None and "large removal" in report.held
    assert (report.unsubscribed, report.held_back) == (2, 1), report
    assert platform.unsubscribed(email(5)) and platform.unsubscribed(email(6))
    assert sent == Counter()
    assert float(platform.fields(email(1))["amount"]) == 10.12  # type: ignore[index]

    # Day 4: someone checked and overrides the hold: the held update goes, nothing else.
    state, report, sent = run(override_hold=True)
    assert state == "Completed" and sent == Counter({email(1): 1}), report
    assert float(platform.fields(email(1))["amount"]) == 77.7  # type: ignore[index]
    assert not platform.unsubscribed(email(1))


def test_a_platform_that_fails_the_run_does_not_keep_opt_outs_from_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HubSpot (the first destination) refuses the token mid-week; Mailchimp's opt-outs still
    go out in that run, the run fails naming HubSpot, and HubSpot gets them once it is back."""
    lake = flow_lake(tmp_path, monkeypatch)
    with (
        contextmanager(PLATFORMS["hubspot"])() as hubspot,
        contextmanager(PLATFORMS["mailchimp"])() as mailchimp,
    ):
        config = tmp_path / "pipeline.yaml"
        config.write_text(pipeline_yaml(hubspot, mailchimp))
        write_gold(lake)
        assert publish(config_path=str(config), return_state=True).is_completed()

        write_gold(lake, opted_out=frozenset({5}))
        # The token was revoked meanwhile: the opt-out read before the push and the push
        # itself are both refused.
        hubspot.stand_in.fail_next(2, status=401)
        state = publish(config_path=str(config), return_state=True)

        assert state.is_failed()
        with pytest.raises(PublishError, match="hubspot"):
            state.result()
        assert mailchimp.unsubscribed(email(5))
        assert not hubspot.unsubscribed(email(5))

        again = publish(config_path=str(config), return_state=True)
        assert again.is_completed()
        assert [(r.destination, r.unsubscribed) for r in again.result()] == [
            ("hubspot", 1),
            ("mailchimp", 0),
        ]
        assert hubspot.unsubscribed(email(5))


# -- the engine: per-record errors, 429 storms, failed batches --------------------------------


def test_per_record_errors_are_sent_again_next_run_and_only_they(
    platform: Platform, tmp_path: Path
) -> None:
    world = EngineWorld(platform, tmp_path)
    write_gold(world.lake)
    platform.refuse_once(email(1))
    platform.refuse_once(email(6))

    first = world.publish("r1")

    assert (first.sent, first.failed) == (PEOPLE - 2, 2), first
    statuses = {k: s for k, (_a, s, _e) in ledger(world.lake).items()}
    assert {k for k, s in statuses.items() if s == "error"} == {key(1), key(6)}
    assert_ledger_true_to_platform(world)
    before = platform.upserts()
    second = world.publish("r2")
    assert (second.planned, second.sent, second.failed) == (2, 2, 0), second
    assert platform.upserts() - before == Counter({email(1): 1, email(6): 1})
    assert platform.upserts() == Counter({e: 1 + (e in (email(1), email(6)))
                                          for e in everyone_once()})  # fmt: skip
    assert_ledger_true_to_platform(world)
    assert world.publish("r3").planned == 0


def test_a_429_storm_is_ridden_out_and_every_contact_applied_once(
    platform: Platform, tmp_path: Path
) -> None:
    world = EngineWorld(platform, tmp_path)  # batches of 3, 3 and 2
    write_gold(world.lake)
    storm = ATTEMPTS - 1  # each batch's write call meets this many 429s in a row
    world.hook = lambda _n: platform.throttle(storm)

    report = world.publish("r1")

    assert (report.sent, report.failed) == (PEOPLE, 0), report.errors
    assert platform.upserts() == everyone_once()  # nothing lost, nothing applied twice
    # Bounded: each 429 cost exactly one wait, as long as the platform asked (Klaviyo's
    # Retry-After; Mailchimp and HubSpot send none: backoff), and no call was given up.
    assert len(world.sleep.waits) == 3 * storm
    if platform.kind == "klaviyo":
        assert min(world.sleep.waits) >= 2.0
    assert_ledger_true_to_platform(world)
    assert world.publish("r2").planned == 0


def test_a_storm_that_outlasts_the_retries_stops_the_knocking_and_loses_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    """From the second batch on the platform answers only 429s, more than the retries of every
    batch left together; it calms down during the next run."""
    world = EngineWorld(platform, tmp_path, batch_size=2)  # four batches
    write_gold(world.lake)
    storm = 3 * ATTEMPTS  # enough for the three batches left to spend every retry
    world.hook = lambda n: platform.throttle(storm) if n == 1 else None

    if platform.kind in EXHAUSTED_STOPS_THE_RUN:
        with pytest.raises(PublishError, match="429"):
            world.publish("r1")
        statuses = {k: s for k, (_a, s, _e) in ledger(world.lake).items()}
        assert statuses == {key(0): "ok", key(1): "ok", key(2): "pending", key(3): "pending"}
    else:
        report = world.publish("r1")
        assert (report.sent, report.failed) == (2, PEOPLE - 2), report
        assert all("429" in e or "not sent" in e for e in report.errors), report.errors
    # Bounded: one batch spent its retries, then the run stopped knocking.
    assert len(world.sleep.waits) == ATTEMPTS - 1
    assert_ledger_true_to_platform(world)

    # The next run meets the storm's tail, rides it out and sends each missing contact once.
    world.hook, world.attempts = (lambda _n: None), storm
    again = world.publish("r2")
    assert (again.sent, again.failed) == (PEOPLE - 2, 0), again
    assert platform.upserts() == everyone_once()
    assert_ledger_true_to_platform(world)
    assert world.publish("r3").planned == 0


def refuse_batch(platform: Platform, people: range) -> None:
    for n in people:
        platform.refuse_once(email(n))


BATCH_FAILURES: dict[str, tuple[str, Callable[[Platform], None], str, str | None]] = {
    # name: (platform, the fault injected just before the second batch's write call, then the
    # ledger status of the second batch and of the third (None: never sent)). Mailchimp stops
    # knocking once a batch exhausted its retries; HubSpot's adapter stops the publish.
    "mailchimp-batch-5xx": (
        "mailchimp",
        lambda p: p.stand_in.fail_next(ATTEMPTS, status=503),
        "error",
        "error",
    ),
    "klaviyo-job-cancelled": (
        "klaviyo",
        lambda p: p.stand_in.fail_next_import_job("cancelled"),
        "error",
        "ok",
    ),
    "klaviyo-job-failed": (
        "klaviyo",
        lambda p: p.stand_in.fail_next_import_job("failed"),
        "error",
        "ok",
    ),
    "hubspot-207-partial": ("hubspot", lambda p: refuse_batch(p, range(3, 6)), "error", "ok"),
    "hubspot-batch-5xx": (
        "hubspot",
        lambda p: p.stand_in.fail_next(ATTEMPTS, status=503),
        "pending",
        None,
    ),
}


@pytest.mark.parametrize("failure", sorted(BATCH_FAILURES))
def test_a_batch_the_platform_fails_is_recorded_and_sent_next_run(
    failure: str, tmp_path: Path
) -> None:
    kind, inject, second, third = BATCH_FAILURES[failure]
    with contextmanager(PLATFORMS[kind])() as platform:
        world = EngineWorld(platform, tmp_path)  # batches of 3, 3 and 2
        write_gold(world.lake)
        world.hook = lambda n: inject(platform) if n == 1 else None

        if third is None:
            with pytest.raises(PublishError, match="503"):
                world.publish("r1")
        else:
            report = world.publish("r1")
            unsent = 3 + 2 * (third != "ok")
            assert (report.sent, report.failed) == (PEOPLE - unsent, unsent), report

        expected = {**{key(n): "ok" for n in range(3)}, **{key(n): second for n in range(3, 6)}}
        if third is not None:
            expected |= {key(n): third for n in range(6, PEOPLE)}
        assert {k: s for k, (_a, s, _e) in ledger(world.lake).items()} == expected
        assert_ledger_true_to_platform(world)  # nothing marked ok that the platform lacks

        world.hook = lambda _n: None
        before = platform.upserts()
        again = world.publish("r2")
        missing = {n for n in range(PEOPLE) if expected.get(key(n)) != "ok"}
        assert platform.upserts() - before == Counter({email(n): 1 for n in missing})
        assert (again.sent, again.failed) == (len(missing), 0), again
        assert_ledger_true_to_platform(world)
        assert set(ledger(world.lake).values()) == {("subscribe", "ok", None)}
        assert world.publish("r3").planned == 0

"""The HubSpot destination adapter against the HubSpot stand-in, over real loopback HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from infra.sandbox.hubspot_marketing import HubSpotMarketingStandIn
from infra.sandbox.serve import config_list_ids, config_subscription_ids
from tasks.connectors.destinations import PLATFORMS, open_destination
from tasks.connectors.destinations.hubspot import (
    HubSpot,
    RollingWindowBudget,
    format_value,
    open_hubspot,
)
from tasks.connectors.destinations.hubspot.payloads import _unique_email_batches
from tasks.connectors.destinations.protocol import FieldSpec, Member
from tasks.connectors.http import RetryPolicy, build_client
from tasks.core.config import HubSpotDestination
from tasks.errors import ConfigError, PublishError

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "pat-na1-test-token-0123456789"
LIST = "41"
SUBSCRIPTION = 1001
FIELDS = [
    FieldSpec("firstname", "text"),
    FieldSpec("lifetime_value", "number", "Lifetime value"),
    FieldSpec("last_order_date", "date"),
    FieldSpec("is_vip", "boolean"),
]
FAST = RetryPolicy(max_attempts=8, base=0.02, cap=0.3, deadline=20.0)
UNPACED = RollingWindowBudget(10_000, 1.0)


@pytest.fixture
def hubspot() -> Iterator[HubSpotMarketingStandIn]:
    with HubSpotMarketingStandIn(token=TOKEN, lists=[LIST], subscription_ids=[SUBSCRIPTION]) as s:
        yield s


def adapter(
    server: HubSpotMarketingStandIn,
    *,
    token: str = TOKEN,
    batch_size: int = 100,
    policy: RetryPolicy = FAST,
    budget: RollingWindowBudget = UNPACED,
    scope: str = "subscription",
    max_in_flight: int = 10,
) -> HubSpot:
    client = build_client(
        server.url, headers={"Authorization": f"Bearer {token}"}, owner="destinations.hubspot"
    )
    return HubSpot(
        client,
        subscription_id=SUBSCRIPTION,
        unsubscribe_scope="all" if scope == "all" else "subscription",
        batch_size=batch_size,
        policy=policy,
        budget=budget,
        max_in_flight=max_in_flight,
    )


def member(n: int, **fields: str | int | float | bool | None) -> Member:
    return Member(f"key-{n}", f"person{n}@example.com", fields)


def people(count: int) -> list[Member]:
    return [
        member(n, firstname=f"P{n}", lifetime_value=n * 10.5, last_order_date="2026-11-30")
        for n in range(count)
    ]


def ready(server: HubSpotMarketingStandIn, **kwargs: object) -> HubSpot:
    """An adapter whose mapped properties exist."""
    destination = adapter(server, **kwargs)  # type: ignore[arg-type]
    destination.ensure_fields(LIST, FIELDS, create=True)
    return destination


# -- upsert ---------------------------------------------------------------------------------------
def test_upsert_writes_properties_and_list_membership(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot, batch_size=2)
    members = [*people(3), member(3, firstname="Vip", is_vip=True)]

    results = list(destination.upsert(LIST, members))

    assert [(r.contact_key, r.ok) for r in results] == [(m.contact_key, True) for m in members]
    stored = hubspot.contact("person1@example.com") or {}
    assert (stored["firstname"], stored["lifetime_value"], stored["last_order_date"]) == (
        "P1",
        "10.5",
        "2026-11-30",
    )
    assert hubspot.contact("person3@example.com")["is_vip"] == "true"  # type: ignore[index]
    assert hubspot.list_members(LIST) == {m.email for m in members}
    # 4 members in batches of 2: two upserts, two membership adds, nothing else.
    assert len(hubspot.requests_to("POST", "/batch/upsert")) == 2
    assert len(hubspot.requests_to("PUT", "/memberships/add")) == 2


def test_results_are_matched_by_trace_id_not_position(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    members = [member(n, firstname=f"N{n}") for n in range(5)]
    members[2] = Member("key-bad", "not-an-email", {"firstname": "X"})

    results = {r.contact_key: r for r in destination.upsert(LIST, members)}

    answer = json.loads(hubspot.requests_to("POST", "/batch/upsert")[-1].response_body)
    returned = [r["objectWriteTraceId"] for r in answer["results"]]
    assert returned != sorted(returned)  # the stand-in re-ordered them
    assert not results["key-bad"].ok
    assert all(results[f"key-{n}"].ok for n in (0, 1, 3, 4))
    assert hubspot.contact("person4@example.com")["firstname"] == "N4"  # type: ignore[index]


def test_changed_property_is_updated_and_none_clears_it(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    list(destination.upsert(LIST, [member(1, firstname="Ann", lifetime_value=5)]))

    results = list(destination.upsert(LIST, [member(1, firstname="Anna", lifetime_value=None)]))

    assert results[0].ok
    stored = hubspot.contact("person1@example.com")
    assert stored is not None
    assert stored["firstname"] == "Anna"
    assert "lifetime_value" not in stored
    assert hubspot.list_members(LIST) == {"person1@example.com"}


def test_207_per_input_errors_fail_only_those_members(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    members = [
        member(0, firstname="Ok"),
        Member("key-invalid", "person@@example", {"firstname": "Bad"}),
        member(2, lifetime_value="twelve"),
        member(3, nickname="not a property"),
        member(4, last_order_date="2026-11-30T10:00:00Z"),
    ]

    results = {r.contact_key: r for r in destination.upsert(LIST, members)}

    assert hubspot.requests_to("POST", "/batch/upsert")[-1].status == 207
    assert results["key-0"].ok
    failed = {key: r.error or "" for key, r in results.items() if not r.ok}
    assert set(failed) == {"key-invalid", "key-2", "key-3", "key-4"}
    assert "invalid" in failed["key-invalid"]
    assert "twelve" in failed["key-2"]
    assert "nickname" in failed["key-3"]
    assert "date" in failed["key-4"]
    assert not any(results[k].retryable for k in failed)  # validation: fix the data, not retry
    assert hubspot.list_members(LIST) == {"person0@example.com"}


def test_same_email_twice_goes_into_separate_calls(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    twice = [member(1, firstname="First"), Member("key-1b", "PERSON1@example.com", {})]

    results = list(destination.upsert(LIST, twice))

    assert all(r.ok for r in results)
    assert len(hubspot.requests_to("POST", "/batch/upsert")) == 2


def test_tags_are_refused_with_a_clear_error(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    with pytest.raises(PublishError, match="no tags"):
        list(destination.upsert(LIST, [Member("k", "t@example.com", {}, ("vip",))]))


# -- remove, unsubscribe, suppressions ------------------------------------------------------------
def test_remove_takes_members_off_the_list_only(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    members = people(3)
    list(destination.upsert(LIST, members))
    stranger = Member("key-x", "never-seen@example.com", {})

    results = list(destination.remove(LIST, [members[0], stranger]))

    assert all(r.ok for r in results)
    assert hubspot.list_members(LIST) == {"person1@example.com", "person2@example.com"}
    assert hubspot.contact("person0@example.com") is not None  # left the list, not HubSpot
    assert hubspot.subscription_status("person0@example.com", SUBSCRIPTION) == "NOT_SPECIFIED"


def test_unsubscribe_writes_the_subscription_status(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    members = people(2)

    results = list(destination.unsubscribe(LIST, [*members, Member("key-bad", "bad@", {})]))

    assert [r.ok for r in results] == [True, True, False]
    assert results[2].retryable  # an opt-out is never dropped
    for m in members:
        assert hubspot.subscription_status(m.email, SUBSCRIPTION) == "UNSUBSCRIBED"


def test_unsubscribe_from_all_email(hubspot: HubSpotMarketingStandIn) -> None:
    destination = adapter(hubspot, scope="all")
    results = list(destination.unsubscribe(LIST, people(1)))
    assert results[0].ok
    assert hubspot.requests_to("POST", "/batch/unsubscribe-all")
    page = destination.suppressions_since(LIST, None)
    assert page.suppressions == []  # not on the list: not this audience's evidence


def test_platform_unsubscribes_are_read_and_never_overwritten(
    hubspot: HubSpotMarketingStandIn,
) -> None:
    destination = ready(hubspot)
    members = people(4)
    list(destination.upsert(LIST, members))
    hubspot.person_unsubscribes(members[1].email, SUBSCRIPTION)
    hubspot.person_unsubscribes(members[2].email)  # "unsubscribe from all email"

    page = destination.suppressions_since(LIST, None)
    # The next run upserts everyone again, with changed attributes.
    again = [Member(m.contact_key, m.email, {"firstname": "Changed"}) for m in members]
    assert all(r.ok for r in destination.upsert(LIST, again))

    assert {s.email: s.status for s in page.suppressions} == {
        members[1].email: "unsubscribed",
        members[2].email: "unsubscribed",
    }
    assert hubspot.subscription_status(members[1].email, SUBSCRIPTION) == "UNSUBSCRIBED"
    assert hubspot.subscription_status(members[2].email, SUBSCRIPTION) == "UNSUBSCRIBED"
    assert hubspot.contact(members[1].email)["firstname"] == "Changed"  # type: ignore[index]


def test_suppressions_since_returns_only_newer_opt_outs(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    members = people(3)
    list(destination.upsert(LIST, members))
    hubspot.person_unsubscribes(members[0].email, SUBSCRIPTION)
    first = destination.suppressions_since(LIST, None)
    time.sleep(0.01)  # HubSpot stamps statuses in milliseconds

    hubspot.person_unsubscribes(members[2].email, SUBSCRIPTION)
    newer = destination.suppressions_since(LIST, first.suppressions[0].occurred_at)

    assert [s.email for s in first.suppressions] == [members[0].email]
    assert first.cursor <= datetime.now(UTC)
    assert [s.email for s in newer.suppressions] == [members[2].email]
    assert destination.suppressions_since(LIST, datetime.now(UTC)).suppressions == []


def test_suppression_read_pages_through_large_lists(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    members = [member(n) for n in range(260)]  # more than one 250-record memberships page
    list(destination.upsert(LIST, members))
    hubspot.person_unsubscribes(members[255].email, SUBSCRIPTION)

    page = destination.suppressions_since(LIST, None)

    assert [s.email for s in page.suppressions] == [members[255].email]
    assert len(hubspot.requests_to("GET", "/memberships")) == 2


# -- limits and failures --------------------------------------------------------------------------
def test_429_storm_is_ridden_out_with_short_retries() -> None:
    with HubSpotMarketingStandIn(token=TOKEN, lists=[LIST], burst=3, window_seconds=0.4) as server:
        server.add_property("firstname", "string", "text")
        # Two batches at a time: ten unpaced threads on a 0.4 s window need many more tries.
        storm_policy = RetryPolicy(max_attempts=12, base=0.05, cap=0.5, deadline=20.0)
        destination = adapter(server, batch_size=5, max_in_flight=2, policy=storm_policy)
        members = [member(n, firstname="x") for n in range(30)]

        results = list(destination.upsert(LIST, members))

        assert all(r.ok for r in results)
        assert server.rate_limited > 0
        limited = [e for e in server.exchanges if e.status == 429]
        assert limited[0].response_headers["X-HubSpot-RateLimit-Remaining"] == "0"
        assert json.loads(limited[0].response_body)["policyName"] == "TEN_SECONDLY_ROLLING"


def test_the_rolling_budget_keeps_under_the_burst_limit() -> None:
    with HubSpotMarketingStandIn(token=TOKEN, lists=[LIST], burst=3, window_seconds=0.3) as server:
        # Half a second of slack: on two loaded cores the gap between taking a slot and arriving
        # at the server can exceed 100 ms (a 50 ms slack failed about one run in four).
        budget = RollingWindowBudget(3, 0.8)
        destination = adapter(server, batch_size=5, budget=budget, max_in_flight=2)

        results = list(destination.upsert(LIST, [member(n) for n in range(20)]))

        assert all(r.ok for r in results)
        assert server.rate_limited == 0
        assert budget.waited_seconds > 0


def test_a_429_storm_longer_than_the_retry_budget_stops_the_publish() -> None:
    with HubSpotMarketingStandIn(token=TOKEN, lists=[LIST], burst=1, window_seconds=30) as server:
        destination = adapter(server, policy=RetryPolicy(max_attempts=3, base=0.01, cap=0.02))
        destination.probe([])  # uses up the window
        with pytest.raises(PublishError, match=r"429: RATE_LIMIT: You have reached"):
            list(destination.upsert(LIST, [member(1)]))


def test_a_platform_error_names_the_call_and_never_the_token(
    hubspot: HubSpotMarketingStandIn,
) -> None:
    destination = ready(hubspot, policy=RetryPolicy(max_attempts=2, base=0.01, cap=0.02))
    hubspot.fail_next(2, status=503)

    with pytest.raises(PublishError) as raised:
        list(destination.upsert(LIST, [member(1)]))

    message = str(raised.value)
    assert "upsert 1 contacts for list 41" in message and "503" in message
    assert TOKEN not in message


def test_a_wrong_token_is_a_clear_error(hubspot: HubSpotMarketingStandIn) -> None:
    destination = adapter(hubspot, token="pat-wrong-token-000")
    with pytest.raises(PublishError, match="401: INVALID_AUTHENTICATION"):
        destination.probe([LIST])


def test_an_unknown_list_fails_the_probe(hubspot: HubSpotMarketingStandIn) -> None:
    assert "1 lists readable" in adapter(hubspot).probe([LIST])
    with pytest.raises(PublishError, match="list 999.*404"):
        adapter(hubspot).probe(["999"])


def test_an_unknown_subscription_type_fails_the_probe() -> None:
    with (
        HubSpotMarketingStandIn(token=TOKEN, subscription_ids=[7]) as server,
        pytest.raises(PublishError, match="subscription type 1001 does not exist"),
    ):
        adapter(server).probe([])


# -- erasure --------------------------------------------------------------------------------------
def test_erase_deletes_and_blocklists(hubspot: HubSpotMarketingStandIn) -> None:
    destination = ready(hubspot)
    members = people(2)
    list(destination.upsert(LIST, members))

    receipts = list(destination.erase([members[0].email, "unknown@example.com"]))
    again = list(destination.upsert(LIST, [members[0]]))

    assert [r.ok for r in receipts] == [True, True]
    assert "204" in receipts[0].detail
    assert hubspot.contact(members[0].email) is None
    assert hubspot.is_blocklisted("unknown@example.com")
    assert hubspot.list_members(LIST) == {members[1].email}
    assert not again[0].ok and not again[0].retryable
    assert "blocklisted" in (again[0].error or "")


def test_erase_reports_a_platform_refusal_per_person(hubspot: HubSpotMarketingStandIn) -> None:
    destination = adapter(hubspot, policy=RetryPolicy(max_attempts=1))
    hubspot.fail_next(1, status=400)
    receipts = list(destination.erase(["a@example.com", "b@example.com"]))
    assert [r.email for r in receipts] == ["a@example.com", "b@example.com"]
    refused = [r for r in receipts if not r.ok]  # the two run at once: either may meet the 400
    assert len(refused) == 1 and "400" in refused[0].detail


# -- fields ---------------------------------------------------------------------------------------
def test_missing_properties_are_created_when_allowed(hubspot: HubSpotMarketingStandIn) -> None:
    destination = adapter(hubspot)

    created = destination.ensure_fields(LIST, FIELDS, create=True)

    assert created == ["lifetime_value", "last_order_date", "is_vip"]
    bodies = [json.loads(e.body) for e in hubspot.requests_to("POST", "/properties/contacts")]
    assert {b["name"]: (b["type"], b["fieldType"]) for b in bodies} == {
        "lifetime_value": ("number", "number"),
        "last_order_date": ("date", "date"),
        "is_vip": ("bool", "booleancheckbox"),
    }
    assert destination.ensure_fields(LIST, FIELDS, create=True) == []


def test_missing_properties_are_one_clear_error_otherwise(
    hubspot: HubSpotMarketingStandIn,
) -> None:
    destination = adapter(hubspot)
    with pytest.raises(PublishError) as raised:
        destination.ensure_fields(LIST, FIELDS, create=False)
    message = str(raised.value)
    for name in ("lifetime_value (number)", "last_order_date (date)", "is_vip (boolean)"):
        assert name in message
    assert "firstname" not in message
    assert not hubspot.requests_to("POST", "/properties/contacts")


def test_mistyped_and_read_only_properties_are_never_altered(
    hubspot: HubSpotMarketingStandIn,
) -> None:
    hubspot.add_property("lifetime_value", "string", "text")
    destination = adapter(hubspot)
    wanted = [FieldSpec("lifetime_value", "number"), FieldSpec("createdate", "date")]

    with pytest.raises(PublishError) as raised:
        destination.ensure_fields(LIST, wanted, create=True)

    assert "lifetime_value is a HubSpot string property, the mapping writes number" in str(
        raised.value
    )
    assert "createdate is read-only" in str(raised.value)
    assert not hubspot.requests_to("POST", "/properties/contacts")


# -- values and configuration ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "wire"),
    [(None, ""), (True, "true"), (False, "false"), (3, "3"), (2.0, "2"), (10.25, "10.25"),
     (1e-7, "0.0000001"), (1.5e-13, "0.00000000000015"), ("2026-11-30", "2026-11-30")],
)  # fmt: skip
def test_values_go_as_hubspot_strings(value: object, wire: str) -> None:
    assert format_value(value) == wire  # type: ignore[arg-type]


def hubspot_config(url: str, **extra: object) -> HubSpotDestination:
    return HubSpotDestination.model_validate(
        {
            "kind": "hubspot",
            "base_url": url,
            "token": {"secret": "hubspot_token"},
            "subscription_type_id": SUBSCRIPTION,
            "audiences": {"vips": LIST},
            **extra,
        }
    )


def test_config_opens_an_adapter_with_the_bearer_token(
    hubspot: HubSpotMarketingStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN", TOKEN)
    config = hubspot_config(hubspot.url)

    destination = PLATFORMS["hubspot"](config)
    try:
        assert "1 lists readable" in destination.probe(config.list_ids())
    finally:
        destination.close()
    assert hubspot.exchanges[0].headers["authorization"] == f"Bearer {TOKEN}"
    with pytest.raises(ConfigError, match="only a destination-protocol adapter"):
        open_destination(config)


def test_config_rejects_list_names_and_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="audiences"):
        hubspot_config("http://127.0.0.1:1", audiences={"vips": "VIP customers"})
    with pytest.raises(ValidationError, match="base_url"):
        hubspot_config("http://api.hubapi.example")
    monkeypatch.delenv("AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="AUDIENCE_LAKE_SECRET_HUBSPOT_TOKEN"):
        open_hubspot(hubspot_config("http://127.0.0.1:1"))


def test_rolling_budget_waits_for_the_oldest_start() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = RollingWindowBudget(2, 10.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        with budget.slot():
            now[0] += 1.0

    assert slept == [8.0]  # the third start waits until the first leaves the window


def test_the_sandbox_serves_the_lists_hubspot_destinations_name(tmp_path: Path) -> None:
    text = (ROOT / "pipeline.yaml").read_text(encoding="utf-8")
    hubspot_block = (
        "destinations:\n"
        "  hubspot_two:\n"
        "    kind: hubspot\n"
        "    base_url: http://127.0.0.1:8714\n"
        "    token: {secret: hubspot_token}\n"
        "    subscription_type_id: 77\n"
        "    audiences: {champions: '12', at_risk: '13'}\n"
    )
    config = tmp_path / "pipeline.yaml"
    config.write_text(text.replace("destinations:\n", hubspot_block, 1), encoding="utf-8")

    # The repository's own HubSpot destination publishes to list 101 (subscription type 1001).
    assert config_list_ids(config, "hubspot") == ["12", "13", "101"]
    assert "12" not in config_list_ids(config, "mailchimp")  # Mailchimp's lists stay Mailchimp's
    assert config_subscription_ids(config) == [77, 1001]


@settings(max_examples=200, deadline=None)
@given(
    emails=st.lists(st.sampled_from(["a@x.io", "A@x.io", "b@x.io", "c@x.io", "d@x.io"])),
    size=st.integers(1, 4),
)
def test_batches_hold_every_member_once_and_no_email_twice(emails: list[str], size: int) -> None:
    members = [Member(f"k{n}", email, {}) for n, email in enumerate(emails)]

    batches = list(_unique_email_batches(members, size))

    assert sorted(m.contact_key for b in batches for m in b) == sorted(
        m.contact_key for m in members
    )
    for batch in batches:
        assert 1 <= len(batch) <= size
        assert len({m.email.lower() for m in batch}) == len(batch)
    if len({e.lower() for e in emails}) == len(emails):  # no repeats: order kept
        assert [m for b in batches for m in b] == members


def test_a_health_check_probe_takes_its_own_short_retry_policy(
    hubspot: HubSpotMarketingStandIn,
) -> None:
    destination = adapter(hubspot)  # the publish policy would ride out one 503
    hubspot.fail_next(1, status=503)
    with pytest.raises(PublishError, match="503"):
        destination.probe([LIST], policy=RetryPolicy(max_attempts=1))
    assert "1 lists readable" in destination.probe([LIST])


def test_batches_run_concurrently_and_results_keep_member_order() -> None:
    with HubSpotMarketingStandIn(token=TOKEN, lists=[LIST], response_delay=0.05) as server:
        server.add_property("firstname", "string", "text")
        destination = adapter(server, batch_size=5, max_in_flight=4)
        members = [member(n, firstname=f"N{n}") for n in range(40)]

        results = list(destination.upsert(LIST, members))

        assert [r.contact_key for r in results] == [m.contact_key for m in members]
        assert all(r.ok for r in results)
        assert 1 < server.max_in_flight <= 4


def test_a_person_in_two_batches_is_written_in_order() -> None:
    finished: list[int] = []

    def send(batch: tuple[int, str, float]) -> list[int]:
        time.sleep(batch[2])
        finished.append(batch[0])
        return [batch[0]]

    def keys(batch: tuple[int, str, float]) -> set[str]:
        return {batch[1]}

    with HubSpotMarketingStandIn(token=TOKEN) as server:
        destination = adapter(server, max_in_flight=4)
        # Batch 0 is slow; batch 1 (someone else) runs alongside it; batch 2 is about the same
        # person as batch 0 and waits for it.
        batches = [(0, "same@example.com", 0.2), (1, "b@x.io", 0.0), (2, "same@example.com", 0.0)]
        results = list(destination._pipelined(batches, send, keys))

    assert results == [0, 1, 2]
    assert finished == [1, 0, 2]

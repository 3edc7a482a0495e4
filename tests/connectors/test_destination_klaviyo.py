"""The Klaviyo adapter against the Klaviyo stand-in, over real loopback HTTP.

No mocks: the adapter is opened from a config exactly as the registry opens it, and the
stand-in keeps the account's state (profiles, lists, consent, jobs). Waits are kept short by
the retry policy (a recording sleep) and by a short import-job poll interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.sandbox.klaviyo import KlaviyoStandIn
from tasks.connectors.destinations import PLATFORMS
from tasks.connectors.destinations.klaviyo import Klaviyo, rate_class
from tasks.connectors.destinations.protocol import FieldSpec, Member
from tasks.connectors.doctor import check_destinations
from tasks.connectors.http import RetryPolicy
from tasks.core.config import load_pipeline
from tasks.errors import PublishError
from tests.connectors.klaviyo_support import (
    KEY,
    LIST,
    OTHER_LIST,
    RecordingSleep,
    fast_policy,
    member,
    open_adapter,
)


@pytest.fixture
def klaviyo() -> Iterator[KlaviyoStandIn]:
    with KlaviyoStandIn(api_key=KEY, lists=[LIST, OTHER_LIST]) as server:
        yield server


@pytest.fixture
def opener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Klaviyo]]:
    """Opens adapters on a stand-in and closes them after the test."""
    opened: list[Klaviyo] = []

    def make(server: KlaviyoStandIn, **options: Any) -> Klaviyo:
        opened.append(open_adapter(server, monkeypatch, **options))
        return opened[-1]

    yield make
    for adapter in opened:
        adapter.close()


@pytest.fixture
def adapter(klaviyo: KlaviyoStandIn, opener: Callable[..., Klaviyo]) -> Klaviyo:
    return opener(klaviyo)


def _ok(results: object) -> dict[str, bool]:
    return {r.contact_key: r.ok for r in results}  # type: ignore[attr-defined]


ROOT = Path(__file__).resolve().parents[2]
PERSONAL = dict(first_name="Ada", ltv=1234.5, last_order="2026-11-02", category="books", score=87)


# -- registry, probe, fields ---------------------------------------------------------------------
def test_the_registry_opens_klaviyo(klaviyo: KlaviyoStandIn, adapter: Klaviyo) -> None:
    assert "klaviyo" in PLATFORMS
    assert adapter.kind == "klaviyo"
    assert adapter.limits.batch_size == 10_000


def test_probe_reads_each_list_and_names_a_missing_one(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    assert "2 lists readable" in adapter.probe([LIST, OTHER_LIST])
    with pytest.raises(PublishError, match="list 'nope' does not exist"):
        adapter.probe(["nope"])
    assert all(r.method == "GET" for r in (e.request for e in klaviyo.exchanges))


def test_a_wrong_key_is_refused_and_never_shown(
    klaviyo: KlaviyoStandIn, opener: Callable[..., Klaviyo]
) -> None:
    klaviyo.api_key = "pk_the_right_one"
    wrong = opener(klaviyo)
    with pytest.raises(PublishError, match="401") as caught:
        wrong.probe([LIST])
    assert KEY not in str(caught.value)


def test_a_missing_revision_header_gets_klaviyos_error(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    del adapter._client.headers["revision"]
    with pytest.raises(PublishError, match="400: invalid: The 'revision' header is required"):
        adapter.probe([LIST])


def test_ensure_fields_checks_the_mapping_without_creating_anything(adapter: Klaviyo) -> None:
    fine = [
        FieldSpec("first_name", "text"),
        FieldSpec("ltv", "number"),
        FieldSpec("vip", "boolean"),
    ]
    assert adapter.ensure_fields(LIST, fine, create=True) == []
    bad = [
        FieldSpec("first_name", "number"),
        FieldSpec("$source", "text"),
        FieldSpec("email", "text"),
    ]
    with pytest.raises(PublishError) as caught:
        adapter.ensure_fields(LIST, bad, create=True)
    for name in ("first_name", "$source", "email"):
        assert repr(name) in str(caught.value)


# -- upsert ----------------------------------------------------------------------------------------
def test_upsert_imports_properties_and_joins_the_list(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    members = [member(1, **PERSONAL), Member("c2", "person2@example.com", tags=("vip", "eu"))]
    assert _ok(adapter.upsert(LIST, members)) == {"c1": True, "c2": True}

    profile = klaviyo.profile("person1@example.com")
    assert profile is not None
    assert profile["attributes"]["first_name"] == "Ada"
    assert profile["attributes"]["properties"] == {
        "ltv": 1234.5,
        "last_order": "2026-11-02",
        "category": "books",
        "score": 87,
    }
    tagged = klaviyo.profile("person2@example.com")
    assert tagged is not None and tagged["attributes"]["properties"] == {"tags": ["eu", "vip"]}
    assert klaviyo.list_members(LIST) == {"person1@example.com", "person2@example.com"}
    # Membership, not consent: nobody was subscribed (that would clear opt-outs).
    assert profile["attributes"]["subscriptions"]["email"]["marketing"]["consent"] == (
        "NEVER_SUBSCRIBED"
    )
    sent = [e.request for e in klaviyo.exchanges]
    assert all(r.header("revision") == "2026-07-15" for r in sent)
    assert all(r.header("authorization") == f"Klaviyo-API-Key {KEY}" for r in sent)
    assert [r.method for r in sent][:2] == ["POST", "GET"]  # job created, then polled


def test_a_changed_property_is_updated_and_the_rest_kept(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    list(adapter.upsert(LIST, [member(1, **PERSONAL)]))
    assert _ok(adapter.upsert(LIST, [member(1, ltv=99.0, category=None)])) == {"c1": True}
    profile = klaviyo.profile("person1@example.com")
    assert profile is not None
    assert profile["attributes"]["first_name"] == "Ada"
    assert profile["attributes"]["properties"] == {
        "ltv": 99.0,
        "last_order": "2026-11-02",
        "score": 87,
    }


def test_per_profile_import_errors_fail_only_those_members(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    klaviyo.reject_on_import("person2@example.com", "This address is on a global blocklist.")
    members = [
        member(1, score=1),
        member(2, score=2),
        Member("c3", "person3@example.c0m"),  # passes our check, Klaviyo's TLD check refuses it
        Member("c4", "not an email"),  # refused before sending
        member(5, score=5),
    ]
    results = {r.contact_key: r for r in adapter.upsert(LIST, members)}

    assert {k: r.ok for k, r in results.items()} == {
        "c1": True,
        "c2": False,
        "c3": False,
        "c4": False,
        "c5": True,
    }
    assert "global blocklist" in (results["c2"].error or "")
    assert "/data/attributes/profiles/data/1/attributes/email" in (results["c2"].error or "")
    assert "/data/attributes/profiles/data/2/" in (results["c3"].error or "")
    assert not any(results[k].retryable for k in ("c2", "c3", "c4"))
    assert klaviyo.list_members(LIST) == {"person1@example.com", "person5@example.com"}


def test_a_job_the_platform_cancels_fails_the_batch_retryably(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    klaviyo.fail_next_import_job("cancelled")
    results = list(adapter.upsert(LIST, [member(1, score=1), member(2, score=2)]))
    assert [(r.ok, r.retryable) for r in results] == [(False, True), (False, True)]
    assert "ended 'cancelled'" in (results[0].error or "")
    assert klaviyo.list_members(LIST) == set()
    # Next run: the same members go through.
    assert _ok(adapter.upsert(LIST, [member(1, score=1), member(2, score=2)])) == {
        "c1": True,
        "c2": True,
    }


def test_an_unknown_final_job_state_is_a_failure_too(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    klaviyo.fail_next_import_job("failed")  # not in the spec's enum; treat it as a failure
    results = list(adapter.upsert(LIST, [member(1)]))
    assert [(r.ok, r.retryable) for r in results] == [(False, True)]


def test_a_job_that_does_not_finish_in_time_is_sent_again_next_run(
    opener: Callable[..., Klaviyo],
) -> None:
    with KlaviyoStandIn(api_key=KEY, lists=[LIST], polls_to_finish=10_000) as slow:
        adapter = opener(slow, poll_timeout_seconds=0.05)
        started = time.monotonic()
        results = list(adapter.upsert(LIST, [member(1)]))
        assert time.monotonic() - started < 5
        assert [(r.ok, r.retryable) for r in results] == [(False, True)]
        assert "still processing" in (results[0].error or "")


def test_large_upserts_are_split_into_jobs_of_batch_size(
    klaviyo: KlaviyoStandIn, opener: Callable[..., Klaviyo]
) -> None:
    # Ten profiles' worth of requests a second is the import burst limit: wait it out for real.
    adapter = opener(klaviyo, batch_size=40, policy=fast_policy(RecordingSleep(cap=1.2)))
    results = list(adapter.upsert(LIST, [member(n, score=n) for n in range(100)]))
    assert len(results) == 100 and all(r.ok for r in results)
    posts = [e for e in klaviyo.exchanges if e.request.method == "POST"]
    assert len(posts) == 3  # 40 + 40 + 20
    assert len(klaviyo.list_members(LIST)) == 100


# -- rate limits -----------------------------------------------------------------------------------
def test_a_429_storm_is_ridden_out_honouring_retry_after(
    klaviyo: KlaviyoStandIn, opener: Callable[..., Klaviyo]
) -> None:
    sleep = RecordingSleep()
    adapter = opener(klaviyo, policy=fast_policy(sleep))
    klaviyo.fail_next(5, status=429, retry_after=3)
    assert _ok(adapter.upsert(LIST, [member(1)])) == {"c1": True}
    assert sleep.waits[:5] == [3.0] * 5
    throttled = [e.response for e in klaviyo.exchanges if e.response.status == 429]
    assert len(throttled) == 5
    assert all(r.headers.get("Retry-After") == "3" for r in throttled)
    assert not any("RateLimit-Limit" in r.headers for r in throttled)


def test_an_endless_429_storm_stops_with_a_clear_error(
    klaviyo: KlaviyoStandIn, opener: Callable[..., Klaviyo]
) -> None:
    adapter = opener(klaviyo, policy=fast_policy(attempts=4))
    klaviyo.fail_next(100, status=429, retry_after=1)
    with pytest.raises(PublishError, match="answered 429: throttled"):
        list(adapter.upsert(LIST, [member(1)]))
    assert len(klaviyo.exchanges) == 4


def test_the_adapter_paces_itself_under_the_documented_limits(
    klaviyo: KlaviyoStandIn, opener: Callable[..., Klaviyo]
) -> None:
    """Six one-profile jobs are ~24 import-class calls: over the 10/s burst unless paced."""
    adapter = opener(klaviyo, batch_size=1)
    started = time.monotonic()
    assert all(r.ok for r in adapter.upsert(LIST, [member(n) for n in range(6)]))
    calls = sum(rate_class(e.request.method, e.request.path) == "import" for e in klaviyo.exchanges)
    assert calls > 10
    assert klaviyo.rate_limited == 0
    assert time.monotonic() - started >= (calls - 10) / 10 - 0.2
    assert adapter.paced_seconds > 0


def test_each_call_counts_against_its_documented_rate_class() -> None:
    assert rate_class("POST", "/api/profile-bulk-import-jobs") == "import"
    assert rate_class("GET", "/api/profile-bulk-import-jobs/j/import-errors") == "import"
    assert rate_class("POST", "/api/profile-subscription-bulk-delete-jobs") == "consent"
    assert rate_class("DELETE", f"/api/lists/{LIST}/relationships/profiles") == "list_writes"
    assert rate_class("GET", f"/api/lists/{LIST}/relationships/profiles") == "reads"
    assert rate_class("GET", "/api/profiles") == "reads"
    assert rate_class("POST", "/api/data-privacy-deletion-jobs") == "deletion"


def test_the_real_burst_limit_is_honoured(opener: Callable[..., Klaviyo]) -> None:
    """Real fixed windows and real sleeps: import calls capped at 2 per second."""
    with KlaviyoStandIn(api_key=KEY, lists=[LIST], rate_limits={"import": (2, 150)}) as server:
        policy = RetryPolicy(max_attempts=6, base=0.01, cap=0.05, deadline=20.0)
        adapter = opener(server, policy=policy)
        started = time.monotonic()
        results = list(adapter.upsert(LIST, [member(1)])) + list(adapter.upsert(LIST, [member(2)]))
        assert all(r.ok for r in results)
        assert server.rate_limited >= 1
        assert time.monotonic() - started < 8
        ok = [e.response for e in server.exchanges if e.response.status < 300]
        assert all("RateLimit-Remaining" in r.headers for r in ok)


# -- remove, unsubscribe, suppressions -------------------------------------------------------------
def test_remove_takes_members_off_the_list_without_touching_consent(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    list(adapter.upsert(LIST, [member(1), member(2), member(3)]))
    list(adapter.upsert(OTHER_LIST, [member(1)]))
    results = _ok(adapter.remove(LIST, [member(1), member(2), member(9)]))
    assert results == {"c1": True, "c2": True, "c9": True}  # c9 was never there
    assert klaviyo.list_members(LIST) == {"person3@example.com"}
    assert klaviyo.list_members(OTHER_LIST) == {"person1@example.com"}
    profile = klaviyo.profile("person1@example.com")
    assert profile is not None
    assert profile["attributes"]["subscriptions"]["email"]["marketing"]["suppression"] == []


def test_unsubscribe_is_global_and_read_back_as_a_suppression(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    list(adapter.upsert(LIST, [member(1), member(2)]))
    results = _ok(adapter.unsubscribe(LIST, [member(1), Member("c8", "bad address")]))
    assert results == {"c1": True, "c8": False}
    profile = klaviyo.profile("person1@example.com")
    assert profile is not None
    marketing = profile["attributes"]["subscriptions"]["email"]["marketing"]
    assert marketing["consent"] == "UNSUBSCRIBED"
    assert [s["reason"] for s in marketing["suppression"]] == ["UNSUBSCRIBE"]

    page = adapter.suppressions_since(LIST, None)
    assert [(s.email, s.status) for s in page.suppressions] == [
        ("person1@example.com", "unsubscribed")
    ]
    # A later upsert never re-subscribes: consent and suppression survive it.
    list(adapter.upsert(LIST, [member(1, score=3)]))
    again = klaviyo.profile("person1@example.com")
    assert again is not None
    assert again["attributes"]["subscriptions"]["email"]["marketing"]["consent"] == "UNSUBSCRIBED"


def test_an_unsubscribe_job_refused_as_a_whole_is_split_to_find_the_culprit(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    # 'a@b.c0m' passes our check; Klaviyo refuses the whole job for it.
    members = [member(1), Member("c2", "a@b.c0m"), member(3)]
    assert _ok(adapter.unsubscribe(LIST, members)) == {"c1": True, "c2": False, "c3": True}


def test_suppressions_are_read_page_by_page_from_a_cursor(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    people = [member(n) for n in range(130)]
    list(adapter.upsert(LIST, people))
    for n in range(120):
        klaviyo.person_unsubscribes(f"person{n}@example.com")
    klaviyo.person_bounces("person120@example.com")
    klaviyo.person_complains("person121@example.com")
    klaviyo.person_leaves_list("person122@example.com", LIST)
    klaviyo.person_leaves_list("person123@example.com", OTHER_LIST)  # another audience

    first = adapter.suppressions_since(LIST, None)
    statuses = {s.email: s.status for s in first.suppressions}
    assert len(statuses) == 123
    assert statuses["person120@example.com"] == "bounced"
    assert statuses["person121@example.com"] == "spam_complaint"
    assert statuses["person122@example.com"] == "unsubscribed"
    assert "person123@example.com" not in statuses
    pages = [
        e.request
        for e in klaviyo.exchanges
        if e.request.path == "/api/profiles" and "page[cursor]" in e.request.query
    ]
    assert pages, "120+ suppressed profiles at 100 per page need a second page"
    assert first.cursor == max(s.occurred_at for s in first.suppressions)

    klaviyo.person_unsubscribes("person125@example.com")
    second = adapter.suppressions_since(LIST, first.cursor)
    emails = {s.email for s in second.suppressions}
    assert "person125@example.com" in emails
    assert len(emails) <= 2  # the new one, and at most the one exactly at the cursor
    assert second.cursor >= first.cursor
    assert adapter.suppressions_since(LIST, second.cursor + timedelta(seconds=1)).suppressions == []


def test_a_next_link_to_another_host_is_not_followed(adapter: Klaviyo) -> None:
    with pytest.raises(PublishError, match="not following it"):
        adapter._next_link({"links": {"next": "https://evil.example/api/profiles?page"}})


# -- erase -----------------------------------------------------------------------------------------
def test_erase_asks_for_one_deletion_job_per_email(
    klaviyo: KlaviyoStandIn, adapter: Klaviyo
) -> None:
    list(adapter.upsert(LIST, [member(1), member(2)]))
    results = list(adapter.erase(["person1@example.com", "nobody@example.com", ""]))
    assert [r.ok for r in results] == [True, True, False]
    assert "202" in results[0].detail
    assert klaviyo.profile("person1@example.com") is None
    assert klaviyo.list_members(LIST) == {"person2@example.com"}
    posts = [e for e in klaviyo.exchanges if e.request.path == "/api/data-privacy-deletion-jobs"]
    assert len(posts) == 2


# -- doctor ----------------------------------------------------------------------------------------
def test_doctor_probes_a_configured_klaviyo_destination(
    klaviyo: KlaviyoStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "pipeline.yaml").read_text()
    block = (
        "destinations:\n"
        "  klaviyo_doctor:\n"
        "    kind: klaviyo\n"
        f"    base_url: {klaviyo.url}\n"
        "    api_key: {secret: klaviyo_doctor_key}\n"
        "    audiences:\n"
        f"      champions: {LIST}\n"
        f"      at_risk: {OTHER_LIST}\n"
    )
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(text.replace("destinations:\n", block, 1))
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_KLAVIYO_DOCTOR_KEY", KEY)
    # The Mailchimp destination of the file is pointed here too: it fails fast, and is not checked.
    config = load_pipeline(str(config_file), env={"AUDIENCE_LAKE_MAILCHIMP_URL": klaviyo.url})
    checks = {c.name: c for c in check_destinations(config)}
    ours = checks["destination klaviyo_doctor"]
    assert ours.status == "ok", ours
    assert "2 lists readable" in ours.detail
    klaviyo.api_key = "pk_rotated"
    failed = {c.name: c for c in check_destinations(config)}["destination klaviyo_doctor"]
    assert failed.status == "FAIL" and KEY not in failed.detail

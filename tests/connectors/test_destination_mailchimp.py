"""The Mailchimp destination against the Mailchimp stand-in over real loopback HTTP."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from infra.sandbox.mailchimp import MailchimpStandIn, subscriber_hash
from tasks.connectors.destinations.mailchimp import Mailchimp, open_mailchimp
from tasks.connectors.destinations.protocol import FieldSpec, Member
from tasks.connectors.http import RetryPolicy, build_client
from tasks.core.config import MailchimpDestination
from tasks.errors import PublishError

LIST = "newsletter"
KEY = "key-us1"
NO_SLEEP = RetryPolicy(max_attempts=3, sleep=lambda _s: None, rng=random.Random(0))
FIELDS = [
    FieldSpec("LTV", "number", "Lifetime value"),
    FieldSpec("LASTORDER", "date", "Last order"),
    FieldSpec("CATEGORY", "text"),
    FieldSpec("VIP", "boolean"),
]


class SteppingClock:
    """The stand-in's clock: each stamp one second after the last (Mailchimp stamps seconds),
    starting at wall time, so it never runs behind the ``Date`` header the server sends."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(seconds=1)
            return self.now


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
def mailchimp(clock: SteppingClock) -> Iterator[MailchimpStandIn]:
    with MailchimpStandIn(api_key=KEY, lists=[LIST], clock=clock) as server:
        yield server


def _destination(server: MailchimpStandIn, **options: object) -> Mailchimp:
    client = build_client(server.url, auth=httpx.BasicAuth("audience-lake", KEY))
    return Mailchimp(client, policy=NO_SLEEP, erase_lists=[LIST], **options)  # type: ignore[arg-type]


@pytest.fixture
def destination(mailchimp: MailchimpStandIn) -> Iterator[Mailchimp]:
    adapter = _destination(mailchimp)
    yield adapter
    adapter.close()


def _member(i: int, **fields: object) -> Member:
    return Member(f"k{i}", f"p{i}@example.com", fields, ())  # type: ignore[arg-type]


def _stored(server: MailchimpStandIn, email: str) -> dict[str, object]:
    return server.members(LIST)[subscriber_hash(email)]


# -- fields ------------------------------------------------------------------------------------
def test_missing_merge_fields_are_created_when_allowed(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    created = destination.ensure_fields(LIST, [FieldSpec("FNAME", "text"), *FIELDS], create=True)
    again = destination.ensure_fields(LIST, FIELDS, create=False)

    assert created == ["LTV", "LASTORDER", "CATEGORY", "VIP"]
    assert again == []
    fields = mailchimp.merge_fields(LIST)
    assert {t: fields[t]["type"] for t in created} == {
        "LTV": "number",
        "LASTORDER": "date",
        "CATEGORY": "text",
        "VIP": "text",
    }
    assert fields["LTV"]["name"] == "Lifetime value"


def test_missing_merge_fields_are_one_clear_error_otherwise(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    with pytest.raises(PublishError) as raised:
        destination.ensure_fields(LIST, [FieldSpec("FNAME", "number"), *FIELDS], create=False)

    message = str(raised.value)
    assert "newsletter" in message
    assert "FNAME is a text field, which cannot hold number values" in message
    for tag in ("LTV", "LASTORDER", "CATEGORY", "VIP"):
        assert f"{tag} (" in message
    assert set(mailchimp.merge_fields(LIST)) == {"FNAME", "LNAME", "ADDRESS", "PHONE", "BIRTHDAY"}


def test_a_mistyped_field_is_refused_even_when_creation_is_allowed(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    with pytest.raises(PublishError, match="FNAME is a text field"):
        destination.ensure_fields(LIST, [FieldSpec("FNAME", "date"), FIELDS[0]], create=True)
    with pytest.raises(PublishError, match="'lower'"):
        destination.ensure_fields(LIST, [FieldSpec("lower", "text")], create=True)
    assert "LTV" not in mailchimp.merge_fields(LIST)  # nothing created before the refusal


# -- upsert ------------------------------------------------------------------------------------
def test_upsert_sends_merge_fields_and_tags(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    destination.ensure_fields(LIST, FIELDS, create=True)
    members = [
        Member("k1", "Ann@Example.com", {"FNAME": "Ann", "LTV": 120.5, "LASTORDER": "2026-10-02",
                                         "CATEGORY": "shoes", "VIP": True}, ("vip", "loyal")),
        Member("k2", "bob@example.com", {"FNAME": "Bob", "LTV": 0, "VIP": False}, ()),
    ]  # fmt: skip

    results = list(destination.upsert(LIST, members))

    assert [(r.contact_key, r.ok) for r in results] == [("k1", True), ("k2", True)]
    ann = _stored(mailchimp, "ann@example.com")
    assert ann["status"] == "subscribed"
    assert ann["merge_fields"] == {
        "FNAME": "Ann",
        "LTV": 120.5,
        "LASTORDER": "2026-10-02",
        "CATEGORY": "shoes",
        "VIP": "true",
    }
    assert [t["name"] for t in ann["tags"]] == ["vip", "loyal"]  # type: ignore[attr-defined]
    assert _stored(mailchimp, "bob@example.com")["merge_fields"] == {
        "FNAME": "Bob",
        "LTV": 0,
        "VIP": "false",
    }


def test_a_field_change_updates_the_member_and_adds_new_tags(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    destination.ensure_fields(LIST, FIELDS, create=True)
    list(destination.upsert(LIST, [Member("k1", "a@example.com", {"LTV": 10}, ("vip",))]))
    before = destination.requests_sent

    results = list(
        destination.upsert(LIST, [Member("k1", "a@example.com", {"LTV": 25}, ("vip", "winback"))])
    )

    assert results[0].ok
    stored = _stored(mailchimp, "a@example.com")
    assert stored["merge_fields"] == {"LTV": 25}
    assert {t["name"] for t in stored["tags"]} == {"vip", "winback"}  # type: ignore[attr-defined]
    assert destination.requests_sent - before == 1  # the batch applied the tag: no extra call


def test_a_tag_the_batch_did_not_apply_is_added_through_the_tags_endpoint(
    mailchimp: MailchimpStandIn, destination: Mailchimp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether batch subscribe tags *existing* members is not settled by the vendor's docs, so
    # the adapter checks the answer. Here the platform ignores batch tags for existing members
    # (the stand-in's batch path patched to drop them; everything else is real HTTP).
    list(destination.upsert(LIST, [Member("k1", "a@example.com", {}, ("vip",))]))
    original = MailchimpStandIn._add_tags

    def batch_ignores_tags(self: MailchimpStandIn, member: object, tags: object) -> None:
        if getattr(member, "tags", None):
            return None
        return original(self, member, tags)  # type: ignore[arg-type]

    monkeypatch.setattr(MailchimpStandIn, "_add_tags", batch_ignores_tags)
    before = len(mailchimp.requests)

    results = list(destination.upsert(LIST, [Member("k1", "a@example.com", {}, ("vip", "new"))]))

    assert results[0].ok
    tags = {t["name"] for t in _stored(mailchimp, "a@example.com")["tags"]}  # type: ignore[attr-defined]
    assert tags == {"vip", "new"}
    assert mailchimp.requests[before:] == [
        ("POST", f"/3.0/lists/{LIST}"),
        ("POST", f"/3.0/lists/{LIST}/members/{subscriber_hash('a@example.com')}/tags"),
    ]


def test_per_member_errors_leave_the_rest_of_the_batch_alone(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    destination.ensure_fields(LIST, FIELDS, create=True)
    members = [
        Member("ok", "fine@example.com", {"LTV": 1}),
        Member("fake", "not-an-email", {}),
        Member("badnum", "num@example.com", {"LTV": "lots"}),
        Member("nofield", "nofield@example.com", {"NOPE": "x"}),
        Member("nan", "nan@example.com", {"LTV": float("nan")}),
    ]

    results = {r.contact_key: r for r in destination.upsert(LIST, members)}

    assert results["ok"].ok
    for key in ("fake", "badnum", "nofield", "nan"):
        assert not results[key].ok and not results[key].retryable, key
    assert "invalid" in (results["fake"].error or "")
    assert "LTV" in (results["badnum"].error or "")
    assert "NOPE" in (results["nofield"].error or "")
    assert "nan" in (results["nan"].error or "")
    assert set(mailchimp.sends_per_member(LIST)) == {
        "fine@example.com",
        "not-an-email",
        "num@example.com",
        "nofield@example.com",
    }  # the NaN never left the adapter


def test_upsert_batches_by_500_on_concurrent_connections(mailchimp: MailchimpStandIn) -> None:
    mailchimp.response_delay = 0.05
    adapter = _destination(mailchimp)
    members = [_member(i) for i in range(2_600)]

    results = list(adapter.upsert(LIST, members))
    adapter.close()

    assert [r.contact_key for r in results] == [m.contact_key for m in members]  # input order
    assert all(r.ok for r in results)
    assert mailchimp.requests.count(("POST", f"/3.0/lists/{LIST}")) == 6  # 5 x 500 + 100
    assert 1 < mailchimp.max_in_flight <= 10


# -- leaving, opting out, erasing --------------------------------------------------------------
def test_remove_archives_and_is_idempotent(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    list(destination.upsert(LIST, [_member(1), _member(2)]))

    first = list(destination.remove(LIST, [_member(1), _member(3)]))  # 3 was never on the list
    again = list(destination.remove(LIST, [_member(1)]))

    assert [r.ok for r in first + again] == [True, True, True]
    assert _stored(mailchimp, "p1@example.com")["status"] == "archived"
    assert _stored(mailchimp, "p2@example.com")["status"] == "subscribed"
    readd = list(destination.upsert(LIST, [_member(1)]))  # archived, not unsubscribed
    assert readd[0].ok and _stored(mailchimp, "p1@example.com")["status"] == "subscribed"


def test_unsubscribe_sticks_and_is_never_overwritten_by_an_upsert(
    mailchimp: MailchimpStandIn, destination: Mailchimp
) -> None:
    list(destination.upsert(LIST, [_member(1)]))

    results = list(destination.unsubscribe(LIST, [_member(1), _member(2)]))
    again = list(destination.upsert(LIST, [_member(1)]))

    assert [r.ok for r in results] == [True, True]
    assert _stored(mailchimp, "p1@example.com")["status"] == "unsubscribed"
    assert _stored(mailchimp, "p2@example.com")["status"] == "unsubscribed"  # recorded anyway
    assert not again[0].ok and not again[0].retryable
    assert "compliance state" in (again[0].error or "")
    assert _stored(mailchimp, "p1@example.com")["status"] == "unsubscribed"


def test_erase_deletes_permanently(mailchimp: MailchimpStandIn, destination: Mailchimp) -> None:
    list(destination.upsert(LIST, [_member(1)]))

    receipts = list(destination.erase(["p1@example.com", "never@example.com"]))
    readd = list(destination.upsert(LIST, [_member(1)]))

    assert [(r.email, r.ok, r.detail) for r in receipts] == [
        ("p1@example.com", True, f"list {LIST}: deleted"),
        ("never@example.com", True, f"list {LIST}: not a member"),
    ]
    assert subscriber_hash("p1@example.com") not in mailchimp.members(LIST)
    assert not readd[0].ok and "permanently deleted" in (readd[0].error or "")


# -- suppressions --------------------------------------------------------------------------------
def test_suppressions_read_unsubscribes_complaints_and_bounces_since_a_cursor(
    mailchimp: MailchimpStandIn, destination: Mailchimp, clock: SteppingClock
) -> None:
    list(destination.upsert(LIST, [_member(i) for i in range(6)]))
    mailchimp.member_unsubscribes(LIST, "p0@example.com")
    mailchimp.member_reports_spam(LIST, "p1@example.com")
    mailchimp.member_bounces(LIST, "p2@example.com")
    first = destination.suppressions_since(LIST, None)
    mailchimp.member_unsubscribes(LIST, "p3@example.com")
    mailchimp.member_unsubscribes(LIST, "p4@example.com")

    second = destination.suppressions_since(LIST, first.cursor)

    assert [(s.email, s.status) for s in first.suppressions] == [
        ("p0@example.com", "unsubscribed"),
        ("p1@example.com", "spam_complaint"),
        ("p2@example.com", "cleaned"),
    ]
    assert first.suppressions[0].platform_record_id == subscriber_hash("p0@example.com")
    # The cursor lies CLOCK_MARGIN before the read began: the second read may return some of
    # the first again, never less than what changed since.
    assert {s.email for s in second.suppressions} >= {"p3@example.com", "p4@example.com"}
    assert all(s.occurred_at >= first.cursor for s in second.suppressions)
    late = destination.suppressions_since(LIST, clock.now)  # p4's stamp: inclusive
    assert [s.email for s in late.suppressions] == ["p4@example.com"]


def test_suppression_read_loses_nothing_while_the_list_changes_under_it(
    mailchimp: MailchimpStandIn, clock: SteppingClock
) -> None:
    # 60 unsubscribed members read 10 a page; between pages, members already read are edited,
    # archived and resubscribed-pending: each leaves its place and shifts the rest up.
    total = 60
    setup = _destination(mailchimp)
    list(setup.upsert(LIST, [_member(i) for i in range(total)]))
    for i in range(total):
        mailchimp.member_unsubscribes(LIST, f"p{i}@example.com")
    setup.close()
    adapter = _destination(mailchimp, page_size=10)
    pages: list[int] = []
    churn = iter(range(total))

    def edit_between_pages(list_id: str, offset: int) -> None:
        pages.append(offset)
        for _ in range(3):  # more departures per page than the overlap (1 row) absorbs
            victim = next(churn, None)
            if victim is not None:
                mailchimp.marketer_edits(list_id, f"p{victim}@example.com", FNAME="edited")

    mailchimp.on_members_page = edit_between_pages
    page = adapter.suppressions_since(LIST, None)
    mailchimp.on_members_page = None
    adapter.close()

    assert {s.email for s in page.suppressions} == {f"p{i}@example.com" for i in range(total)}
    assert len(page.suppressions) == total
    assert len(pages) < 60  # bounded: it stepped back, it did not spin


def test_suppression_read_survives_members_leaving_the_status(
    mailchimp: MailchimpStandIn,
) -> None:
    total = 40
    setup = _destination(mailchimp)
    list(setup.upsert(LIST, [_member(i) for i in range(total)]))
    for i in range(total):
        mailchimp.member_unsubscribes(LIST, f"p{i}@example.com")
    adapter = _destination(mailchimp, page_size=10)
    archived: list[str] = []

    def archive_read_members(list_id: str, offset: int) -> None:
        for i in range(offset, offset + 4):  # four of the page just read leave the status
            email = f"p{i}@example.com"
            if i < total and email not in archived:
                archived.append(email)
                list(setup.remove(list_id, [Member(f"k{i}", email)]))

    mailchimp.on_members_page = archive_read_members
    page = adapter.suppressions_since(LIST, None)
    mailchimp.on_members_page = None
    adapter.close()
    setup.close()

    got = {s.email for s in page.suppressions}
    still_unsubscribed = {f"p{i}@example.com" for i in range(total)} - set(archived)
    assert still_unsubscribed <= got


# -- rate limits and failures -------------------------------------------------------------------
def test_a_429_storm_fails_the_members_retryably_and_stops_sending(
    mailchimp: MailchimpStandIn,
) -> None:
    adapter = _destination(mailchimp, max_connections=2, batch_size=10)
    mailchimp.fail_next(1_000, status=429)
    started = time.monotonic()

    results = list(adapter.upsert(LIST, [_member(i) for i in range(100)]))
    adapter.close()

    assert len(results) == 100
    assert all(not r.ok and r.retryable for r in results)
    assert "429" in (results[0].error or "")
    assert {r.error for r in results[-10:]} == {"not sent: an earlier batch exhausted its retries"}
    posts = mailchimp.requests.count(("POST", f"/3.0/lists/{LIST}"))
    assert posts <= 2 * NO_SLEEP.max_attempts  # the in-flight batches' retries, then it stopped
    assert time.monotonic() - started < 10


def test_a_short_429_burst_is_retried_through(mailchimp: MailchimpStandIn) -> None:
    adapter = _destination(mailchimp)
    mailchimp.fail_next(2, status=429)

    results = list(adapter.upsert(LIST, [_member(i) for i in range(3)]))
    adapter.close()

    assert all(r.ok for r in results)


def test_ten_connections_stay_under_the_ceiling() -> None:
    with MailchimpStandIn(api_key=KEY, lists=[LIST], response_delay=0.05) as server:
        adapter = _destination(server, batch_size=10)
        results = list(adapter.upsert(LIST, [_member(i) for i in range(300)]))
        adapter.close()
        statuses_429 = [r for r in results if not r.ok]
        peak = server.max_in_flight

    assert statuses_429 == []
    assert 5 <= peak <= 10


def test_a_bad_key_or_unknown_list_stops_the_run(mailchimp: MailchimpStandIn) -> None:
    adapter = _destination(mailchimp)
    with pytest.raises(PublishError, match=r"mailchimp list 'nope'.*404"):
        list(adapter.upsert("nope", [_member(1)]))
    with pytest.raises(PublishError, match="404"):
        adapter.probe(["nope"])
    assert adapter.probe([LIST]) == "ping ok, 1 lists readable"
    adapter.close()
    bad = Mailchimp(build_client(mailchimp.url, auth=httpx.BasicAuth("x", "wrong")))
    with pytest.raises(PublishError, match="401"):
        list(bad.unsubscribe(LIST, [_member(1)]))
    with pytest.raises(PublishError, match="401"):
        list(bad.remove(LIST, [_member(1)]))
    bad.close()


def test_suppression_read_steps_back_when_the_rest_of_the_list_moves_up(
    mailchimp: MailchimpStandIn,
) -> None:
    # 15 unsubscribed, 10 a page: after the first page, 6 of its members are archived, so the
    # 5 unread ones move up to positions 4-8 and the next offset (9) finds nothing at all.
    setup = _destination(mailchimp)
    list(setup.upsert(LIST, [_member(i) for i in range(15)]))
    for i in range(15):
        mailchimp.member_unsubscribes(LIST, f"p{i}@example.com")
    adapter = _destination(mailchimp, page_size=10)
    done: list[int] = []

    def archive_six(list_id: str, offset: int) -> None:
        if not done:
            done.append(offset)
            list(setup.remove(list_id, [_member(i) for i in range(6)]))

    mailchimp.on_members_page = archive_six
    page = adapter.suppressions_since(LIST, None)
    mailchimp.on_members_page = None
    adapter.close()
    setup.close()

    assert {f"p{i}@example.com" for i in range(10, 15)} <= {s.email for s in page.suppressions}


def test_a_merge_field_created_meanwhile_by_another_run_is_accepted(
    mailchimp: MailchimpStandIn, destination: Mailchimp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another run creates LTV between this run's listing and its create call.
    listing = Mailchimp._merge_field_types
    calls: list[int] = []

    def racing_listing(self: Mailchimp, audience: str) -> dict[str, str]:
        found = listing(self, audience)
        if not calls:
            calls.append(1)
            other = _destination(mailchimp)
            other.ensure_fields(audience, [FIELDS[0]], create=True)
            other.close()
        return found

    monkeypatch.setattr(Mailchimp, "_merge_field_types", racing_listing)

    created = destination.ensure_fields(LIST, [FIELDS[0], FIELDS[2]], create=True)

    assert created == ["CATEGORY"]
    assert mailchimp.merge_fields(LIST)["LTV"]["type"] == "number"


def test_open_mailchimp_builds_the_adapter_from_the_config(
    mailchimp: MailchimpStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIENCE_LAKE_SECRET_MC_TEST_KEY", KEY)
    config = MailchimpDestination.model_validate(
        {
            "kind": "mailchimp",
            "base_url": mailchimp.url,
            "api_key": {"secret": "mc_test_key"},
            "batch_size": 2,
            "audiences": {"loyal": LIST, "lapsed": LIST},
        }
    )
    adapter = open_mailchimp(config)

    results = list(adapter.upsert(LIST, [_member(i) for i in range(5)]))
    receipts = list(adapter.erase(["p0@example.com"]))
    adapter.close()

    assert all(r.ok for r in results)
    assert mailchimp.requests.count(("POST", f"/3.0/lists/{LIST}")) == 3  # batch_size 2
    assert [r.detail for r in receipts] == [f"list {LIST}: deleted"]  # each list once

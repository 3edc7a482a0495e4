"""The platform read-back against the stand-ins: the cursor lives in the lake and loses nothing.

Real Delta tables, real stand-ins on 127.0.0.1, the real adapters; no Prefect (the functions
under the task are called directly).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import polars as pl
import pytest

from infra.sandbox.klaviyo import KlaviyoStandIn
from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.destinations.mailchimp import Mailchimp
from tasks.connectors.destinations.protocol import Member
from tasks.connectors.http import RetryPolicy, build_client
from tasks.connectors.lake import Lake
from tasks.core.config import Destination
from tasks.core.tables import PLATFORM_SUPPRESSIONS, PLATFORM_SUPPRESSIONS_SCHEMA
from tasks.errors import PublishError
from tasks.readback import (
    KEYS,
    READ_OVERLAP,
    platform_opt_outs,
    read_cursor,
    read_suppressions,
)
from tests.connectors.klaviyo_support import KEY as KLAVIYO_KEY
from tests.connectors.klaviyo_support import LIST as KLAVIYO_LIST
from tests.connectors.klaviyo_support import open_adapter

LIST = "newsletter"
MC_KEY = "key-us1"
NO_SLEEP = RetryPolicy(max_attempts=3, sleep=lambda _s: None, rng=random.Random(0))


def _config(kind: str) -> Destination:
    return cast(Destination, SimpleNamespace(kind=kind))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def mailchimp() -> Iterator[MailchimpStandIn]:
    with MailchimpStandIn(api_key=MC_KEY, lists=[LIST]) as server:
        yield server


def _mailchimp(server: MailchimpStandIn, **options: Any) -> Mailchimp:
    client = build_client(server.url, auth=httpx.BasicAuth("audience-lake", MC_KEY))
    return Mailchimp(client, policy=NO_SLEEP, **options)


def _read(lake: Lake, server: MailchimpStandIn, run_id: str, **options: Any) -> Any:
    return read_suppressions(lake, "mc", _config("mailchimp"), LIST, run_id=run_id,
                             open_sink=lambda _c: _mailchimp(server, **options))  # fmt: skip


def _person(n: int) -> str:
    return f"p{n}@example.com"


def test_two_reads_with_edits_between_pages_lose_nothing_and_keep_each_record_once(
    lake: Lake, mailchimp: MailchimpStandIn
) -> None:
    setup = _mailchimp(mailchimp)
    list(setup.upsert(LIST, [Member(f"k{n}", _person(n)) for n in range(45)]))
    setup.close()
    for n in range(30):
        mailchimp.member_unsubscribes(LIST, _person(n))
    assert read_cursor(lake, "mc", LIST) is None  # the first read reads everything

    # During the first read (10 a page), people already read are edited (they move to the end
    # of the order) and new people unsubscribe (they may land on a page already passed).
    late = iter(range(30, 40))
    edited = iter(range(30))
    opted = set(range(30))
    edits: set[str] = set()

    def between_pages(list_id: str, _offset: int) -> None:
        for _ in range(2):
            if (victim := next(edited, None)) is not None:
                mailchimp.marketer_edits(list_id, _person(victim), FNAME="edited")
                edits.add(_person(victim))
        if (n := next(late, None)) is not None:
            mailchimp.member_unsubscribes(list_id, _person(n))
            opted.add(n)

    mailchimp.on_members_page = between_pages
    first = _read(lake, mailchimp, "r1", page_size=10)
    mailchimp.on_members_page = None
    assert read_cursor(lake, "mc", LIST) == first.cursor  # recorded with the rows
    assert first.since is None and first.inserted == first.read >= 30
    assert len(opted) > 31  # people did opt out while the read was paging

    mailchimp.member_bounces(LIST, _person(40))  # between the two reads
    mailchimp.member_reports_spam(LIST, _person(41))
    second = _read(lake, mailchimp, "r2", page_size=10)
    assert second.since == first.cursor  # derived from the lake, not remembered elsewhere

    rows = lake.read(PLATFORM_SUPPRESSIONS)
    statuses = dict(zip(rows["email"], rows["status"], strict=True))
    unsubscribed = {_person(n) for n in opted}
    assert {e for e, s in statuses.items() if s == "unsubscribed"} == unsubscribed
    assert statuses[_person(40)] == "cleaned" and statuses[_person(41)] == "spam_complaint"
    assert len(statuses) == len(opted) + 2
    # Each statement once, however often it was read (the overlaps re-read many).
    assert rows.select(KEYS).is_duplicated().sum() == 0
    # A marketer's edit moves Mailchimp's last_changed, the only time a member read gives: an
    # opted-out member edited after a read saw them is seen again with the later time when the
    # edit falls in a later second, a second statement of the same status (never a lost one).
    again = rows.group_by("email").agg(pl.len(), pl.col("occurred_at").n_unique().alias("times"))
    assert set(again.filter(pl.col("len") > 1)["email"]) <= edits
    assert (again["len"] == again["times"]).all() and again["len"].max() <= 2
    assert set(rows["run_id"]) == {"r1", "r2"}
    assert {_person(40), _person(41)} <= set(rows.filter(pl.col("run_id") == "r2")["email"])

    third = _read(lake, mailchimp, "r3")  # nothing new: nothing inserted, cursor kept
    assert third.since == second.cursor and third.inserted == 0
    assert read_cursor(lake, "mc", LIST) == second.cursor
    assert lake.read(PLATFORM_SUPPRESSIONS).height == rows.height


def test_klaviyo_reads_page_by_page_from_the_lake_cursor(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    with KlaviyoStandIn(api_key=KLAVIYO_KEY, lists=[KLAVIYO_LIST]) as klaviyo:
        setup = open_adapter(klaviyo, monkeypatch)
        list(setup.upsert(KLAVIYO_LIST, [Member(f"k{n}", _person(n)) for n in range(130)]))
        setup.close()
        for n in range(110):  # more than one page of 100
            klaviyo.person_unsubscribes(_person(n))
        klaviyo.person_bounces(_person(110))

        def read(run_id: str) -> Any:
            return read_suppressions(
                lake, "kl", _config("klaviyo"), KLAVIYO_LIST, run_id=run_id,
                open_sink=lambda _c: open_adapter(klaviyo, monkeypatch),
            )  # fmt: skip

        first = read("r1")
        klaviyo.person_complains(_person(120))
        # An opt-out the platform shows only now, stamped a minute before the newest one the
        # first read saw (indexing lag): the lake's overlap picks it up.
        newest = lake.read(PLATFORM_SUPPRESSIONS)["occurred_at"].max()
        assert isinstance(newest, datetime)
        with klaviyo._lock:
            late = klaviyo._by_email(_person(121))
            assert late is not None
            late.suppress("UNSUBSCRIBE", at=newest - timedelta(minutes=1))
        second = read("r2")
    assert first.read == 111 and second.since == first.cursor
    assert first.cursor == newest - READ_OVERLAP  # the platform's cursor, less the overlap
    rows = lake.read(PLATFORM_SUPPRESSIONS)
    statuses = dict(zip(rows["email"], rows["status"], strict=True))
    assert statuses[_person(110)] == "bounced" and statuses[_person(120)] == "spam_complaint"
    assert statuses[_person(121)] == "unsubscribed"
    assert len(statuses) == rows.height == 113
    assert set(rows["platform"]) == {"klaviyo"}


def test_a_failed_read_writes_nothing_and_keeps_the_cursor(
    lake: Lake, mailchimp: MailchimpStandIn
) -> None:
    setup = _mailchimp(mailchimp)
    list(setup.upsert(LIST, [Member("k1", _person(1)), Member("k2", _person(2))]))
    setup.close()
    mailchimp.member_unsubscribes(LIST, _person(1))
    first = _read(lake, mailchimp, "r1")
    mailchimp.member_unsubscribes(LIST, _person(2))
    version = lake.version(PLATFORM_SUPPRESSIONS)
    mailchimp.fail_next(NO_SLEEP.max_attempts, status=500)  # every attempt of one request
    with pytest.raises(PublishError):
        _read(lake, mailchimp, "r2")
    assert lake.version(PLATFORM_SUPPRESSIONS) == version
    assert read_cursor(lake, "mc", LIST) == first.cursor
    again = _read(lake, mailchimp, "r3")  # the storm over, the same window again
    assert again.since == first.cursor and _person(2) in lake.read(PLATFORM_SUPPRESSIONS)["email"]


def _suppressions(lake: Lake, *rows: tuple[str, str, str, datetime]) -> None:
    frame = pl.DataFrame(
        [
            {
                "destination": d,
                "platform": "mailchimp",
                "audience": a,
                "email": e,
                "status": "unsubscribed",
                "occurred_at": at,
                "platform_record_id": None,
                "read_at": at,
                "run_id": "r",
                "read_cursor": at,
            }
            for d, a, e, at in rows
        ],
        schema=PLATFORM_SUPPRESSIONS_SCHEMA,
    )
    lake.insert_new(PLATFORM_SUPPRESSIONS, frame, keys=KEYS, batch_id="seed")


def test_an_opt_out_counts_when_it_is_not_older_than_the_consent(lake: Lake) -> None:
    consent = datetime(2026, 6, 1, tzinfo=UTC)
    _suppressions(
        lake,
        ("mc", LIST, " P1@Example.COM", consent - timedelta(days=1)),  # older: stale
        ("mc", LIST, "p2@example.com", consent),  # a tie: the opt-out wins
        ("mc", LIST, "P3@example.com", consent + timedelta(days=1)),  # newer, any case
        ("hs", "42", "p4@example.com", consent + timedelta(days=1)),  # another platform
        ("mc", "other", "p5@example.com", consent + timedelta(days=1)),  # another list
        ("mc", LIST, "nobody@example.com", consent + timedelta(days=1)),  # not a contact
    )
    contacts = pl.LazyFrame(
        {"contact_key": [f"k{n}" for n in range(1, 7)],
         "email": [_person(n) for n in range(1, 7)], "consent_at": [consent] * 6},
    )  # fmt: skip
    got = platform_opt_outs(lake, contacts, destination_name="mc", audience=LIST).collect()
    assert dict(got.sort("contact_key").iter_rows()) == {
        "k2": True,
        "k3": True,
        "k4": False,
        "k5": False,
    }
    # Without a recorded consent time every opt-out counts (consent fails closed).
    bare = contacts.drop("consent_at")
    assert (
        "k1"
        in platform_opt_outs(lake, bare, destination_name="mc", audience=LIST)
        .collect()["contact_key"]
        .to_list()
    )

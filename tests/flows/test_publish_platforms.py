"""The publish engine against each platform's stand-in, through ``publish_segment``.

Per platform (Mailchimp, Klaviyo, HubSpot): members arrive with mapped personalisation fields
(a name and a rounded amount); a changed amount sends exactly the changed people and an
unchanged run sends nothing; in mirror mode a contact leaving the segment is removed from the
list and not unsubscribed; an opt-out in our sources is unsubscribed; an unsubscribe made at
the platform between two runs is never undone by the next run, even when the person's fields
change. Real Delta tables, real stand-ins on loopback, the real adapters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl
import pytest
from prefect.logging import disable_run_logger

from tasks.connectors.destinations import open_platform
from tasks.connectors.destinations.protocol import Destination, Member, RecordResult
from tasks.connectors.lake import Lake
from tasks.core.config import PublishConfig, load_pipeline
from tasks.core.mapping import holdout_share
from tasks.engine.holdouts import build_holdouts
from tasks.errors import PublishError
from tasks.publishing import publish_segment
from tasks.reports import PublishReport
from tasks.resources import pepper as lake_pepper
from tests.faults.world import environment
from tests.flows.buyers_stand_ins import (
    AMOUNT_FIELD,
    NAME_FIELD,
    destination_yaml,
    hubspot_with_buyers,
    klaviyo_with_buyers,
    mailchimp_member,
    mailchimp_with_buyers,
    on_buyers_list,
    unsubscribed_at,
)

SEGMENT = "buyers"
PEOPLE = 8
SECRET = "platform-test-key"


@dataclass
class Platform:
    """One stand-in and how to read what it holds, in the platform's own terms."""

    kind: str
    list_id: str
    yaml: str  # the destination block, {url} filled in
    url: str
    fields: Callable[[str], dict[str, Any] | None]  # email -> name and amount as sent
    on_list: Callable[[str], bool]
    unsubscribed: Callable[[str], bool]
    unsubscribe_at_platform: Callable[[str], None]
    upserts: Callable[[], int]  # write calls that carry members so far
    server: Any = None  # the stand-in itself


def _mailchimp() -> Iterator[Platform]:
    with mailchimp_with_buyers(SECRET) as mc:

        def fields(email: str) -> dict[str, Any] | None:
            m = mailchimp_member(mc, email)
            return None if m is None else {"name": m["merge_fields"]["FNAME"],
                                           "amount": m["merge_fields"]["LTV"]}  # fmt: skip

        yield Platform(
            "mailchimp", "list-buyers", destination_yaml("mailchimp", "platform_test"),
            mc.url, fields,
            on_list=on_buyers_list(mc),
            unsubscribed=unsubscribed_at(mc),
            unsubscribe_at_platform=lambda e: mc.member_unsubscribes("list-buyers", e),
            upserts=lambda: len([r for r in mc.requests if r[0] == "POST"]), server=mc,
        )  # fmt: skip


def _klaviyo() -> Iterator[Platform]:
    with klaviyo_with_buyers(SECRET, polls_to_finish=1) as kl:

        def fields(email: str) -> dict[str, Any] | None:
            p = kl.profile(email)
            if p is None:
                return None
            attributes = p["attributes"]
            return {"name": attributes["first_name"], "amount": attributes["properties"]["ltv"]}

        yield Platform(
            "klaviyo", "KL1", destination_yaml("klaviyo", "platform_test"),
            kl.url, fields,
            on_list=on_buyers_list(kl),
            unsubscribed=unsubscribed_at(kl),
            unsubscribe_at_platform=kl.person_unsubscribes,
            upserts=lambda: len([x for x in kl.exchanges
                                 if "profile-bulk-import-jobs" in x.request.path
                                 and x.request.method == "POST"]),
            server=kl,
        )  # fmt: skip


def _hubspot() -> Iterator[Platform]:
    with hubspot_with_buyers(SECRET) as hs:

        def fields(email: str) -> dict[str, Any] | None:
            c = hs.contact(email)
            return None if c is None else {"name": c.get("firstname"), "amount": c.get("ltv")}

        yield Platform(
            "hubspot", "42", destination_yaml("hubspot", "platform_test"),
            hs.url, fields,
            on_list=on_buyers_list(hs),
            unsubscribed=unsubscribed_at(hs),
            unsubscribe_at_platform=hs.person_unsubscribes,
            upserts=lambda: len(hs.requests_to("POST", "/batch/upsert")), server=hs,
        )  # fmt: skip


PLATFORMS = {"mailchimp": _mailchimp, "klaviyo": _klaviyo, "hubspot": _hubspot}


@pytest.fixture(params=sorted(PLATFORMS))
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield from PLATFORMS[request.param]()


def email(n: int) -> str:
    return f"buyer{n}@example.com"


def key(n: int) -> str:
    return f"v1:{n:064x}"


def write_gold(
    lake: Lake, *, ltv: dict[int, float], members: set[int], opted_out: set[int]
) -> None:
    """``silver/contacts``, ``gold/audience_members`` and ``gold/customer_features``."""
    people = range(PEOPLE)
    lake.overwrite("silver/contacts", pl.DataFrame(
        {"contact_key": [key(n) for n in people], "email": [email(n) for n in people],
         "consent_status": ["unsubscribed" if n in opted_out else "subscribed" for n in people]},
    ))  # fmt: skip
    inside = sorted(members - opted_out)
    lake.overwrite("gold/audience_members", pl.DataFrame(
        {"segment": [SEGMENT] * len(inside), "contact_key": [key(n) for n in inside],
         "email": [email(n) for n in inside], "first_name": [f"Ann{n}" for n in inside],
         "last_name": ["Lake"] * len(inside)},
        schema={c: pl.String() for c in ("segment", "contact_key", "email", "first_name",
                                         "last_name")},
    ))  # fmt: skip
    lake.overwrite("gold/customer_features", pl.DataFrame(
        {"contact_key": [key(n) for n in people],
         "lifetime_value": [ltv.get(n, 10.0 * n + 0.123) for n in people]},
    ))  # fmt: skip


class World:
    def __init__(
        self,
        platform: Platform,
        root: Path,
        mode: str,
        *,
        holdout: float = 0.0,
        create_fields: bool = True,
    ) -> None:
        self.platform = platform
        self.lake = Lake(str(root / "lake"))
        audience = (
            f"        mode: {mode}\n        holdout: {holdout}\n"
            f"        create_fields: {str(create_fields).lower()}\n        fields:\n"
            f"          {NAME_FIELD[platform.kind]}: {{column: first_name}}\n"
            f"          {AMOUNT_FIELD[platform.kind]}: "
            "{column: lifetime_value, type: number, format: '0.00'}\n"
        )
        destination = platform.yaml.format(url=platform.url, audience=audience)
        text = (
            "version: 1\nsources:\n  people: {kind: files, role: contacts, path: ./x, "
            f"format: csv}}\nsegments:\n  - name: {SEGMENT}\n    where: order_count >= 1\n"
            f"destinations:\n  {platform.kind}:\n    {destination}"
        )
        (root / "pipeline.yaml").write_text(text)
        self.env = {"AUDIENCE_LAKE_SECRET_PLATFORM_TEST": SECRET}
        self.config = load_pipeline(str(root / "pipeline.yaml"), env=self.env)

    def publish(
        self, run_id: str, open_sink: Callable[[Any], Destination] = open_platform
    ) -> PublishReport:
        destination = self.config.destinations[self.platform.kind]
        with disable_run_logger(), environment(self.env):
            return publish_segment(self.lake, self.platform.kind, destination, SEGMENT,
                                   run_id=run_id, settings=PublishConfig(),
                                   open_sink=open_sink)  # fmt: skip


def test_fields_go_out_changes_only_and_a_platform_opt_out_is_never_undone(
    platform: Platform, tmp_path: Path
) -> None:
    world = World(platform, tmp_path, "upsert")
    everyone = set(range(PEOPLE))
    write_gold(world.lake, ltv={}, members=everyone, opted_out=set())
    first = world.publish("r1")
    assert first.sent == PEOPLE and first.failed == 0, first.errors
    got = platform.fields(email(3))
    assert got is not None and got["name"] == "Ann3"
    assert float(got["amount"]) == 30.12  # rounded to the mapping's 0.00
    assert all(platform.on_list(email(n)) for n in everyone)

    calls = platform.upserts()
    again = world.publish("r2")
    assert again.sent == again.planned == 0 and platform.upserts() == calls  # nothing sent

    # Person 2 changes her amount; person 5 unsubscribes in the platform meanwhile and also
    # changes; person 6 opts out in our sources.
    platform.unsubscribe_at_platform(email(5))
    write_gold(world.lake, ltv={2: 999.999, 5: 555.0}, members=everyone, opted_out={6})
    third = world.publish("r3")
    # Mailchimp refuses to update an unsubscribed member ("compliance state"); the others
    # update the fields and leave the opt-out alone.
    refused = {e.split(": ")[0] for e in third.errors}
    assert refused <= {key(5)}, third.errors
    assert third.unsubscribed == 1 and third.sent + third.failed == 3  # 2, 5 upserted; 6 out
    assert float(platform.fields(email(2))["amount"]) == 1000.0  # type: ignore[index]
    assert platform.unsubscribed(email(6))
    assert platform.unsubscribed(email(5)), "the platform opt-out was overwritten"
    assert not platform.unsubscribed(email(2))
    fourth = world.publish("r4")  # a refusal is tried again; it never re-subscribes anyone
    assert fourth.planned == third.failed and platform.unsubscribed(email(5))


def test_mirror_mode_removes_leavers_without_unsubscribing_them(
    platform: Platform, tmp_path: Path
) -> None:
    world = World(platform, tmp_path, "mirror")
    write_gold(world.lake, ltv={}, members=set(range(PEOPLE)), opted_out=set())
    assert world.publish("r1").sent == PEOPLE
    write_gold(world.lake, ltv={}, members=set(range(PEOPLE)) - {1, 4}, opted_out=set())
    report = world.publish("r2")
    assert report.removed == 2 and report.sent == 2 and report.unsubscribed == 0, report
    for n in (1, 4):
        assert not platform.on_list(email(n))
        assert not platform.unsubscribed(email(n))
    assert platform.on_list(email(0))
    ledger = world.lake.read("ops/sync_ledger")
    assert set(ledger.filter(pl.col("action") == "remove")["contact_key"]) == {key(1), key(4)}
    assert world.publish("r3").planned == 0


def test_a_refused_member_is_sent_again_next_run_and_only_it(
    platform: Platform, tmp_path: Path
) -> None:
    """The platform's answer for person 3 is replaced by a retryable refusal (a test double
    around the real adapter: the stand-ins' own per-record errors are permanent ones)."""
    world = World(platform, tmp_path, "upsert")
    write_gold(world.lake, ltv={}, members=set(range(PEOPLE)), opted_out=set())

    class RefusesOne:
        def __init__(self, inner: Destination) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
            for result in self._inner.upsert(audience, members):
                if result.contact_key == key(3):
                    result = RecordResult(key(3), ok=False, error="try later", retryable=True)
                yield result

    first = world.publish("r1", lambda d: cast(Destination, RefusesOne(open_platform(d))))
    assert first.failed == 1 and first.sent == PEOPLE - 1
    second = world.publish("r2")
    assert second.planned == 1 and second.sent == 1
    assert world.publish("r3").planned == 0


def test_the_holdout_is_recorded_never_sent_and_stable(platform: Platform, tmp_path: Path) -> None:
    world = World(platform, tmp_path, "mirror", holdout=0.5)
    write_gold(world.lake, ltv={}, members=set(range(PEOPLE)), opted_out=set())
    with pytest.raises(PublishError, match="gold/audience_holdouts"):
        world.publish("r0")  # the assignment comes from gold, which does not have it yet
    with environment(world.env):
        build_holdouts(world.lake, world.config, logger=logging.getLogger("test"))
    first = world.publish("r1")
    held = set(
        world.lake.read("ops/sync_ledger").filter(pl.col("status") == "holdout")["contact_key"]
    )
    assert first.held_out == len(held) and 0 < len(held) < PEOPLE
    assert first.sent == PEOPLE - len(held)
    for n in range(PEOPLE):
        assert platform.on_list(email(n)) == (key(n) not in held)
    # The same people on every run and for every destination: a keyed hash of key + segment.
    pepper = lake_pepper()[0]
    assert held == {key(n) for n in range(PEOPLE) if holdout_share(key(n), SEGMENT, pepper) < 0.5}
    assert world.publish("r2").planned == 0


def test_missing_fields_fail_clearly_but_opt_outs_still_go_out(
    platform: Platform, tmp_path: Path
) -> None:
    world = World(platform, tmp_path, "upsert")
    write_gold(world.lake, ltv={}, members=set(range(PEOPLE)), opted_out=set())
    world.publish("r1")
    # The mapping now names a field nobody created, and may not create it.
    (tmp_path / "strict").mkdir()
    strict = World(platform, tmp_path / "strict", "upsert", create_fields=False)
    strict.lake = world.lake
    new = "NEWFIELD2" if platform.kind == "mailchimp" else "newfield2"
    config = tmp_path / "strict" / "pipeline.yaml"
    config.write_text(config.read_text().replace(
        "        fields:\n", f"        fields:\n          {new}: {{column: first_name}}\n"
    ))  # fmt: skip
    strict.config = load_pipeline(str(config), env=strict.env)
    write_gold(world.lake, ltv={0: 1.0}, members=set(range(PEOPLE)), opted_out={1})
    if platform.kind == "klaviyo":  # no field catalogue: custom properties always "exist"
        report = strict.publish("r2")
        assert report.unsubscribed == 1
        return
    with pytest.raises(PublishError, match=new):
        strict.publish("r2")
    assert platform.unsubscribed(email(1))  # the opt-out went out before the error

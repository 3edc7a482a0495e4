"""The three platform stand-ins as the publish fault tests drive them, in each vendor's terms.

A :class:`Platform` wraps one running stand-in (Mailchimp, Klaviyo, HubSpot) with what the tests
need to read from it (fields, list membership, consent, and how many upsert payloads each
address reached the platform with) and the faults they inject (one member refused inside an
otherwise accepted batch, a run of 429s, a batch the platform fails as a whole), each in the
vendor's own wire form (see the stand-ins' ``refuse_*``/``reject_*``/``fail_next*`` controls).

:func:`write_gold` writes the three tables a publish reads (``silver/contacts``,
``gold/audience_members``, ``gold/customer_features``) for a small cast of buyers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from tasks.connectors.destinations.hubspot import open_hubspot
from tasks.connectors.destinations.klaviyo import open_klaviyo
from tasks.connectors.destinations.mailchimp import open_mailchimp
from tasks.connectors.destinations.protocol import Destination
from tasks.connectors.http import RetryPolicy
from tasks.connectors.lake import Lake
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
SECRET = "fault-platform-key"
SECRET_ENV = {"AUDIENCE_LAKE_SECRET_FAULT_PLATFORM": SECRET}


@dataclass
class Platform:
    """One running stand-in and how the tests read it and break it."""

    kind: str
    list_id: str
    destination_yaml: str
    """The ``destinations.<kind>`` block, ``{audience}`` to be filled with the audience body."""
    stand_in: Any
    fields: Callable[[str], dict[str, Any] | None]
    """email -> ``{"name", "amount"}`` as the platform holds them, or None (unknown)."""
    on_list: Callable[[str], bool]
    unsubscribed: Callable[[str], bool]
    upserts: Callable[[], Counter[str]]
    """email -> upsert payloads the platform accepted for processing (429s and injected
    failures never reach processing, so they do not count)."""
    refuse_once: Callable[[str], None]
    """The platform refuses this member in its next write batch, and applies the rest."""
    throttle: Callable[[int], None]
    """The next ``n`` requests are answered with the vendor's 429."""
    open: Callable[[Any, RetryPolicy], Destination]
    """The real adapter for a configured destination, with a test retry policy."""

    def wire(self, **kwargs: object) -> str:
        """The destination block for ``pipeline.yaml``."""
        return self.destination_yaml.format(**kwargs)


def _mailchimp() -> Iterator[Platform]:
    with mailchimp_with_buyers(SECRET) as mc:

        def fields(email: str) -> dict[str, Any] | None:
            m = mailchimp_member(mc, email)
            return None if m is None else {"name": m["merge_fields"].get("FNAME"),
                                           "amount": m["merge_fields"].get("LTV")}  # fmt: skip

        def upserts() -> Counter[str]:
            return Counter(e for e, status in mc.member_requests("list-buyers")
                           if status == "subscribed")  # fmt: skip

        yield Platform(
            "mailchimp", "list-buyers",
            destination_yaml("mailchimp", "fault_platform", with_batch_size=True),
            mc, fields,
            on_list=on_buyers_list(mc),
            unsubscribed=unsubscribed_at(mc),
            upserts=upserts,
            refuse_once=lambda e: mc.refuse_in_batch("list-buyers", e),
            throttle=lambda n: mc.fail_next(n, status=429),
            open=lambda config, policy: open_mailchimp(config, policy=policy),
        )  # fmt: skip


def _klaviyo() -> Iterator[Platform]:
    # Job polls every 10 ms keep the adapter at its 10-per-second import pace; the stand-in's
    # whole-second windows then see an 11th call whenever a loaded machine delays one across
    # a second's edge, and the recorded (instant) retries cannot wait it out. These tests are
    # about injected faults, so the import class gets twice the documented burst here; the
    # documented ceilings are tested in tests/connectors/test_destination_klaviyo.py.
    with klaviyo_with_buyers(SECRET, polls_to_finish=2, rate_limits={"import": (20, 300)}) as kl:

        def fields(email: str) -> dict[str, Any] | None:
            p = kl.profile(email)
            if p is None:
                return None
            attributes = p["attributes"]
            return {"name": attributes.get("first_name"),
                    "amount": attributes.get("properties", {}).get("ltv")}  # fmt: skip

        def upserts() -> Counter[str]:
            kl.settle()
            sent: Counter[str] = Counter()
            for x in list(kl.exchanges):
                if (x.request.method, x.request.path) != ("POST", "/api/profile-bulk-import-jobs"):
                    continue
                if x.response.status != 202:
                    continue
                profiles = json.loads(x.request.body)["data"]["attributes"]["profiles"]["data"]
                sent.update(p["attributes"]["email"] for p in profiles)
            return sent

        yield Platform(
            "klaviyo", "KL1",
            destination_yaml("klaviyo", "fault_platform", poll_interval="0.01",
                             with_batch_size=True),
            kl, fields,
            on_list=on_buyers_list(kl),
            unsubscribed=unsubscribed_at(kl),
            upserts=upserts,
            refuse_once=lambda e: kl.reject_on_import(e, "Profile is locked.", times=1),
            throttle=lambda n: kl.fail_next(n, status=429, retry_after=2),
            open=lambda config, policy: open_klaviyo(config, policy=policy),
        )  # fmt: skip


def _hubspot() -> Iterator[Platform]:
    with hubspot_with_buyers(SECRET) as hs:

        def fields(email: str) -> dict[str, Any] | None:
            c = hs.contact(email)
            return None if c is None else {"name": c.get("firstname"), "amount": c.get("ltv")}

        def upserts() -> Counter[str]:
            sent: Counter[str] = Counter()
            for x in hs.requests_to("POST", "/batch/upsert"):
                if x.status in (200, 207):
                    sent.update(i["id"] for i in json.loads(x.body)["inputs"])
            return sent

        yield Platform(
            "hubspot", "42",
            destination_yaml("hubspot", "fault_platform", with_batch_size=True),
            hs, fields,
            on_list=on_buyers_list(hs),
            unsubscribed=unsubscribed_at(hs),
            upserts=upserts,
            refuse_once=hs.refuse_upsert,
            throttle=lambda n: hs.fail_next(n, status=429),
            open=lambda config, policy: open_hubspot(config, policy=policy),
        )  # fmt: skip


PLATFORMS: dict[str, Callable[[], Iterator[Platform]]] = {
    "mailchimp": _mailchimp,
    "klaviyo": _klaviyo,
    "hubspot": _hubspot,
}


def email(n: int) -> str:
    return f"buyer{n}@example.com"


def key(n: int) -> str:
    return f"v1:{n:064x}"


def destination_block(platform: Platform, *, mode: str = "upsert", batch_size: int = 100) -> str:
    """``destinations.<kind>`` publishing ``buyers`` with a name and a rounded amount."""
    audience = (
        f"        mode: {mode}\n        create_fields: true\n        fields:\n"
        f"          {NAME_FIELD[platform.kind]}: {{column: first_name}}\n"
        f"          {AMOUNT_FIELD[platform.kind]}: "
        "{column: lifetime_value, type: number, format: '0.00'}\n"
    )
    destination = platform.wire(url=platform.stand_in.url, batch_size=batch_size,
                                audience=audience)  # fmt: skip
    return f"  {platform.kind}:\n    {destination}"


def pipeline_yaml(
    *platforms: Platform, mode: str = "upsert", batch_size: int = 100, extra: str = ""
) -> str:
    """A pipeline with one destination per platform (in this order), each publishing
    ``buyers``."""
    destinations = "".join(destination_block(p, mode=mode, batch_size=batch_size)
                           for p in platforms)  # fmt: skip
    return (
        "version: 1\nsources:\n  people: {kind: files, role: contacts, path: ./x, format: csv}\n"
        f"segments:\n  - name: {SEGMENT}\n    where: order_count >= 1\n"
        f"destinations:\n{destinations}{extra}"
    )


def write_gold(
    lake: Lake,
    *,
    ltv: dict[int, float] | None = None,
    members: set[int] | None = None,
    opted_out: frozenset[int] = frozenset(),
) -> None:
    """``silver/contacts``, ``gold/audience_members`` and ``gold/customer_features`` for
    :data:`PEOPLE` buyers: ``members`` in the segment (all by default), ``opted_out`` opted out
    in our sources (and so out of the segment), ``ltv`` overriding the default amounts."""
    people = range(PEOPLE)
    ltv = ltv or {}
    inside = sorted((set(people) if members is None else members) - opted_out)
    lake.overwrite("silver/contacts", pl.DataFrame(
        {"contact_key": [key(n) for n in people], "email": [email(n) for n in people],
         "consent_status": ["unsubscribed" if n in opted_out else "subscribed" for n in people]},
    ))  # fmt: skip
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


def ledger(lake: Lake) -> dict[str, tuple[str, str, str | None]]:
    """contact key -> (last action, status, error) in ``ops/sync_ledger``."""
    rows = lake.read("ops/sync_ledger").select("contact_key", "action", "status", "error")
    return {r[0]: (r[1], r[2], r[3]) for r in rows.iter_rows()}

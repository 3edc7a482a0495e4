"""The three platform stand-ins set up the way the publish flow tests use them.

Each test of a publish against Mailchimp, Klaviyo or HubSpot starts the stand-in with one list
for the ``buyers`` audience, writes the same ``destinations.<kind>`` block into
``pipeline.yaml`` and asks the platform the same two questions (is this person on the list? did
they unsubscribe?). Those live here, once, so the fault, platform and dry-run tests cannot drift
apart in how they configure or read a platform; what differs between them (the secret, the
Klaviyo job pacing, how strictly fields are read) stays a parameter or in the test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from infra.sandbox.hubspot_marketing import DEFAULT_SUBSCRIPTION_ID, HubSpotMarketingStandIn
from infra.sandbox.klaviyo import KlaviyoStandIn
from infra.sandbox.mailchimp import MailchimpStandIn

BUYERS_LIST = {"mailchimp": "list-buyers", "klaviyo": "KL1", "hubspot": "42"}
"""The id of the list the ``buyers`` audience publishes to, per platform."""
NAME_FIELD = {"mailchimp": "FNAME", "klaviyo": "first_name", "hubspot": "firstname"}
AMOUNT_FIELD = {"mailchimp": "LTV", "klaviyo": "ltv", "hubspot": "ltv"}


def mailchimp_with_buyers(secret: str) -> MailchimpStandIn:
    """A Mailchimp stand-in (not yet started) holding the buyers list."""
    return MailchimpStandIn(api_key=secret, lists=[BUYERS_LIST["mailchimp"]])


def klaviyo_with_buyers(secret: str, **options: Any) -> KlaviyoStandIn:
    """A Klaviyo stand-in (not yet started) holding the buyers list; ``options`` (job polls,
    rate limits) go to :class:`KlaviyoStandIn`."""
    return KlaviyoStandIn(api_key=secret, lists=[BUYERS_LIST["klaviyo"]], **options)


def hubspot_with_buyers(secret: str) -> HubSpotMarketingStandIn:
    """A HubSpot marketing stand-in (not yet started) holding the buyers list."""
    return HubSpotMarketingStandIn(token=secret, lists=[BUYERS_LIST["hubspot"]])


def destination_yaml(
    kind: str, secret_name: str, *, poll_interval: str = "0.05", with_batch_size: bool = False
) -> str:
    """The ``destinations.<kind>`` block publishing ``buyers``, with ``{url}`` and ``{audience}``
    (and ``{batch_size}`` when ``with_batch_size``) left to fill in; the credential is the
    secret ``secret_name``. ``poll_interval`` paces Klaviyo's import-job polls."""
    batch = "    batch_size: {batch_size}\n" if with_batch_size else ""
    if kind == "mailchimp":
        return (
            "kind: mailchimp\n    base_url: {url}\n"
            f"    api_key: {{{{secret: {secret_name}}}}}\n{batch}"
            "    audiences:\n      buyers:\n        list: list-buyers\n{audience}"
        )
    if kind == "klaviyo":
        return (
            "kind: klaviyo\n    base_url: {url}\n    allow_insecure_http: true\n"
            f"    api_key: {{{{secret: {secret_name}}}}}\n"
            f"    poll_interval_seconds: {poll_interval}\n{batch}"
            "    audiences:\n      buyers:\n        list: KL1\n{audience}"
        )
    if kind == "hubspot":
        return (
            "kind: hubspot\n    base_url: {url}\n    allow_insecure_http: true\n"
            f"    token: {{{{secret: {secret_name}}}}}\n"
            f"    subscription_type_id: {DEFAULT_SUBSCRIPTION_ID}\n{batch}"
            "    audiences:\n      buyers:\n        list: '42'\n{audience}"
        )
    raise ValueError(f"no stand-in platform {kind!r}")


def mailchimp_member(mc: MailchimpStandIn, email: str) -> dict[str, Any] | None:
    """The buyers-list member with ``email`` as Mailchimp holds it, or None."""
    return next((m for m in mc.members("list-buyers").values()
                 if m["email_address"] == email), None)  # fmt: skip


def on_buyers_list(stand_in: object) -> Callable[[str], bool]:
    """email -> whether the platform has the person on the buyers list (for Mailchimp: a
    member that is not archived)."""
    if isinstance(stand_in, MailchimpStandIn):
        mc = stand_in
        return lambda e: (m := mailchimp_member(mc, e)) is not None and m["status"] != "archived"
    if isinstance(stand_in, KlaviyoStandIn):
        kl = stand_in
        return lambda e: e in kl.list_members("KL1")
    if isinstance(stand_in, HubSpotMarketingStandIn):
        hs = stand_in
        return lambda e: e in hs.list_members("42")
    raise TypeError(f"not a platform stand-in: {stand_in!r}")


def unsubscribed_at(stand_in: object) -> Callable[[str], bool]:
    """email -> whether the platform holds the person unsubscribed (Mailchimp's member status,
    Klaviyo's ``UNSUBSCRIBE`` suppression or consent, HubSpot's subscription status)."""
    if isinstance(stand_in, MailchimpStandIn):
        mc = stand_in
        return lambda e: (
            (m := mailchimp_member(mc, e)) is not None and m["status"] == "unsubscribed"
        )
    if isinstance(stand_in, KlaviyoStandIn):
        kl = stand_in

        def unsubscribed(email: str) -> bool:
            p = kl.profile(email)
            return p is not None and "UNSUBSCRIBE" in json.dumps(p["attributes"]["subscriptions"])

        return unsubscribed
    if isinstance(stand_in, HubSpotMarketingStandIn):
        hs = stand_in
        return lambda e: hs.subscription_status(e, DEFAULT_SUBSCRIPTION_ID) == "UNSUBSCRIBED"
    raise TypeError(f"not a platform stand-in: {stand_in!r}")

"""The HubSpot destination as one class, and how ``pipeline.yaml`` opens it."""

from __future__ import annotations

from typing import ClassVar

import httpx

from tasks.connectors.destinations.hubspot.consent import HubSpotConsent
from tasks.connectors.destinations.hubspot.contacts import HubSpotContacts
from tasks.connectors.destinations.hubspot.erasure import HubSpotErasure
from tasks.connectors.destinations.hubspot.pacing import (
    BURST_PER_WINDOW,
    MAX_BATCH,
    MAX_IN_FLIGHT,
    WINDOW_SECONDS,
)
from tasks.connectors.destinations.protocol import Limits
from tasks.connectors.http import RequestBudget, RetryPolicy, build_client
from tasks.connectors.redact import register_secret
from tasks.core.config import HubSpotDestination
from tasks.core.settings import resolve_secret


class HubSpot(HubSpotContacts, HubSpotConsent, HubSpotErasure):
    """One HubSpot portal as a :class:`~tasks.connectors.destinations.protocol.Destination`.

    ``client`` carries the base URL and the ``Authorization: Bearer`` header (see
    ``open_destination``); ``subscription_id`` is the email subscription type whose opt-outs are
    read and written. ``budget`` paces every request (default: 100 per rolling 10 s).
    """

    kind: ClassVar[str] = "hubspot"
    limits: ClassVar[Limits] = Limits(
        batch_size=MAX_BATCH,
        # HubSpot documents no concurrency cap; the burst limit is the ceiling.
        max_connections=MAX_IN_FLIGHT,
        requests_per_second=BURST_PER_WINDOW / WINDOW_SECONDS,
        burst=BURST_PER_WINDOW,
    )


def open_hubspot(
    config: HubSpotDestination,
    *,
    policy: RetryPolicy | None = None,
    budget: RequestBudget | None = None,
    transport: httpx.BaseTransport | None = None,
) -> HubSpot:
    """A :class:`HubSpot` for one ``kind: hubspot`` destination of ``pipeline.yaml``."""
    token = resolve_secret(config.token).get_secret_value()
    register_secret(token)
    client = build_client(
        config.base_url,
        headers={"Authorization": f"Bearer {token}"},
        max_connections=HubSpot.limits.max_connections,
        transport=transport,
        allow_insecure_http=config.allow_insecure_http,
        ca_bundle=config.ca_bundle,
        owner="destinations.hubspot",
    )
    return HubSpot(
        client,
        subscription_id=config.subscription_type_id,
        unsubscribe_scope=config.unsubscribe_scope,
        batch_size=config.batch_size,
        policy=policy,
        budget=budget,
    )

"""HubSpot as an email destination: contact properties, a manual list, subscription statuses.

One HubSpot portal, addressed with a private-app access token (``Authorization: Bearer``). An
audience is the id of a ``MANUAL`` list (Lists v3). What each :class:`Destination` method says to
HubSpot (wire formats: the vendor's CRM contacts, properties and lists v3 and communication
preferences v4 documents):

* ``upsert``: ``POST /crm/v3/objects/contacts/batch/upsert`` by ``email`` (100 inputs per call,
  each with an ``objectWriteTraceId`` so one bad input is a per-input error in a 207 instead of
  failing the batch), then ``PUT /crm/v3/lists/{id}/memberships/add`` with the record ids it
  returned. Results are matched by trace id, never by position: HubSpot re-orders them. An
  upsert never touches subscription status, so an unsubscribe made in HubSpot survives it.
* ``remove``: ``POST …/contacts/batch/read`` by email for the record ids, then
  ``PUT …/memberships/remove``. The contact stays in HubSpot; it only leaves the list.
* ``unsubscribe``: ``POST /communication-preferences/v4/statuses/batch/write`` with
  ``UNSUBSCRIBED`` for the configured subscription type (or ``…/batch/unsubscribe-all`` when the
  destination opts people out of all email).
* ``suppressions_since``: the list's memberships, their emails (``batch/read``), and for those
  the subscription statuses and the opt-out-of-all statuses (``…/batch/read`` and
  ``…/batch/unsubscribe-all/read``). HubSpot offers no "changed since" read of statuses, so this
  costs about 3.4 calls per 100 list members; the ``since`` filter is applied to each status's
  own timestamp. HubSpot reports a spam complaint as an opt-out of all email and exposes bounces
  only as contact properties, so every suppression read here is ``unsubscribed``.
* ``erase``: ``POST /crm/v3/objects/contacts/gdpr-delete`` with ``idProperty: email`` (one call
  per person; an address HubSpot does not know is blocklisted, which is what erasure wants).
* ``ensure_fields``: ``GET /crm/v3/properties/contacts``; missing properties are created with
  ``POST`` when allowed.

Pacing: every request takes a slot from a rolling 10-second budget (HubSpot's burst limit:
100 requests per 10 s for a Free/Starter private app, more on higher tiers), so a run stays
under the limit instead of meeting 429s; a 429 that still comes (another app on the same portal)
is retried by :func:`send_with_retries` with full-jitter backoff (HubSpot sends no
``Retry-After``). Up to ``max_in_flight`` batches are sent at once: a batch call takes long
enough that one at a time would use only part of the budget. Results still come back in member
order, and a batch naming someone still in flight waits for it.

Where each part lives: :mod:`.adapter` (the :class:`HubSpot` class and ``open_hubspot``),
:mod:`.client` (construction, paced requests, batches in flight), :mod:`.contacts` (properties,
upsert, remove), :mod:`.consent` (unsubscribe, suppression read-back), :mod:`.erasure`,
:mod:`.payloads` (what is written), :mod:`.responses` (reading HubSpot's answers) and
:mod:`.pacing` (the documented limits and the rolling budget).
"""

from __future__ import annotations

from tasks.connectors.destinations.hubspot.adapter import HubSpot, open_hubspot
from tasks.connectors.destinations.hubspot.client import DEFAULT_PROPERTY_GROUP, UnsubscribeScope
from tasks.connectors.destinations.hubspot.consent import (
    CURSOR_OVERLAP,
    MAX_MEMBERSHIP_PAGES,
    MEMBERSHIP_PAGE,
)
from tasks.connectors.destinations.hubspot.pacing import (
    BURST_PER_WINDOW,
    DAILY_QUOTA,
    MAX_BATCH,
    MAX_IN_FLIGHT,
    RATE_BUDGET,
    WINDOW_SECONDS,
    WINDOW_SLACK_SECONDS,
    RollingWindowBudget,
)
from tasks.connectors.destinations.hubspot.payloads import (
    BOOL_OPTIONS,
    PROPERTY_KINDS,
    format_value,
)
from tasks.connectors.destinations.hubspot.responses import COMPATIBLE_TYPES

__all__ = [
    "BOOL_OPTIONS",
    "BURST_PER_WINDOW",
    "COMPATIBLE_TYPES",
    "CURSOR_OVERLAP",
    "DAILY_QUOTA",
    "DEFAULT_PROPERTY_GROUP",
    "MAX_BATCH",
    "MAX_IN_FLIGHT",
    "MAX_MEMBERSHIP_PAGES",
    "MEMBERSHIP_PAGE",
    "PROPERTY_KINDS",
    "RATE_BUDGET",
    "WINDOW_SECONDS",
    "WINDOW_SLACK_SECONDS",
    "HubSpot",
    "RollingWindowBudget",
    "UnsubscribeScope",
    "format_value",
    "open_hubspot",
]

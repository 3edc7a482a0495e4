"""Mailchimp Marketing API v3 as a :class:`~tasks.connectors.destinations.protocol.Destination`.

Wire format: docs/platforms.md, *Mailchimp*. One audience is one Mailchimp list (audience) id.

* **Fields** are merge fields, addressed by merge tag (``FNAME``, ``LTV``): listed with
  ``GET /lists/{id}/merge-fields`` and created with ``POST`` when the mapping allows it.
* **Upsert / unsubscribe** go through batch subscribe (``POST /lists/{id}``), up to 500 members
  per call. It answers 200 even when some members fail; each member's result is read from
  ``errors[]``, so one bad address never fails the batch. Tags ride in the batch; a member the
  answer shows without a wanted tag gets it through ``POST …/members/{hash}/tags``.
* **Remove** archives (``DELETE …/members/{hash}``): the contact leaves the audience but keeps
  its consent history - never an unsubscribe. **Erase** is ``…/actions/delete-permanent``.
* **Suppressions** are members read back by status (``unsubscribed``, ``cleaned``) and
  ``since_last_changed``; see :meth:`Mailchimp.suppressions_since` for how offset paging over a
  list that changes while it is read loses nothing.
* **Concurrency**: Mailchimp allows 10 simultaneous connections per account (an 11th request
  gets 429). Batches and per-member calls run on a pool of at most that many threads sharing one
  ``httpx.Client``; results still come back in input order. A 429 or 5xx is retried with
  backoff by :func:`~tasks.connectors.http.send_with_retries`; when a batch exhausts that budget,
  its members and those of every batch not yet sent, in this call and in every later write call
  on the same adapter, come back as retryable failures - the run stops knocking instead of
  hammering a platform that says no.

:class:`MailchimpAudience` is the older first/last-name sink the publish engine calls today; it
is a thin shim over :class:`Mailchimp`, so there is one implementation of the wire calls.

Where each part lives: :mod:`.adapter` (the :class:`Mailchimp` class and ``open_mailchimp``),
:mod:`.client` (construction, the bounded pool, HTTP), :mod:`.fields` (probe, merge fields),
:mod:`.members` (batch subscribe, tags, archive), :mod:`.suppressions` (read-back),
:mod:`.erasure`, :mod:`.payloads` (what is written), :mod:`.responses` (reading Mailchimp's
answers) and :mod:`.audience` (the older sink).
"""

from __future__ import annotations

from tasks.connectors.destinations.mailchimp.adapter import Mailchimp, open_mailchimp
from tasks.connectors.destinations.mailchimp.audience import (
    MailchimpAudience,
    MemberChange,
    MemberResult,
)
from tasks.connectors.destinations.mailchimp.client import (
    MAX_BATCH,
    MAX_CONNECTIONS,
    MAX_PAGES,
    PAGE_SIZE,
    RATE_BUDGET,
    subscriber_hash,
)
from tasks.connectors.destinations.mailchimp.suppressions import CLOCK_MARGIN, SUPPRESSION_STATUSES

__all__ = [
    "CLOCK_MARGIN",
    "MAX_BATCH",
    "MAX_CONNECTIONS",
    "MAX_PAGES",
    "PAGE_SIZE",
    "RATE_BUDGET",
    "SUPPRESSION_STATUSES",
    "Mailchimp",
    "MailchimpAudience",
    "MemberChange",
    "MemberResult",
    "open_mailchimp",
    "subscriber_hash",
]

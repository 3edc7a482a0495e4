"""Klaviyo (API revision ``2026-07-15``): profiles, list membership, consent and erasure.

How each part of :class:`~tasks.connectors.destinations.protocol.Destination` is said to
Klaviyo (JSON:API bodies, ``Authorization: Klaviyo-API-Key``, a pinned ``revision`` header):

* **ensure_fields** - Klaviyo has no field catalogue: a *custom property* exists once a
  profile carries it, with whatever JSON type it was given. So "ensure" is a local check of
  the mapping, with no API call: the standard profile attributes (``first_name``,
  ``last_name``, ``organization``, ``title``, ``locale``, ``image``, ``phone_number``,
  ``external_id`` and ``location.<part>``) must be mapped as ``text`` (``location.latitude`` /
  ``longitude`` may be numbers); ``email`` is the member key and cannot be mapped; names
  starting with ``$`` are Klaviyo's own. Everything else is a custom property and is always
  "there". Nothing is ever created, so the result is always ``[]``.
* **upsert** - one asynchronous *bulk profile import job* per batch (up to 10,000 profiles,
  5 MB, 100 KB per profile) whose ``lists`` relationship also adds every imported profile to
  the audience's list. The job is polled until it ends; rejected profiles are read back from
  its import errors (``source.pointer`` names the index). A job the platform cancels, or one
  that does not finish in ``poll_timeout`` seconds, makes every member of the batch a
  retryable failure: an import is keyed by email, so sending it again is harmless.
  Consent is **not** touched: Klaviyo's subscribe job clears ``UNSUBSCRIBE`` and
  ``SPAM_COMPLAINT`` suppressions, so calling it on every upsert could overwrite an opt-out
  made in Klaviyo since the last read. List members who never opted out can be mailed.
  ``Member.tags`` become one list-valued custom property (``tags_property``).
* **remove** - profile ids looked up by email (``GET /api/profiles`` with
  ``any(email,[...])``, 100 per page), then ``DELETE /api/lists/{id}/relationships/profiles``
  (1000 per call). Membership only; consent is unchanged. A member Klaviyo does not know is
  already out of the list: that counts as done.
* **unsubscribe** - a *subscription delete job* (100 profiles per call) **without** a list:
  Klaviyo's email consent belongs to the profile, and a list-scoped unsubscribe would only
  take the person off one list. Opt-out wins everywhere. The job answers 202 with no body and
  no job to poll: acceptance is the result. Addresses Klaviyo would refuse are failed locally
  first; if a job is still refused, its members are sent one by one to find the culprit.
* **suppressions_since** - profiles whose email suppression (``UNSUBSCRIBE``,
  ``HARD_BOUNCE``, ``INVALID_EMAIL``, ``SPAM_COMPLAINT``, ``USER_SUPPRESSED``) or whose
  suppression from this list is at or after ``since``, read with ``greater-or-equal`` filters
  (an event at exactly the cursor is read again, never lost) and followed page by page
  through ``links.next``, which must stay on the configured host.
* **erase** - one *data privacy deletion job* per email (Klaviyo takes exactly one
  identifier per job); 202, deleted asynchronously.

Every request is paced by its operation's documented burst (per second) and steady (per
minute) limits (:data:`RATE_CLASSES`), goes through
:func:`~tasks.connectors.http.send_with_retries` (429 with ``Retry-After``, 5xx), and every
error message is redacted, so the API key never appears.

Where each part lives: :mod:`.adapter` (the :class:`Klaviyo` class and ``open_klaviyo``),
:mod:`.client` (construction, HTTP, paged reads), :mod:`.profiles` (probe, fields, upsert,
remove), :mod:`.consent` (unsubscribe, suppression read-back), :mod:`.erasure`, :mod:`.payloads`
(the profile model and what is written), :mod:`.responses` (reading Klaviyo's answers) and
:mod:`.pacing` (the rate classes and their pacer).
"""

from __future__ import annotations

from tasks.connectors.destinations.klaviyo.adapter import Klaviyo, open_klaviyo
from tasks.connectors.destinations.klaviyo.client import (
    EPOCH,
    FINAL_OK,
    IMPORT_BUDGET_BYTES,
    IMPORT_MAX_BYTES,
    IMPORT_MAX_PROFILES,
    JSONAPI,
    LIST_WRITE_MAX,
    LOOKUP_MAX,
    MAX_PAGES,
    PAGE_SIZE,
    PROFILE_MAX_BYTES,
    REVISION,
    RUNNING,
    UNSUBSCRIBE_MAX,
)
from tasks.connectors.destinations.klaviyo.pacing import (
    RATE_BUDGETS,
    RATE_CLASSES,
    RatePacer,
    rate_class,
)
from tasks.connectors.destinations.klaviyo.payloads import (
    LOCATION_NUMBER,
    LOCATION_TEXT,
    STANDARD_ATTRIBUTES,
    is_sendable_email,
)
from tasks.connectors.destinations.klaviyo.responses import REASONS

__all__ = [
    "EPOCH",
    "FINAL_OK",
    "IMPORT_BUDGET_BYTES",
    "IMPORT_MAX_BYTES",
    "IMPORT_MAX_PROFILES",
    "JSONAPI",
    "LIST_WRITE_MAX",
    "LOCATION_NUMBER",
    "LOCATION_TEXT",
    "LOOKUP_MAX",
    "MAX_PAGES",
    "PAGE_SIZE",
    "PROFILE_MAX_BYTES",
    "RATE_BUDGETS",
    "RATE_CLASSES",
    "REASONS",
    "REVISION",
    "RUNNING",
    "STANDARD_ATTRIBUTES",
    "UNSUBSCRIBE_MAX",
    "Klaviyo",
    "RatePacer",
    "is_sendable_email",
    "open_klaviyo",
    "rate_class",
]

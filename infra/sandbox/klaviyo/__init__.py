"""A Klaviyo API (revision ``2026-07-15``) stand-in on loopback: the audience-sync operations.

Routes (JSON:API bodies, ``application/vnd.api+json`` both ways):

* ``POST /api/profile-bulk-import-jobs`` - an asynchronous import of up to 10,000 profiles
  (payload <= 5 MB, <= 100 KB per profile), optionally adding them to lists; 202 + job document.
* ``GET  /api/profile-bulk-import-jobs/{job_id}`` - the job; every read moves it on
  (``queued`` -> ``processing`` -> ``complete``, or ``cancelled`` when the platform fails it).
  Profiles change only when the job completes.
* ``GET  /api/profile-bulk-import-jobs/{id}/import-errors`` - one error per rejected profile,
  ``source.pointer`` naming its index and ``original_payload`` echoing it; cursor pages.
* ``POST /api/profile-subscription-bulk-create-jobs`` (<= 1000) and
  ``POST /api/profile-subscription-bulk-delete-jobs`` (<= 100) - consent jobs, 202 without a
  body and without a job id; they take effect shortly after (before the next request is
  served). Subscribing clears ``UNSUBSCRIBE``/``SPAM_COMPLAINT``/``USER_SUPPRESSED``
  suppressions; unsubscribing with a list removes list members from that list (a list
  suppression), and unsubscribes everyone else **globally**.
* ``POST /api/profile-suppression-bulk-create-jobs`` (<= 100 emails) - ``USER_SUPPRESSED``.
* ``GET  /api/profiles`` - ``filter`` (the operators the spec lists per field, ``and(...)``),
  ``sort``, ``page[size]`` <= 100, ``page[cursor]`` bound to its query, ``links.next``;
  ``subscriptions`` only with ``additional-fields[profile]=subscriptions``.
* ``GET  /api/lists`` (``page[size]`` <= 10), ``GET|POST|DELETE
  /api/lists/{id}/relationships/profiles`` (<= 1000 ids per write; membership, not consent).
* ``POST /api/data-privacy-deletion-jobs`` - exactly one of email / phone_number / id; 202,
  the profile disappears shortly after.

Every request needs ``Authorization: Klaviyo-API-Key <key>`` (401 otherwise) and the
``revision`` header (400 when missing or not a known revision). Unknown query parameters, bad
filters, wrong resource types and oversized batches are 400s in Klaviyo's error shape
``{"errors": [{id, code, title, detail, source}]}``. Each operation has the spec's burst (per
second) and steady (per minute) limits, per account; over either: 429 with ``Retry-After``
(whole seconds) and no ``RateLimit-*`` headers, which every other response carries.

The stand-in is one class, :class:`KlaviyoStandIn`, composed in :mod:`.server` from mixins that
share the state held by :class:`~infra.sandbox.klaviyo.state.KlaviyoState`, one module per
concern:

* :mod:`.wire` - the documented limits and vocabularies, timestamps, Klaviyo's error shape.
* :mod:`.records` - what the platform stores (profiles, lists, import jobs) and test records.
* :mod:`.filters` - the ``filter`` query language (``equals(email,"...")``, ``and(...)``).
* :mod:`.state` - the shared state, ids and lookups.
* :mod:`.parsing` - query and body validation against the spec, cursor pagination.
* :mod:`.limits` - fault injection and the per-operation rate limits.
* :mod:`.imports` - bulk profile import jobs and their import errors.
* :mod:`.profiles` - ``GET /api/profiles``: filters, sorting, sparse fieldsets.
* :mod:`.lists` - lists and list membership.
* :mod:`.consent` - subscription, unsubscription and suppression jobs.
* :mod:`.erasure` - data-privacy deletion jobs.
* :mod:`.server` - the class itself: routing, authentication, test helpers.
"""

from __future__ import annotations

from infra.sandbox.klaviyo.filters import parse_filter
from infra.sandbox.klaviyo.records import RecordedExchange
from infra.sandbox.klaviyo.server import KlaviyoStandIn
from infra.sandbox.klaviyo.wire import (
    CLEARED_BY_SUBSCRIBE,
    DATE_FIELDS,
    IMPORT_JOB_FIELDS,
    IMPORT_MAX_BYTES,
    IMPORT_MAX_PROFILES,
    JSONAPI,
    KNOWN_REVISIONS,
    LIST_FILTERS,
    LIST_WRITE_MAX,
    LISTS_PAGE_MAX,
    LOCATION_KEYS,
    MEMBER_FILTERS,
    PAGE_MAX,
    PROFILE_ATTRIBUTES,
    PROFILE_FILTERS,
    PROFILE_MAX_BYTES,
    RATE_LIMITS,
    REVISION,
    SUBSCRIBE_MAX,
    SUPPRESS_MAX,
    SUPPRESSION_REASONS,
    UNSUBSCRIBE_MAX,
    KlaviyoError,
    is_valid_email,
)

__all__ = [
    "CLEARED_BY_SUBSCRIBE",
    "DATE_FIELDS",
    "IMPORT_JOB_FIELDS",
    "IMPORT_MAX_BYTES",
    "IMPORT_MAX_PROFILES",
    "JSONAPI",
    "KNOWN_REVISIONS",
    "LISTS_PAGE_MAX",
    "LIST_FILTERS",
    "LIST_WRITE_MAX",
    "LOCATION_KEYS",
    "MEMBER_FILTERS",
    "PAGE_MAX",
    "PROFILE_ATTRIBUTES",
    "PROFILE_FILTERS",
    "PROFILE_MAX_BYTES",
    "RATE_LIMITS",
    "REVISION",
    "SUBSCRIBE_MAX",
    "SUPPRESSION_REASONS",
    "SUPPRESS_MAX",
    "UNSUBSCRIBE_MAX",
    "KlaviyoError",
    "KlaviyoStandIn",
    "RecordedExchange",
    "is_valid_email",
    "parse_filter",
]

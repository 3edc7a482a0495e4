"""HubSpot as an email *destination* on loopback: contacts, properties, lists, subscriptions.

Separate from :mod:`infra.sandbox.crm`, which plays HubSpot as a CRM *source* (token endpoint and
contact search). This stand-in follows the vendor's OpenAPI documents for the operations a
destination adapter calls (``docs/platforms.md``, *HubSpot*):

* ``POST /crm/v3/objects/contacts/batch/upsert`` - ``idProperty: "email"``, at most 100 inputs.
  Answers 200 when every input succeeded, else **207** with one ``StandardError`` per failed
  input (``context.id`` = the email, ``context.objectWriteTraceId`` when sent). Results come back
  in a different order than the inputs (as HubSpot's do), so clients must match them by
  ``objectWriteTraceId`` or email, never by position. Per-input failures turn into a 207 only
  when *every* input carries an ``objectWriteTraceId``; otherwise the first one fails the whole
  batch with 400 (``docs/platforms.md``, *HubSpot*). Two inputs with the same id fail the batch
  with 400.
* ``POST /crm/v3/objects/contacts/batch/read`` - by id or ``idProperty``; unknown ids are a 207
  ``OBJECT_NOT_FOUND`` error listing them.
* ``POST /crm/v3/objects/contacts/gdpr-delete`` - 204; the email is blocklisted afterwards (also
  when no contact had it), so a later upsert of it fails per input.
* ``GET|POST /crm/v3/properties/contacts`` - properties with types; a duplicate name is 409.
  Values written to a property are checked against its type: numbers must parse, ``date``
  values must be ``YYYY-MM-DD`` or epoch milliseconds at midnight UTC, ``bool`` values
  ``true``/``false``, enumerations one of their options; ``""`` clears any property. Unknown
  and read-only properties are per-input errors.
* ``POST /crm/v3/lists`` (``MANUAL`` or ``SNAPSHOT`` only), ``GET
  /crm/v3/lists/object-type-id/0-1/name/{name}``, ``GET /crm/v3/lists/{id}/memberships``
  (``limit`` ≤ 250, ``after`` cursor), ``PUT /crm/v3/lists/{id}/memberships/add|remove`` (a bare
  array of record ids; unknown ids come back in ``recordIdsMissing``).
* Communication preferences v4: ``GET /definitions``, ``POST /statuses/batch/read``,
  ``/statuses/batch/write``, ``/statuses/batch/unsubscribe-all`` and
  ``/statuses/batch/unsubscribe-all/read`` (``channel=EMAIL`` required, at most 100 inputs).
  Opting out of all sets every subscription type to ``UNSUBSCRIBED`` as well.

Strictness: ``Authorization: Bearer <private-app token>``; unknown query parameters and unknown
JSON fields are 400 ``VALIDATION_ERROR`` naming them; bodies are checked against the spec's
types, enums and ``required`` lists. Errors are HubSpot's ``{status, message, correlationId
(uuid), category}``.

Rate limit: a rolling ``window_seconds`` window (10 s, as HubSpot's ``TEN_SECONDLY_ROLLING``)
admits ``burst`` requests (100, the Free/Starter private-app figure) and a daily quota. Every
answer carries ``X-HubSpot-RateLimit-Max``, ``-Remaining``, ``-Interval-Milliseconds``,
``-Daily`` and ``-Daily-Remaining``; over the limit is 429 with the body HubSpot documents
(``errorType: RATE_LIMIT``, ``policyName``) and no ``Retry-After``. Rejected requests do not
use up the window.

Known spec deviations kept on purpose (the vendor's live behaviour, which the spec misses): the
429 body has no ``category`` (the spec's ``Error`` requires one); unset properties are left out
of ``properties`` rather than sent as ``null`` (the spec types every value as a string).

The stand-in is one class, :class:`HubSpotMarketingStandIn`, composed in :mod:`.server` from
mixins that share the state held by
:class:`~infra.sandbox.hubspot_marketing.state.HubSpotMarketingState`, one module per concern:

* :mod:`.wire` - the documented limits, timestamps and HubSpot's error shapes.
* :mod:`.schemas` - the request body schemas of the spec, their checker, and property value
  types.
* :mod:`.records` - what the portal stores (properties, contacts, lists, statuses) and what is
  recorded for tests.
* :mod:`.routes` - the route table: methods, paths, allowed query parameters, handlers.
* :mod:`.state` - the shared state and the helpers that seed it.
* :mod:`.parsing` - route matching, query and body validation, batch answers.
* :mod:`.limits` - fault injection and the rolling and daily rate limits.
* :mod:`.contacts` - contact upserts, batch reads, GDPR deletion, contact properties.
* :mod:`.lists` - lists and list memberships.
* :mod:`.preferences` - communication preferences v4 (subscription statuses, opt-out of all).
* :mod:`.server` - the class itself: dispatch, authentication, test helpers.
"""

from __future__ import annotations

from infra.sandbox.hubspot_marketing.records import Exchange
from infra.sandbox.hubspot_marketing.routes import RATE_LIMIT_HEADERS, REQUIRED_QUERY, ROUTES
from infra.sandbox.hubspot_marketing.schemas import (
    BATCH_READ_BODY,
    BATCH_STRINGS_BODY,
    GDPR_DELETE_BODY,
    LIST_CREATE_BODY,
    PROPERTY_CREATE_BODY,
    PROPERTY_TYPES,
    RECORD_IDS_BODY,
    STATUS_WRITE_BODY,
    UPSERT_BODY,
    schema_problem,
)
from infra.sandbox.hubspot_marketing.server import HubSpotMarketingStandIn
from infra.sandbox.hubspot_marketing.wire import (
    BATCH_MAX_INPUTS,
    CONTACTS_OBJECT_TYPE_ID,
    DEFAULT_BURST,
    DEFAULT_DAILY_LIMIT,
    DEFAULT_PROPERTY_GROUP,
    DEFAULT_SUBSCRIPTION_ID,
    DEFAULT_WINDOW_SECONDS,
    LEGAL_BASES,
    MEMBERSHIPS_DEFAULT_LIMIT,
    MEMBERSHIPS_MAX_LIMIT,
    STATUS_STATES,
    HubSpotApiError,
    hubspot_error,
    is_valid_email,
    iso_now,
)

__all__ = [
    "BATCH_MAX_INPUTS",
    "BATCH_READ_BODY",
    "BATCH_STRINGS_BODY",
    "CONTACTS_OBJECT_TYPE_ID",
    "DEFAULT_BURST",
    "DEFAULT_DAILY_LIMIT",
    "DEFAULT_PROPERTY_GROUP",
    "DEFAULT_SUBSCRIPTION_ID",
    "DEFAULT_WINDOW_SECONDS",
    "GDPR_DELETE_BODY",
    "LEGAL_BASES",
    "LIST_CREATE_BODY",
    "MEMBERSHIPS_DEFAULT_LIMIT",
    "MEMBERSHIPS_MAX_LIMIT",
    "PROPERTY_CREATE_BODY",
    "PROPERTY_TYPES",
    "RATE_LIMIT_HEADERS",
    "RECORD_IDS_BODY",
    "REQUIRED_QUERY",
    "ROUTES",
    "STATUS_STATES",
    "STATUS_WRITE_BODY",
    "UPSERT_BODY",
    "Exchange",
    "HubSpotApiError",
    "HubSpotMarketingStandIn",
    "hubspot_error",
    "is_valid_email",
    "iso_now",
    "schema_problem",
]

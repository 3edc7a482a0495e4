"""A HubSpot-style CRM contacts API on loopback, for tests and the demo.

Wire formats follow ``docs/platforms.md`` (*OAuth2 token endpoints*, *HubSpot CRM contacts*):

* ``POST /oauth/v1/token`` — form-encoded ``grant_type=client_credentials``; client id/secret in
  the body or via HTTP Basic. 200 ``{"access_token","token_type":"bearer","expires_in"}``;
  401 ``invalid_client``; 400 ``unsupported_grant_type`` / ``invalid_request``.
* ``GET /crm/v3/objects/contacts`` — cursor paging (``paging.next.after`` is an opaque,
  percent-encoded base64 cursor such as ``MTAwMQo%3D``; numeric ids are accepted too). Max
  ``limit`` 100.
* ``GET /crm/v3/objects/contacts/{id}`` — one contact.
* ``POST /crm/v3/objects/contacts/search`` — filterGroups (OR of ANDed filters), one sort
  (ties broken by ascending numeric id), ``limit`` ≤ 200, numeric-offset ``after``. The body is
  checked against the vendor's ``PublicObjectSearchRequest`` schema (:data:`SEARCH_REQUEST_SCHEMA`):
  an unknown field anywhere, or a value of the wrong JSON type, is a 400 naming it, as HubSpot's
  JSON binding answers. Two documented deviations from that schema, both the real API's
  behaviour: ``sorts`` entries may be objects ``{"propertyName","direction"}`` (the vendor's
  guide; the spec types them as strings, a bare name sorting ascending), and the fields the
  schema lists as required may be left out (the guide's own examples omit ``after``).

Search results are live: ``after`` is an offset into the result set as it is sorted *at the
time of each request*, so modifying a contact between two pages moves it (sorted by
``lastmodifieddate``, to the end) and shifts every later offset by one — the behaviour that
makes offset paging lose records. ``on_search_page`` lets a test act between two pages.

Search window: HubSpot returns at most 10,000 results per query. This stand-in rejects any
search whose ``after + limit`` exceeds 10,000 with 400 ``VALIDATION_ERROR`` (the message names
the cap), while ``total`` and ``paging.next`` still report the full result count — so a client
that blindly follows ``paging.next`` past the window gets the 400, exactly as it should expect
from the real API, and must restart with ``GTE`` the last ``lastmodifieddate`` it saw.

Every API error body is HubSpot-shaped: ``{"status":"error","message","correlationId",
"category"}``. Expired and unknown tokens both get 401 with category
``INVALID_AUTHENTICATION`` (real HubSpot may say ``EXPIRED_AUTHENTICATION`` for the former;
clients should branch on the status code only).

The stand-in is one class, :class:`CrmStandIn`, composed in :mod:`.server` from mixins that
share the contact store held by :class:`~infra.sandbox.crm.store.CrmStore`, one module per
concern:

* :mod:`.wire` - paths, limits, HubSpot's error shapes, ids, timestamps and paging cursors.
* :mod:`.validation` - the search request against the spec: body schema, filter groups,
  sorts, limits and requested properties.
* :mod:`.store` - the contact store and the helpers tests use to change it.
* :mod:`.tokens` - the OAuth client-credentials token endpoint and bearer authentication.
* :mod:`.faults` - fault injection and the optional requests-per-second limit.
* :mod:`.contacts` - the list, get-one and search endpoints.
* :mod:`.server` - the class itself: loading from a file, dispatch and routing.
"""

from __future__ import annotations

from infra.sandbox.crm.server import CrmStandIn
from infra.sandbox.crm.validation import (
    SEARCH_REQUEST_SCHEMA,
    _comparable,
    parse_filter_groups,
    schema_problem,
)
from infra.sandbox.crm.wire import (
    ALWAYS_RETURNED,
    CONTACTS_PATH,
    DATE_PROPERTIES,
    DEFAULT_PROPERTIES,
    LIST_DEFAULT_LIMIT,
    LIST_MAX_LIMIT,
    MAX_FILTER_GROUPS,
    MAX_FILTERS_PER_GROUP,
    MAX_FILTERS_TOTAL,
    NUMERIC_PROPERTIES,
    RATE_LIMIT_BODY,
    SEARCH_MAX_LIMIT,
    SEARCH_PATH,
    SEARCH_RESULT_CAP,
    TOKEN_PATH,
    CrmRequestError,
    decode_cursor,
    encode_cursor,
    hubspot_error,
)

__all__ = [
    "ALWAYS_RETURNED",
    "CONTACTS_PATH",
    "DATE_PROPERTIES",
    "DEFAULT_PROPERTIES",
    "LIST_DEFAULT_LIMIT",
    "LIST_MAX_LIMIT",
    "MAX_FILTERS_PER_GROUP",
    "MAX_FILTERS_TOTAL",
    "MAX_FILTER_GROUPS",
    "NUMERIC_PROPERTIES",
    "RATE_LIMIT_BODY",
    "SEARCH_MAX_LIMIT",
    "SEARCH_PATH",
    "SEARCH_REQUEST_SCHEMA",
    "SEARCH_RESULT_CAP",
    "TOKEN_PATH",
    "CrmRequestError",
    "CrmStandIn",
    "_comparable",
    "decode_cursor",
    "encode_cursor",
    "hubspot_error",
    "parse_filter_groups",
    "schema_problem",
]

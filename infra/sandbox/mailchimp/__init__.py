"""A Mailchimp Marketing API v3 style audience API on loopback.

Wire facts: ``docs/platforms.md``, *Mailchimp*.

Follows the trimmed vendor OpenAPI document of the Mailchimp Marketing API (the operations an
audience sync calls), not any one adapter. Routes (base path ``/3.0``):

* ``GET  /3.0/ping``
* ``GET  /3.0/lists/{list_id}``
* ``POST /3.0/lists/{list_id}`` — batch subscribe/update, ≤ 500 members, always 200 with
  per-member ``errors[]`` (``ERROR_CONTACT_EXISTS`` / ``ERROR_GENERIC``, with ``field`` and
  ``field_message`` for a refused merge field).
* ``GET  /3.0/lists/{list_id}/members`` with ``count`` (≤ 1000, default 10), ``offset``,
  ``status``, ``since_last_changed`` / ``before_last_changed`` (strictly after / before, as the
  spec words it), ``sort_field`` / ``sort_dir``, ``fields`` / ``exclude_fields``. Archived
  members only with ``status=archived``. Without ``sort_field`` members come in creation order;
  with ``sort_field=last_changed`` an edit moves a member to its new place, so offset paging
  over a changing audience shifts exactly as the real one does. ``on_members_page`` lets a test
  edit the audience between two pages.
* ``POST /3.0/lists/{list_id}/members`` — add one member (400 "Member Exists" if present).
* ``GET|PUT|PATCH|DELETE /3.0/lists/{list_id}/members/{subscriber_hash}`` — the path key may
  also be the raw email address. PUT is an idempotent upsert (``status_if_new`` only on create;
  ``tags`` only on create, as in Mailchimp); PATCH is partial; DELETE archives (204).
* ``GET|POST /3.0/lists/{list_id}/members/{hash}/tags`` — POST ``{"tags":[{"name","status"}]}``
  → 204.
* ``POST /3.0/lists/{list_id}/members/{hash}/actions/delete-permanent`` → 204; the address is
  then "forgotten" and can never be re-added.
* ``GET|POST /3.0/lists/{list_id}/merge-fields`` — the audience's merge fields (``FNAME``,
  ``LNAME``, ``ADDRESS``, ``PHONE``, ``BIRTHDAY`` from the start); a member value for a tag the
  audience lacks, or of the wrong type, is refused for that member.

Query parameters an operation does not declare are rejected (400), and so are declared ones
the stand-in does not implement, rather than silently ignored. Auth is HTTP Basic (any user, API
key as password) or ``Bearer <api key>``. Errors are RFC 7807 problem documents
(``type,title,status,detail,instance`` and sometimes ``errors[]``). More than
``max_connections`` (10) requests in flight at once get 429 without ``Retry-After``.

The stand-in is one class, :class:`MailchimpStandIn`, composed in :mod:`.server` from mixins
that share the state held by :class:`~infra.sandbox.mailchimp.state.MailchimpState`, one module
per concern (merge fields live in :mod:`infra.sandbox.mailchimp_merge`):

* :mod:`.wire` - paths, limits, vocabularies, subscriber hashes and the problem-JSON errors.
* :mod:`.records` - what an audience stores (members) and what tests inject (faults).
* :mod:`.state` - the shared state: audiences, tags, merge fields, the member log.
* :mod:`.parsing` - request validation against the spec: query parameters per route, member
  bodies, views, ordering and paging.
* :mod:`.faults` - fault injection (failed requests, members refused inside a batch).
* :mod:`.upserts` - the batch endpoint and the upsert logic it shares with ``PUT``.
* :mod:`.members` - the list, member, tag and merge-field resources.
* :mod:`.server` - the class itself: the connection ceiling, authentication, routing, and the
  test helpers that read audiences or simulate people.
"""

from __future__ import annotations

from infra.sandbox.mailchimp.server import MailchimpStandIn
from infra.sandbox.mailchimp.wire import (
    ABUSE_REASON,
    BASE_PATH,
    BATCH_MAX_MEMBERS,
    COMPLIANCE_STATUSES,
    MEMBERS_DEFAULT_COUNT,
    MEMBERS_MAX_COUNT,
    MEMBERS_QUERY,
    MEMBERS_QUERY_NOT_IMPLEMENTED,
    PROBLEM_CONTENT_TYPE,
    PROBLEM_TYPE,
    SORT_FIELDS,
    STATUSES,
    MailchimpError,
    MemberError,
    is_valid_email,
    problem,
    subscriber_hash,
)

__all__ = [
    "ABUSE_REASON",
    "BASE_PATH",
    "BATCH_MAX_MEMBERS",
    "COMPLIANCE_STATUSES",
    "MEMBERS_DEFAULT_COUNT",
    "MEMBERS_MAX_COUNT",
    "MEMBERS_QUERY",
    "MEMBERS_QUERY_NOT_IMPLEMENTED",
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE",
    "SORT_FIELDS",
    "STATUSES",
    "MailchimpError",
    "MailchimpStandIn",
    "MemberError",
    "is_valid_email",
    "problem",
    "subscriber_hash",
]

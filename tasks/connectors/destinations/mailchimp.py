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
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import httpx

from tasks.connectors.destinations.protocol import (
    Destination,
    ErasureResult,
    FieldSpec,
    FieldType,
    FieldValue,
    Limits,
    Member,
    PlannedOperation,
    RecordResult,
    Suppression,
    SuppressionPage,
    SuppressionStatus,
)
from tasks.connectors.destinations.wire import chunks, parse_timestamp
from tasks.connectors.http import (
    RETRY_STATUS,
    InsecureTransportRefused,
    RetryPolicy,
    build_client,
    is_certificate_error,
    send_with_retries,
)
from tasks.connectors.redact import redact, register_secret
from tasks.core.config import MailchimpDestination
from tasks.core.send_budget import CallCount, RateBudget, RateWindow
from tasks.core.settings import resolve_secret
from tasks.core.sync import SyncAction
from tasks.errors import PublishError

MAX_BATCH = 500
"""Members per batch subscribe call (the spec's ``members`` description)."""
MAX_CONNECTIONS = 10
"""Simultaneous connections Mailchimp allows per account (spec ``info.description``)."""
RATE_BUDGET = RateBudget("mailchimp", (RateWindow(MAX_CONNECTIONS, 1.0),))
"""For the send-budget planner: Mailchimp documents a connection cap, not a rate; at about one
second per call (a 500-member batch takes that) 10 connections give 10 calls a second."""
PAGE_SIZE = 1000
"""Members per read (``count`` maximum)."""
MAX_PAGES = 10_000
"""Bound on the pages one suppression read may take (10 M members at 1,000 a page)."""
CLOCK_MARGIN = timedelta(seconds=60)
"""How far before the read's start the returned cursor lies: a change Mailchimp stamps just
before it becomes visible to reads is still picked up by the next read."""
SUPPRESSION_STATUSES: tuple[Literal["unsubscribed", "cleaned"], ...] = ("unsubscribed", "cleaned")
_MEMBER_READ_FIELDS = ",".join(
    [
        "members.id",
        "members.email_address",
        "members.status",
        "members.last_changed",
        "members.unsubscribe_reason",
        "total_items",
    ]
)
_MERGE_TAG = re.compile(r"^[A-Z0-9_]{1,10}$")
_COMPATIBLE_TYPES: Mapping[FieldType, frozenset[str]] = {
    "text": frozenset({"text", "radio", "dropdown", "phone", "url", "imageurl", "zip"}),
    "number": frozenset({"number"}),
    "date": frozenset({"date"}),
    "boolean": frozenset({"text", "radio", "dropdown"}),
}
"""Mailchimp merge field types that can hold a value of each of our field types."""
_CREATED_TYPE: Mapping[FieldType, str] = {
    "text": "text",
    "number": "number",
    "date": "date",
    "boolean": "text",  # Mailchimp has no boolean merge field: "true" / "false" in a text field
}
_PERMANENT_MEMBER_ERRORS = (
    "fake or invalid",
    "compliance state",
    "permanently deleted",
    "merge fields were invalid",
    "appears more than once",
)
"""Per-member error texts a resend cannot fix (the data or the person's state must change)."""

T = TypeVar("T")
R = TypeVar("R")


def subscriber_hash(email_address: str) -> str:
    """Mailchimp's member key: ``md5(email.strip().lower())`` as hex."""
    return hashlib.md5(email_address.strip().lower().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Transient:
    """A call that still failed transiently when its retry budget ran out."""

    reason: str


class Mailchimp:
    """One Mailchimp account: the :class:`Destination` protocol over Marketing API v3.

    ``client`` carries the base URL and the API key (HTTP Basic); give it a connection pool of
    at least ``max_connections``. ``erase_lists`` are the list ids :meth:`erase` deletes from
    (Mailchimp erases per list, and the protocol's ``erase`` names no audience).
    """

    kind: ClassVar[str] = "mailchimp"
    limits: ClassVar[Limits] = Limits(
        batch_size=MAX_BATCH,
        max_connections=MAX_CONNECTIONS,
        # Mailchimp documents no request rate, only the connection ceiling; one batch call per
        # second per connection is the planning figure (a 500-member batch takes about that).
        requests_per_second=float(MAX_CONNECTIONS),
        burst=MAX_CONNECTIONS,
    )

    def __init__(
        self,
        client: httpx.Client,
        *,
        batch_size: int = MAX_BATCH,
        max_connections: int = MAX_CONNECTIONS,
        page_size: int = PAGE_SIZE,
        policy: RetryPolicy | None = None,
        erase_lists: Sequence[str] = (),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        if not 1 <= max_connections <= MAX_CONNECTIONS:
            raise ValueError(f"max_connections must be 1..{MAX_CONNECTIONS}, got {max_connections}")
        if not 2 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 2..{PAGE_SIZE}, got {page_size}")
        self._client = client
        self._batch_size = batch_size
        self._max_connections = max_connections
        self._page_size = page_size
        self._policy = policy
        self._erase_lists = tuple(erase_lists)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._pool = ThreadPoolExecutor(max_connections, thread_name_prefix="mailchimp")
        # Set once a write call exhausted its retries; every later write call on this adapter
        # (the publish engine opens one per audience publish and sends batch by batch) then
        # fails its members retryably without a request.
        self._stopped = threading.Event()
        self._count_lock = threading.Lock()
        self.requests_sent = 0
        """HTTP requests that got an answer (retries included), for tests and the planner."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def planned_calls(
        self, operation: PlannedOperation, members: int, *, retagged: int = 0
    ) -> list[CallCount]:
        """Batch subscribe calls of ``batch_size`` (upserts and unsubscribes), one tag call per
        retagged member (tags ride in the batch only for new members), one archive per removal,
        one merge-field read for the field check."""
        batches = math.ceil(members / self._batch_size)
        if operation == "fields":
            return [CallCount("merge-field read", 1, RATE_BUDGET)]
        if operation == "upsert":
            return [CallCount("batch subscribe", batches, RATE_BUDGET),
                    CallCount("tag update", retagged, RATE_BUDGET)]  # fmt: skip
        if operation == "unsubscribe":
            return [CallCount("batch subscribe", batches, RATE_BUDGET)]
        return [CallCount("member archive", members, RATE_BUDGET)]

    # -- protocol ------------------------------------------------------------------------------
    def probe(self, audiences: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """``GET /3.0/ping`` (reachable, key accepted), then ``GET /3.0/lists/{id}`` per list."""
        self._get("/3.0/ping", what="ping", policy=policy)
        for audience in audiences:
            params = {"fields": "id,name"}
            self._get(f"/3.0/lists/{audience}", params=params, what=audience, policy=policy)
        return f"ping ok, {len(audiences)} lists readable"

    def ensure_fields(
        self, audience: str, fields: Sequence[FieldSpec], *, create: bool
    ) -> list[str]:
        """Check each field's merge tag exists with a type that can hold its values; create the
        missing ones when ``create`` (never retypes an existing field: Mailchimp cannot)."""
        bad_names = [f.name for f in fields if not _MERGE_TAG.match(f.name)]
        if bad_names:
            raise PublishError(
                f"mailchimp list {audience!r}: merge tags must be 1-10 upper-case letters, "
                f"digits or underscores: {', '.join(repr(n) for n in bad_names)}"
            )
        existing = self._merge_field_types(audience)
        mistyped = [
            f"{f.name} is a {existing[f.name]} field, which cannot hold {f.type} values"
            for f in fields
            if f.name in existing and existing[f.name] not in _COMPATIBLE_TYPES[f.type]
        ]
        missing = [f for f in fields if f.name not in existing]
        if mistyped or (missing and not create):
            problems = [*mistyped, *(f"{f.name} ({f.type}) does not exist" for f in missing)]
            raise PublishError(
                f"mailchimp list {audience!r}: merge fields do not match the mapping: "
                + "; ".join(problems)
                + ("" if create else " (set the mapping to create missing fields, or add them)")
            )
        created = [spec.name for spec in missing if self._create_merge_field(audience, spec)]
        return created

    def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Subscribe or update members with their merge fields and tags, 500 per call."""
        stop = self._stopped
        for results in self._bounded(
            lambda batch: self._upsert_batch(audience, batch, stop), self._batches(members)
        ):
            yield from results

    def remove(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Archive each member (``DELETE …/members/{hash}``); one not on the list is a success."""
        stop = self._stopped
        yield from self._bounded(lambda m: self._archive(audience, m, stop), members)

    def unsubscribe(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Set each member ``unsubscribed`` (created so, when not yet on the list)."""
        stop = self._stopped
        for results in self._bounded(
            lambda batch: self._unsubscribe_batch(audience, batch, stop), self._batches(members)
        ):
            yield from results

    def suppressions_since(self, audience: str, since: datetime | None) -> SuppressionPage:
        """Unsubscribed (spam complaints among them) and cleaned (bounced) members whose
        ``last_changed`` is at or after ``since``.

        Each status is read sorted by ``last_changed`` ascending, 1,000 a page. Offset paging
        over a list that changes while it is read shifts: a member edited or archived mid-read
        leaves its place and every later one moves up, so a plain ``offset += count`` would skip
        one. Each page therefore overlaps the previous one, and a page whose first member was
        never seen means the shift outran the overlap: the read steps back and reads again. An
        edited member moves to the end (a later ``last_changed``), where this read or the next
        one finds it. The query asks from one second before ``since`` (Mailchimp does not say
        whether the bound is inclusive), and members before ``since`` are dropped here.

        The cursor is the platform's time (its ``Date`` header) when the read began, less
        :data:`CLOCK_MARGIN`: the next read may return some of these again, never miss one.
        """
        started: datetime | None = None
        found: dict[tuple[str, str], Suppression] = {}
        for status in SUPPRESSION_STATUSES:
            members, server_time = self._read_status(audience, status, since)
            started = started or server_time
            for member in members:
                suppression = _suppression(member, fallback_time=server_time)
                if suppression is not None and (since is None or suppression.occurred_at >= since):
                    found[(suppression.email, suppression.status)] = suppression
        cursor = (started or self._clock()) - CLOCK_MARGIN
        if since is not None:
            cursor = max(cursor, since)
        ordered = sorted(found.values(), key=lambda s: (s.occurred_at, s.email))
        return SuppressionPage(ordered, cursor)

    def erase(self, emails: Sequence[str]) -> Iterator[ErasureResult]:
        """``delete-permanent`` each address from every list in ``erase_lists``."""
        if not self._erase_lists:
            raise PublishError("mailchimp: erase needs the list ids to erase from (erase_lists)")
        yield from self._bounded(self._erase_one, emails)

    # -- batches and the bounded pool ------------------------------------------------------------
    def _batches(self, members: Sequence[T]) -> Iterator[Sequence[T]]:
        return chunks(members, self._batch_size)

    def _bounded(self, work: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``work`` over ``items`` on at most ``max_connections`` threads, results in order."""
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(self._pool.submit(work, item))
                if len(pending) >= self._max_connections:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def _upsert_batch(
        self, audience: str, batch: Sequence[Member], stop: threading.Event
    ) -> list[RecordResult]:
        wire, refused = _upsert_payloads(batch)
        answer = self._batch_call(audience, list(wire.values()), stop)
        if isinstance(answer, _Transient):
            return _all_failed(batch, answer.reason, refused)
        results = _member_results(batch, answer, refused)
        return self._complete_tags(audience, batch, answer, results)

    def _unsubscribe_batch(
        self, audience: str, batch: Sequence[Member], stop: threading.Event
    ) -> list[RecordResult]:
        wire = [{"email_address": m.email, "status": "unsubscribed"} for m in batch]
        answer = self._batch_call(audience, wire, stop)
        if isinstance(answer, _Transient):
            return _all_failed(batch, answer.reason, {})
        return _member_results(batch, answer, {})

    def _batch_call(
        self, audience: str, wire: list[dict[str, Any]], stop: threading.Event
    ) -> dict[str, Any] | _Transient:
        if stop.is_set():
            return _Transient("not sent: an earlier batch exhausted its retries")
        if not wire:
            return {"new_members": [], "updated_members": [], "errors": []}
        answer = self._post_members(audience, {"members": wire, "update_existing": True})
        if isinstance(answer, _Transient):
            stop.set()
        return answer

    def _post_members(self, audience: str, body: dict[str, Any]) -> dict[str, Any] | _Transient:
        """One batch subscribe call; a refusal a retry cannot fix raises :class:`PublishError`."""
        request = self._client.build_request("POST", f"/3.0/lists/{audience}", json=body)
        response = self._send(request, audience)
        if isinstance(response, _Transient):
            return response
        if response.status_code in RETRY_STATUS:
            return _Transient(f"HTTP {response.status_code} after retries: {_short(response)}")
        if response.status_code != 200:
            raise PublishError(
                redact(
                    f"mailchimp list {audience!r}: POST {request.url} answered "
                    f"{response.status_code}: {response.text[:300]}"
                )
            )
        try:
            parsed = response.json()
        except ValueError as exc:
            raise PublishError(
                redact(f"mailchimp list {audience!r}: unreadable batch response {_short(response)}")
            ) from exc
        if not isinstance(parsed, dict):
            raise PublishError(f"mailchimp list {audience!r}: batch response is not an object")
        return parsed

    def _complete_tags(
        self,
        audience: str,
        batch: Sequence[Member],
        answer: Mapping[str, Any],
        results: list[RecordResult],
    ) -> list[RecordResult]:
        """Tag members the batch answer shows without a wanted tag (one call each)."""
        has = _tags_by_email(answer)
        completed = list(results)
        for index, member in enumerate(batch):
            key = member.email.strip().lower()
            missing = [t for t in member.tags if key in has and t not in has[key]]
            if not completed[index].ok or not missing:
                continue
            body = {"tags": [{"name": t, "status": "active"} for t in missing]}
            path = f"/3.0/lists/{audience}/members/{subscriber_hash(member.email)}/tags"
            response = self._send(self._client.build_request("POST", path, json=body), audience)
            if isinstance(response, _Transient) or response.status_code != 204:
                reason = response.reason if isinstance(response, _Transient) else _short(response)
                completed[index] = RecordResult(
                    member.contact_key, ok=False, error=f"tags not applied: {reason}"
                )
        return completed

    def _archive(self, audience: str, member: Member, stop: threading.Event) -> RecordResult:
        if stop.is_set():
            return RecordResult(member.contact_key, ok=False, error="not sent: retries exhausted")
        path = f"/3.0/lists/{audience}/members/{subscriber_hash(member.email)}"
        response = self._send(self._client.build_request("DELETE", path), audience)
        if isinstance(response, _Transient) or response.status_code in RETRY_STATUS:
            stop.set()
            reason = response.reason if isinstance(response, _Transient) else _short(response)
            return RecordResult(member.contact_key, ok=False, error=reason)
        if response.status_code in (204, 404):  # 404: not on the list, nothing to archive
            return RecordResult(member.contact_key, ok=True)
        self._raise_unless_member_error(response, audience)
        return RecordResult(member.contact_key, ok=False, error=_short(response), retryable=False)

    def _erase_one(self, address: str) -> ErasureResult:
        answers: list[str] = []
        ok = True
        for list_id in self._erase_lists:
            member = subscriber_hash(address)
            path = f"/3.0/lists/{list_id}/members/{member}/actions/delete-permanent"
            response = self._send(self._client.build_request("POST", path), list_id)
            if isinstance(response, _Transient):
                ok, answer = False, response.reason
            elif response.status_code == 204:
                answer = "deleted"
            elif response.status_code == 404:
                answer = "not a member"
            else:
                ok, answer = False, f"HTTP {response.status_code}: {_short(response)}"
            answers.append(f"list {list_id}: {answer}")
        return ErasureResult(address, ok=ok, detail="; ".join(answers))

    # -- reads ----------------------------------------------------------------------------------
    def _read_status(
        self, audience: str, status: str, since: datetime | None
    ) -> tuple[list[dict[str, Any]], datetime]:
        """Every member with ``status`` changed since ``since``, and the platform's time at the
        first page. Overlapping pages, and a step back whenever a page starts with a member
        never seen (the rows shifted past the overlap)."""
        overlap = max(1, self._page_size // 10)
        seen: dict[str, dict[str, Any]] = {}
        offset = 0
        started: datetime | None = None
        params: dict[str, str | int] = {
            "status": status,
            "sort_field": "last_changed",
            "sort_dir": "ASC",
            "count": self._page_size,
            "fields": _MEMBER_READ_FIELDS,
        }
        if since is not None:
            params["since_last_changed"] = _iso(since - timedelta(seconds=1))
        for _ in range(MAX_PAGES):
            response = self._get(
                f"/3.0/lists/{audience}/members", params={**params, "offset": offset}, what=audience
            )
            started = started or _server_time(response) or self._clock()
            page = _members_of(response, audience)
            if offset > 0 and (not page or str(page[0].get("id")) not in seen):
                # Nothing at the overlap we expected (rows shifted up past it, or the rest
                # of the list moved up entirely): step back a page and read again.
                offset = max(0, offset - (self._page_size - overlap))
                continue
            seen.update((str(m.get("id")), m) for m in page)
            if len(page) < self._page_size:
                return list(seen.values()), started
            offset += self._page_size - overlap
        raise PublishError(
            f"mailchimp list {audience!r}: reading {status} members did not finish within "
            f"{MAX_PAGES} pages (the list keeps changing under the read); nothing was returned"
        )

    def _merge_field_types(self, audience: str) -> dict[str, str]:
        types: dict[str, str] = {}
        offset = 0
        for _ in range(MAX_PAGES):
            response = self._get(
                f"/3.0/lists/{audience}/merge-fields",
                params={"count": PAGE_SIZE, "offset": offset},
                what=audience,
            )
            body = _json_object(response, audience)
            page = body.get("merge_fields") or []
            types.update((str(f.get("tag")), str(f.get("type"))) for f in page)
            offset += len(page)
            if not page or offset >= int(body.get("total_items") or 0):
                return types
        raise PublishError(f"mailchimp list {audience!r}: merge fields exceed {MAX_PAGES} pages")

    def _create_merge_field(self, audience: str, spec: FieldSpec) -> bool:
        """Create one merge field; ``False`` when another run created it first (same type)."""
        body = {
            "tag": spec.name,
            "name": spec.label or spec.name,
            "type": _CREATED_TYPE[spec.type],
            "required": False,
            "public": False,
        }
        path = f"/3.0/lists/{audience}/merge-fields"
        # Not idempotent: a resend after a timeout could meet "already exists"; the next
        # ensure_fields then finds the field and moves on.
        response = self._send(
            self._client.build_request("POST", path, json=body), audience, idempotent=False
        )
        if not isinstance(response, _Transient) and response.status_code == 200:
            return True
        now = self._merge_field_types(audience).get(spec.name)
        if now is not None and now in _COMPATIBLE_TYPES[spec.type]:
            return False
        reason = response.reason if isinstance(response, _Transient) else _short(response)
        raise PublishError(
            redact(f"mailchimp list {audience!r}: creating merge field {spec.name}: {reason}")
        )

    # -- HTTP -----------------------------------------------------------------------------------
    def _get(
        self,
        path: str,
        *,
        what: str,
        params: Mapping[str, str | int] | None = None,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        request = self._client.build_request("GET", path, params=params)
        response = self._send(request, what, policy=policy)
        if isinstance(response, _Transient):
            raise PublishError(redact(f"mailchimp {what!r}: GET {request.url}: {response.reason}"))
        if response.status_code != 200:
            raise PublishError(
                redact(
                    f"mailchimp {what!r}: GET {request.url} answered {response.status_code}: "
                    f"{response.text[:200]}"
                )
            )
        return response

    def _send(
        self,
        request: httpx.Request,
        what: str,
        *,
        idempotent: bool = True,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response | _Transient:
        try:
            response = send_with_retries(
                self._client, request, idempotent=idempotent, policy=policy or self._policy
            )
        except httpx.HTTPError as exc:
            permanent = isinstance(exc, InsecureTransportRefused) or is_certificate_error(exc)
            if isinstance(exc, httpx.TransportError) and not permanent:
                return _Transient(redact(f"{request.method} {request.url}: {exc}"))
            raise PublishError(redact(f"mailchimp list {what!r}: {exc}")) from exc
        with self._count_lock:
            self.requests_sent += 1
        return response

    @staticmethod
    def _raise_unless_member_error(response: httpx.Response, audience: str) -> None:
        """A 401/403 is the account, not the member: stop the run."""
        if response.status_code in (401, 403):
            raise PublishError(redact(f"mailchimp list {audience!r}: {_short(response)}"))


def open_mailchimp(config: MailchimpDestination, *, policy: RetryPolicy | None = None) -> Mailchimp:
    """The protocol adapter for one configured Mailchimp account (erasing from its lists).

    HTTP Basic with any user name and the API key; a pool of :data:`MAX_CONNECTIONS`.
    ``policy``: the retry policy (default: the client's), as for the other platforms.
    """
    key = resolve_secret(config.api_key).get_secret_value()
    register_secret(key)
    client = build_client(
        config.base_url,
        auth=httpx.BasicAuth("audience-lake", key),
        max_connections=MAX_CONNECTIONS,
        allow_insecure_http=config.allow_insecure_http,
        ca_bundle=config.ca_bundle,
        owner="destinations.mailchimp",
    )
    return Mailchimp(
        client,
        batch_size=config.batch_size,
        erase_lists=sorted(set(config.list_ids())),
        policy=policy,
    )


# -- the older sink the publish engine calls today ------------------------------------------------
@dataclass(frozen=True)
class MemberChange:
    contact_key: str
    email: str
    action: SyncAction
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True)
class MemberResult:
    contact_key: str
    ok: bool
    error: str | None = None


class MailchimpAudience:
    """Sends first/last-name member changes to Mailchimp lists (the publish engine's sink).

    A shim over :class:`Mailchimp` (one batch per engine batch, so one connection): a batch
    still failing after its retries raises :class:`PublishError`, as the engine expects.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        batch_size: int = MAX_BATCH,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        self._batch_size = batch_size
        self._mailchimp = Mailchimp(client, batch_size=batch_size, max_connections=1, policy=policy)

    @property
    def requests_sent(self) -> int:
        return self._mailchimp.requests_sent

    def close(self) -> None:
        self._mailchimp.close()

    def probe(self, list_ids: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """Cheap authenticated reads, never a write: ``GET /3.0/ping`` (reachable, API key
        accepted), then ``GET /3.0/lists/{id}`` for each list (it exists in this account).

        Raises:
            PublishError: naming the request and the answer (the key never shown).
        """
        return self._mailchimp.probe(list_ids, policy=policy)

    def send(self, list_id: str, changes: Sequence[MemberChange]) -> Iterator[MemberResult]:
        """Upsert ``changes`` into ``list_id``; yield one result per change, batch by batch."""
        for start in range(0, len(changes), self._batch_size):
            yield from self._send_batch(list_id, changes[start : start + self._batch_size])

    def _send_batch(self, list_id: str, batch: Sequence[MemberChange]) -> list[MemberResult]:
        answer = self._mailchimp._post_members(
            list_id, {"members": [_change_payload(c) for c in batch], "update_existing": True}
        )
        if isinstance(answer, _Transient):
            raise PublishError(redact(f"mailchimp list {list_id!r}: {answer.reason}"))
        members = [Member(c.contact_key, c.email) for c in batch]
        return [
            MemberResult(r.contact_key, ok=r.ok, error=r.error)
            for r in _member_results(members, answer, {}, unreported_ok=True)
        ]


def _change_payload(change: MemberChange) -> dict[str, object]:
    if change.action == "unsubscribe":
        return {"email_address": change.email, "status": "unsubscribed"}
    return {
        "email_address": change.email,
        "status": "subscribed",
        "merge_fields": {"FNAME": change.first_name or "", "LNAME": change.last_name or ""},
    }


# -- payloads and answers -----------------------------------------------------------------------
def _upsert_payloads(
    batch: Sequence[Member],
) -> tuple[dict[str, dict[str, Any]], dict[str, RecordResult]]:
    """Wire members keyed by contact; members whose values cannot be sent are refused here."""
    wire: dict[str, dict[str, Any]] = {}
    refused: dict[str, RecordResult] = {}
    for member in batch:
        try:
            merge_fields = {tag: _merge_value(tag, v) for tag, v in member.fields.items()}
        except ValueError as exc:
            refused[member.contact_key] = RecordResult(
                member.contact_key, ok=False, error=str(exc), retryable=False
            )
            continue
        payload: dict[str, Any] = {"email_address": member.email, "status": "subscribed"}
        if merge_fields:
            payload["merge_fields"] = merge_fields
        if member.tags:
            payload["tags"] = list(member.tags)
        wire[member.contact_key] = payload
    return wire, refused


def _merge_value(tag: str, value: FieldValue) -> str | int | float:
    """The spec allows strings and numbers as merge values: no booleans, no nulls."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"merge field {tag}: {value!r} is not a number Mailchimp can store")
    return value


def _member_results(
    batch: Sequence[Member],
    answer: Mapping[str, Any],
    refused: Mapping[str, RecordResult],
    *,
    unreported_ok: bool = False,
) -> list[RecordResult]:
    errors = _errors_by_email(answer)
    reported = set(_tags_by_email(answer))
    results: list[RecordResult] = []
    for member in batch:
        key = member.email.strip().lower()
        if member.contact_key in refused:
            results.append(refused[member.contact_key])
        elif key in errors:
            text = errors[key]
            permanent = any(marker in text.lower() for marker in _PERMANENT_MEMBER_ERRORS)
            results.append(
                RecordResult(member.contact_key, ok=False, error=text, retryable=not permanent)
            )
        elif key in reported or unreported_ok:
            results.append(RecordResult(member.contact_key, ok=True))
        else:
            results.append(
                RecordResult(member.contact_key, ok=False, error="missing from the batch answer")
            )
    return results


def _errors_by_email(answer: Mapping[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for entry in answer.get("errors") or []:
        if not isinstance(entry, dict):
            continue
        text = str(entry.get("error") or entry.get("error_code") or "error")
        if entry.get("field"):
            text = f"{text} (field {entry['field']}: {entry.get('field_message') or 'invalid'})"
        errors[str(entry.get("email_address", "")).strip().lower()] = text
    return errors


def _tags_by_email(answer: Mapping[str, Any]) -> dict[str, set[str]]:
    """Members the batch answer reports as created or updated, with the tags they now have."""
    tags: dict[str, set[str]] = {}
    for entry in [*(answer.get("new_members") or []), *(answer.get("updated_members") or [])]:
        if isinstance(entry, dict):
            names = {str(t.get("name")) for t in entry.get("tags") or [] if isinstance(t, dict)}
            tags[str(entry.get("email_address", "")).strip().lower()] = names
    return tags


def _all_failed(
    batch: Sequence[Member], reason: str, refused: Mapping[str, RecordResult]
) -> list[RecordResult]:
    return [
        refused.get(m.contact_key) or RecordResult(m.contact_key, ok=False, error=reason)
        for m in batch
    ]


def _suppression(member: Mapping[str, Any], *, fallback_time: datetime) -> Suppression | None:
    status = member.get("status")
    address = member.get("email_address")
    if not isinstance(address, str) or status not in SUPPRESSION_STATUSES:
        return None
    kind: SuppressionStatus = "cleaned" if status == "cleaned" else "unsubscribed"
    reason = str(member.get("unsubscribe_reason") or "").lower()
    if kind == "unsubscribed" and ("abuse" in reason or "spam" in reason):
        kind = "spam_complaint"
    occurred = _parse_time(member.get("last_changed")) or fallback_time
    return Suppression(address.strip().lower(), kind, occurred, str(member.get("id") or "") or None)


def _members_of(response: httpx.Response, audience: str) -> list[dict[str, Any]]:
    members = _json_object(response, audience).get("members")
    if not isinstance(members, list):
        raise PublishError(f"mailchimp list {audience!r}: members read has no members array")
    return [m for m in members if isinstance(m, dict)]


def _json_object(response: httpx.Response, audience: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise PublishError(
            redact(f"mailchimp list {audience!r}: unreadable response {_short(response)}")
        ) from exc
    if not isinstance(body, dict):
        raise PublishError(f"mailchimp list {audience!r}: response is not an object")
    return body


def _parse_time(value: object) -> datetime | None:
    """Mailchimp's ``last_changed``; the live API sends ``""`` when unset (spec defect)."""
    return parse_timestamp(value.strip()) if isinstance(value, str) else None


def _server_time(response: httpx.Response) -> datetime | None:
    header = response.headers.get("Date")
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _short(response: httpx.Response) -> str:
    return redact(f"HTTP {response.status_code}: {response.text[:200]}")


if TYPE_CHECKING:  # mypy checks that the adapter keeps the protocol
    _DESTINATION: type[Destination] = Mailchimp

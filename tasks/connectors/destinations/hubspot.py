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
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeVar

import httpx

from tasks.connectors.destinations.protocol import (
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
)
from tasks.connectors.destinations.wire import chunks, parse_timestamp
from tasks.connectors.http import RequestBudget, RetryPolicy, build_client, send_with_retries
from tasks.connectors.redact import redact, register_secret
from tasks.core.config import HubSpotDestination
from tasks.core.send_budget import CallCount, RateBudget, RateWindow
from tasks.core.settings import resolve_secret
from tasks.errors import PublishError

MAX_BATCH = 100
BURST_PER_WINDOW = 100
WINDOW_SECONDS = 10.0
# The client counts a request when it leaves, HubSpot when it arrives; network jitter between
# the two makes a client-side window of exactly 10 s meet 429s (measured on the stand-in with a
# scaled window: 1 % slack still drew 4 429s in 100 requests, 5 % none). 5 % of throughput.
WINDOW_SLACK_SECONDS = 0.5
# Batches in flight at once. HubSpot states no concurrency cap; the burst budget is the ceiling,
# and a batch call takes long enough (hundreds of ms) that one at a time reaches half of it.
MAX_IN_FLIGHT = 10
DAILY_QUOTA = 250_000  # Free/Starter; higher tiers allow more
RATE_BUDGET = RateBudget(
    "hubspot", (RateWindow(BURST_PER_WINDOW, WINDOW_SECONDS), RateWindow(DAILY_QUOTA, 86_400.0))
)
"""For the send-budget planner: every call draws on the app's 10-second burst and daily quota."""
MEMBERSHIP_PAGE = 250
MAX_MEMBERSHIP_PAGES = 20_000
CURSOR_OVERLAP = timedelta(minutes=1)
DEFAULT_PROPERTY_GROUP = "contactinformation"
UnsubscribeScope = Literal["subscription", "all"]
_Batch = TypeVar("_Batch")
_Result = TypeVar("_Result")

# FieldType -> (HubSpot property type, fieldType) used when creating a property.
PROPERTY_KINDS: dict[FieldType, tuple[str, str]] = {
    "text": ("string", "text"),
    "number": ("number", "number"),
    "date": ("date", "date"),
    "boolean": ("bool", "booleancheckbox"),
}
# HubSpot property types a mapped field of each FieldType may write to.
COMPATIBLE_TYPES: dict[FieldType, frozenset[str]] = {
    "text": frozenset({"string", "phone_number"}),
    "number": frozenset({"number"}),
    "date": frozenset({"date", "datetime"}),
    "boolean": frozenset({"bool"}),
}
BOOL_OPTIONS = (
    {"label": "Yes", "value": "true", "hidden": False, "displayOrder": 0},
    {"label": "No", "value": "false", "hidden": False, "displayOrder": 1},
)


class RollingWindowBudget:
    """At most ``max_requests`` request starts in any ``window_seconds`` (HubSpot's burst rule).

    ``slot()`` waits (sleeping, bounded by the window) until the oldest start leaves the window.
    Threads wait one at a time (a turnstile), so the start a sleeper waited for is its own.
    Satisfies :class:`tasks.connectors.http.RequestBudget`.
    """

    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_requests < 1 or window_seconds <= 0:
            raise ValueError("max_requests must be >= 1 and window_seconds > 0")
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.waited_seconds = 0.0
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()
        self._turnstile = threading.Lock()

    def _reserve(self) -> float:
        """Record a start now if the window allows it (return 0), else how long to wait."""
        with self._lock:
            now = self._clock()
            while self._starts and now - self._starts[0] >= self.window_seconds:
                self._starts.popleft()
            if len(self._starts) < self.max_requests:
                self._starts.append(now)
                return 0.0
            wait = self.window_seconds - (now - self._starts[0])
            self.waited_seconds += wait
            return wait

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._turnstile:
            for _ in range(3):  # one wait frees the oldest start; nobody else can take it
                wait = self._reserve()
                if wait <= 0:
                    break
                self._sleep(wait)
        yield


@dataclass(frozen=True)
class _Outcome:
    """What one batch call said about each input, by input position."""

    record_ids: dict[int, str]
    errors: dict[int, tuple[str, bool]]
    """position -> (message, retryable)"""


def format_value(value: FieldValue) -> str:
    """A mapped value as HubSpot takes it: every property value is a string; ``""`` clears."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        # Plain notation (HubSpot refuses "1e-07"), exactly the digits repr() would keep.
        return format(Decimal(repr(value)), "f")
    return str(value)


def _unique_email_batches(members: Sequence[Member], size: int) -> Iterator[list[Member]]:
    """Batches of at most ``size`` with no email twice (HubSpot fails a batch with duplicate
    ids); a repeated email goes to a later batch, in order."""
    pending = list(members)
    for _ in range(len(members) + 1):
        if not pending:
            return
        batch: list[Member] = []
        seen: set[str] = set()
        later: list[Member] = []
        for member in pending:
            key = member.email.strip().lower()
            if len(batch) < size and key not in seen:
                batch.append(member)
                seen.add(key)
            else:
                later.append(member)
        yield batch
        pending = later


def _emails_of(batch: Sequence[Member]) -> set[str]:
    return {m.email.strip().lower() for m in batch}


class HubSpot:
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

    def __init__(
        self,
        client: httpx.Client,
        *,
        subscription_id: int,
        unsubscribe_scope: UnsubscribeScope = "subscription",
        property_group: str = DEFAULT_PROPERTY_GROUP,
        batch_size: int = MAX_BATCH,
        policy: RetryPolicy | None = None,
        budget: RequestBudget | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._client = client
        self._subscription_id = subscription_id
        self._unsubscribe_scope = unsubscribe_scope
        self._property_group = property_group
        self._batch_size = batch_size
        self._policy = policy
        self._budget = budget or RollingWindowBudget(
            BURST_PER_WINDOW, WINDOW_SECONDS + WINDOW_SLACK_SECONDS
        )
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._sent_lock = threading.Lock()
        self.requests_sent = 0

    def close(self) -> None:
        self._client.close()

    def planned_calls(
        self, operation: PlannedOperation, members: int, *, retagged: int = 0
    ) -> list[CallCount]:
        """Per batch of ``batch_size``: an upsert and a list add; a status write; or a batch
        read and a list remove. One properties read for the field check. (A batch that repeats
        an email is split; the planner does not foresee that.)"""
        if operation == "fields":
            return [CallCount("properties read", 1, RATE_BUDGET)]
        batches = math.ceil(members / self._batch_size)
        if operation == "upsert":
            return [CallCount("batch upsert", batches, RATE_BUDGET),
                    CallCount("list add", batches, RATE_BUDGET)]  # fmt: skip
        if operation == "unsubscribe":
            return [CallCount("status write", batches, RATE_BUDGET)]
        return [CallCount("batch read", batches, RATE_BUDGET),
                CallCount("list remove", batches, RATE_BUDGET)]  # fmt: skip

    def _pipelined(
        self,
        batches: Iterable[_Batch],
        send: Callable[[_Batch], list[_Result]],
        keys: Callable[[_Batch], set[str]] = lambda _: set(),
    ) -> Iterator[_Result]:
        """``send`` each batch, up to ``max_in_flight`` at once; results in batch order.

        A batch that shares a key (an email) with one still in flight waits for it, so two
        writes about one person reach HubSpot in order. The pool is left only when every
        batch sent has finished, also when the caller stops early or a batch fails.
        """
        with ThreadPoolExecutor(self._max_in_flight, thread_name_prefix="hubspot") as pool:
            pending: deque[tuple[Future[list[_Result]], set[str]]] = deque()
            for batch in batches:
                batch_keys = keys(batch)
                while pending and (
                    len(pending) >= self._max_in_flight
                    or any(batch_keys & waiting for _, waiting in pending)
                ):
                    yield from pending.popleft()[0].result()
                pending.append((pool.submit(send, batch), batch_keys))
            while pending:
                yield from pending.popleft()[0].result()

    # -- HTTP ---------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        ok: tuple[int, ...] = (200,),
        what: str,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        """Send one request (paced, retried); a status outside ``ok`` is a :class:`PublishError`
        naming ``what``, the request and HubSpot's own message (the token never shown)."""
        request = self._client.build_request(method, path, json=json, params=params)
        try:
            # Every call here is safe to repeat: upserts by email, set-like membership changes,
            # absolute status writes, and erasure.
            response = send_with_retries(
                self._client,
                request,
                idempotent=True,
                policy=policy or self._policy,
                budget=self._budget,
            )
        except httpx.HTTPError as exc:
            raise PublishError(redact(f"hubspot: {what}: {method} {request.url}: {exc}")) from exc
        with self._sent_lock:
            self.requests_sent += 1
        if response.status_code not in ok:
            raise PublishError(
                redact(
                    f"hubspot: {what}: {method} {request.url.path} answered "
                    f"{response.status_code}: {_error_message(response)}"
                )
            )
        return response

    @staticmethod
    def _body(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise PublishError(
                redact(f"hubspot: {what}: unreadable response {response.text[:200]!r}")
            ) from exc
        if not isinstance(body, dict):
            raise PublishError(redact(f"hubspot: {what}: expected an object, got {body!r:.200}"))
        return body

    # -- probe and fields -------------------------------------------------------------------------
    def probe(self, audiences: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """Reads only: the subscription types (the configured one must exist) and one page of
        each list's memberships (the list exists and the token may read it). ``policy``: the
        retries of a health check, shorter than a publish's."""
        body = self._body(
            self._call(
                "GET",
                "/communication-preferences/v4/definitions",
                what="read subscription types",
                policy=policy,
            ),
            "read subscription types",
        )
        ids = {str(d.get("id")) for d in body.get("results", []) if isinstance(d, dict)}
        if str(self._subscription_id) not in ids:
            raise PublishError(
                f"hubspot: subscription type {self._subscription_id} does not exist in this "
                f"portal (it has {sorted(ids)}); check subscription_type_id"
            )
        for audience in audiences:
            self._call(
                "GET",
                f"/crm/v3/lists/{audience}/memberships",
                params={"limit": 1},
                what=f"read list {audience}",
                policy=policy,
            )
        return f"subscription type {self._subscription_id} found, {len(audiences)} lists readable"

    def ensure_fields(
        self, audience: str, fields: Sequence[FieldSpec], *, create: bool
    ) -> list[str]:
        """Check the contact properties ``fields`` write; create missing ones when ``create``.

        A property with an incompatible type or a read-only value is never changed: it is an
        error either way, listed with every missing one in one :class:`PublishError`.
        """
        existing = self._read_properties()
        missing = [f for f in fields if f.name not in existing]
        problems = [
            problem
            for f in fields
            if f.name in existing and (problem := _field_problem(f, existing[f.name])) is not None
        ]
        if missing and not create:
            problems.append(
                "missing contact properties "
                + ", ".join(f"{f.name} ({f.type})" for f in missing)
                + " (allow creating fields for this destination, or create them in HubSpot)"
            )
        if problems:
            raise PublishError(
                f"hubspot: contact properties do not fit the mapping for list {audience}: "
                + "; ".join(problems)
            )
        return [self._create_property(f) for f in missing]

    def _read_properties(self) -> dict[str, dict[str, Any]]:
        what = "read contact properties"
        body = self._body(self._call("GET", "/crm/v3/properties/contacts", what=what), what)
        return {
            str(p["name"]): p
            for p in body.get("results", [])
            if isinstance(p, dict) and isinstance(p.get("name"), str)
        }

    def _create_property(self, spec: FieldSpec) -> str:
        kind, field_type = PROPERTY_KINDS[spec.type]
        payload: dict[str, Any] = {
            "name": spec.name,
            "label": spec.label or spec.name,
            "type": kind,
            "fieldType": field_type,
            "groupName": self._property_group,
        }
        if spec.type == "boolean":
            payload["options"] = [dict(o) for o in BOOL_OPTIONS]
        # 409: created meanwhile (another run); its type is checked on the next publish.
        self._call(
            "POST",
            "/crm/v3/properties/contacts",
            json=payload,
            ok=(201, 409),
            what=f"create contact property {spec.name!r}",
        )
        return spec.name

    # -- upsert and remove ------------------------------------------------------------------------
    def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Upsert contacts by email with their properties, then add them to list ``audience``."""
        tagged = sorted({m.contact_key for m in members if m.tags})
        if tagged:
            raise PublishError(
                f"hubspot: list {audience}: HubSpot contacts have no tags ({len(tagged)} members "
                "carry some); map the value to a contact property instead"
            )
        yield from self._pipelined(
            _unique_email_batches(members, self._batch_size),
            lambda batch: self._upsert_batch(audience, batch),
            _emails_of,
        )

    def _upsert_batch(self, audience: str, batch: Sequence[Member]) -> list[RecordResult]:
        what = f"upsert {len(batch)} contacts for list {audience}"
        inputs = [
            {
                "idProperty": "email",
                "id": member.email,
                "properties": {name: format_value(v) for name, v in member.fields.items()},
                "objectWriteTraceId": str(position),
            }
            for position, member in enumerate(batch)
        ]
        response = self._call(
            "POST",
            "/crm/v3/objects/contacts/batch/upsert",
            json={"inputs": inputs},
            ok=(200, 207),
            what=what,
        )
        outcome = _read_upsert(self._body(response, what), batch)
        added = {p: rid for p, rid in outcome.record_ids.items() if p not in outcome.errors}
        missing = self._add_to_list(audience, sorted(set(added.values())))
        return [
            _result(member, position, outcome, missing) for position, member in enumerate(batch)
        ]

    def _add_to_list(self, audience: str, record_ids: list[str]) -> set[str]:
        """Add records to the list; returns the ids HubSpot reported missing."""
        if not record_ids:
            return set()
        what = f"add {len(record_ids)} contacts to list {audience}"
        body = self._body(
            self._call(
                "PUT", f"/crm/v3/lists/{audience}/memberships/add", json=record_ids, what=what
            ),
            what,
        )
        return {str(r) for r in body.get("recordIdsMissing", [])}

    def remove(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Take members out of list ``audience``; the contacts stay in HubSpot. A person HubSpot
        does not know, or who is not on the list, is already out: that is a success."""
        yield from self._pipelined(
            chunks(members, self._batch_size),
            lambda batch: self._remove_batch(audience, batch),
            _emails_of,
        )

    def _remove_batch(self, audience: str, batch: Sequence[Member]) -> list[RecordResult]:
        ids = self._record_ids_by_email([m.email for m in batch])
        record_ids = sorted(set(ids.values()))
        if record_ids:
            what = f"remove {len(record_ids)} contacts from list {audience}"
            self._call(
                "PUT", f"/crm/v3/lists/{audience}/memberships/remove", json=record_ids, what=what
            )
        return [RecordResult(m.contact_key, ok=True) for m in batch]

    def _record_ids_by_email(self, emails: Sequence[str]) -> dict[str, str]:
        """Normalised email -> record id for the emails HubSpot knows (a 207 names the rest)."""
        what = f"look up {len(emails)} contacts by email"
        body = self._body(
            self._call(
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                json={
                    "idProperty": "email",
                    "inputs": [{"id": e} for e in dict.fromkeys(emails)],
                    "properties": ["email"],
                    "propertiesWithHistory": [],
                },
                ok=(200, 207),
                what=what,
            ),
            what,
        )
        return {
            str(r["properties"]["email"]).strip().lower(): str(r["id"])
            for r in body.get("results", [])
            if isinstance(r, dict)
            and isinstance(r.get("properties"), dict)
            and r["properties"].get("email")
            and r.get("id")
        }

    # -- consent ----------------------------------------------------------------------------------
    def unsubscribe(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Opt members out of the subscription type (or of all email, per configuration)."""
        yield from self._pipelined(
            chunks(members, self._batch_size), self._unsubscribe_batch, _emails_of
        )

    def _unsubscribe_batch(self, batch: Sequence[Member]) -> list[RecordResult]:
        emails = list(dict.fromkeys(m.email for m in batch))
        what = f"unsubscribe {len(emails)} contacts"
        if self._unsubscribe_scope == "all":
            response = self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/unsubscribe-all",
                params={"channel": "EMAIL"},
                json={"inputs": emails},
                what=what,
            )
        else:
            inputs = [
                {
                    "subscriberIdString": email,
                    "subscriptionId": self._subscription_id,
                    "statusState": "UNSUBSCRIBED",
                    "channel": "EMAIL",
                }
                for email in emails
            ]
            response = self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/write",
                json={"inputs": inputs},
                what=what,
            )
        failed = _failed_subscribers(self._body(response, what))
        # An opt-out HubSpot refused is tried again next run, whatever the reason: never lost.
        return [
            RecordResult(m.contact_key, ok=False, error=failed[key], retryable=True)
            if (key := m.email.strip().lower()) in failed
            else RecordResult(m.contact_key, ok=True)
            for m in batch
        ]

    def suppressions_since(self, audience: str, since: datetime | None) -> SuppressionPage:
        """Opt-outs of the list's members whose HubSpot timestamp is after ``since``."""
        started = self._clock()
        emails = self._list_emails(audience)
        found: dict[str, Suppression] = {}
        reads = self._pipelined(chunks(emails, self._batch_size), self._read_opt_outs)
        for suppression in reads:
            if since is not None and suppression.occurred_at <= since:
                continue
            current = found.get(suppression.email)
            if current is None or suppression.occurred_at > current.occurred_at:
                found[suppression.email] = suppression
        # A status stamped just before ``started`` may become visible only after this read:
        # the next read starts a little earlier (duplicates are harmless evidence).
        cursor = started - CURSOR_OVERLAP
        if since is not None:
            cursor = max(cursor, since)
        return SuppressionPage(sorted(found.values(), key=lambda s: s.occurred_at), cursor)

    def _list_emails(self, audience: str) -> list[str]:
        record_ids: list[str] = []
        after: str | None = None
        for _ in range(MAX_MEMBERSHIP_PAGES):
            params: dict[str, str | int] = {"limit": MEMBERSHIP_PAGE}
            if after is not None:
                params["after"] = after
            what = f"read memberships of list {audience}"
            body = self._body(
                self._call(
                    "GET", f"/crm/v3/lists/{audience}/memberships", params=params, what=what
                ),
                what,
            )
            record_ids.extend(str(r["recordId"]) for r in body.get("results", []))
            after = (body.get("paging") or {}).get("next", {}).get("after")
            if not after:
                break
        else:
            raise PublishError(
                f"hubspot: list {audience} has more than "
                f"{MAX_MEMBERSHIP_PAGES * MEMBERSHIP_PAGE} members; stopped paging"
            )
        return list(self._pipelined(chunks(record_ids, self._batch_size), self._emails_of_records))

    def _emails_of_records(self, record_ids: Sequence[str]) -> list[str]:
        what = f"read emails of {len(record_ids)} contacts"
        body = self._body(
            self._call(
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                json={
                    "inputs": [{"id": rid} for rid in record_ids],
                    "properties": ["email"],
                    "propertiesWithHistory": [],
                },
                ok=(200, 207),  # a contact deleted meanwhile is named in errors[]
                what=what,
            ),
            what,
        )
        return [
            str(r["properties"]["email"])
            for r in body.get("results", [])
            if isinstance(r, dict) and (r.get("properties") or {}).get("email")
        ]

    def _read_opt_outs(self, emails: Sequence[str]) -> list[Suppression]:
        """Both kinds of opt-out of ``emails``, read eagerly (this runs in a pool thread)."""
        found: list[Suppression] = []
        what = f"read subscription statuses of {len(emails)} contacts"
        statuses = self._body(
            self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/read",
                params={"channel": "EMAIL"},
                json={"inputs": list(emails)},
                ok=(200, 207),
                what=what,
            ),
            what,
        )
        for result in statuses.get("results", []):
            for status in result.get("statuses", []):
                if (
                    status.get("subscriptionId") == self._subscription_id
                    and status.get("status") == "UNSUBSCRIBED"
                ):
                    found.extend(_suppression(status, f"subscription:{self._subscription_id}"))
        what = f"read opt-outs of all email of {len(emails)} contacts"
        wide = self._body(
            self._call(
                "POST",
                "/communication-preferences/v4/statuses/batch/unsubscribe-all/read",
                params={"channel": "EMAIL"},
                json={"inputs": list(emails)},
                ok=(200, 207),
                what=what,
            ),
            what,
        )
        for result in wide.get("results", []):
            for status in result.get("wideStatuses", []):
                if status.get("status") == "UNSUBSCRIBED":
                    found.extend(_suppression(status, "unsubscribe-all"))
        return found

    # -- erasure ----------------------------------------------------------------------------------
    def erase(self, emails: Sequence[str]) -> Iterator[ErasureResult]:
        """GDPR-delete each person by email; HubSpot blocklists an address it does not know."""
        yield from self._pipelined(
            ([email] for email in emails), self._erase_one, lambda one: {one[0].strip().lower()}
        )

    def _erase_one(self, one: list[str]) -> list[ErasureResult]:
        email = one[0]
        try:
            self._call(
                "POST",
                "/crm/v3/objects/contacts/gdpr-delete",
                json={"objectId": email, "idProperty": "email"},
                ok=(204,),
                what="GDPR delete",
            )
        except PublishError as exc:
            return [ErasureResult(email, ok=False, detail=str(exc))]
        detail = "gdpr-delete answered 204: contact deleted, address blocked"
        return [ErasureResult(email, ok=True, detail=detail)]


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


def _error_message(response: httpx.Response) -> str:
    """HubSpot's own words for an error (``category: message``), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        label = body.get("category") or body.get("errorType") or "error"
        return f"{label}: {body['message'][:300]}"
    return response.text[:200]


def _read_upsert(body: Mapping[str, Any], batch: Sequence[Member]) -> _Outcome:
    """Record ids and per-input errors of a batch upsert, by input position."""
    by_email = {m.email.strip().lower(): p for p, m in enumerate(batch)}

    def position(trace: Any, email: Any) -> int | None:
        if isinstance(trace, str) and trace.isdigit() and int(trace) < len(batch):
            return int(trace)
        return by_email.get(str(email).strip().lower()) if email is not None else None

    record_ids: dict[int, str] = {}
    for result in body.get("results", []):
        where = position(
            result.get("objectWriteTraceId"), (result.get("properties") or {}).get("email")
        )
        if where is not None and result.get("id") is not None:
            record_ids[where] = str(result["id"])
    errors: dict[int, tuple[str, bool]] = {}
    for error in body.get("errors", []):
        context = error.get("context") or {}
        traces = context.get("objectWriteTraceId") or []
        ids = context.get("id") or []
        places = [position(t, None) for t in traces] or [position(None, i) for i in ids]
        message = f"{error.get('category', 'ERROR')}: {error.get('message', '')}"[:300]
        retryable = error.get("category") not in ("VALIDATION_ERROR", "INVALID_EMAIL")
        for where in places:
            if where is not None:
                errors[where] = (message, retryable)
    return _Outcome(record_ids, errors)


def _result(member: Member, position: int, outcome: _Outcome, missing: set[str]) -> RecordResult:
    if position in outcome.errors:
        message, retryable = outcome.errors[position]
        return RecordResult(member.contact_key, ok=False, error=message, retryable=retryable)
    record_id = outcome.record_ids.get(position)
    if record_id is None:
        return RecordResult(member.contact_key, ok=False, error="no result in HubSpot's answer")
    if record_id in missing:
        return RecordResult(
            member.contact_key, ok=False, error=f"record {record_id} missing when added to list"
        )
    return RecordResult(member.contact_key, ok=True)


def _failed_subscribers(body: Mapping[str, Any]) -> dict[str, str]:
    """Normalised email -> HubSpot's message, for the inputs a batch status call refused."""
    failed: dict[str, str] = {}
    for error in body.get("errors", []):
        message = f"{error.get('category', 'ERROR')}: {error.get('message', '')}"[:300]
        for email in (error.get("context") or {}).get("subscriberIdString", []):
            failed[str(email).strip().lower()] = message
    return failed


def _suppression(status: Mapping[str, Any], record: str) -> Iterator[Suppression]:
    moment = parse_timestamp(status.get("timestamp"))
    email = status.get("subscriberIdString")
    if moment is not None and isinstance(email, str):
        yield Suppression(email.strip().lower(), "unsubscribed", moment, record)


def _field_problem(spec: FieldSpec, prop: Mapping[str, Any]) -> str | None:
    """Why an existing property cannot take ``spec``'s values, or ``None``."""
    if (prop.get("modificationMetadata") or {}).get("readOnlyValue"):
        return f"{spec.name} is read-only in HubSpot"
    kind = str(prop.get("type"))
    if kind in COMPATIBLE_TYPES[spec.type]:
        return None
    if spec.type == "boolean" and kind == "enumeration":
        values = {str(o.get("value")) for o in prop.get("options", []) if isinstance(o, dict)}
        if {"true", "false"} <= values:
            return None
    return f"{spec.name} is a HubSpot {kind} property, the mapping writes {spec.type}"

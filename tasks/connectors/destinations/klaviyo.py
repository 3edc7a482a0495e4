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
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pyrate_limiter import Limiter, Rate

from tasks.connectors.destinations.protocol import (
    ErasureResult,
    FieldSpec,
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
from tasks.connectors.http import RetryPolicy, build_client, send_with_retries
from tasks.connectors.redact import redact, register_secret
from tasks.core.config import KlaviyoDestination
from tasks.core.send_budget import CallCount, RateBudget, RateWindow
from tasks.core.settings import resolve_secret
from tasks.errors import PublishError

REVISION = "2026-07-15"
JSONAPI = "application/vnd.api+json"
IMPORT_MAX_PROFILES = 10_000
IMPORT_MAX_BYTES = 5 * 1024 * 1024
IMPORT_BUDGET_BYTES = 4_500_000
"""Batches are cut below the 5 MB payload limit, leaving room for the JSON:API envelope."""
PROFILE_MAX_BYTES = 100 * 1024
UNSUBSCRIBE_MAX = 100
LIST_WRITE_MAX = 1000
LOOKUP_MAX = 100
PAGE_SIZE = 100
MAX_PAGES = 10_000
FINAL_OK = "complete"
RUNNING = frozenset({"queued", "processing"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

STANDARD_ATTRIBUTES = frozenset(
    {
        "first_name",
        "last_name",
        "organization",
        "title",
        "locale",
        "image",
        "phone_number",
        "external_id",
    }
)
LOCATION_TEXT = frozenset({"address1", "address2", "city", "country", "region", "zip", "timezone"})
LOCATION_NUMBER = frozenset({"latitude", "longitude"})
# (burst per second, steady per minute) of each rate class, from the operations'
# x-klaviyo-ratelimit; the adapter paces itself to both so it rarely meets a 429.
RATE_CLASSES: dict[str, tuple[int, int]] = {
    "import": (10, 150),  # import job create, job status, import errors
    "consent": (75, 750),  # subscribe / unsubscribe / suppress jobs
    "reads": (75, 750),  # GET /api/profiles, /api/lists, list relationships
    "list_writes": (10, 150),  # POST / DELETE list relationships
    "deletion": (3, 60),  # data privacy deletion jobs
}
RATE_BUDGETS: dict[str, RateBudget] = {
    name: RateBudget(f"klaviyo {name}", (RateWindow(burst, 1.0), RateWindow(steady, 60.0)))
    for name, (burst, steady) in RATE_CLASSES.items()
}
"""The same limits for the send-budget planner."""
REASONS: dict[str, SuppressionStatus] = {
    "UNSUBSCRIBE": "unsubscribed",
    "USER_SUPPRESSED": "unsubscribed",
    "HARD_BOUNCE": "bounced",
    "INVALID_EMAIL": "cleaned",
    "SPAM_COMPLAINT": "spam_complaint",
}
_EMAIL = re.compile(r"^[^@\s\"\\,]+@[^@\s\"\\,]+\.[^@\s\"\\,]+$")
_POINTER_INDEX = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")


class RatePacer:
    """Client-side budget for one rate class: a rolling second and a rolling minute.

    A rolling window is never looser than Klaviyo's fixed ones, so requests paced here stay
    inside both. ``waited`` counts the seconds callers spent waiting.
    """

    def __init__(self, name: str, burst: int, steady: int, *, time_scale: float = 1.0) -> None:
        self.name = name
        second, minute = round(1000 / time_scale), round(60_000 / time_scale)
        self._limiter = Limiter([Rate(burst, second), Rate(steady, minute)], buffer_ms=50)
        self._lock = threading.Lock()
        self.waited = 0.0

    @contextmanager
    def slot(self) -> Iterator[None]:
        started = time.monotonic()
        self._limiter.try_acquire(self.name, blocking=True)
        with self._lock:
            self.waited += time.monotonic() - started
        yield

    def close(self) -> None:
        self._limiter.close()


def rate_class(method: str, path: str) -> str:
    """Which of :data:`RATE_CLASSES` a call counts against."""
    if path.startswith("/api/profile-bulk-import-jobs"):
        return "import"
    if path.startswith(("/api/profile-subscription-", "/api/profile-suppression-")):
        return "consent"
    if path.startswith("/api/data-privacy-deletion-jobs"):
        return "deletion"
    if path.endswith("/relationships/profiles") and method != "GET":
        return "list_writes"
    return "reads"


@dataclass(frozen=True)
class _JobOutcome:
    job_id: str
    status: str
    failed_count: int


def _filter_string(value: str) -> str:
    return '"' + value + '"'


def _timestamp(value: datetime) -> str:
    """Klaviyo filter timestamps: UTC with a ``Z``, no ``+`` to be mangled in a query string."""
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_sendable_email(email: str) -> bool:
    """Whether Klaviyo can be sent ``email`` at all (and a filter can quote it)."""
    return bool(_EMAIL.match(email))


class Klaviyo:
    """One Klaviyo account, addressed by list id; see the module docstring for the mapping.

    Safe to share between threads (the publish engine sends a window of jobs at once): the
    rate pacers and the call counter are shared and locked, and each job is polled by the
    thread that created it, within the same import-class budget. ``time_scale`` shrinks the
    pacers' 1-second and 1-minute windows for a stand-in whose clock runs faster.
    """

    kind: ClassVar[str] = "klaviyo"
    limits: ClassVar[Limits] = Limits(
        # One import job carries up to 10,000 profiles; its create, status and import-error
        # reads share a 10/s burst and 150/min steady limit (2.5/s sustained). Klaviyo
        # documents no connection cap: the rate limits are the ceiling.
        batch_size=IMPORT_MAX_PROFILES,
        max_connections=10,
        requests_per_second=2.5,
        burst=10,
    )

    def __init__(
        self,
        client: httpx.Client,
        *,
        policy: RetryPolicy | None = None,
        batch_size: int = IMPORT_MAX_PROFILES,
        poll_interval: float = 2.0,
        poll_timeout: float = 900.0,
        tags_property: str = "tags",
        page_size: int = PAGE_SIZE,
        pace: bool = True,
        time_scale: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= batch_size <= IMPORT_MAX_PROFILES:
            raise ValueError(f"batch_size must be 1..{IMPORT_MAX_PROFILES}, got {batch_size}")
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}, got {page_size}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self._client = client
        self._policy = policy
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._poll_timeout = poll_timeout
        self._tags_property = tags_property
        self._page_size = page_size
        self._sleep = sleep
        self._origin = urlsplit(str(client.base_url))[:2]
        self._pacers = (
            {
                name: RatePacer(f"klaviyo-{name}", *limits, time_scale=time_scale)
                for name, limits in RATE_CLASSES.items()
            }
            if pace
            else {}
        )
        self._sent_lock = threading.Lock()
        self.requests_sent = 0
        """HTTP calls made (retries included); the publish engine calls from several threads."""

    @property
    def paced_seconds(self) -> float:
        """Seconds spent waiting for the client-side rate budget."""
        return sum(pacer.waited for pacer in self._pacers.values())

    def planned_calls(
        self, operation: PlannedOperation, members: int, *, retagged: int = 0
    ) -> list[CallCount]:
        """Per import job of ``batch_size`` profiles: the job and one poll (a job that takes
        longer is polled again every ``poll_interval``; one that reports failed profiles costs
        an import-error read as well, not foreseen: the plan assumes none). Unsubscribes:
        one job per 100. Removals: one profile lookup per 100, one list delete per 1,000. No
        field check (Klaviyo has no field catalogue). Tags are a property: ``retagged`` is free.
        Jobs cut early by the 4.5 MB payload budget are not foreseen."""
        if operation == "upsert":
            jobs = math.ceil(members / self._batch_size)
            return [CallCount("import job", jobs, RATE_BUDGETS["import"]),
                    CallCount("import job poll", jobs, RATE_BUDGETS["import"])]  # fmt: skip
        if operation == "unsubscribe":
            calls = math.ceil(members / UNSUBSCRIBE_MAX)
            return [CallCount("unsubscribe job", calls, RATE_BUDGETS["consent"])]
        if operation == "remove":
            return [CallCount("profile lookup", math.ceil(members / LOOKUP_MAX),
                              RATE_BUDGETS["reads"]),
                    CallCount("list remove", math.ceil(members / LIST_WRITE_MAX),
                              RATE_BUDGETS["list_writes"])]  # fmt: skip
        return []

    def close(self) -> None:
        for pacer in self._pacers.values():
            pacer.close()
        self._client.close()

    # -- HTTP ------------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        expect: tuple[int, ...] = (200,),
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        """One API call with retries; a final answer outside ``expect`` is a PublishError.

        Every call here is safe to repeat (imports and consent jobs are keyed by email, list
        writes and deletions converge), so retries treat them all as idempotent.
        """
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": JSONAPI} if content is not None else None
        request = self._client.build_request(
            method, url, params=dict(params) if params else None, content=content, headers=headers
        )
        budget = self._pacers.get(rate_class(method, request.url.path))
        try:
            response = send_with_retries(
                self._client,
                request,
                idempotent=True,
                policy=policy or self._policy,
                budget=budget,
            )
        except httpx.HTTPError as exc:
            raise PublishError(redact(f"klaviyo: {method} {request.url.path}: {exc}")) from exc
        finally:
            with self._sent_lock:
                self.requests_sent += 1
        if response.status_code not in expect:
            raise PublishError(
                redact(
                    f"klaviyo: {method} {request.url.path} answered {response.status_code}: "
                    f"{_error_text(response)}"
                )
            )
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise PublishError(
                redact(f"klaviyo: {response.request.url.path}: unreadable JSON response")
            ) from exc
        if not isinstance(body, dict):
            raise PublishError(f"klaviyo: {response.request.url.path}: expected a JSON object")
        return body

    def _pages(self, path: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Every ``data`` item of a collection, following ``links.next`` (bounded)."""
        url: str | None = path
        query: Mapping[str, str] | None = params
        for _ in range(MAX_PAGES):
            if url is None:
                return
            body = self._json(self._send("GET", url, params=query))
            yield from body.get("data") or []
            url, query = self._next_link(body), None
        raise PublishError(f"klaviyo: {path}: more than {MAX_PAGES} pages; stopped")

    def _next_link(self, body: Mapping[str, Any]) -> str | None:
        links = body.get("links")
        nxt = links.get("next") if isinstance(links, dict) else None
        if not nxt:
            return None
        if urlsplit(str(nxt))[:2] != self._origin:
            raise PublishError(
                f"klaviyo: links.next points to {urlsplit(str(nxt)).netloc!r}, not the "
                "configured base_url; not following it (the API key would go along)"
            )
        return str(nxt)

    # -- probe -----------------------------------------------------------------------------------
    def probe(self, audiences: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """``GET /api/lists`` (key and revision accepted), then each audience's list by id."""
        self._send("GET", "/api/lists", params={"page[size]": "1"}, policy=policy)
        names = []
        for list_id in audiences:
            body = self._json(
                self._send(
                    "GET",
                    "/api/lists",
                    params={"filter": f"equals(id,{_filter_string(list_id)})"},
                    policy=policy,
                )
            )
            found = body.get("data") or []
            if not found:
                raise PublishError(f"klaviyo: list {list_id!r} does not exist in this account")
            names.append(str((found[0].get("attributes") or {}).get("name") or list_id))
        return f"api key accepted, {len(names)} lists readable ({', '.join(names)})"

    # -- fields ----------------------------------------------------------------------------------
    def ensure_fields(
        self, audience: str, fields: Sequence[FieldSpec], *, create: bool
    ) -> list[str]:
        """Check the mapping against Klaviyo's profile model (no API call; see module doc)."""
        problems = [p for spec in fields if (p := _field_problem(spec, self._tags_property))]
        if problems:
            raise PublishError(
                f"klaviyo list {audience!r}: the field mapping does not fit Klaviyo profiles: "
                + "; ".join(problems)
            )
        return []

    # -- upsert ----------------------------------------------------------------------------------
    def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Import members (properties and list membership) job by job; one result each."""
        sendable: list[tuple[Member, dict[str, Any]]] = []
        for member in members:
            profile = self._profile(member)
            size = len(json.dumps(profile, separators=(",", ":")).encode())
            if not is_sendable_email(member.email):
                yield _failed(member, f"{member.email!r} is not an email address Klaviyo accepts")
            elif size > PROFILE_MAX_BYTES:
                yield _failed(
                    member, f"profile is {size} bytes; Klaviyo accepts at most {PROFILE_MAX_BYTES}"
                )
            else:
                sendable.append((member, profile))
        for batch in self._import_batches(sendable):
            yield from self._import(audience, batch)

    def _import_batches(
        self, items: list[tuple[Member, dict[str, Any]]]
    ) -> Iterator[list[tuple[Member, dict[str, Any]]]]:
        """Batches of at most ``batch_size`` profiles and about 4.5 MB."""
        batch: list[tuple[Member, dict[str, Any]]] = []
        size = 0
        for item in items:
            item_size = len(json.dumps(item[1], separators=(",", ":")).encode()) + 1
            if batch and (len(batch) >= self._batch_size or size + item_size > IMPORT_BUDGET_BYTES):
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += item_size
        if batch:
            yield batch

    def _profile(self, member: Member) -> dict[str, Any]:
        attributes: dict[str, Any] = {"email": member.email}
        location: dict[str, FieldValue] = {}
        properties: dict[str, Any] = {}
        for name, value in member.fields.items():
            if name in STANDARD_ATTRIBUTES:
                attributes[name] = value
            elif name.startswith("location."):
                location[name.removeprefix("location.")] = value
            else:
                properties[name] = value
        if member.tags:
            properties[self._tags_property] = sorted(member.tags)
        if location:
            attributes["location"] = location
        if properties:
            attributes["properties"] = properties
        return {"type": "profile", "attributes": attributes}

    def _import(
        self, audience: str, batch: list[tuple[Member, dict[str, Any]]]
    ) -> list[RecordResult]:
        body = {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": [profile for _, profile in batch]}},
                "relationships": {"lists": {"data": [{"type": "list", "id": audience}]}},
            }
        }
        created = self._json(
            self._send("POST", "/api/profile-bulk-import-jobs", body=body, expect=(202,))
        )
        job_id = str((created.get("data") or {}).get("id") or "")
        if not job_id:
            raise PublishError(f"klaviyo list {audience!r}: import job answer without a job id")
        outcome = self._wait(job_id)
        members = [member for member, _ in batch]
        if outcome.status in RUNNING:
            return [
                _failed(
                    m,
                    f"import job {job_id} still {outcome.status} after "
                    f"{self._poll_timeout:g}s; sent again next run",
                    retryable=True,
                )
                for m in members
            ]
        if outcome.status != FINAL_OK:
            return [
                _failed(
                    m, f"import job {job_id} ended {outcome.status!r} at Klaviyo", retryable=True
                )
                for m in members
            ]
        # A job that reports no failures has no import errors to read: one call saved per job.
        errors = self._import_errors(job_id, len(members)) if outcome.failed_count else {}
        unexplained = outcome.failed_count > len(errors)
        results = []
        for index, member in enumerate(members):
            if index in errors:
                results.append(_failed(member, errors[index], retryable=False))
            elif unexplained:
                results.append(
                    _failed(
                        member,
                        f"import job {job_id} reports {outcome.failed_count} failures but names "
                        f"{len(errors)}; sent again next run",
                        retryable=True,
                    )
                )
            else:
                results.append(RecordResult(member.contact_key, ok=True))
        return results

    def _wait(self, job_id: str) -> _JobOutcome:
        """Poll the job until it leaves queued/processing, or ``poll_timeout`` passes."""
        started = time.monotonic()
        max_polls = max(1, int(self._poll_timeout / max(self._poll_interval, 0.001)) + 1)
        outcome = _JobOutcome(job_id, "queued", 0)
        for _ in range(max_polls):
            body = self._json(self._send("GET", f"/api/profile-bulk-import-jobs/{job_id}"))
            attributes = (body.get("data") or {}).get("attributes") or {}
            outcome = _JobOutcome(
                job_id, str(attributes.get("status")), int(attributes.get("failed_count") or 0)
            )
            if outcome.status not in RUNNING:
                return outcome
            if time.monotonic() - started + self._poll_interval > self._poll_timeout:
                break
            self._sleep(self._poll_interval)
        return outcome

    def _import_errors(self, job_id: str, count: int) -> dict[int, str]:
        """Import errors by profile index (the job's ``source.pointer``)."""
        errors: dict[int, str] = {}
        for item in self._pages(
            f"/api/profile-bulk-import-jobs/{job_id}/import-errors",
            {"page[size]": str(self._page_size)},
        ):
            attributes = item.get("attributes") or {}
            pointer = str((attributes.get("source") or {}).get("pointer") or "")
            match = _POINTER_INDEX.match(pointer)
            if match is None or int(match.group(1)) >= count:
                continue
            errors[int(match.group(1))] = (
                f"{attributes.get('code', 'error')}: {attributes.get('detail', '')} ({pointer})"
            )
        return errors

    # -- remove ----------------------------------------------------------------------------------
    def remove(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Take members off the list (profile ids by email, then list deletes of 1000)."""
        ids: dict[str, str] = {}
        for chunk in chunks([m for m in members if is_sendable_email(m.email)], LOOKUP_MAX):
            ids.update(self._profile_ids([m.email for m in chunk]))
        for member in members:
            if not is_sendable_email(member.email):
                yield _failed(member, f"{member.email!r} is not an email address Klaviyo accepts")
            elif member.email.lower() not in ids:
                yield RecordResult(member.contact_key, ok=True)  # unknown: not on the list
        known = [m for m in members if m.email.lower() in ids]
        for chunk in chunks(known, LIST_WRITE_MAX):
            body = {"data": [{"type": "profile", "id": ids[m.email.lower()]} for m in chunk]}
            self._send(
                "DELETE", f"/api/lists/{audience}/relationships/profiles", body=body, expect=(204,)
            )
            yield from (RecordResult(m.contact_key, ok=True) for m in chunk)

    def _profile_ids(self, emails: Sequence[str]) -> dict[str, str]:
        quoted = ",".join(_filter_string(e) for e in emails)
        params = {
            "filter": f"any(email,[{quoted}])",
            "fields[profile]": "email",
            "page[size]": str(self._page_size),
        }
        found: dict[str, str] = {}
        for item in self._pages("/api/profiles", params):
            email = (item.get("attributes") or {}).get("email")
            if isinstance(email, str) and item.get("id"):
                found[email.lower()] = str(item["id"])
        return found

    # -- unsubscribe -----------------------------------------------------------------------------
    def unsubscribe(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Unsubscribe globally from email marketing, 100 profiles per job."""
        for member in members:
            if not is_sendable_email(member.email):
                yield _failed(member, f"{member.email!r} is not an email address Klaviyo accepts")
        sendable = [m for m in members if is_sendable_email(m.email)]
        for chunk in chunks(sendable, UNSUBSCRIBE_MAX):
            yield from self._unsubscribe_job(chunk, split_on_refusal=True)

    def _unsubscribe_job(
        self, chunk: Sequence[Member], *, split_on_refusal: bool
    ) -> Iterator[RecordResult]:
        body = {
            "data": {
                "type": "profile-subscription-bulk-delete-job",
                "attributes": {
                    "profiles": {
                        "data": [
                            {
                                "type": "profile",
                                "attributes": {
                                    "email": m.email,
                                    "subscriptions": {
                                        "email": {"marketing": {"consent": "UNSUBSCRIBED"}}
                                    },
                                },
                            }
                            for m in chunk
                        ]
                    }
                },
            }
        }
        try:
            self._send(
                "POST", "/api/profile-subscription-bulk-delete-jobs", body=body, expect=(202,)
            )
        except PublishError as exc:
            if " answered 400" not in str(exc):
                raise
            if split_on_refusal and len(chunk) > 1:  # find the profile Klaviyo refuses
                for member in chunk:
                    yield from self._unsubscribe_job([member], split_on_refusal=False)
                return
            yield from (_failed(m, str(exc)) for m in chunk)
            return
        yield from (RecordResult(m.contact_key, ok=True) for m in chunk)

    # -- suppressions ----------------------------------------------------------------------------
    def suppressions_since(self, audience: str, since: datetime | None) -> SuppressionPage:
        """Global suppressions and this list's suppressions at or after ``since``."""
        floor = since if since is not None else EPOCH
        stamp = _timestamp(floor)
        prefix = "subscriptions.email.marketing"
        queries = [
            f"greater-or-equal({prefix}.suppression.timestamp,{stamp})",
            f"and(equals({prefix}.list_suppressions.list_id,{_filter_string(audience)}),"
            f"greater-or-equal({prefix}.list_suppressions.timestamp,{stamp}))",
        ]
        found: dict[tuple[str, str, datetime], Suppression] = {}
        for query in queries:
            params = {
                "filter": query,
                "additional-fields[profile]": "subscriptions",
                "fields[profile]": "email,subscriptions",
                "page[size]": str(self._page_size),
            }
            for item in self._pages("/api/profiles", params):
                for suppression in _suppressions(item, audience, floor):
                    key = (suppression.email, suppression.status, suppression.occurred_at)
                    found[key] = suppression
        ordered = sorted(found.values(), key=lambda s: (s.occurred_at, s.email))
        cursor = max([floor, *(s.occurred_at for s in ordered)])
        return SuppressionPage(suppressions=ordered, cursor=cursor)

    # -- erase -----------------------------------------------------------------------------------
    def erase(self, emails: Sequence[str]) -> Iterator[ErasureResult]:
        """One data privacy deletion job per email (Klaviyo takes one identifier per job)."""
        for email in emails:
            if not email or not email.strip():
                yield ErasureResult(email, ok=False, detail="empty email: nothing to erase")
                continue
            body = {
                "data": {
                    "type": "data-privacy-deletion-job",
                    "attributes": {
                        "profile": {"data": {"type": "profile", "attributes": {"email": email}}}
                    },
                }
            }
            try:
                self._send("POST", "/api/data-privacy-deletion-jobs", body=body, expect=(202,))
            except PublishError as exc:
                yield ErasureResult(email, ok=False, detail=str(exc))
                continue
            yield ErasureResult(
                email,
                ok=True,
                detail="klaviyo data-privacy-deletion-job accepted (202); deleted asynchronously",
            )


# --- helpers ----------------------------------------------------------------------------------
def _failed(member: Member, error: str, *, retryable: bool = False) -> RecordResult:
    return RecordResult(member.contact_key, ok=False, error=redact(error), retryable=retryable)


def _field_problem(spec: FieldSpec, tags_property: str) -> str | None:
    """Why ``spec`` cannot be a Klaviyo profile field, or ``None`` when it can."""
    name = spec.name
    if not name or name != name.strip():
        return f"{name!r}: a property name must be non-empty, without outer spaces"
    if name.startswith("$"):
        return f"{name!r}: names starting with '$' are Klaviyo's own properties"
    if name == "email":
        return "'email' is the member key, not a mapped field"
    if name == tags_property:
        return f"{name!r}: that property holds the member's tags"
    if name in STANDARD_ATTRIBUTES and spec.type != "text":
        return f"{name!r} is a standard Klaviyo attribute of type text, mapped as {spec.type}"
    if name.startswith("location."):
        part = name.removeprefix("location.")
        if part in LOCATION_NUMBER:
            return None if spec.type in {"text", "number"} else f"{name!r} must be text or number"
        if part not in LOCATION_TEXT:
            return f"{name!r}: Klaviyo locations have no {part!r}"
        if spec.type != "text":
            return f"{name!r} is a text attribute, mapped as {spec.type}"
    return None


def _suppressions(item: Mapping[str, Any], audience: str, floor: datetime) -> list[Suppression]:
    """The suppressions of one profile at or after ``floor``: global ones and this list's."""
    attributes = item.get("attributes") or {}
    email = attributes.get("email")
    if not isinstance(email, str) or not email:
        return []
    marketing = ((attributes.get("subscriptions") or {}).get("email") or {}).get("marketing") or {}
    found: list[Suppression] = []
    entries = [(e, None) for e in marketing.get("suppression") or []] + [
        (e, e.get("list_id")) for e in marketing.get("list_suppressions") or []
    ]
    for entry, list_id in entries:
        if list_id is not None and list_id != audience:
            continue
        occurred = parse_timestamp(entry.get("timestamp"))
        if occurred is None or occurred < floor:
            continue
        found.append(
            Suppression(
                email=email,
                status=REASONS.get(str(entry.get("reason")), "unsubscribed"),
                occurred_at=occurred,
                platform_record_id=str(item.get("id")) if item.get("id") else None,
            )
        )
    return found


def _error_text(response: httpx.Response) -> str:
    """``code: detail`` of each JSON:API error, else the start of the body."""
    try:
        errors = response.json().get("errors")
        return "; ".join(f"{e.get('code')}: {e.get('detail')}" for e in errors)[:500]
    except (ValueError, AttributeError, TypeError):
        return response.text[:300]


def open_klaviyo(
    config: KlaviyoDestination, *, policy: RetryPolicy | None = None, time_scale: float = 1.0
) -> Klaviyo:
    """A :class:`Klaviyo` for one configured account (the API key registered for redaction).

    ``time_scale`` > 1 only against a stand-in whose rate windows run that much faster (the
    publish benchmark); the real platform's windows are 1 s and 60 s."""
    key = resolve_secret(config.api_key).get_secret_value()
    register_secret(key)
    client = build_client(
        config.base_url,
        headers={
            "Authorization": f"Klaviyo-API-Key {key}",
            "revision": config.revision,
            "Accept": JSONAPI,
        },
        timeout=httpx.Timeout(120.0, connect=10.0, pool=10.0),
        max_connections=Klaviyo.limits.max_connections,
        allow_insecure_http=config.allow_insecure_http,
        ca_bundle=config.ca_bundle,
        owner="destinations.klaviyo",
    )
    return Klaviyo(
        client,
        policy=policy,
        batch_size=config.batch_size,
        poll_interval=config.poll_interval_seconds,
        poll_timeout=config.poll_timeout_seconds,
        tags_property=config.tags_property,
        time_scale=time_scale,
    )

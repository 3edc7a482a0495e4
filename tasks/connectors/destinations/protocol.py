"""What every email platform adapter implements, in the platform's terms but our types.

A destination is one account on one platform (a Mailchimp account, a Klaviyo account, a HubSpot
portal). An *audience* on it is addressed by the id the configuration names: a Mailchimp list
id, a Klaviyo list id, a HubSpot (manual) list id. The publish engine decides *what* changes;
an adapter only says it to the platform, in batches sized and paced by its :class:`Limits`,
and reports one :class:`RecordResult` per member - never an exception for one bad address.

Adding a platform: one class implementing :class:`Destination` and one line in
``tasks.connectors.destinations.DESTINATIONS``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal, Protocol

from tasks.core.send_budget import CallCount

FieldType = Literal["text", "number", "date", "boolean"]
FieldValue = str | int | float | bool | None
SuppressionStatus = Literal["unsubscribed", "bounced", "cleaned", "spam_complaint"]
PlannedOperation = Literal["fields", "upsert", "unsubscribe", "remove"]
"""What the send-budget planner asks an adapter to price: the field check at the start of a
publish, and one call of each write method."""


@dataclass(frozen=True)
class Limits:
    """The documented ceilings an adapter stays within; the send-budget planner reads them."""

    batch_size: int
    """Members per write call (Mailchimp 500, HubSpot 100, Klaviyo bulk job size)."""
    max_connections: int
    """Concurrent requests the platform allows (Mailchimp 10)."""
    requests_per_second: float
    """Sustained request rate the adapter paces itself to."""
    burst: int = 1
    """Requests allowed at once within the rate window (HubSpot: per 10 seconds)."""


@dataclass(frozen=True)
class FieldSpec:
    """A platform-side field a mapping writes: merge tag, profile property, contact property."""

    name: str
    type: FieldType
    label: str = ""


@dataclass(frozen=True)
class Member:
    """One person as the platform will see them: the mapped, already formatted values."""

    contact_key: str
    email: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordResult:
    """What the platform said about one member. ``retryable`` errors are tried again next run."""

    contact_key: str
    ok: bool
    error: str | None = None
    retryable: bool = True


@dataclass(frozen=True)
class Suppression:
    """An opt-out the platform knows about: consent evidence for the lake."""

    email: str
    status: SuppressionStatus
    occurred_at: datetime
    platform_record_id: str | None = None


@dataclass(frozen=True)
class SuppressionPage:
    suppressions: Sequence[Suppression]
    cursor: datetime
    """Pass back as ``since`` on the next read: nothing before it is returned again."""


@dataclass(frozen=True)
class ErasureResult:
    email: str
    ok: bool
    detail: str
    """The platform's own answer (job id, status), kept in the erasure receipt."""


class Destination(Protocol):
    """One platform account. Every method is safe to call again after a crash (idempotent)."""

    kind: ClassVar[str]
    limits: ClassVar[Limits]

    def probe(self, audiences: Sequence[str]) -> str:
        """Cheap authenticated reads of the account and of each audience; never a write."""
        ...

    def ensure_fields(
        self, audience: str, fields: Sequence[FieldSpec], *, create: bool
    ) -> list[str]:
        """Check that ``fields`` exist with a compatible type; create the missing ones when
        ``create``, else raise ``PublishError`` naming every missing or mistyped field. Returns
        the names created."""
        ...

    def upsert(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Add or update members with their fields and tags. Never re-subscribes someone the
        platform holds as opted out: an opt-out made at the platform outlives our pushes."""
        ...

    def remove(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Take members out of the audience (archive / leave the list) - not an unsubscribe."""
        ...

    def unsubscribe(self, audience: str, members: Sequence[Member]) -> Iterator[RecordResult]:
        """Record an opt-out at the platform, so it never mails them."""
        ...

    def suppressions_since(self, audience: str, since: datetime | None) -> SuppressionPage:
        """Unsubscribes, bounces, cleaned addresses and spam complaints changed at or after
        ``since`` (all of them when ``None``). A record may come back twice across reads; one
        is never skipped."""
        ...

    def erase(self, emails: Sequence[str]) -> Iterator[ErasureResult]:
        """Ask the platform to delete these people for good (privacy erasure)."""
        ...

    def planned_calls(
        self, operation: PlannedOperation, members: int, *, retagged: int = 0
    ) -> list[CallCount]:
        """The requests one call of ``operation`` with ``members`` people makes when every
        request succeeds at once (no retries or refusals; an asynchronous job finished by its
        first poll), each with the documented rate budget it draws on. ``retagged``: members of
        an upsert already on the list whose tags change. ``"fields"`` prices the field check
        (``members`` is ignored; creating missing fields is not counted). Sends nothing."""
        ...

    def close(self) -> None: ...

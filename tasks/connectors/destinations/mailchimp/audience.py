"""The older first/last-name Mailchimp sink (:class:`MailchimpAudience`) and its change types.

A thin shim over :class:`~.adapter.Mailchimp`, so there is one implementation of the wire calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx

from tasks.connectors.destinations.mailchimp.adapter import Mailchimp
from tasks.connectors.destinations.mailchimp.client import MAX_BATCH, _Transient
from tasks.connectors.destinations.mailchimp.responses import _member_results
from tasks.connectors.destinations.protocol import Member
from tasks.connectors.http import RetryPolicy
from tasks.connectors.redact import redact
from tasks.core.sync import SyncAction
from tasks.errors import PublishError


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

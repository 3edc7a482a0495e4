"""Mailchimp Marketing v3 list members: batch subscribe/update, up to 500 per call.

Wire format: docs/platforms.md, *Mailchimp*. The batch endpoint answers 200 even when some members
fail; each member's result is read from ``errors[]``, so one bad address never fails the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx

from tasks.connectors.http import RetryPolicy, send_with_retries
from tasks.connectors.redact import redact
from tasks.core.sync import SyncAction
from tasks.errors import PublishError

MAX_BATCH = 500


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


def _chunks(items: Sequence[MemberChange], size: int) -> Iterator[Sequence[MemberChange]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _member(change: MemberChange) -> dict[str, object]:
    if change.action == "unsubscribe":
        return {"email_address": change.email, "status": "unsubscribed"}
    return {
        "email_address": change.email,
        "status": "subscribed",
        "merge_fields": {"FNAME": change.first_name or "", "LNAME": change.last_name or ""},
    }


class MailchimpAudience:
    """Sends member changes to Mailchimp lists."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        batch_size: int = MAX_BATCH,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        self._client = client
        self._batch_size = batch_size
        self._policy = policy
        self.requests_sent = 0

    def close(self) -> None:
        self._client.close()

    def probe(self, list_ids: Sequence[str], *, policy: RetryPolicy | None = None) -> str:
        """Cheap authenticated reads, never a write: ``GET /3.0/ping`` (reachable, API key
        accepted), then ``GET /3.0/lists/{id}`` for each list (it exists in this account).

        Raises:
            PublishError: naming the request and the answer (the key never shown).
        """
        paths = ["/3.0/ping", *(f"/3.0/lists/{list_id}" for list_id in list_ids)]
        for path in paths:
            request = self._client.build_request("GET", path)
            try:
                response = send_with_retries(
                    self._client, request, idempotent=True, policy=policy or self._policy
                )
            except httpx.HTTPError as exc:
                raise PublishError(redact(f"mailchimp: GET {request.url}: {exc}")) from exc
            if response.status_code != 200:
                raise PublishError(
                    redact(
                        f"mailchimp: GET {request.url} answered {response.status_code}: "
                        f"{response.text[:200]}"
                    )
                )
        return f"ping ok, {len(list_ids)} lists readable"

    def send(self, list_id: str, changes: Sequence[MemberChange]) -> Iterator[MemberResult]:
        """Upsert ``changes`` into ``list_id``; yield one result per change, batch by batch."""
        for batch in _chunks(changes, self._batch_size):
            yield from self._send_batch(list_id, batch)

    def _send_batch(self, list_id: str, batch: Sequence[MemberChange]) -> list[MemberResult]:
        request = self._client.build_request(
            "POST",
            f"/3.0/lists/{list_id}",
            json={"members": [_member(c) for c in batch], "update_existing": True},
        )
        try:
            # A batch upsert keyed by email is idempotent: safe to resend after a timeout.
            response = send_with_retries(
                self._client, request, idempotent=True, policy=self._policy
            )
        except httpx.HTTPError as exc:
            raise PublishError(redact(f"mailchimp list {list_id!r}: {exc}")) from exc
        self.requests_sent += 1
        if response.status_code != 200:
            raise PublishError(
                redact(
                    f"mailchimp list {list_id!r}: POST {request.url} answered "
                    f"{response.status_code}: {response.text[:300]}"
                )
            )
        try:
            body = response.json()
            errors = {
                str(e.get("email_address", "")).strip().lower(): str(
                    e.get("error") or e.get("error_code") or "error"
                )
                for e in body.get("errors", [])
            }
        except (ValueError, AttributeError) as exc:
            raise PublishError(
                redact(
                    f"mailchimp list {list_id!r}: unreadable batch response {response.text[:200]!r}"
                )
            ) from exc
        return [
            MemberResult(
                c.contact_key, ok=c.email.lower() not in errors, error=errors.get(c.email.lower())
            )
            for c in batch
        ]

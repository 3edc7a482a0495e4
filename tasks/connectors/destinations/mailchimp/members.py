"""Mailchimp member writes: batch subscribe (upsert, unsubscribe), tags, and archive (remove)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tasks.connectors.destinations.mailchimp.client import (
    MailchimpClient,
    _Transient,
    subscriber_hash,
)
from tasks.connectors.destinations.mailchimp.payloads import _upsert_payloads
from tasks.connectors.destinations.mailchimp.responses import (
    _all_failed,
    _member_results,
    _short,
    _tags_by_email,
)
from tasks.connectors.destinations.protocol import Member, RecordResult
from tasks.connectors.http import RETRY_STATUS
from tasks.connectors.redact import redact
from tasks.errors import PublishError


class MailchimpMembers(MailchimpClient):
    """Writes to a list's members; a write call that exhausts its retries stops the rest."""

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

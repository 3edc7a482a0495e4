"""Mailchimp erasure: ``delete-permanent`` of each address from every configured list."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tasks.connectors.destinations.mailchimp.client import (
    MailchimpClient,
    _Transient,
    subscriber_hash,
)
from tasks.connectors.destinations.mailchimp.responses import _short
from tasks.connectors.destinations.protocol import ErasureResult
from tasks.errors import PublishError


class MailchimpErasure(MailchimpClient):
    """Privacy erasure (``POST …/members/{hash}/actions/delete-permanent``)."""

    def erase(self, emails: Sequence[str]) -> Iterator[ErasureResult]:
        """``delete-permanent`` each address from every list in ``erase_lists``."""
        if not self._erase_lists:
            raise PublishError("mailchimp: erase needs the list ids to erase from (erase_lists)")
        yield from self._bounded(self._erase_one, emails)

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

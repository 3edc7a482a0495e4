"""Klaviyo erasure: one data privacy deletion job per email."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tasks.connectors.destinations.klaviyo.client import KlaviyoClient
from tasks.connectors.destinations.protocol import ErasureResult
from tasks.errors import PublishError


class KlaviyoErasure(KlaviyoClient):
    """Privacy erasure (``POST /api/data-privacy-deletion-jobs``)."""

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

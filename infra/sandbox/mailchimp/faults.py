"""Fault injection for the Mailchimp stand-in: failed requests and members refused inside
an otherwise applied batch.
"""

from __future__ import annotations

from http import HTTPStatus

from infra.sandbox._http import Response
from infra.sandbox.mailchimp.records import _Fault
from infra.sandbox.mailchimp.state import MailchimpState
from infra.sandbox.mailchimp.wire import problem, subscriber_hash


class Faults(MailchimpState):
    """Injected failures."""

    def fail_next(self, count: int, *, status: int, body: bytes | None = None) -> None:
        """Make the next ``count`` requests fail with ``status`` (problem JSON unless ``body``)."""
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        with self._lock:
            self._faults.extend(_Fault(status, body) for _ in range(count))

    def refuse_in_batch(self, list_id: str, email: str, *, times: int = 1) -> None:
        """Make the next ``times`` batch inputs for ``email`` on ``list_id`` fail for that member
        only: an ``errors[]`` entry (``ERROR_GENERIC``) in the 200 answer, the rest applied."""
        if times < 1:
            raise ValueError(f"refuse_in_batch(times=...) must be >= 1, got {times}")
        with self._lock:
            self._refusals[(list_id, subscriber_hash(email))] += times

    def _take_fault(self) -> Response | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults.popleft()
        if fault.body is not None:
            return Response(fault.status, fault.body, "application/json", {})
        try:
            phrase = HTTPStatus(fault.status).phrase
        except ValueError:
            phrase = "Error"
        return problem(fault.status, phrase, f"Injected failure: HTTP {fault.status}.")

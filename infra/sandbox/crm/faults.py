"""Fault injection (failed API requests, optional bodies and ``Retry-After``) and the
optional requests-per-second limit of the CRM stand-in.
"""

from __future__ import annotations

import time
import uuid
from http import HTTPStatus

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.crm.store import CrmStore
from infra.sandbox.crm.wire import RATE_LIMIT_BODY, _Fault


class FaultsAndLimits(CrmStore):
    """Injected failures and rate limiting."""

    # -- fault injection --------------------------------------------------------------------
    def fail_next(
        self,
        count: int,
        *,
        status: int,
        retry_after: str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Make the next ``count`` API requests (not token requests) fail with ``status``.

        ``retry_after`` becomes a ``Retry-After`` header; ``body`` replaces the default
        HubSpot-shaped error body.
        """
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        with self._lock:
            self._faults.extend(_Fault(status, retry_after, body) for _ in range(count))

    def _take_fault(self, request: Request) -> Response | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults.popleft()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.body is not None:
            return Response(fault.status, fault.body, "application/json", headers)
        if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
            payload = {**RATE_LIMIT_BODY, "correlationId": str(uuid.uuid4())}
            return json_response(fault.status, payload, headers=headers)
        payload = {
            "status": "error",
            "message": f"Injected failure: HTTP {fault.status} for {request.method} {request.path}",
            "correlationId": str(uuid.uuid4()),
            "category": "INTERNAL_ERROR" if fault.status >= 500 else "VALIDATION_ERROR",
        }
        return json_response(fault.status, payload, headers=headers)

    def _rate_limit(self, request: Request) -> Response | None:
        """Sliding one-second window; rejected requests do not consume budget."""
        if self.requests_per_second is None:
            return None
        budget = max(1, int(self.requests_per_second))
        with self._lock:
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= budget:
                payload = {**RATE_LIMIT_BODY, "correlationId": str(uuid.uuid4())}
                return json_response(HTTPStatus.TOO_MANY_REQUESTS, payload)
            self._recent.append(now)
        return None

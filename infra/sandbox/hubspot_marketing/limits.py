"""Fault injection (failed requests, refused upserts) and the rolling-window and daily
rate limits of the HubSpot stand-in.
"""

from __future__ import annotations

import time
import uuid
from http import HTTPStatus

from infra.sandbox._http import Response, json_response
from infra.sandbox.hubspot_marketing.records import _Fault
from infra.sandbox.hubspot_marketing.state import HubSpotMarketingState
from infra.sandbox.hubspot_marketing.wire import hubspot_error


class FaultsAndLimits(HubSpotMarketingState):
    """Injected failures and rate limiting."""

    def fail_next(self, count: int, *, status: int, body: bytes | None = None) -> None:
        """Make the next ``count`` requests fail with ``status`` (HubSpot error unless ``body``;
        a 429 is the documented rate-limit answer, as the rolling window gives it)."""
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        with self._lock:
            self._faults.extend(_Fault(status, body) for _ in range(count))

    def refuse_upsert(self, email: str, *, times: int = 1) -> None:
        """Make the next ``times`` batch-upsert inputs for ``email`` fail for that input only
        (one ``errors[]`` entry of a 207; the rest of the batch is applied)."""
        if times < 1:
            raise ValueError(f"refuse_upsert(times=...) must be >= 1, got {times}")
        with self._lock:
            key = email.strip().lower()
            self._refusals[key] = self._refusals.get(key, 0) + times

    def _take_fault(self) -> Response | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults.popleft()
        if fault.body is not None:
            return Response(fault.status, fault.body, "application/json", {})
        if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
            return self._rate_limited("TEN_SECONDLY_ROLLING")
        category = "INTERNAL_ERROR" if fault.status >= 500 else "VALIDATION_ERROR"
        return hubspot_error(fault.status, category, f"Injected failure: HTTP {fault.status}")

    def _admit(self) -> Response | None:
        """The rolling window and the daily quota; a rejected request uses up neither."""
        with self._lock:
            now = time.monotonic()
            while self._window and now - self._window[0] >= self.window_seconds:
                self._window.popleft()
            policy = None
            if self._daily_used >= self.daily_limit:
                policy = "DAILY"
            elif len(self._window) >= self.burst:
                policy = "TEN_SECONDLY_ROLLING"
            if policy is None:
                self._window.append(now)
                self._daily_used += 1
                return None
        return self._rate_limited(policy)

    def _rate_limited(self, policy: str) -> Response:
        """HubSpot's documented 429: ``errorType: RATE_LIMIT``, the policy, no ``Retry-After``."""
        with self._lock:
            self.rate_limited += 1
            headers = self._rate_headers()
        limit = "daily" if policy == "DAILY" else policy.lower()
        body = {
            "status": "error",
            "message": f"You have reached your {limit} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": policy,
        }
        return json_response(HTTPStatus.TOO_MANY_REQUESTS, body, headers=headers)

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            return {
                "X-HubSpot-RateLimit-Max": str(self.burst),
                "X-HubSpot-RateLimit-Remaining": str(max(0, self.burst - len(self._window))),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window_seconds * 1000)),
                "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
                "X-HubSpot-RateLimit-Daily-Remaining": str(
                    max(0, self.daily_limit - self._daily_used)
                ),
            }

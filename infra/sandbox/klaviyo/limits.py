"""Fault injection (failed requests, failed import jobs, per-profile import rejections) and
the per-operation burst/steady rate limits of the Klaviyo stand-in.
"""

from __future__ import annotations

import math
from http import HTTPStatus

from infra.sandbox.klaviyo.records import _Fault, _Window
from infra.sandbox.klaviyo.state import KlaviyoState
from infra.sandbox.klaviyo.wire import KlaviyoError


class FaultsAndLimits(KlaviyoState):
    """Injected failures and rate limiting."""

    def fail_next(self, count: int, *, status: int, retry_after: int | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (429s carry ``Retry-After``)."""
        if count < 0:
            raise ValueError(f"fail_next(count=...) must be >= 0, got {count}")
        if status == HTTPStatus.TOO_MANY_REQUESTS and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.extend(_Fault(status, retry_after) for _ in range(count))

    def fail_next_import_job(self, status: str = "cancelled") -> None:
        """The next import job accepted ends in ``status`` without importing anything.

        ``cancelled`` is what the spec can express; ``failed`` is outside its enum and exists
        to check that an adapter treats an unknown final state as a failure.
        """
        with self._lock:
            self._job_failures.append(status)

    def reject_on_import(
        self, email: str, detail: str = "Invalid email address.", *, times: int | None = None
    ) -> None:
        """Make every import of ``email`` (or the next ``times`` ones) fail for that profile
        only: an import error, the rest of the job imported."""
        if times is not None and times < 1:
            raise ValueError(f"reject_on_import(times=...) must be >= 1, got {times}")
        with self._lock:
            self._import_rejections[email.strip().lower()] = (detail, times)

    def _take_fault(self) -> None:
        with self._lock:
            if not self._faults:
                return
            fault = self._faults.popleft()
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
            raise KlaviyoError(
                fault.status,
                "throttled",
                "Request was throttled.",
                f"Request was throttled. Expected available in {fault.retry_after} second.",
                headers=headers,
            )
        raise KlaviyoError(
            fault.status, "error", "A server error occurred.", "Injected failure.", headers=headers
        )

    def _admit(self, route: str) -> dict[str, str]:
        """Count the request in its operation's windows; 429 when either is full."""
        burst, steady = self.rate_limits[route]
        now = self._clock() * self.time_scale
        second, minute = math.floor(now), math.floor(now / 60)
        with self._lock:
            window = self._windows.setdefault(route, _Window())
            if window.second != second:
                window.second, window.in_second = second, 0
            if window.minute != minute:
                window.minute, window.in_minute = minute, 0
            if window.in_second >= burst or window.in_minute >= steady:
                self.rate_limited += 1
                wait = (second + 1 - now) if window.in_minute < steady else (minute + 1) * 60 - now
                wait /= self.time_scale  # real seconds
                raise KlaviyoError(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "throttled",
                    "Request was throttled.",
                    f"Request was throttled. Expected available in {math.ceil(wait)} second.",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            window.in_second += 1
            window.in_minute += 1
            remaining = steady - window.in_minute
        return {
            "RateLimit-Limit": str(steady),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(max(0, math.ceil(((minute + 1) * 60 - now) / self.time_scale))),
        }

"""HubSpot's documented rate limits and the rolling 10-second budget that paces every request.

The limits feed both the adapter (:class:`RollingWindowBudget`, the ``Limits`` it declares) and
the send-budget planner (:data:`RATE_BUDGET`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tasks.core.send_budget import RateBudget, RateWindow

MAX_BATCH = 100
BURST_PER_WINDOW = 100
WINDOW_SECONDS = 10.0
# The client counts a request when it leaves, HubSpot when it arrives; network jitter between
# the two makes a client-side window of exactly 10 s meet 429s (measured on the stand-in with a
# scaled window: 1 % slack still drew 4 429s in 100 requests, 5 % none). 5 % of throughput.
WINDOW_SLACK_SECONDS = 0.5
# Batches in flight at once. HubSpot states no concurrency cap; the burst budget is the ceiling,
# and a batch call takes long enough (hundreds of ms) that one at a time reaches half of it.
MAX_IN_FLIGHT = 10
DAILY_QUOTA = 250_000  # Free/Starter; higher tiers allow more
RATE_BUDGET = RateBudget(
    "hubspot", (RateWindow(BURST_PER_WINDOW, WINDOW_SECONDS), RateWindow(DAILY_QUOTA, 86_400.0))
)
"""For the send-budget planner: every call draws on the app's 10-second burst and daily quota."""


class RollingWindowBudget:
    """At most ``max_requests`` request starts in any ``window_seconds`` (HubSpot's burst rule).

    ``slot()`` waits (sleeping, bounded by the window) until the oldest start leaves the window.
    Threads wait one at a time (a turnstile), so the start a sleeper waited for is its own.
    Satisfies :class:`tasks.connectors.http.RequestBudget`.
    """

    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_requests < 1 or window_seconds <= 0:
            raise ValueError("max_requests must be >= 1 and window_seconds > 0")
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.waited_seconds = 0.0
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()
        self._turnstile = threading.Lock()

    def _reserve(self) -> float:
        """Record a start now if the window allows it (return 0), else how long to wait."""
        with self._lock:
            now = self._clock()
            while self._starts and now - self._starts[0] >= self.window_seconds:
                self._starts.popleft()
            if len(self._starts) < self.max_requests:
                self._starts.append(now)
                return 0.0
            wait = self.window_seconds - (now - self._starts[0])
            self.waited_seconds += wait
            return wait

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._turnstile:
            for _ in range(3):  # one wait frees the oldest start; nobody else can take it
                wait = self._reserve()
                if wait <= 0:
                    break
                self._sleep(wait)
        yield

"""Windows of platform batches: grouping, sizing from a platform's limits, sending one window."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from tasks.connectors.destinations.protocol import Limits
from tasks.core.sync import platform_batches, send_windows
from tasks.send_window import ROUNDS_PER_WINDOW, in_flight, send_window, window_size


def _plan(actions: list[tuple[str, int]]) -> pl.DataFrame:
    rows = [
        {"contact_key": f"{action}-{n}", "action": action}
        for action, count in actions
        for n in range(count)
    ]
    return pl.DataFrame(rows)


def test_windows_keep_plan_order_and_never_mix_actions() -> None:
    plan = _plan([("unsubscribe", 7), ("remove", 2), ("subscribe", 23)])
    windows = list(send_windows(platform_batches(plan, 5), 3))
    shapes = [[(b["action"][0], b.height) for b in w] for w in windows]
    assert shapes == [
        [("unsubscribe", 5), ("unsubscribe", 2)],
        [("remove", 2)],
        [("subscribe", 5), ("subscribe", 5), ("subscribe", 5)],
        [("subscribe", 5), ("subscribe", 3)],
    ]
    keys = [k for w in windows for b in w for k in b["contact_key"]]
    assert keys == plan["contact_key"].to_list()


def test_a_window_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(send_windows(iter([]), 0))
    with pytest.raises(ValueError, match="at least 1"):
        window_size(Limits(500, 10, 10.0), 0)


def test_the_window_follows_the_platform_unless_configured() -> None:
    limits = Limits(batch_size=500, max_connections=10, requests_per_second=10.0)
    assert window_size(limits) == 10 * ROUNDS_PER_WINDOW
    assert window_size(limits, 3) == 3
    assert in_flight(limits, 80) == 10  # never more than the platform's connections
    assert in_flight(limits, 3) == 3  # never more threads than batches in a window
    assert in_flight(Limits(100, 0, 1.0), 5) == 1


def test_a_window_is_sent_at_once_and_every_answer_kept_when_one_batch_fails() -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, peak

    def send(n: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if n == 2:
            raise RuntimeError("batch 2 refused")
        return n * 10

    with ThreadPoolExecutor(4) as pool:
        outcome = send_window(pool, [0, 1, 2, 3, 4, 5], send)
    assert outcome.answered == [(0, 0), (1, 10), (3, 30), (4, 40), (5, 50)]
    assert isinstance(outcome.failure, RuntimeError)
    assert 2 <= running[1] <= 4

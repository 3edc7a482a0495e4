"""``LandedAnnouncer``: a burst of landed batches becomes few events, none before its batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from flows.events import LandedAnnouncer
from tasks.connectors.webhook import LandedBatch


def _batch(name: str, *, source: str = "web_events", duplicate: bool = False) -> LandedBatch:
    return LandedBatch(
        source=source, name=name, location=f"/landing/{name}", events=2, duplicate=duplicate
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.changed = threading.Condition()

    def __call__(self, batches: Sequence[LandedBatch]) -> None:
        with self.changed:
            self.calls.append([b.name for b in batches])
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= count, timeout), self.calls


def test_first_batch_at_once_then_the_burst_in_one_event_after_its_last_batch() -> None:
    emitted = Recorder()
    announcer = LandedAnnouncer(every=0.3, emit=emitted)
    started = time.monotonic()
    announcer(_batch("a"))
    assert emitted.calls == [["a"]]  # at once: nothing to coalesce with
    for name in ("b", "c", "d"):
        announcer(_batch(name))
    announcer(_batch("c", duplicate=True))  # a redelivery announces nothing
    assert emitted.calls == [["a"]]
    emitted.wait_for(2)
    assert emitted.calls == [["a"], ["b", "c", "d"]]
    assert time.monotonic() - started >= 0.29  # not before the period ends
    time.sleep(0.4)
    assert len(emitted.calls) == 2  # no empty announcements
    announcer(_batch("e"))  # after a quiet spell: at once again
    assert emitted.calls[-1] == ["e"]
    announcer.close()


def test_close_announces_what_is_pending_and_sources_are_independent() -> None:
    emitted = Recorder()
    with LandedAnnouncer(every=60, emit=emitted) as announcer:
        announcer(_batch("a"))
        announcer(_batch("x", source="app_events"))  # another source is not held back
        announcer(_batch("b"))
        assert emitted.calls == [["a"], ["x"]]
    assert emitted.calls == [["a"], ["x"], ["b"]]

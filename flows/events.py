"""``land_events`` flow: landed event micro-batches -> ``bronze/<source>``, for event sources only.

Near-real-time path, separate from the hourly pipeline: the ``land-events`` deployment in
``prefect.yaml`` is triggered by the ``audience-lake.events.landed`` event that the receiver
(``audience-lake receive-events``) emits through a :class:`LandedAnnouncer`. A run lands every file
not yet in bronze (each exactly once, each event id once), so overlapping triggers cost nothing but
a quick no-op run; the hourly pipeline's ingest lands whatever an undelivered event left behind.

Why the announcer coalesces: Prefect creates one run per matching event, so one event per batch
turns a burst of batches into a burst of runs (with ``CANCEL_NEW``, all but one Cancelled; with
``ENQUEUE``, a queue of no-op runs). Prefect's own ``within`` window is no substitute: a reactive
trigger ignores the events that arrive during the rest of its window, so a batch landing there
would wait for the next event. The announcer instead emits at once for the first batch after a
quiet spell and then at most once per ``every`` seconds, always after the last batch it covers, so
every accepted batch is followed by an event whose run lists the landing zone after that batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from types import TracebackType

from prefect import flow
from prefect.events import emit_event

from flows.audit import audited
from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.connectors.webhook import LandedBatch
from tasks.core.config import PipelineConfig
from tasks.errors import ConfigError
from tasks.ingest import ingest_source
from tasks.reports import IngestReport

LANDED_EVENT = "audience-lake.events.landed"
# At most one event per source this often during a burst (plus the one that starts it): a batch
# waits at most this long for its run to be created, and a steady stream costs one run per period.
ANNOUNCE_EVERY_SECONDS = 15.0


def event_sources(config: PipelineConfig, names: list[str] | None = None) -> list[str]:
    """Names of the enabled ``kind: events`` sources (only ``names``, if given).

    Raises:
        ConfigError: for a name that is not an event source.
    """
    kinds = {name: source.kind for name, source in config.sources.items()}
    wrong = sorted(n for n in names or [] if kinds.get(n) != "events")
    if wrong:
        known = sorted(n for n, kind in kinds.items() if kind == "events")
        raise ConfigError(f"land_events: {wrong} are not event sources; event sources: {known}")
    return [
        name
        for name, source in config.sources.items()
        if source.kind == "events" and source.enabled and (not names or name in names)
    ]


@flow(name="land-events", log_prints=True)
@audited
def land_events(
    config_path: str | None = None,
    sources: list[str] | None = None,
) -> list[IngestReport]:
    """Land every new event micro-batch of each event source (or only ``sources``) in bronze.

    Args:
        config_path: The pipeline.yaml to run (empty: the AUDIENCE_LAKE_CONFIG setting).
        sources: Only these event sources (names from pipeline.yaml); empty: every one.
    """
    config = load_config(config_path)
    run_id = current_run_id()
    started_at = utc_now()
    reports = [
        ingest_source(name, config.sources[name], run_id=run_id, started_at=started_at)
        for name in event_sources(config, sources)
    ]
    table_artifact("land-events-summary", [asdict(r) for r in reports], "Event batches landed")
    return reports


def announce_landed(batch: LandedBatch) -> None:
    """Emit the Prefect event that triggers ``land-events`` for one batch, uncoalesced.

    A redelivered body emits nothing: its file is already landed (and announced).
    """
    if not batch.duplicate:
        emit_landed([batch])


def emit_landed(batches: Sequence[LandedBatch]) -> None:
    """Emit one ``audience-lake.events.landed`` event for ``batches`` (all of one source)."""
    last = batches[-1]
    payload: dict[str, object] = {
        "batch": last.name,
        "events": sum(b.events for b in batches),
        "location": last.location,
    }
    if len(batches) > 1:
        payload["batches"] = len(batches)
    emit_event(
        event=LANDED_EVENT,
        resource={
            "prefect.resource.id": f"audience-lake.source.{last.source}",
            "prefect.resource.name": last.source,
        },
        payload=payload,
    )


class LandedAnnouncer:
    """The receiver's ``on_landed`` hook: few events for many batches, none of them late.

    The first batch after a quiet spell of ``every`` seconds is announced at once; batches that
    land within ``every`` seconds of the last announcement are announced together when that period
    ends (by a timer). ``close()`` (or leaving the ``with`` block) announces what is still pending.

    Args:
        every: the shortest time between two announcements of one source.
        emit: sends one announcement (defaults to :func:`emit_landed`, a Prefect event).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        *,
        every: float = ANNOUNCE_EVERY_SECONDS,
        emit: Callable[[Sequence[LandedBatch]], None] = emit_landed,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._every = every
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._pending: dict[str, list[LandedBatch]] = {}
        self._timers: dict[str, threading.Timer] = {}
        self._closed = False

    def __call__(self, batch: LandedBatch) -> None:
        if batch.duplicate:
            return  # its file is already landed, and was announced when it first landed
        with self._lock:
            source = batch.source
            now = self._clock()
            last = self._last.get(source)
            if self._closed or (
                source not in self._pending and (last is None or now - last >= self._every)
            ):
                self._last[source] = now
                due: list[LandedBatch] = [batch]
            else:
                self._pending.setdefault(source, []).append(batch)
                if source not in self._timers:
                    delay = max(0.0, (last or now) + self._every - now)
                    timer = threading.Timer(delay, self._flush, args=(source,))
                    timer.daemon = True
                    self._timers[source] = timer
                    timer.start()
                return
        self._emit(due)

    def _flush(self, source: str) -> None:
        with self._lock:
            self._timers.pop(source, None)
            due = self._pending.pop(source, [])
            if due:
                self._last[source] = self._clock()
        if due:
            self._emit(due)

    def close(self) -> None:
        """Announce every pending batch now; later batches are announced one by one."""
        with self._lock:
            self._closed = True
            timers = list(self._timers.values())
        for timer in timers:
            timer.cancel()
        for source in list(self._pending):
            self._flush(source)

    def __enter__(self) -> LandedAnnouncer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

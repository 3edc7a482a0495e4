"""A live progress line for ``audience-lake run`` and ``demo`` on a terminal.

It is fed by the pipeline's own log records, not by a second channel: each ingest batch
(``<source>: batch <n> <origin>: <rows> rows``) and each publish (``publish <dest>/<segment> ->
<list>: <sent> sent ...``) moves the tally. The templates are imported from
:mod:`tasks.ingest` and :mod:`tasks.publishing`; ``tests/flows/test_cli_status.py`` runs a real
pipeline through :class:`ProgressFeed` and checks the tally against the run's report, so a
changed message fails a test instead of silently freezing the line. Off when stdout is not a
terminal (pipes, CI, cron mail stay clean).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tasks.ingest import BATCH_TEMPLATE
from tasks.publishing import PUBLISH_TEMPLATE

# Where run loggers (get_run_logger) write: the task and flow run loggers.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


@dataclass
class Tally:
    """What the run has done so far."""

    rows_staged: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    contacts_sent: int = 0
    audiences: int = 0

    def describe(self) -> str:
        rows = sum(self.rows_staged.values())
        text = f"ingest: {self.batches} batches, {rows:,} rows staged from "
        text += f"{len(self.rows_staged)} sources"
        if self.audiences:
            text += (
                f" | publish: {self.contacts_sent:,} contacts sent to {self.audiences} audiences"
            )
        return text


class ProgressFeed(logging.Handler):
    """Counts batches, rows and contacts from the run's log records; calls ``on_change``."""

    def __init__(self, on_change: Callable[[Tally], None] | None = None) -> None:
        super().__init__(level=logging.INFO)
        self.tally = Tally()
        self._on_change = on_change

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == BATCH_TEMPLATE and len(args) == 4 and isinstance(args[3], int):
            source, rows = str(args[0]), args[3]
            self.tally.rows_staged[source] = self.tally.rows_staged.get(source, 0) + rows
            self.tally.batches += 1
        elif record.msg == PUBLISH_TEMPLATE and len(args) == 8 and isinstance(args[3], int):
            self.tally.contacts_sent += args[3]
            self.tally.audiences += 1
        else:
            return
        if self._on_change is not None:
            self._on_change(self.tally)


@contextmanager
def feeding(feed: ProgressFeed) -> Iterator[ProgressFeed]:
    """Attach ``feed`` to the run loggers for the duration of the block."""
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addHandler(feed)
    try:
        yield feed
    finally:
        for logger in loggers:
            logger.removeHandler(feed)


@contextmanager
def progress_line(*, enabled: bool | None = None) -> Iterator[ProgressFeed]:
    """A transient ``rich`` status line fed by :class:`ProgressFeed` (only on a terminal)."""
    show = sys.stdout.isatty() if enabled is None else enabled
    if not show:
        with feeding(ProgressFeed()) as feed:
            yield feed
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True
    ) as progress:
        line = progress.add_task("starting")

        def update(tally: Tally) -> None:
            progress.update(line, description=tally.describe())

        with feeding(ProgressFeed(update)) as feed:
            yield feed

"""Event micro-batches landed by the webhook receiver -> ``bronze/<source>``, exactly once.

Two levels of idempotency, both decided by what bronze committed (never a side store):

* **per file** — each landed file has a batch id (``<source>:<file name>``, the file name being
  a digest of the request body) committed with its rows as a Delta app transaction; a committed
  file is skipped, so a crash or rerun never lands a file twice. Up to ``files_per_batch``
  files are written together, their ids all recorded in that one commit;
* **per event** — the write mode is ``insert_new``: an append, in the same commit, of only the
  ``event_id`` values bronze does not hold yet (found by streaming bronze's ``event_id``
  column). A sender that re-batches its retries (so the same event arrives in two different
  bodies) still ends up as exactly one bronze row per ``event_id``, the first delivery's.

Once its commit has returned, a file moves to ``archive/`` under the landing root (housekeeping:
a crash before the move leaves a committed file that the next run skips and archives), so a run
lists only pending files. Duplicates inside one file are collapsed before the write (first
occurrence wins). Nothing is dropped silently: a line that is not a JSON object with an event id
is handed to the ingest task as a rejection (``ops/quarantine``, naming file and line) while the
rest of its file lands, and a file that is not text at all is quarantined whole.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime

import polars as pl
from botocore.exceptions import BotoCoreError, ClientError

from tasks.connectors.lake import settings_storage_options
from tasks.connectors.s3 import is_s3_uri
from tasks.connectors.sources.base import SourceBatch, WriteMode
from tasks.connectors.webhook import LandedObject, Landing, open_landing
from tasks.core.config_events import EventSource
from tasks.core.drift import Rejection
from tasks.core.settings import load_settings
from tasks.errors import SourceError

__all__ = ["EventBatchReader", "event_batch_id", "landing_for", "open_event_reader"]

logger = logging.getLogger(__name__)

LANDED_FILE_COLUMN = "_landed_file"
LANDED_AT_COLUMN = "_landed_at"


def landing_for(config: EventSource) -> Landing:
    """The landing zone of an event source; S3 credentials come from the environment, as the
    lake's do (``AWS_*`` / ``AUDIENCE_LAKE_S3_*``), never from ``pipeline.yaml``."""
    if not is_s3_uri(config.landing):
        return open_landing(config.landing)
    return open_landing(config.landing, settings_storage_options(load_settings()))


def open_event_reader(name: str, config: EventSource) -> EventBatchReader:
    """The ``SOURCE_READERS`` entry for ``kind: events``."""
    return EventBatchReader(
        landing_for(config),
        source_name=name,
        event_id=config.event_id_column,
        pattern=config.pattern,
        max_files=config.max_files_per_run,
        files_per_batch=config.files_per_commit,
        archive_landed=config.archive_landed,
    )


def event_batch_id(source_name: str, file_name: str) -> str:
    """The Delta app transaction id recording that a landed file reached bronze."""
    return f"{source_name}:{file_name}"


class EventBatchReader:
    """Reads landed NDJSON micro-batches oldest first; see the module docstring.

    Args:
        landing: the landing zone the receiver writes to.
        source_name: names the source in batch ids and errors.
        event_id: the column deliveries are deduped on (bronze's key).
        pattern: glob of landed files to pick up.
        max_files: most files read per run; the rest wait for the next run.
        files_per_batch: files coalesced into one write (one Delta commit records each of them);
            a write per file would cost a scan of bronze's keys per file.
        archive_landed: move each committed file to ``archive/`` under the landing root, so the
            landing zone holds only pending files and a run's cost follows the new batches.
    """

    write_mode: WriteMode = "insert_new"
    cursor_field: str | None = None

    def __init__(
        self,
        landing: Landing,
        *,
        source_name: str,
        event_id: str = "event_id",
        pattern: str = "*.ndjson",
        max_files: int = 10_000,
        files_per_batch: int = 100,
        archive_landed: bool = True,
    ) -> None:
        self._landing = landing
        self._name = source_name
        self.primary_key: str | None = event_id
        self._pattern = pattern
        self._max_files = max_files
        self._files_per_batch = max(1, files_per_batch)
        self._archive_landed = archive_landed
        self.duplicates_in_files = 0
        self.files_read = 0

    def close(self) -> None:
        """Nothing held open between reads."""

    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        del since  # files are tracked one by one (transaction ids), not by a cursor
        try:
            landed = self._landing.list(self._pattern)
        except (OSError, ClientError, BotoCoreError) as exc:
            raise SourceError(
                f"source {self._name!r}: cannot list landing {self._landing.location}: {exc}"
            ) from exc
        pending: list[tuple[LandedObject, str]] = []
        for item in landed:
            batch_id = event_batch_id(self._name, item.name)
            if is_committed(batch_id):
                self._archive(item)  # committed before a crash, not archived yet
                continue
            if len(pending) >= self._max_files:
                break  # bounded run; the rest are picked up next time
            pending.append((item, batch_id))
        for start in range(0, len(pending), self._files_per_batch):
            yield from self._group(pending[start : start + self._files_per_batch], is_committed)

    def _group(
        self, group: list[tuple[LandedObject, str]], is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        """One batch for a group of files (one commit records them all), plus one rejected
        batch per file that is not text at all."""
        key = self.primary_key or "event_id"
        rows: list[tuple[dict[str, object], LandedObject]] = []
        rejections: list[Rejection] = []
        members: list[tuple[LandedObject, str]] = []
        seen: set[str] = set()
        for item, batch_id in group:
            try:
                text = self._text(item)
            except _Vanished:
                # A concurrent run landed and archived it since we listed: nothing to do.
                if is_committed(batch_id):
                    continue
                raise SourceError(
                    f"source {self._name!r}: {item.location} vanished from the landing zone "
                    "before it was landed"
                ) from None
            except UnicodeDecodeError as exc:
                whole = Rejection(
                    rule="unreadable_file",
                    reason=f"{item.location} is not UTF-8 text: {exc}",
                    origin=item.location,
                    version=item.name,
                )
                self.files_read += 1
                yield SourceBatch(
                    _frame([], key), batch_id=batch_id, origin=item.location, rejected=whole
                )
                self._archive(item)  # quarantined whole and recorded: never retried
                continue
            self.files_read += 1
            members.append((item, batch_id))
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                event, problem = _parse_event(line, key)
                if event is None:
                    rejections.append(
                        Rejection(
                            rule="unparseable_record",
                            reason=f"{item.location} line {number}: {problem}",
                            origin=item.location,
                            raw=line,
                            position=number,
                            column=key if problem.startswith("no ") else None,
                        )
                    )
                    continue
                event_id = str(event[key])
                if event_id in seen:
                    self.duplicates_in_files += 1  # counted; the first copy is kept
                    continue
                seen.add(event_id)
                rows.append((event, item))
        if not members:
            return
        first, first_id = members[0]
        more = f" (+{len(members) - 1} more)" if len(members) > 1 else ""
        yield SourceBatch(
            _frame(rows, key),
            batch_id=first_id,
            origin=first.location + more,
            rejections=tuple(rejections),
            covers=tuple(batch_id for _item, batch_id in members[1:]),
        )
        # Resumed only after the caller's write returned. It may have found the group already
        # committed by a concurrent run (and written nothing): archive what is recorded only.
        for item, batch_id in members:
            if is_committed(batch_id):
                self._archive(item)

    def _archive(self, item: LandedObject) -> None:
        if not self._archive_landed:
            return
        try:
            self._landing.archive(item.name)
        except (OSError, ClientError, BotoCoreError) as exc:
            # Housekeeping only: the file is committed, so the next run skips it and retries.
            logger.warning("source %r: could not archive %s: %s", self._name, item.location, exc)

    def _text(self, item: LandedObject) -> str:
        try:
            content = self._landing.read(item.name)
        except FileNotFoundError:
            raise _Vanished from None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise _Vanished from None
            raise SourceError(f"source {self._name!r}: cannot read {item.location}: {exc}") from exc
        except (OSError, BotoCoreError) as exc:
            raise SourceError(f"source {self._name!r}: cannot read {item.location}: {exc}") from exc
        return content.decode("utf-8")


class _Vanished(Exception):
    """The listed file is gone (archived by a concurrent run)."""


def _parse_event(line: str, key: str) -> tuple[dict[str, object] | None, str]:
    """One NDJSON line as an event with a usable id, or None and what is wrong with it."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg})"
    if not isinstance(event, dict):
        return None, f"a JSON {type(event).__name__}, not an object"
    value = event.get(key)
    if value is None or isinstance(value, bool | dict | list) or str(value) == "":
        return None, f"no {key!r} to deduplicate on"
    return event, ""


def _frame(rows: list[tuple[dict[str, object], LandedObject]], key: str) -> pl.DataFrame:
    """Rows as String columns (bronze keeps values as delivered; nested values as JSON), with
    the file each came from and when it landed."""
    columns = list(dict.fromkeys([key, *(k for event, _item in rows for k in event)]))
    data: dict[str, list[str | None]] = {
        c: [_as_text(event.get(c)) for event, _item in rows] for c in columns
    }
    data[LANDED_FILE_COLUMN] = [item.name for _event, item in rows]
    data[LANDED_AT_COLUMN] = [_iso(item.landed_at) for _event, item in rows]
    return pl.DataFrame(data, schema={c: pl.String for c in data})


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

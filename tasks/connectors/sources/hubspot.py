"""HubSpot-style CRM contacts: the search API, incremental on ``lastmodifieddate``.

Wire format: API_NOTES §4.6. Search returns at most ``search_cap`` (10,000) results per query;
near the cap we start a new window at the last seen cursor (``GTE``) and let the merge absorb
the overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tasks.connectors.http import RetryPolicy, send_with_retries
from tasks.connectors.sources.base import SourceBatch, WriteMode, strings_frame
from tasks.errors import SourceError

SEARCH_PATH = "/crm/v3/objects/contacts/search"


def _epoch_ms(value: str) -> int:
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return int(text)  # already epoch ms
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class HubSpotContactsReader:
    write_mode: WriteMode = "merge"

    def __init__(
        self,
        client: httpx.Client,
        *,
        source_name: str,
        properties: list[str],
        primary_key: str = "id",
        cursor_field: str = "lastmodifieddate",
        page_size: int = 100,
        search_cap: int = 10_000,
        overlap: timedelta = timedelta(minutes=5),
        max_pages: int = 100_000,
        rows_per_batch: int = 5_000,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._client = client
        self._name = source_name
        self._properties = list(dict.fromkeys([*properties, cursor_field]))
        self.primary_key = primary_key
        self.cursor_field = cursor_field
        self._page_size = page_size
        self._cap = search_cap
        self._overlap = overlap
        self._max_pages = max_pages
        self._rows_per_batch = rows_per_batch
        self._policy = policy
        self.pages_read = 0

    def close(self) -> None:
        self._client.close()

    @property
    def columns(self) -> list[str]:
        return [self.primary_key, *[p for p in self._properties if p != self.primary_key]]

    def batches(
        self, *, since: str | None, is_committed: Callable[[str], bool]
    ) -> Iterator[SourceBatch]:
        del is_committed  # entity source: idempotent by merge, not by batch
        floor = 0
        if since is not None:
            floor = max(0, _epoch_ms(since) - int(self._overlap.total_seconds() * 1000))
        buffer: dict[str, dict[str, Any]] = {}
        for row in self._rows(floor):
            buffer[row[self.primary_key]] = row  # re-windows repeat rows: last copy wins
            if len(buffer) >= self._rows_per_batch:
                yield SourceBatch(strings_frame(list(buffer.values()), self.columns))
                buffer = {}
        if buffer:
            yield SourceBatch(strings_frame(list(buffer.values()), self.columns))

    def _rows(self, floor: int) -> Iterator[dict[str, Any]]:
        window_start, after = floor, 0
        last_cursor: int | None = None
        for _ in range(self._max_pages):
            page = self._search(window_start, after)
            for record in page["results"]:
                yield self._flatten(record)
                cursor = record.get("properties", {}).get(self.cursor_field)
                if cursor is not None:
                    last_cursor = _epoch_ms(str(cursor))
            next_after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if next_after is None:
                return
            after = int(next_after)
            if after + self._page_size > self._cap:
                if last_cursor is None or last_cursor <= window_start:
                    raise SourceError(
                        f"source {self._name!r}: more than {self._cap} records share "
                        f"{self.cursor_field} >= {window_start}; cannot re-window the search"
                    )
                window_start, after = last_cursor, 0  # GTE: the merge absorbs the overlap
        raise SourceError(f"source {self._name!r}: stopped after max_pages={self._max_pages}")

    def _search(self, window_start: int, after: int) -> dict[str, Any]:
        body = {
            "filterGroups": [
                {
                    "filters": [
                        {
                            "propertyName": self.cursor_field,
                            "operator": "GTE",
                            "value": str(window_start),
                        }
                    ]
                }
            ],
            "sorts": [{"propertyName": self.cursor_field, "direction": "ASCENDING"}],
            "properties": self._properties,
            "limit": self._page_size,
            "after": str(after),
        }
        request = self._client.build_request("POST", SEARCH_PATH, json=body)
        try:
            # Search is a read: safe to resend.
            response = send_with_retries(
                self._client, request, idempotent=True, policy=self._policy
            )
        except httpx.HTTPError as exc:
            raise SourceError(f"source {self._name!r}: POST {request.url} failed: {exc}") from exc
        self.pages_read += 1
        if response.status_code != 200:
            raise SourceError(
                f"source {self._name!r}: POST {request.url} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        try:
            page = response.json()
        except ValueError as exc:
            raise SourceError(
                f"source {self._name!r}: POST {request.url} returned non-JSON "
                f"({response.headers.get('content-type')}): {response.text[:120]!r}"
            ) from exc
        if not isinstance(page, dict) or not isinstance(page.get("results"), list):
            raise SourceError(
                f"source {self._name!r}: POST {request.url}: expected an object with a "
                f"'results' list, got {str(page)[:120]!r}"
            )
        for record in page["results"]:
            if not isinstance(record, dict) or "id" not in record:
                raise SourceError(
                    f"source {self._name!r}: POST {request.url}: record without 'id': "
                    f"{str(record)[:120]!r}"
                )
        return page

    def _flatten(self, record: dict[str, Any]) -> dict[str, Any]:
        properties = record.get("properties") or {}
        row = {p: properties.get(p) for p in self._properties}
        row[self.primary_key] = str(record["id"])
        return row

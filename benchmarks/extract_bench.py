"""Extraction benchmark: the declarative REST source (HubSpot preset) against the loopback CRM.

Not a test. Starts the CRM stand-in on 127.0.0.1 with N generated contacts, extracts all of
them through ``kind: rest`` / ``preset: hubspot_contacts`` (search API, 200 per page, paged by
keyset on lastmodifieddate, OAuth2 client credentials) and prints rows/s, pages/s, wall time and
the share of wall time spent waiting on the proactive rate budget.

    .venv/bin/python -m benchmarks.extract_bench --records 100000 --rps 4
    .venv/bin/python -m benchmarks.extract_bench --records 1000000 --rps 0   # no budget

``--rps 4`` is HubSpot's documented search limit (docs/platforms.md, *Rate budgets*), so a budgeted
run is bound by it: ``pages / rps`` seconds at least. ``--rps 0`` measures the engine and the
stand-in.

Two things keep the harness out of the measurement: records are generated directly as
stand-in objects (no Faker-style messiness, no deep copies), and the stand-in answers the
preset's query (``lastmodifieddate GTE x``, ascending) from a sorted index instead of its
general filter-and-sort over every contact per page, which is quadratic over a full extract.
Everything the client sees — routes, auth, body validation, paging, the 10k window and its 400
— is the stand-in's own code.
"""

from __future__ import annotations

import argparse
import bisect
import os
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from infra.sandbox.crm import CrmStandIn, _comparable
from infra.sandbox.generate import iso_millis
from tasks.connectors.sources.rest import RestReader
from tasks.core.config import parse_pipeline
from tasks.core.config_rest import RestSource

CURSOR = "lastmodifieddate"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def make_contacts(count: int) -> list[dict[str, Any]]:
    """``count`` HubSpot-shaped contacts with strictly increasing ``lastmodifieddate``."""
    contacts = []
    for index in range(count):
        contact_id = str(1001 + index)
        stamp = iso_millis(EPOCH + timedelta(milliseconds=37 * index))
        contacts.append(
            {
                "id": contact_id,
                "properties": {
                    "hs_object_id": contact_id,
                    "email": f"person{index}@example.com",
                    "firstname": f"First{index % 997}",
                    "lastname": f"Last{index % 991}",
                    "country": ("DE", "FR", "GB", "NL")[index % 4],
                    CURSOR: stamp,
                    "createdate": stamp,
                },
                "createdAt": stamp,
                "updatedAt": stamp,
                "archived": False,
            }
        )
    return contacts


class _Tail(Sequence[dict[str, Any]]):
    """``contacts[start:]`` without copying (the stand-in only takes len() and one slice)."""

    def __init__(self, contacts: list[dict[str, Any]], start: int) -> None:
        self._contacts, self._start = contacts, start

    def __len__(self) -> int:
        return len(self._contacts) - self._start

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self._contacts[self._start + start : self._start + stop : step]
        return self._contacts[self._start + index]


class IndexedCrmStandIn(CrmStandIn):
    """The CRM stand-in with a sorted index for the preset's search (see module docstring)."""

    def __init__(self, contacts: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__([], **kwargs)
        self._contacts = {c["id"]: c for c in contacts}  # already normalised: no deep copy
        self._ordered = sorted(contacts, key=lambda c: (c["properties"][CURSOR], int(c["id"])))
        self._stamps = [_comparable(CURSOR, c["properties"][CURSOR]) for c in self._ordered]
        self.indexed_queries = 0

    def _matching(self, groups: Any, sort: Any) -> Any:
        filters = groups[0] if len(groups) == 1 else []
        if (
            sort == (CURSOR, False)
            and len(filters) == 1
            and filters[0].prop == CURSOR
            and filters[0].operator == "GTE"
        ):
            self.indexed_queries += 1
            start = bisect.bisect_left(self._stamps, filters[0].value)
            return _Tail(self._ordered, start)
        return super()._matching(groups, sort)


def bench_config(url: str, rps: float, concurrency: int) -> RestSource:
    budget = "null" if rps <= 0 else str(rps)
    text = f"""
sources:
  crm:
    kind: rest
    role: contacts
    preset: hubspot_contacts
    base_url: {url}
    auth: {{type: oauth2_client_credentials, token_url: /oauth/v1/token, client_id: bench,
            client_secret: {{secret: bench_crm_secret}}}}
    options: {{properties: [email, firstname, lastname, country], page_size: 200}}
    budget: {{requests_per_second: {budget}, max_concurrency: {concurrency}}}
    paginator: {{max_pages: 1000000}}
    rows_per_batch: 20000
"""
    source = parse_pipeline(text, env={}).sources["crm"]
    assert isinstance(source, RestSource)
    return source


def _batches(reader: RestReader, seen: set[str]) -> Iterator[int]:
    for batch in reader.batches(since=None, is_committed=lambda _b: False):
        seen.update(batch.frame["id"].to_list())
        yield batch.frame.height


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument(
        "--rps",
        type=float,
        default=4.0,
        help="client budget in requests/s (HubSpot search: 4); 0 = no budget",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="budget max_concurrency")
    parser.add_argument(
        "--server-rps", type=float, default=None, help="make the stand-in enforce this limit"
    )
    args = parser.parse_args(argv)

    os.environ["AUDIENCE_LAKE_SECRET_BENCH_CRM_SECRET"] = "bench-secret"
    started = time.perf_counter()
    contacts = make_contacts(args.records)
    server = IndexedCrmStandIn(
        contacts,
        client_id="bench",
        client_secret="bench-secret",
        requests_per_second=args.server_rps,
    )
    setup = time.perf_counter() - started
    with server:
        reader = RestReader(bench_config(server.url, args.rps, args.concurrency), source_name="crm")
        seen: set[str] = set()
        started = time.perf_counter()
        try:
            rows = sum(_batches(reader, seen))
        finally:
            reader.close()
        wall = time.perf_counter() - started
    stats, budget = reader.stats, reader.budget.stats
    throttled = sum(1 for _m, path in server.requests if path != "/oauth/v1/token") - stats.pages
    print(f"records in stand-in     {args.records:,}  (generated + indexed in {setup:.1f}s)")
    print(f"budget                  {args.rps or 'none'} req/s, max_concurrency {args.concurrency}")
    print(
        f"rows extracted          {rows:,}  (re-read at keyset boundaries: {rows - args.records})"
    )
    print(f"pages                   {stats.pages:,}")
    print(f"requests beyond pages   {throttled}  (retries after 429/5xx)")
    print(f"wall time               {wall:.1f}s")
    print(f"rows/s                  {rows / wall:,.0f}")
    print(f"pages/s                 {stats.pages / wall:.2f}")
    print(
        f"waiting on rate budget  {budget.waited_seconds:.1f}s = "
        f"{100 * budget.waited_seconds / wall:.1f}% of wall time"
    )
    if len(seen) != args.records:
        print(f"ERROR: {len(seen):,} distinct ids extracted, expected {args.records:,}")
        return 1
    print(f"distinct ids            {len(seen):,} (all records, none missing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

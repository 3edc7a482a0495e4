"""Event path benchmark: webhook receiver -> landed micro-batches -> ``bronze/<source>``.

Not a test. Starts the webhook receiver on 127.0.0.1 (HMAC signatures on), POSTs ``--batches``
signed batches of ``--events`` events from ``--senders`` concurrent senders (every batch repeats
``--overlap`` events of the previous one, as a re-batching sender's retry would), then lands
everything with one run of the real ingest task (``tasks.ingest.ingest_source``, without a
Prefect server) into a local lake, and prints:

* receiver: batches/s and events/s accepted, and the POST round-trip p50 / p99 / max;
* landing: wall time of the ingest run, files/s and events/s into bronze, the share of events
  that were redeliveries, and the bronze row count (== distinct event ids, or it says so).

    .venv/bin/python -m benchmarks.events_bench --batches 200 --events 100 --senders 4

With the ``land-events`` deployment, an event's time to bronze is the trigger latency of the
Prefect automation plus a flow run's start-up plus this landing time for what is pending.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

SECRET = b"bench-secret"


def _batch(number: int, size: int, overlap: int) -> list[dict[str, object]]:
    start = number * (size - overlap)
    return [
        {
            "event_id": f"evt_{n:09d}",
            "event_type": "page_view",
            "occurred_at": "2026-11-01T00:00:00Z",
            "url": f"https://shop.example.com/item-{n % 500}",
            "anonymous_id": f"anon_{n % 9973:06d}",
        }
        for n in range(start, start + size)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--events", type=int, default=100, help="events per batch")
    parser.add_argument("--overlap", type=int, default=10, help="events repeated per batch")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders")
    args = parser.parse_args(argv)
    if not 0 <= args.overlap < args.events:
        parser.error("--overlap must be >= 0 and < --events")

    work = Path(tempfile.mkdtemp(prefix="events-bench-"))
    os.environ["AUDIENCE_LAKE_LAKE_URI"] = str(work / "lake")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")

    from prefect.logging import disable_run_logger

    from tasks.connectors.webhook import LocalLanding, WebhookReceiver, sign
    from tasks.core.config import parse_pipeline
    from tasks.ingest import ingest_source
    from tasks.resources import open_lake

    landing = work / "landing"
    bodies = [
        json.dumps(_batch(n, args.events, args.overlap)).encode() for n in range(args.batches)
    ]
    latencies: list[float] = []
    lock = threading.Lock()
    next_batch = iter(range(args.batches))

    with WebhookReceiver(LocalLanding(landing), source_name="web_events", secret=SECRET) as rx:

        def sender() -> None:
            with httpx.Client(timeout=30) as client:
                for _ in range(args.batches):  # bounded; the shared iterator ends sooner
                    with lock:
                        number = next(next_batch, None)
                    if number is None:
                        return
                    body = bodies[number]
                    started = time.perf_counter()
                    ts = str(int(time.time()))
                    headers = {
                        "X-Signature-SHA256": sign(SECRET, body, ts),
                        "X-Signature-Timestamp": ts,
                    }
                    response = client.post(rx.url, content=body, headers=headers)
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    with lock:
                        latencies.append(elapsed)

        started = time.perf_counter()
        threads = [threading.Thread(target=sender) for _ in range(args.senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        receive_s = time.perf_counter() - started

    sent_events = args.batches * args.events
    distinct = args.batches * (args.events - args.overlap) + args.overlap
    ordered = sorted(latencies)
    print(f"receiver: {len(latencies)} batches of {args.events} events, {args.senders} senders")
    print(
        f"  {len(latencies) / receive_s:,.0f} batches/s, {sent_events / receive_s:,.0f} events/s"
        f" accepted in {receive_s:.2f}s"
    )
    print(
        f"  POST round trip: p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )

    config = parse_pipeline(
        json.dumps(
            {
                "sources": {
                    "crm": {"kind": "files", "role": "contacts", "path": "x", "format": "csv"},
                    "web_events": {"kind": "events", "landing": str(landing)},
                }
            }
        )
    )
    started = time.perf_counter()
    with disable_run_logger():
        report = ingest_source.fn(
            "web_events", config.sources["web_events"], run_id="bench", started_at=datetime.now(UTC)
        )
    land_s = time.perf_counter() - started
    rows = open_lake().read("bronze/web_events").height
    files = len(list((landing / "archive").glob("*.ndjson")))  # committed, then archived
    print(f"landing: {files} files in {report.batches} commit(s), {land_s:.2f}s")
    print(
        f"  {files / land_s:,.1f} files/s, {sent_events / land_s:,.0f} events/s read, "
        f"{(sent_events - distinct) / sent_events:.1%} of them redeliveries"
    )
    verdict = "== distinct event ids" if rows == distinct else f"!= {distinct} distinct ids"
    print(f"  bronze rows: {rows:,} {verdict}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if rows == distinct else 1


if __name__ == "__main__":
    raise SystemExit(main())

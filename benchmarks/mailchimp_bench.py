"""Mailchimp destination: what concurrent connections buy against the stand-in's ceiling.

``python -m benchmarks.mailchimp_bench [--contacts N] [--latency S] [--connections 1 10]``

Starts the Mailchimp stand-in in a child process on 127.0.0.1 (so it does not share this
process's GIL with the adapter) with its documented ceiling of 10 simultaneous connections
enforced (an 11th request in flight gets 429) and ``--latency`` seconds added to every answer
(what a real batch call of 500 members spends at the platform; 0 measures the stand-in's own
work). For each ``--connections`` value it upserts ``--contacts`` members with four merge
fields and a tag, batches of 500, on a fresh list, and prints the wall time, contacts/s, batch
calls, the peak of requests in flight and how many requests the ceiling refused. Asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx

from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.destinations.mailchimp import Mailchimp
from tasks.connectors.destinations.protocol import FieldSpec, Member
from tasks.connectors.http import build_client

KEY = "bench-key-us1"
FIELDS = [FieldSpec("LTV", "number"), FieldSpec("SEEN", "date"), FieldSpec("CATEGORY", "text")]


def _members(count: int) -> list[Member]:
    return [
        Member(
            f"k{i}",
            f"person{i}@example.com",
            {"FNAME": f"P{i}", "LTV": round(i * 1.37, 2), "SEEN": "2026-10-01", "CATEGORY": "a"},
            ("bench",),
        )
        for i in range(count)
    ]


def serve(list_id: str, latency: float) -> None:
    """Child process: serve one list, print the URL, print stats when stdin closes."""
    with MailchimpStandIn(api_key=KEY, lists=[list_id], response_delay=latency) as server:
        print(server.url, flush=True)
        sys.stdin.read()
        stats = {
            "calls": server.requests.count(("POST", f"/3.0/lists/{list_id}")),
            "peak_in_flight": server.max_in_flight,
            "refused_429": server.rejected_over_ceiling,
        }
        print(json.dumps(stats), flush=True)


def run(contacts: int, latency: float, connections: int) -> dict[str, float]:
    """One upsert of ``contacts`` members on ``connections`` connections; its figures."""
    list_id = f"bench-{connections}"
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mailchimp_bench", "--serve", list_id, str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        url = child.stdout.readline().strip()
        client = build_client(url, auth=httpx.BasicAuth("bench", KEY))
        adapter = Mailchimp(client, max_connections=connections)
        adapter.ensure_fields(list_id, FIELDS, create=True)
        members = _members(contacts)
        started = time.perf_counter()
        failed = sum(not r.ok for r in adapter.upsert(list_id, members))
        elapsed = time.perf_counter() - started
        adapter.close()
        child.stdin.close()
        stats = json.loads(child.stdout.readline())
    finally:
        child.wait(timeout=30)
    return {"seconds": elapsed, "contacts_per_s": contacts / elapsed, "failed": failed, **stats}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--serve", nargs=2, metavar=("LIST", "LATENCY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], float(args.serve[1]))
        return
    print(f"{args.contacts} contacts, {args.latency}s added per call, ceiling 10 connections")
    print("connections  seconds  contacts/s  calls  peak in flight  refused(429)  failed")
    for connections in args.connections:
        r = run(args.contacts, args.latency, connections)
        print(
            f"{connections:>11}  {r['seconds']:7.2f}  {r['contacts_per_s']:10.0f}  "
            f"{r['calls']:5.0f}  {r['peak_in_flight']:14.0f}  {r['refused_429']:12.0f}  "
            f"{r['failed']:6.0f}"
        )


if __name__ == "__main__":
    main()

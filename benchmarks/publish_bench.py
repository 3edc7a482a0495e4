"""Publish benchmark: the real publish engine against each platform's stand-in at its ceiling.

``python -m benchmarks.publish_bench [--contacts 100000] [--change 0.01] [--platforms ...]``

For each platform (Mailchimp, Klaviyo, HubSpot) it builds a lake in a temporary directory
(``silver/contacts`` and one ``gold/audience_members`` segment of ``--contacts`` opted-in
people), starts the platform's stand-in in a child process on 127.0.0.1 (its own interpreter:
it does not share this process's GIL) with the documented ceiling enforced, and runs
:func:`tasks.publishing.publish_segment` - the body of the Prefect publish task, with the run
logger disabled - twice: a first publish of everyone, then a rerun after ``--change`` of the
people got a new first name. It prints, per platform and run: contacts sent, API calls the
stand-in received, calls refused with 429, wall time, contacts/s, the ceiling in contacts/s and
the achieved share of it. Asserts nothing about speed.

The ceiling is the fastest schedule the documented limits allow for the calls a publish cannot
avoid, computed by :func:`ceiling_seconds`:

* **Mailchimp**: 10 simultaneous connections (an 11th request in flight gets 429), 500 members
  per batch call. Mailchimp documents no request rate, so the stand-in holds every answer for
  ``--mailchimp-latency`` seconds (what a 500-member batch call spends at the platform); the
  ceiling is ten calls at a time, each that long: ``10 * 500 / latency`` contacts/s.
* **HubSpot**: 100 requests per rolling 10 seconds (the Free/Starter private-app burst limit),
  100 inputs per batch call; an upsert batch is two requests (the batch upsert and the list
  membership add). ``--hubspot-time-scale`` runs the window that many times faster (10 s / scale
  on the stand-in, and the same for the adapter's budget); the ceiling uses the scaled window.
* **Klaviyo**: the import-job class of calls (job create, job status, import errors) has a burst
  of 10 per second and a steady 150 per minute. A job costs at least one create and the status
  reads until it finishes (the stand-in finishes a job on its second read; a job with no
  failures needs no import-errors read). ``--klaviyo-time-scale`` shortens both windows on the
  stand-in and in the adapter's pacer; ``--klaviyo-batch`` sets the profiles per job (at most
  10,000: with full jobs a 100,000-contact publish is 30 calls, far under the limits, so the
  ceiling would say nothing). The ceiling treats the windows as rolling (a client that must
  never meet a 429 plans so); Klaviyo's are fixed, which can admit up to one window more at a
  boundary.

A time-scaled window also scales the send window of the engine (``publish.window_batches``,
eight rounds of the platform's connections by default, times the scale), so that a window's two
ledger commits weigh what they would against the unscaled platform. Every run is bounded by
``--timeout`` seconds (the stand-in is stopped, so the engine's calls fail).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

KEY = "bench-secret-us1"
SEGMENT = "bench"
LISTS = {"mailchimp": "list-bench", "klaviyo": "KLBNCH", "hubspot": "42"}
HUBSPOT_WINDOW = 10.0
HUBSPOT_BURST = 100
HUBSPOT_SUBSCRIPTION = 1001  # the stand-in's default email subscription type
KLAVIYO_IMPORT_RATES = ((10, 1.0), (150, 60.0))  # (calls, seconds): burst and steady
MAILCHIMP_CONNECTIONS = 10


# -- the stand-in, in a child process ----------------------------------------------------------
def serve(platform: str, params: dict[str, Any]) -> None:
    """Child: start one stand-in, print its URL, answer ``stats`` lines until stdin closes."""
    server: Any
    if platform == "mailchimp":
        from infra.sandbox.mailchimp import MailchimpStandIn

        server = MailchimpStandIn(
            api_key=KEY, lists=[LISTS[platform]], response_delay=params["latency"]
        )
    elif platform == "hubspot":
        from infra.sandbox.hubspot_marketing import HubSpotMarketingStandIn

        server = HubSpotMarketingStandIn(
            token=KEY,
            lists=[LISTS[platform]],
            burst=HUBSPOT_BURST,
            window_seconds=HUBSPOT_WINDOW / params["time_scale"],
            record_exchanges=False,
        )
    else:
        from infra.sandbox.klaviyo import KlaviyoStandIn

        server = KlaviyoStandIn(
            api_key=KEY, lists=[LISTS[platform]], time_scale=params["time_scale"]
        )
    with server:
        print(server.url, flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(_stats(platform, server)), flush=True)


def _stats(platform: str, server: Any) -> dict[str, Any]:
    requests: list[tuple[str, str]] = list(server.requests)
    refused = {
        "mailchimp": lambda: server.rejected_over_ceiling,
        "hubspot": lambda: server.rate_limited,
        "klaviyo": lambda: server.rate_limited,
    }[platform]()
    if platform == "mailchimp":
        limited = [r for r in requests if r == ("POST", f"/3.0/lists/{LISTS[platform]}")]
    elif platform == "klaviyo":
        limited = [r for r in requests if r[1].startswith("/api/profile-bulk-import-jobs")]
    else:
        limited = requests
    return {"calls": len(requests), "limited_calls": len(limited), "refused": refused}


class StandIn:
    """The parent's handle on a stand-in child: its URL, its counters, a bounded lifetime."""

    def __init__(self, platform: str, params: dict[str, Any]) -> None:
        self.platform = platform
        command = [sys.executable, "-m", "benchmarks.publish_bench", "--serve", platform,
                   "--serve-params", json.dumps(params)]  # fmt: skip
        self._child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._child.stdout is not None
        self.url = self._child.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"{platform} stand-in did not start (said {self.url!r})")

    def stats(self) -> dict[str, Any]:
        assert self._child.stdin is not None and self._child.stdout is not None
        self._child.stdin.write("stats\n")
        self._child.stdin.flush()
        answer: dict[str, Any] = json.loads(self._child.stdout.readline())
        return answer

    def stop(self) -> None:
        if self._child.poll() is None:
            self._child.kill()
        self._child.wait(timeout=30)


@contextmanager
def deadline(seconds: float, stand_in: StandIn) -> Iterator[None]:
    """Stop the stand-in if the run takes longer than ``seconds`` (its calls then fail)."""
    timer = threading.Timer(seconds, stand_in.stop)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# -- the ceiling -------------------------------------------------------------------------------
def ceiling_seconds(
    calls: int,
    *,
    concurrency: int | None = None,
    latency: float = 0.0,
    windows: Sequence[tuple[int, float]] = (),
) -> float:
    """The earliest time ``calls`` can all have finished: at most ``concurrency`` at once, each
    ``latency`` long, and at most ``n`` starts in any ``seconds`` for each ``(n, seconds)``."""
    starts: list[float] = []
    finishes: deque[float] = deque()
    for i in range(calls):
        start = 0.0
        if concurrency is not None and len(finishes) >= concurrency:
            start = max(start, finishes.popleft())
        for n, seconds in windows:
            if i >= n:
                start = max(start, starts[i - n] + seconds)
        starts.append(start)
        finishes.append(start + latency)
        if concurrency is not None:
            finishes = deque(sorted(finishes))
    return max(finishes, default=0.0)


@dataclass(frozen=True)
class Ceiling:
    seconds: float
    """For the calls the first run cannot avoid."""
    model: str


def ceiling(platform: str, contacts: int, args: argparse.Namespace) -> Ceiling:
    if platform == "mailchimp":
        calls = math.ceil(contacts / 500)
        # The merge-field read before the first batch is one more call, before any batch.
        seconds = args.mailchimp_latency + ceiling_seconds(
            calls, concurrency=MAILCHIMP_CONNECTIONS, latency=args.mailchimp_latency
        )
        model = (
            f"{MAILCHIMP_CONNECTIONS} connections x 500 members / {args.mailchimp_latency:g} s "
            "per call (stand-in latency), after one merge-field read"
        )
        return Ceiling(seconds, model)
    if platform == "hubspot":
        window = HUBSPOT_WINDOW / args.hubspot_time_scale
        calls = 2 * math.ceil(contacts / 100) + 1  # upsert + list add per 100; one fields read
        seconds = ceiling_seconds(calls, windows=[(HUBSPOT_BURST, window)])
        model = (
            f"{HUBSPOT_BURST} requests per {window:g} s (10 s / {args.hubspot_time_scale:g}), "
            "2 per 100 contacts"
        )
        return Ceiling(seconds, model)
    scale = args.klaviyo_time_scale
    jobs = math.ceil(contacts / args.klaviyo_batch)
    windows = [(n, s / scale) for n, s in KLAVIYO_IMPORT_RATES]
    seconds = ceiling_seconds(3 * jobs, windows=windows)
    model = (
        f"import calls {windows[0][0]}/{windows[0][1]:g} s and {windows[1][0]}/"
        f"{windows[1][1]:g} s (1 s and 60 s / {scale:g}), 3 per job of {args.klaviyo_batch}"
    )
    return Ceiling(seconds, model)


# -- the lake and the config -------------------------------------------------------------------
def write_audience(lake: Any, contacts: int, *, renamed: int = 0) -> None:
    """``silver/contacts`` and one segment of ``gold/audience_members``; every ``renamed``-th
    person (0: nobody) gets a new first name."""
    from tasks.core.tables import AUDIENCE, CONTACTS

    n = pl.int_range(0, contacts, eager=True)
    people = pl.DataFrame({"n": n}).with_columns(
        contact_key=pl.format("v1:{}", pl.col("n").cast(pl.String).str.zfill(64)),
        email=pl.format("person{}@example.com", pl.col("n")),
    )
    renamed_now = (pl.col("n") % renamed == 0) if renamed else pl.lit(False)
    first = pl.when(renamed_now).then(pl.format("Renamed{}", "n")).otherwise(pl.format("P{}", "n"))
    lake.overwrite(
        CONTACTS,
        people.select("contact_key", "email", consent_status=pl.lit("subscribed")),
    )
    lake.overwrite(
        AUDIENCE,
        people.select(
            segment=pl.lit(SEGMENT), contact_key="contact_key", email="email",
            first_name=first, last_name=pl.lit("Bench"),
        ),
    )  # fmt: skip


def pipeline_yaml(platform: str, url: str, args: argparse.Namespace) -> str:
    block = {
        "mailchimp": "kind: mailchimp\n    api_key: {secret: bench_key}",
        "klaviyo": (
            "kind: klaviyo\n    allow_insecure_http: true\n    api_key: {secret: bench_key}\n"
            f"    batch_size: {args.klaviyo_batch}\n"
            f"    poll_interval_seconds: {2.0 / args.klaviyo_time_scale:g}"
        ),
        "hubspot": (
            "kind: hubspot\n    allow_insecure_http: true\n    token: {secret: bench_key}\n"
            f"    subscription_type_id: {HUBSPOT_SUBSCRIPTION}"
        ),
    }[platform]
    return f"""
version: 1
sources:
  people: {{kind: files, role: contacts, path: ./unused, format: csv}}
segments:
  - name: {SEGMENT}
    where: order_count >= 1
destinations:
  {platform}:
    {block}
    base_url: {url}
    audiences:
      {SEGMENT}: "{LISTS[platform]}"
"""


def opener(platform: str, args: argparse.Namespace) -> Callable[[Any], Any]:
    """The engine's ``open_sink``: the real adapter, its rate budget on the stand-in's clock."""
    from tasks.connectors.destinations import open_platform
    from tasks.connectors.destinations.hubspot import (
        WINDOW_SLACK_SECONDS,
        RollingWindowBudget,
        open_hubspot,
    )
    from tasks.connectors.destinations.klaviyo import open_klaviyo

    if platform == "hubspot":
        scale = args.hubspot_time_scale
        window = (HUBSPOT_WINDOW + WINDOW_SLACK_SECONDS) / scale
        return lambda config: open_hubspot(
            config, budget=RollingWindowBudget(HUBSPOT_BURST, window)
        )
    if platform == "klaviyo":
        return lambda config: open_klaviyo(config, time_scale=args.klaviyo_time_scale)
    return open_platform


# -- one platform ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    platform: str
    name: str
    sent: int
    failed: int
    calls: int
    refused: int
    seconds: float
    ceiling: Ceiling | None
    window: int


def bench_platform(platform: str, args: argparse.Namespace, root: Path) -> list[Run]:
    from prefect.logging import disable_run_logger

    from tasks.connectors.lake import Lake
    from tasks.core.config import load_pipeline
    from tasks.publishing import publish_segment
    from tasks.send_window import window_size

    scale = {"mailchimp": 1.0, "hubspot": args.hubspot_time_scale,
             "klaviyo": args.klaviyo_time_scale}[platform]  # fmt: skip
    params = {"latency": args.mailchimp_latency, "time_scale": scale}
    stand_in = StandIn(platform, params)
    runs: list[Run] = []
    try:
        lake = Lake(str(root / platform / "lake"))
        write_audience(lake, args.contacts)
        config_path = root / platform / "pipeline.yaml"
        config_path.write_text(pipeline_yaml(platform, stand_in.url, args))
        config = load_pipeline(str(config_path), env={"AUDIENCE_LAKE_SECRET_BENCH_KEY": KEY})
        destination = config.destinations[platform]
        window = window_size(_limits(platform)) * math.ceil(scale)
        settings = replace_publish(config.publish, window)
        change = max(1, round(1 / args.change)) if args.change > 0 else 0
        for name, renamed in (("first", 0), (f"rerun {args.change:.0%} changed", change)):
            if renamed:
                write_audience(lake, args.contacts, renamed=renamed)
            before = stand_in.stats()
            started = time.monotonic()
            with deadline(args.timeout, stand_in), disable_run_logger():
                report = publish_segment(
                    lake, platform, destination, SEGMENT, run_id=f"bench-{name[:5]}",
                    settings=settings, open_sink=opener(platform, args),
                )  # fmt: skip
            seconds = time.monotonic() - started
            after = stand_in.stats()
            runs.append(
                Run(
                    platform, name, report.sent, report.failed,
                    after["calls"] - before["calls"], after["refused"] - before["refused"],
                    seconds, ceiling(platform, report.sent, args) if not renamed else None,
                    window,
                )
            )  # fmt: skip
    finally:
        stand_in.stop()
    return runs


def _limits(platform: str) -> Any:
    from tasks.connectors.destinations.hubspot import HubSpot
    from tasks.connectors.destinations.klaviyo import Klaviyo
    from tasks.connectors.destinations.mailchimp import Mailchimp

    return {
        "mailchimp": Mailchimp.limits,
        "klaviyo": Klaviyo.limits,
        "hubspot": HubSpot.limits,
    }[platform]


def replace_publish(publish: Any, window: int) -> Any:
    return publish.model_copy(update={"window_batches": window})


# -- main --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--change", type=float, default=0.01, help="share renamed for the rerun")
    parser.add_argument("--platforms", nargs="+", default=["mailchimp", "klaviyo", "hubspot"],
                        choices=["mailchimp", "klaviyo", "hubspot"])  # fmt: skip
    parser.add_argument("--mailchimp-latency", type=float, default=4.0)
    parser.add_argument("--hubspot-time-scale", type=float, default=2.0)
    parser.add_argument("--klaviyo-time-scale", type=float, default=1.0)
    parser.add_argument("--klaviyo-batch", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per publish")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--serve-params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, json.loads(args.serve_params))
        return 0
    if not 1 <= args.contacts <= 1_000_000:
        parser.error("--contacts must be 1..1,000,000")
    if not 0 <= args.change <= 1:
        parser.error("--change must be 0..1")
    os.environ["AUDIENCE_LAKE_SECRET_BENCH_KEY"] = KEY
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="publish-bench-") as tmp:
        for platform in args.platforms:
            runs += bench_platform(platform, args, Path(tmp))
            _print(runs[-2:])
    print()
    print(f"publish benchmark: {args.contacts:,} contacts per platform, rerun after "
          f"{args.change:.0%} renamed")  # fmt: skip
    _print(runs, header=True)
    for run in runs:
        if run.ceiling is not None:
            print(f"  {run.platform} ceiling: {run.ceiling.model}; engine window "
                  f"{run.window} batches")  # fmt: skip
    return 0


def _print(runs: Sequence[Run], *, header: bool = False) -> None:
    if header:
        print(f"{'platform':<10} {'run':<18} {'sent':>8} {'failed':>6} {'calls':>6} {'429':>4} "
              f"{'wall s':>7} {'contacts/s':>10} {'ceiling/s':>10} {'share':>6}")  # fmt: skip
    for run in runs:
        rate = run.sent / run.seconds if run.seconds > 0 else 0.0
        if run.ceiling is not None and run.ceiling.seconds > 0:
            top = run.sent / run.ceiling.seconds
            ceiling_text, share = f"{top:>10,.0f}", f"{rate / top:>6.0%}"
        else:
            ceiling_text, share = f"{'-':>10}", f"{'-':>6}"
        print(f"{run.platform:<10} {run.name:<18} {run.sent:>8,} {run.failed:>6,} "
              f"{run.calls:>6,} {run.refused:>4} {run.seconds:>7.1f} {rate:>10,.0f} "
              f"{ceiling_text} {share}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

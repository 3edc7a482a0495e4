"""The world the publish fault tests crash into: a lake with two audiences and a Mailchimp.

The lake holds only what publishing reads (``silver/contacts``, ``gold/audience_members``,
``ops/sync_ledger``, ``ops/publish_leases``), written as real Delta tables; the Mailchimp
stand-in runs in the test process on loopback and logs every member payload it receives. Child
processes (:mod:`tests.faults.publish_child`) run the real publish code against both.

A scenario has two phases: :func:`initial` people are published once (in the test process);
then :func:`changed` people — some opted out, some renamed, some new — are the data of the run
under test, which plans unsubscribes, updates and new subscribes in several platform batches.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.sync import LEDGER_KEYS, LEDGER_SCHEMA
from tests.faults.world import ROOT, Child

LISTS = {"seg_a": "list-a", "seg_b": "list-b"}
BATCH_SIZE = 5
WINDOW_BATCHES = 2
"""Batches sent at once between two ledger commits: the crash bound is one window."""
API_KEY = "fault-key-us1"
PEOPLE = 20


def pipeline_yaml(mailchimp_url: str, *, lease_seconds: float, lease_wait_seconds: float) -> str:
    """A config whose only job here is the destination (a source is required by the schema)."""
    audiences = "\n".join(f"      {segment}: {list_id}" for segment, list_id in LISTS.items())
    return f"""
version: 1
sources:
  people:
    kind: files
    role: contacts
    path: ./unused
    format: csv
segments:
  - name: seg_a
    where: order_count >= 1
  - name: seg_b
    where: order_count >= 2
destinations:
  mailchimp:
    kind: mailchimp
    base_url: {mailchimp_url}
    api_key: {{secret: fault_mailchimp}}
    batch_size: {BATCH_SIZE}
    audiences:
{audiences}
publish:
  lease_seconds: {lease_seconds}
  lease_wait_seconds: {lease_wait_seconds}
  window_batches: {WINDOW_BATCHES}
"""


@dataclass(frozen=True)
class Person:
    n: int
    consent: str
    segments: tuple[str, ...]
    first_name: str

    @property
    def key(self) -> str:
        return f"v1:{self.n:064x}"

    @property
    def email(self) -> str:
        return f"person{self.n}@example.com"


def initial() -> list[Person]:
    """Everyone opted in; the first 12 in seg_a, every other one in seg_b."""
    return [
        Person(
            n,
            "subscribed",
            tuple(s for s, on in (("seg_a", n < 12), ("seg_b", n % 2 == 0)) if on),
            f"P{n}",
        )
        for n in range(PEOPLE)
    ]


def changed() -> list[Person]:
    """Opt-outs (n % 5 == 1), renames (n % 4 == 3) and newcomers (n >= 12 join seg_a)."""
    people = []
    for p in initial():
        consent = "unsubscribed" if p.n % 5 == 1 else p.consent
        name = f"{p.first_name}-renamed" if p.n % 4 == 3 else p.first_name
        segments = tuple(sorted(set(p.segments) | ({"seg_a"} if p.n >= 12 else set())))
        if consent != "subscribed":
            segments = ()
        people.append(Person(p.n, consent, segments, name))
    return people


def write_people(lake: Lake, people: list[Person]) -> None:
    """``silver/contacts`` and ``gold/audience_members`` for ``people`` (replacing both)."""
    contacts = pl.DataFrame(
        [{"contact_key": p.key, "email": p.email, "consent_status": p.consent} for p in people],
        schema={"contact_key": pl.String(), "email": pl.String(), "consent_status": pl.String()},
    )
    members = pl.DataFrame(
        [
            {
                "segment": s,
                "contact_key": p.key,
                "email": p.email,
                "first_name": p.first_name,
                "last_name": "Test",
            }
            for p in people
            for s in p.segments
        ],
        schema={
            k: pl.String() for k in ("segment", "contact_key", "email", "first_name", "last_name")
        },
    )
    lake.overwrite("silver/contacts", contacts)
    lake.overwrite("gold/audience_members", members)


def ledger_view(lake: Lake) -> pl.DataFrame:
    """The sync ledger without the columns that differ between runs (run id, time)."""
    return lake.read("ops/sync_ledger").drop("run_id", "synced_at").sort(LEDGER_KEYS)


class PublishChild(Child):
    """A child running :mod:`tests.faults.publish_child`, followed line by line."""

    module = "tests.faults.publish_child"
    timeout_s = 120.0

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(line[len("report "):]) for line in self.lines
                if line.startswith("report ")]  # fmt: skip

    def points(self) -> list[str]:
        """The commit and send lines, in order: every point a crash can follow."""
        return [line for line in self.lines if line.startswith(("commit ", "send "))]


class PublishChildPool:
    """One warm child (imports done) ready at all times."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._env = dict(os.environ)
        self._env.update({"PREFECT_HOME": str(root / "prefect"), "PYTHONPATH": str(ROOT),
                          "PYTHONUNBUFFERED": "1",
                          "AUDIENCE_LAKE_SECRET_FAULT_MAILCHIMP": API_KEY})  # fmt: skip
        self._count = 0
        self._warm: list[PublishChild] = []

    def _spawn(self) -> PublishChild:
        self._count += 1
        return PublishChild(self._env, self._root / f"publish-child-{self._count}.err")

    def take(self, spec: dict[str, Any]) -> PublishChild:
        """The warm child started on ``spec`` (its ``env`` is applied in the child)."""
        warm = self._warm[0] if self._warm and self._warm[0].proc.poll() is None else None
        child = warm or self._spawn()
        child.start(spec)
        self._warm = [self._spawn()]  # warms up while this one works
        return child

    def warm_many(self, count: int) -> list[PublishChild]:
        """``count`` children with their imports done, not yet started."""
        children = [self._spawn() for _ in range(count)]
        for child in children:
            child.wait_for(lambda line: line == "warm")
        return children

    def close(self) -> None:
        for child in self._warm:
            child.kill()
        self._warm = []


def _windows_per_list() -> dict[str, list[list[int]]]:
    """The platform batch sizes the run under test sends per list, window by window (the pure
    planner, in memory; a batch and a window hold one action)."""
    from datetime import UTC, datetime

    from tasks.core.sync import ledger_rows, plan_sync, platform_batches, send_windows

    def frames(people: list[Person], segment: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
        members = pl.LazyFrame(
            [{"contact_key": p.key, "email": p.email, "first_name": p.first_name,
              "last_name": "Test"} for p in people if segment in p.segments],
            schema={k: pl.String() for k in ("contact_key", "email", "first_name", "last_name")},
        )  # fmt: skip
        contacts = pl.LazyFrame(
            [{"contact_key": p.key, "email": p.email, "consent_status": p.consent}
             for p in people],
            schema={k: pl.String() for k in ("contact_key", "email", "consent_status")},
        )  # fmt: skip
        return members, contacts

    counts = {}
    for segment, list_id in LISTS.items():
        empty = pl.LazyFrame(schema=LEDGER_SCHEMA)
        first = plan_sync(*frames(initial(), segment), empty, destination="mailchimp",
                          audience=list_id).collect()  # fmt: skip
        ledger = ledger_rows(first, destination="mailchimp", audience=list_id, segment=segment,
                             run_id="setup", synced_at=datetime.now(UTC),
                             errors=dict.fromkeys(first["contact_key"]))  # fmt: skip
        second = plan_sync(*frames(changed(), segment), ledger.lazy(), destination="mailchimp",
                           audience=list_id).collect()  # fmt: skip
        windows = send_windows(platform_batches(second, BATCH_SIZE), WINDOW_BATCHES)
        counts[list_id] = [[b.height for b in window] for window in windows]
    return counts


def expected_points() -> list[tuple[str, str]]:
    """Every point a crash can follow in the run under test, in order: ``(kind, what)``.

    Per list: the claim, then per window a renewal (from the second window on), one ledger
    commit (the previous window's results with this window's intents), a send per batch (in
    any order: a window's batches go out at once), then the last window's results and the
    release. The baseline test checks that the real run prints exactly these.
    """
    points: list[tuple[str, str]] = []
    for list_id, windows in _windows_per_list().items():
        points.append(("commit", f"lease mailchimp/{list_id} claimed"))
        recorded = 0
        for n, sizes in enumerate(windows):
            if n:
                points.append(("commit", f"lease mailchimp/{list_id} claimed"))
            statuses = "ok,pending" if recorded else "pending"
            points.append(("commit", f"ledger {recorded + sum(sizes)} {statuses}"))
            points += [("send", f"{list_id} {size}") for size in sizes]
            recorded = sum(sizes)
        points.append(("commit", f"ledger {recorded} ok"))
        points.append(("commit", f"lease mailchimp/{list_id} released"))
    return points


def in_window_order(points: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``points`` with each run of sends sorted: a window's batches finish in any order."""
    ordered: list[tuple[str, str]] = []
    run: list[tuple[str, str]] = []
    for point in [*points, ("end", "")]:
        if point[0] == "send":
            run.append(point)
            continue
        ordered += sorted(run)
        run = []
        if point[0] != "end":
            ordered.append(point)
    return ordered


def printed_point(line: str) -> tuple[str, str]:
    """A child's ``commit <n> <what>`` / ``send <n> <what>`` line as ``(kind, what)``."""
    kind, _n, what = line.split(" ", 2)
    return kind, what

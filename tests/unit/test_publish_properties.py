"""Property test of publish planning over 10,000 generated histories (pure, in memory).

Each history is a handful of contacts of one audience living through several runs: consent
changes (opt-in, opt-out, unknown, and back), segment changes, name changes, a stale gold row
now and then, holds, dry runs, reruns with nothing changed, platform refusals (Mailchimp's
compliance state refuses to re-subscribe an unsubscribed member) and crashes at every stage of
a batch (before its intent commit, after it, after the send). Every run drives the real code:
:func:`tasks.core.sync.plan_sync`, :func:`~tasks.core.sync.releasable` (the hold and dry-run
filter), :func:`~tasks.core.sync.platform_batches` and :func:`~tasks.core.sync.ledger_rows`.

The histories run in lockstep (one planning call per run for all of them; each history has its
own contacts and its own seeded random choices), so the test stays within seconds.

The platform is modelled from what the adapter was told: a payload the platform applied sets
that member's status; a refused one (or one never sent because of a crash) changes nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from tasks.core.sync import (
    LEDGER_KEYS,
    LEDGER_SCHEMA,
    NEVER_HELD,
    PLAN_SCHEMA,
    ledger_rows,
    plan_sync,
    platform_batches,
    releasable,
)

HISTORIES = 10_000
CONTACTS = 5
RUNS = 6
SEED = 20261201
DEST, LIST, SEGMENT = "mc", "L", "s"
NOW = datetime(2026, 12, 1, tzinfo=UTC)
CONSENTS = ("subscribed", "unsubscribed", "unknown")
STAGES = ("before_intent", "after_intent", "after_send")


@dataclass
class History:
    """One audience's contacts and what the platform holds, as told by the adapter."""

    rng: random.Random
    consent: list[str]
    in_segment: list[bool]
    names: list[str]
    stale: set[int] = field(default_factory=set)
    platform: dict[str, str] = field(default_factory=dict)  # contact_key -> member status
    clean_last: bool = False  # the last run sent everything it planned, with no failure

    def key(self, h: int, c: int) -> str:
        return f"h{h:05d}c{c}"


def _new_history(h: int) -> History:
    rng = random.Random(SEED * 31 + h)
    return History(
        rng=rng,
        consent=[rng.choice(CONSENTS) for _ in range(CONTACTS)],
        in_segment=[rng.random() < 0.7 for _ in range(CONTACTS)],
        names=[rng.choice(["Ann", "Bo", None]) or "" for _ in range(CONTACTS)],
    )


@dataclass(frozen=True)
class RunChoice:
    held: bool
    dry_run: bool
    batch_size: int
    refuse_share: float  # random per-member refusals (e.g. an address the platform rejects)
    crash: tuple[int, str] | None  # (batch index, stage) where the process dies
    changed: bool


def _evolve(hist: History) -> RunChoice:
    """Random changes before a run (none on a plain rerun) and the run's circumstances."""
    rng = hist.rng
    changed = rng.random() >= 0.25  # a quarter of runs are reruns on unchanged data
    if changed:
        hist.stale = set()
        for c in range(CONTACTS):
            if rng.random() < 0.3:
                hist.consent[c] = rng.choice(CONSENTS)
            if rng.random() < 0.2:
                hist.in_segment[c] = not hist.in_segment[c]
            if rng.random() < 0.1:
                hist.names[c] = rng.choice(["Ann", "Bo", "Cy", ""])
            if rng.random() < 0.05:
                hist.stale.add(c)  # gold still lists them, whatever their consent now
    crash = None
    if rng.random() < 0.15:
        crash = (rng.randrange(3), rng.choice(STAGES))
    return RunChoice(
        held=rng.random() < 0.3,
        dry_run=rng.random() < 0.15,
        batch_size=rng.choice([1, 2, 3, 500]),
        refuse_share=rng.choice([0.0, 0.0, 0.0, 0.3]),
        crash=crash,
        changed=changed,
    )


def _frames(histories: list[History]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    members: list[dict[str, str]] = []
    contacts: list[dict[str, str]] = []
    for h, hist in enumerate(histories):
        for c in range(CONTACTS):
            key = hist.key(h, c)
            email = f"{key}@example.com"
            contacts.append({"contact_key": key, "email": email, "consent_status": hist.consent[c]})
            publishable = hist.in_segment[c] and hist.consent[c] == "subscribed"
            if publishable or c in hist.stale:
                members.append({"contact_key": key, "email": email,
                                "first_name": hist.names[c], "last_name": "X"})  # fmt: skip
    member_schema = {k: pl.String() for k in ("contact_key", "email", "first_name", "last_name")}
    contact_schema = {k: pl.String() for k in ("contact_key", "email", "consent_status")}
    return (
        pl.DataFrame(members, schema=member_schema).lazy(),
        pl.DataFrame(contacts, schema=contact_schema).lazy(),
    )


def _upsert(ledger: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """What ``Lake.merge(ops/sync_ledger, rows, keys=LEDGER_KEYS)`` leaves."""
    if rows.height == 0:
        return ledger
    return pl.concat([ledger.join(rows, on=LEDGER_KEYS, how="anti"), rows])


def _run(
    h: int, hist: History, choice: RunChoice, sendable: pl.DataFrame
) -> tuple[list[pl.DataFrame], list[tuple[pl.DataFrame, dict[str, str | None]]]]:
    """Send what one history's run released; (intent batches committed, (batch, results))."""
    consent = {hist.key(h, c): hist.consent[c] for c in range(CONTACTS)}
    before = dict(hist.platform)

    # The properties of what a run sends, checked on the plan it releases.
    subscribes = sendable.filter(pl.col("action") == "subscribe")
    bad = [k for k in subscribes["contact_key"] if consent[k] != "subscribed"]
    assert not bad, f"history {h}: subscribes {bad} whose current consent is not opt-in"
    if choice.dry_run:
        assert sendable.height == 0, f"history {h}: a dry run releases {sendable.height} rows"
    if choice.held:
        assert set(sendable["action"]) <= NEVER_HELD, f"history {h}: a hold let through a subscribe"
    if not choice.dry_run:
        owed = {k for k, s in before.items() if s == "subscribed" and consent[k] == "unsubscribed"}
        unsubscribed = set(sendable.filter(pl.col("action") == "unsubscribe")["contact_key"])
        assert owed <= unsubscribed, (
            f"history {h}: opted-out {sorted(owed - unsubscribed)} are subscribed on the "
            f"platform but the run (held={choice.held}) does not unsubscribe them"
        )

    intents: list[pl.DataFrame] = []
    results: list[tuple[pl.DataFrame, dict[str, str | None]]] = []
    failed = False
    for index, batch in enumerate(platform_batches(sendable, choice.batch_size)):
        stage = choice.crash[1] if choice.crash and choice.crash[0] == index else None
        if stage == "before_intent":
            failed = True
            break
        intents.append(batch)
        if stage == "after_intent":
            failed = True
            break
        outcome: dict[str, str | None] = {}
        for key, action in zip(batch["contact_key"], batch["action"], strict=True):
            status = "subscribed" if action == "subscribe" else "unsubscribed"
            compliance = action == "subscribe" and hist.platform.get(key) == "unsubscribed"
            if compliance or hist.rng.random() < choice.refuse_share:
                outcome[key] = "refused"
                failed = True
            else:
                hist.platform[key] = status
                outcome[key] = None
        if stage == "after_send":
            failed = True
            break
        results.append((batch, outcome))
    if not choice.dry_run and not failed:
        left = {k for k, s in hist.platform.items()
                if s == "subscribed" and consent[k] == "unsubscribed"}  # fmt: skip
        assert not left, f"history {h}: {sorted(left)} still subscribed after a complete run"
    # A run that sent all it planned, unheld and without a failure, leaves nothing to send.
    hist.clean_last = not choice.dry_run and not choice.held and not failed
    return intents, results


def _release(plan: pl.LazyFrame, choices: list[RunChoice]) -> dict[int, pl.DataFrame]:
    """Apply the real hold/dry-run filter, once per combination of flags, to every history."""
    released = []
    for held in (False, True):
        for dry_run in (False, True):
            ids = [h for h, c in enumerate(choices) if (c.held, c.dry_run) == (held, dry_run)]
            part = plan.filter(pl.col("h").is_in(ids))
            released.append(releasable(part, held=held, dry_run=dry_run).collect())
    by_history = pl.concat(released).partition_by("h", as_dict=True, include_key=False)
    return {int(key[0]): frame for key, frame in by_history.items()}  # type: ignore[call-overload]


def test_opt_outs_never_wait_and_nothing_unconsented_is_sent() -> None:
    histories = [_new_history(h) for h in range(HISTORIES)]
    ledger = pl.DataFrame(schema=LEDGER_SCHEMA)
    total_sent = total_unsubscribes_held = 0
    for run in range(RUNS):
        choices = [_evolve(hist) for hist in histories]
        members, contacts = _frames(histories)
        plan = plan_sync(
            members, contacts, ledger.lazy(), destination=DEST, audience=LIST
        ).with_columns(pl.col("contact_key").str.slice(1, 5).cast(pl.Int64).alias("h"))
        planned = set(plan.select("h").unique().collect()["h"])
        released = _release(plan, choices)
        empty = pl.DataFrame(schema=PLAN_SCHEMA)
        intents: list[pl.DataFrame] = []
        done: list[pl.DataFrame] = []
        outcomes: dict[str, str | None] = {}
        for h, (hist, choice) in enumerate(zip(histories, choices, strict=True)):
            if hist.clean_last and not choice.changed:
                assert h not in planned, f"history {h}: a rerun on unchanged data plans changes"
            sent_intents, sent_results = _run(h, hist, choice, released.get(h, empty))
            intents += sent_intents
            for batch, outcome in sent_results:
                done.append(batch)
                outcomes.update(outcome)
                total_sent += batch.height
                total_unsubscribes_held += batch.height if choice.held else 0
        where = dict(destination=DEST, audience=LIST, segment=SEGMENT, run_id=f"r{run}")
        if intents:
            pending = ledger_rows(pl.concat(intents), **where, synced_at=NOW, errors=None)
            ledger = _upsert(ledger, pending)
        if done:
            recorded = ledger_rows(pl.concat(done), **where, synced_at=NOW, errors=outcomes)
            ledger = _upsert(ledger, recorded)
    # The generator must actually reach the interesting cases.
    assert total_sent > HISTORIES
    assert total_unsubscribes_held > 100, "held runs never had an opt-out to send"

"""What a publish reads, and at which Delta versions: gold pinned, consent always the latest.

A publish resolves its **pins** once, when it starts (:func:`resolve_pins`): one Delta version
of each gold table it may read (``gold/audience_members``, ``gold/customer_features``,
``gold/audience_holdouts``). Every read of those tables in the run goes through the pins
(:func:`read_gold`, a time-travel read of the files of that version), so the whole run sees one
consistent gold however the transform changes it meanwhile, and the versions can be recorded
(``ops/sync_history``, ``ops/runs``) and reused: ``as_of_run`` takes the versions a past run
read, ``versions`` names them table by table.

Consent is never pinned (:func:`latest_consent`): ``silver/contacts`` is read at its latest
version, and an opt-out in ``ops/consent_events`` or ``bronze/platform_suppressions`` that is
newer than the person's consent in silver counts as an opt-out already. A rerun pinned to last
month's gold therefore unsubscribes someone who opted out yesterday and subscribes nobody who
said no. The versions of the consent tables read are recorded beside the pins.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.normalise import UTC_MICROS
from tasks.core.pins import latest_opt_outs, newest_versions, suppressed_keys, with_newer_opt_outs
from tasks.core.tables import (
    AUDIENCE,
    CONSENT_EVENTS,
    CONTACTS,
    FEATURES,
    HOLDOUTS,
    PLATFORM_SUPPRESSIONS,
    RUNS,
    SYNC_HISTORY,
)
from tasks.engine.delta import pinned
from tasks.errors import ConfigError, PublishError

GOLD_READS = (AUDIENCE, FEATURES, HOLDOUTS)
"""The tables a publish reads at pinned versions."""
CONSENT_READS = (CONTACTS, CONSENT_EVENTS, PLATFORM_SUPPRESSIONS)
"""Consent evidence: always read at the latest version, never pinned."""
PUBLISH_FLOW = "publish"


@dataclass(frozen=True)
class ReadPins:
    """The gold versions one publish reads.

    ``versions``: table -> version. A gold table missing from it did not exist when the pins
    were taken (it reads as empty), unless ``as_of_run`` is set and the table is in
    ``unrecorded``: that run did not read it, so there is no version to reuse.
    """

    versions: Mapping[str, int] = field(default_factory=dict)
    as_of_run: str | None = None
    unrecorded: tuple[str, ...] = ()

    def describe(self) -> str:
        pins = ", ".join(f"{t}@v{v}" for t, v in sorted(self.versions.items())) or "no gold yet"
        return pins + (f" (as of run {self.as_of_run})" if self.as_of_run else "")


def resolve_pins(
    lake: Lake, *, as_of_run: str | None = None, versions: Mapping[str, int] | None = None
) -> ReadPins:
    """The versions to read: ``versions`` where given, else those ``as_of_run`` read, else the
    current ones.

    Raises:
        ConfigError: a consent table or a table a publish does not read is named, a version
            does not exist, or ``as_of_run`` has no recorded publish.
    """
    explicit = dict(versions or {})
    for name in explicit:
        if name in CONSENT_READS:
            raise ConfigError(
                f"publish: {name} cannot be pinned: consent is always read at its latest "
                "version, so an opt-out made after the pinned version still wins"
            )
        if name not in GOLD_READS:
            raise ConfigError(f"publish: {name} is not a pinnable table; pinnable: {GOLD_READS}")
    recorded = recorded_versions(lake, as_of_run) if as_of_run else {}
    chosen: dict[str, int] = {}
    unrecorded: list[str] = []
    for name in GOLD_READS:
        current = lake.version(name)
        if name in explicit or name in recorded:
            version = explicit.get(name, recorded.get(name))
            assert version is not None
            if current is None or not 0 <= version <= current:
                raise ConfigError(f"publish: {name} has no version {version} (current: {current})")
            chosen[name] = version
        elif as_of_run:
            unrecorded.append(name)
        elif current is not None:
            chosen[name] = current
    return ReadPins(chosen, as_of_run, tuple(unrecorded))


def recorded_versions(lake: Lake, run_id: str) -> dict[str, int]:
    """The gold versions the publish of ``run_id`` read: from its ``ops/sync_history`` rows,
    else from its ``ops/runs`` record (a publish that sent nothing writes no history).

    ``run_id`` is the run id the ops tables carry (a pipeline's run id, or a publish run's).
    """
    if lake.exists(SYNC_HISTORY):
        texts = (
            lake.scan(SYNC_HISTORY)
            .filter(pl.col("run_id") == run_id)
            .select(pl.col("versions").unique())
            .collect()
            .get_column("versions")
            .to_list()
        )
        if texts:
            found = newest_versions(json.loads(t) for t in texts if t)
            return {t: v for t, v in found.items() if t in GOLD_READS}
    if lake.exists(RUNS):
        reads = (
            lake.scan(RUNS)
            .filter(
                (pl.col("flow") == PUBLISH_FLOW)
                & ((pl.col("flow_run_id") == run_id) | (pl.col("root_run_id") == run_id))
            )
            .select("reads")
            .collect()
            .get_column("reads")
            .to_list()
        )
        if reads:
            found = newest_versions(json.loads(r) for r in reads if r)
            return {t: v for t, v in found.items() if t in GOLD_READS}
    raise ConfigError(
        f"publish: run {run_id!r} has no recorded publish in {SYNC_HISTORY} or {RUNS}"
    )


def read_gold(lake: Lake, table: str, pins: ReadPins | None) -> pl.LazyFrame | None:
    """``table`` at its pinned version (the current one without pins); None when it did not
    exist when the pins were taken.

    Raises:
        PublishError: a pinned rerun needs a table the run it reuses did not read.
    """
    if pins is None:
        return lake.scan(table) if lake.exists(table) else None
    if table in pins.unrecorded:
        raise PublishError(
            f"publish as of run {pins.as_of_run}: that run did not read {table}, so its version "
            f"is unknown; name one (--version {table}=N)"
        )
    version = pins.versions.get(table)
    return None if version is None else pinned(lake, table, version)


def with_gold_holdouts(
    members: pl.LazyFrame, lake: Lake, segment: str, share: float, pins: ReadPins | None
) -> pl.LazyFrame:
    """``members`` with ``holdout``: in the first ``share`` by the position gold recorded.

    Raises:
        PublishError: a member has no assignment in ``gold/audience_holdouts`` at ``share`` (the
            transform records them; a publish never guesses who may be mailed).
    """
    recorded = read_gold(lake, HOLDOUTS, pins)
    schema = {"contact_key": pl.String(), "position": pl.Float64(), "_share": pl.Float64()}
    assigned = (
        pl.LazyFrame(schema=schema)
        if recorded is None
        else recorded.filter(pl.col("segment") == segment).select(
            "contact_key", "position", pl.col("share").alias("_share")
        )
    )
    joined = members.join(assigned, on="contact_key", how="left")
    missing = (
        joined.filter(pl.col("position").is_null() | (pl.col("_share") < share))
        .select(pl.len())
        .collect()
        .item()
    )
    if missing:
        at = "" if pins is None or HOLDOUTS not in pins.versions else f"@v{pins.versions[HOLDOUTS]}"
        raise PublishError(
            f"{HOLDOUTS}{at}: {missing} member(s) of segment {segment!r} have no holdout "
            f"assignment at share {share}; run the transform after adding or raising a holdout"
        )
    return joined.with_columns((pl.col("position") < share).alias("holdout")).drop(
        "position", "_share"
    )


@dataclass(frozen=True)
class Consent:
    """Current consent per contact (``contact_key, email, consent_status``) and the versions of
    the consent tables it was read from."""

    frame: pl.LazyFrame
    versions: Mapping[str, int]


def latest_consent(lake: Lake) -> Consent:
    """``silver/contacts`` at its latest version, with newer opt-outs from the consent ledger and
    the platforms' suppressions applied (see the module docstring)."""
    versions = {name: v for name in CONSENT_READS if (v := lake.version(name)) is not None}
    if CONTACTS not in versions:
        schema = {"contact_key": pl.String, "email": pl.String, "consent_status": pl.String}
        return Consent(pl.LazyFrame(schema=schema), versions)
    contacts = pinned(lake, CONTACTS, versions[CONTACTS])
    opt_outs: list[pl.LazyFrame] = []
    if CONSENT_EVENTS in versions:
        events = pinned(lake, CONSENT_EVENTS, versions[CONSENT_EVENTS])
        opt_outs.append(latest_opt_outs(events))
    if PLATFORM_SUPPRESSIONS in versions:
        suppressions = pinned(lake, PLATFORM_SUPPRESSIONS, versions[PLATFORM_SUPPRESSIONS])
        opt_outs.append(suppressed_keys(suppressions, contacts))
    if opt_outs:
        stated = pl.concat([o.cast({"occurred_at": UTC_MICROS}) for o in opt_outs])
        contacts = with_newer_opt_outs(contacts, stated)
    return Consent(contacts, versions)

"""What silver and gold were built from, and what the next build must do.

After gold is built, :func:`record_transform_state` records the transform state - the staging
sequence numbers consumed, ``as_of``, a fingerprint of the configuration and pepper, and the
versions of the built tables - in the metadata of an empty commit to ``gold/customer_features``.
:func:`build_plan` reads it back at the start of the next build: a different configuration or
pepper, a table changed by someone else (a crash part-way, an outside write), a recreated
staging table or a missing state makes the build full; otherwise silver is rebuilt for what
staging gained since, and gold for the affected contacts (every contact when ``as_of`` moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.config import PipelineConfig
from tasks.core.incremental import StagingState, TransformState, fingerprint
from tasks.core.normalise import contact_key
from tasks.core.tables import BUILT_TABLES, FEATURES, ROLES, STAGED
from tasks.engine.delta import latest_state, table_version


def staging_state(lake: Lake, role: str) -> StagingState | None:
    """The state of ``role``'s staging table (None before it is built)."""
    state, _ = latest_state(lake, STAGED[role], StagingState.from_commit)
    return state


def transform_fingerprint(config: PipelineConfig, secret: bytes, version: int) -> str:
    """What silver and gold depend on besides the data: settings, segments and the pepper."""
    settings = config.transform
    probe = pl.select(contact_key(pl.lit("fingerprint"), pepper=secret, version=version)).item()
    return fingerprint(
        {
            "identity": settings.identity.model_dump(mode="json"),
            "features": settings.features.model_dump(mode="json"),
            "rates": settings.currency.to_reporting(),
            "segments": [s.model_dump(mode="json") for s in config.segments],
            "pepper": probe,  # changes with the pepper; reveals nothing about it
            # Consent comes from ops/consent_events (silver and gold name the deciding event):
            # a lake built before the ledger is rebuilt once, which also fills the ledger.
            "consent": "ledger-v1",
        }
    )


@dataclass(frozen=True)
class BuildPlan:
    """What silver and gold must rebuild this run.

    ``full``: rebuild silver from every staged row (``reason`` says why); ``gold_all``: recompute
    every contact's features; ``since``: the staging sequence numbers already built;
    ``seqs``/``versions``: the staging tables' sequence numbers and versions this build reads;
    ``live_rows``: staged rows in all (sizes the incremental-or-full decision).
    """

    full: bool
    gold_all: bool
    since: dict[str, int]
    seqs: dict[str, int]
    versions: dict[str, int]
    live_rows: int
    fingerprint: str
    reason: str

    def state(self, as_of: datetime) -> TransformState:
        """The state to record once gold is built (table versions are added then)."""
        return TransformState(self.fingerprint, as_of.isoformat(), self.seqs, versions={})


def build_plan(
    lake: Lake, config: PipelineConfig, *, as_of: datetime, full_refresh: bool, fp: str
) -> BuildPlan:
    """Full, incremental or nothing: what silver and gold must rebuild this run."""
    versions = {role: int(lake.version(STAGED[role]) or 0) for role in ROLES}
    staged = {role: staging_state(lake, role) for role in ROLES}
    seqs = {role: s.seq if s is not None else 0 for role, s in staged.items()}
    state, marker = latest_state(lake, FEATURES, TransformState.from_commit)
    reason = ""
    if full_refresh:
        reason = "full_refresh requested"
    elif state is None:
        reason = "no transform state recorded yet"
    elif state.fingerprint != fp:
        reason = "configuration, pepper or code changed since the last build"
    elif _rows_changed_since_build(lake, state, marker):
        reason = "a silver or gold table changed since the last build (crash or outside write)"
    elif any(seqs[role] < state.seqs.get(role, 0) for role in ROLES):
        reason = "a staging table was recreated"
    full = bool(reason)
    return BuildPlan(
        full=full,
        gold_all=full or state is None or state.as_of != as_of.isoformat(),
        since={} if full or state is None else dict(state.seqs),
        seqs=seqs,
        versions=versions,
        live_rows=sum(sum(s.live.values()) for s in staged.values() if s is not None),
        fingerprint=fp,
        reason=reason,
    )


def _rows_changed_since_build(lake: Lake, state: TransformState, marker: int | None) -> bool:
    """Whether rows of silver or gold changed after the last recorded build: a crash between
    its commits or an outside write. Commits that change no row (compaction, Z-order, vacuum by
    the ``maintain`` flow) do not count, so maintenance never forces a full rebuild."""
    if marker is None or lake.data_changed_since(FEATURES, marker):
        return True
    for table in BUILT_TABLES:
        built, now = state.versions.get(table), table_version(lake, table)
        if built is None or now < built or (built < 0 and now >= 0):
            return True  # unknown at the build, recreated, or created since
        if built >= 0 and lake.data_changed_since(table, built):
            return True
    return False


def record_transform_state(lake: Lake, state: dict[str, str], *, run_id: str) -> bool:
    """Record what silver and gold were built from, after they were built (see the module doc).

    Idempotent: the commit carries a batch id made of the run and the state, so a rerun adds
    nothing. False when there is nothing to record it on (gold not built) or no valid state.
    """
    if not lake.exists(FEATURES):
        return False
    parsed = TransformState.from_commit(state)
    if parsed is None:
        return False
    versions = {table: table_version(lake, table) for table in BUILT_TABLES}
    complete = TransformState(parsed.fingerprint, parsed.as_of, parsed.seqs, versions)
    empty = pl.DataFrame(schema=lake.scan(FEATURES).collect_schema())
    return lake.append_once(
        FEATURES,
        empty,
        batch_id=f"transform-state:{run_id}:{fingerprint(complete.to_metadata())}",
        metadata=complete.to_metadata(),
    )

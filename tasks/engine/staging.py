"""Stage 1, bronze -> staging: normalise and check only the rows bronze gained or lost.

For each source role (contacts, enrichment, orders, events), ``silver/staged_<role>`` is a log
of valid canonical rows (see :mod:`tasks.core.incremental`). A run diffs each source's bronze
data files since the version staged last time, normalises the rows gained and lost
(:func:`tasks.core.canonical.to_canonical`) and checks them against the role's contract.
Invalid rows go to ``ops/quarantine`` first; then the valid ones are appended to the log in the
commit that records the bronze versions consumed. A crash in between redoes the role, and a redo
adds no quarantine record twice. Cost follows the changed rows, not bronze.

A source that is new, whose field mapping changed, or whose old version can no longer be read
(log cleanup, vacuum) is restaged whole; a removed or disabled source's rows leave staging; a
changed normalisation setting (the role's fingerprint) restages the role.

The steps of one role, in order: :func:`_role_plan` (what is staged, what bronze holds), then
for a role restaged whole :func:`~tasks.engine.staging_full.check_in_chunks` (bronze a chunk at
a time, valid rows spilled to local files) and :func:`_commit_full` (the log streamed from the
spill in one commit), so memory follows a chunk, not the lake; otherwise
:func:`_collect_changes` (rows gained and lost per source), :func:`_check_changes` (contract,
quarantine counts) and :func:`_commit_incremental`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from tasks.connectors.lake import FrameStream, Lake, LakeError
from tasks.core.canonical import (
    NormaliseOptions,
    canonical_schema,
    normalisation_losses,
    to_canonical,
)
from tasks.core.config import PipelineConfig, Source, SourceBase
from tasks.core.contracts import (
    Contract,
    Split,
    split_valid,
)
from tasks.core.incremental import (
    COPIES,
    RECORD_HASH,
    SEQ,
    StagingState,
    distinct_records,
    fingerprint,
    latest_ops,
    staging_updates,
    values_in,
)
from tasks.core.tables import ROLE_TABLES, STAGED, bronze_table, staging_schema
from tasks.engine.bronze_changes import bronze_diff
from tasks.engine.checks import Checker
from tasks.engine.delta import latest_state, pinned
from tasks.engine.reports import Logger
from tasks.engine.staging_full import (
    Spill,
    Tally,
    check_in_chunks,
    rejected_by_source,
    spill_directory,
    staged_records,
)
from tasks.resources import pepper
from tasks.suppression import Suppression, load_suppression


@dataclass
class RoleStaging:
    """What staging a role did (``checked``, ``rejected``: this run) and what the staging
    table reflects afterwards, per source (``live`` rows, ``quarantined`` current bronze rows)."""

    mode: str
    checked: int = 0
    rejected: int = 0
    live: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    losses: pl.DataFrame | None = None


@dataclass(frozen=True)
class _RolePlan:
    """A role's staging table, its last state, and the bronze it must now reflect."""

    role: str
    table: str
    fingerprint: str
    state: StagingState | None
    sources: dict[str, Source]
    versions: dict[str, int]  # bronze version per source
    mappings: dict[str, str]  # field-mapping digest per source
    full: bool  # restage every source from its bronze

    @property
    def unchanged(self) -> bool:
        return (
            not self.full
            and self.state is not None
            and self.state.versions == self.versions
            and self.state.mappings == self.mappings
        )


@dataclass
class _Changes:
    """Canonical rows gained (``added``), records to retract (``removed``: distinct records
    with copies), canonical rows bronze lost (``dropped``, valid or not), and the sources whose
    every current row is in ``added`` (``restaged``)."""

    added: list[pl.LazyFrame] = field(default_factory=list)
    removed: list[pl.LazyFrame] = field(default_factory=list)
    dropped: list[pl.LazyFrame] = field(default_factory=list)
    restaged: set[str] = field(default_factory=set)


def stage_role(
    lake: Lake,
    config: PipelineConfig,
    role: str,
    *,
    contract: Contract,
    checker: Checker,
    options: NormaliseOptions,
    full_refresh: bool,
    logger: Logger,
    suppression: Suppression | None = None,
) -> RoleStaging:
    """Bring ``silver/staged_<role>`` up to the current bronze of the role's sources.

    Erased people (``suppression``; read from the lake when not given) are dropped as their
    rows are normalised: they never reach the contract, the quarantine or the log.

    The rows this consumes fail or pass the role's contract: the failures are written to
    ``ops/quarantine`` *before* the staging commit that records the bronze versions as
    consumed, so a crash in between redoes the role and a crash after it loses nothing. The
    same commit records, per source, how many current bronze rows are quarantined (see
    :class:`StagingState`), so counts never depend on which run did the work.
    """
    plan = _role_plan(lake, config, role, full_refresh=full_refresh)
    if plan.unchanged:
        assert plan.state is not None
        return RoleStaging(
            mode="unchanged",
            live=dict(plan.state.live),
            quarantined=dict(plan.state.rejected or {}),
        )
    if suppression is None:
        secret, key_version = pepper()
        suppression = load_suppression(lake, pepper=secret, version=key_version)
    seq = (plan.state.seq if plan.state is not None else 0) + 1
    if plan.full:
        collector = _Collector(lake, plan, None, options, logger, suppression)
        with spill_directory() as directory:
            tally, spill = check_in_chunks(
                {name: collector.bronze(name) for name in plan.sources},
                collector.canonical,
                role=role,
                contract=contract,
                checker=checker,
                chunk_rows=config.engine.staging_chunk_rows,
                directory=directory,
            )
            # The rows failing the contract are recorded before the commit that marks them
            # consumed.
            checker.flush(lake, stage=f"staging-{role}")
            result = _commit_full(lake, plan, tally, spill, seq=seq)
        logger.info(
            "%s: rebuilt from bronze (%d valid rows)", plan.table, sum(result.live.values())
        )
        return result
    log = pinned(lake, plan.table, lake.version(plan.table))
    changes = _collect_changes(
        lake, plan, log, options=options, logger=logger, suppression=suppression
    )
    result, split = _check_changes(plan, changes, contract=contract, checker=checker)
    # The rows failing the contract are recorded before the commit that marks them consumed.
    checker.flush(lake, stage=f"staging-{role}")
    staged = staged_records(split.valid.lazy(), role=role, seq=seq)
    del split
    written = _commit_incremental(lake, plan, log, staged, changes, result, seq=seq)
    logger.info(
        "%s: %d changed row(s) checked, %d record(s) updated in the staging log",
        plan.table,
        result.checked,
        written,
    )
    return result


# --- step 1: what is staged, what bronze holds --------------------------------------------------
def _role_plan(lake: Lake, config: PipelineConfig, role: str, *, full_refresh: bool) -> _RolePlan:
    table = STAGED[role]
    role_fp = _role_fingerprint(role, config)
    state, _ = latest_state(lake, table, StagingState.from_commit)
    sources = {
        name: source
        for name, source in config.sources_with_role(role).items()
        if lake.exists(bronze_table(name))
    }
    # A state without quarantine counts predates them: restage once to learn them.
    full = full_refresh or state is None or state.fingerprint != role_fp or state.rejected is None
    return _RolePlan(
        role=role,
        table=table,
        fingerprint=role_fp,
        state=state,
        sources=sources,
        versions={name: int(lake.version(bronze_table(name)) or 0) for name in sources},
        mappings={name: _mapping_digest(source) for name, source in sources.items()},
        full=full,
    )


def _role_fingerprint(role: str, config: PipelineConfig) -> str:
    rates = config.transform.currency.to_reporting()
    return fingerprint(
        {
            "stage": role,
            "phone_region": config.transform.default_phone_region,
            "currencies": sorted(rates) if role == "orders" else [],
        }
    )


def _mapping_digest(source: SourceBase) -> str:
    return fingerprint({"role": source.role, "fields": dict(sorted(source.fields.items()))})


def _conform(frame: pl.LazyFrame, role: str) -> pl.LazyFrame:
    """Exactly the role's canonical columns and types, whatever the sources provided."""
    present = set(frame.collect_schema().names())
    return frame.select(
        [
            pl.col(name).cast(dtype) if name in present else pl.lit(None, dtype).alias(name)
            for name, dtype in canonical_schema(role).items()
        ]
    )


# --- step 2: rows gained and lost per source ----------------------------------------------------
def _collect_changes(
    lake: Lake,
    plan: _RolePlan,
    log: pl.LazyFrame | None,
    *,
    options: NormaliseOptions,
    logger: Logger,
    suppression: Suppression | None = None,
) -> _Changes:
    """What each source (current, or staged before and now gone) adds to and removes from the
    log since the state: the diff of its bronze files, or all of it if it must be restaged."""
    assert plan.state is not None
    collector = _Collector(lake, plan, log, options, logger, suppression)
    for name in sorted(set(plan.sources) | set(plan.state.versions)):
        collector.since_last_run(name)
    return collector.changes


@dataclass
class _Collector:
    """Collects one role's :class:`_Changes`, source by source."""

    lake: Lake
    plan: _RolePlan
    log: pl.LazyFrame | None
    options: NormaliseOptions
    logger: Logger
    suppression: Suppression | None = None
    changes: _Changes = field(default_factory=_Changes)

    def canonical(self, name: str, rows: pl.LazyFrame) -> pl.LazyFrame:
        """The source's rows as canonical rows, without erased people (see
        :mod:`tasks.suppression`): they never reach the contract, the quarantine or the log."""
        source = self.plan.sources[name]
        canonical = to_canonical(rows, source, source_name=name, options=self.options)
        if self.suppression:
            canonical = self.suppression.drop(canonical, "email")
        return _conform(canonical, self.plan.role)

    def bronze(self, name: str) -> pl.LazyFrame:
        """The source's bronze rows at the version being staged."""
        return pinned(self.lake, bronze_table(name), self.plan.versions[name])

    def restage(self, name: str) -> None:
        """Every current bronze row of the source is added."""
        self.changes.added.append(self.canonical(name, self.bronze(name)))
        self.changes.restaged.add(name)

    def since_last_run(self, name: str) -> None:
        """What changed for one source since the state: gone, restaged, diffed or nothing."""
        assert self.log is not None and self.plan.state is not None
        state = self.plan.state
        staged_records = (
            latest_ops(self.log.filter(pl.col("_source") == name))
            .filter(pl.col(COPIES) > 0)
            .drop(SEQ)
        )
        if name not in self.plan.sources:  # removed or disabled: its rows leave silver
            self.changes.removed.append(staged_records)
            return
        since = state.versions.get(name)
        if since is None or state.mappings.get(name) != self.plan.mappings[name]:
            # New source or changed field mapping: restage it whole (unchanged records cancel).
            self.changes.removed.append(staged_records)
            self.restage(name)
        elif since != self.plan.versions[name]:
            self.diff(name, since, staged_records)

    def diff(self, name: str, since: int, staged_records: pl.LazyFrame) -> None:
        """The rows the source's bronze gained and lost since version ``since``."""
        try:
            gained_rows, lost_rows = bronze_diff(self.lake, name, since, self.plan.versions[name])
        except LakeError as exc:
            # Version or files gone (log cleanup, vacuum): restage the source whole.
            self.logger.warning(
                "%s: cannot diff %s since v%s (%s); restaging it",
                self.plan.table,
                bronze_table(name),
                since,
                exc,
            )
            self.changes.removed.append(staged_records)
            self.restage(name)
            return
        self.changes.added.append(self.canonical(name, gained_rows.lazy()))
        self.changes.dropped.append(self.canonical(name, lost_rows.lazy()))
        self.changes.removed.append(distinct_records(self.changes.dropped[-1]))


# --- step 3: the contract and the quarantine counts ---------------------------------------------
def _check_changes(
    plan: _RolePlan, changes: _Changes, *, contract: Contract, checker: Checker
) -> tuple[RoleStaging, Split]:
    """Check the rows gained; count, per source, the current bronze rows that fail."""
    frames = pl.collect_all(changes.added) if changes.added else []
    candidates = (
        pl.concat(frames, how="vertical")
        if frames
        else pl.DataFrame(schema=canonical_schema(plan.role))
    )
    del frames  # frames this size are worth releasing early
    assert plan.state is not None
    split = checker.check(candidates, contract, table=ROLE_TABLES[plan.role])
    rejected = rejected_by_source(candidates, split.valid)
    lost_rejected = _lost_rejected(plan, changes, contract=contract, checker=checker)
    earlier = dict(plan.state.rejected or {})
    result = RoleStaging(
        mode="incremental",
        checked=candidates.height,
        rejected=split.rejected,
        quarantined={
            name: rejected.get(name, 0)
            + (0 if name in changes.restaged else earlier.get(name, 0) - lost_rejected.get(name, 0))
            for name in plan.sources
        },
        losses=normalisation_losses(candidates.lazy()).collect(),
    )
    return result, split


def _lost_rejected(
    plan: _RolePlan, changes: _Changes, *, contract: Contract, checker: Checker
) -> dict[str, int]:
    """Rows bronze lost leave the quarantined count if they had failed: check them again (a
    contract judges each row on its own), without recording them anywhere."""
    gone_rows = (
        pl.concat(pl.collect_all(changes.dropped), how="vertical") if changes.dropped else None
    )
    if gone_rows is None or not gone_rows.height:
        return {}
    recheck = split_valid(
        gone_rows, contract, table=ROLE_TABLES[plan.role], run_id=checker.run_id, now=checker.now
    )
    return rejected_by_source(gone_rows, recheck.valid)


# --- step 4: the commit -------------------------------------------------------------------------
def _commit_full(
    lake: Lake, plan: _RolePlan, tally: Tally, spill: Spill, *, seq: int
) -> RoleStaging:
    """Replace the log with the spilled records, streamed partition by partition in one
    commit whose state records the bronze versions consumed."""
    result = RoleStaging(
        mode="full",
        checked=tally.checked,
        rejected=tally.rejected,
        # Every copy of a record is one valid row of its source: live rows are valid rows.
        live={name: tally.valid_by_source.get(name, 0) for name in plan.sources}
        | dict(tally.valid_by_source),
        quarantined={name: tally.rejected_by_source.get(name, 0) for name in plan.sources},
        losses=tally.normalisation_losses(),
    )
    new_state = StagingState(
        plan.fingerprint, seq, plan.versions, plan.mappings, result.live, result.quarantined
    )
    log_rows = FrameStream(staging_schema(plan.role), lambda: spill.log_rows(seq=seq))
    lake.overwrite(plan.table, log_rows, metadata=new_state.to_metadata())
    return result


def _commit_incremental(
    lake: Lake,
    plan: _RolePlan,
    log: pl.LazyFrame,
    staged: pl.DataFrame,
    changes: _Changes,
    result: RoleStaging,
    *,
    seq: int,
) -> int:
    """Append the records that changed (new copy counts) as sequence ``seq``; return how many.

    The append carries the sequence number as its batch id, so two runs staging the same
    sequence cannot both commit: the second fails and asks for a rerun.
    """
    assert plan.state is not None
    gone = (
        pl.concat(changes.removed, how="vertical").collect()
        if changes.removed
        else staged.head(0).drop(SEQ)
    )
    touched = pl.concat([staged.get_column(RECORD_HASH), gone.get_column(RECORD_HASH)])
    current = (
        latest_ops(log.filter(values_in(RECORD_HASH, touched)))
        .select(RECORD_HASH, COPIES)
        .collect()
    )
    updates = staging_updates(current.lazy(), staged.lazy(), gone.lazy(), seq=seq).collect()
    updates = updates.select([pl.col(c).cast(t) for c, t in staging_schema(plan.role).items()])
    result.live = _live_after(plan, updates, current)
    new_state = StagingState(
        plan.fingerprint, seq, plan.versions, plan.mappings, result.live, result.quarantined
    )
    written = lake.append_once(
        plan.table, updates, batch_id=f"{plan.table}:{seq}", metadata=new_state.to_metadata()
    )
    if not written:
        raise LakeError(
            f"{plan.table}: sequence {seq} was staged by another transform run meanwhile; "
            "run the transform again"
        )
    return updates.height


def _live_after(plan: _RolePlan, updates: pl.DataFrame, current: pl.DataFrame) -> dict[str, int]:
    """Live rows per source once ``updates`` are in the log (the state's counts moved by the
    change in copies of each updated record)."""
    assert plan.state is not None
    moved = (
        updates.select("_source", RECORD_HASH, COPIES)
        .join(current.rename({COPIES: "_old"}), on=RECORD_HASH, how="left")
        .group_by("_source")
        .agg((pl.col(COPIES) - pl.col("_old").fill_null(0)).sum().alias("_delta"))
    )
    live = {name: plan.state.live.get(name, 0) for name in plan.sources}
    for source, delta in moved.iter_rows():
        if source in live:
            live[str(source)] = live.get(str(source), 0) + int(delta)
    return live

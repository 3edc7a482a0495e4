"""Transform tasks: bronze -> staging -> silver (validated, deduped, resolved) -> gold.

Incremental by default; ``full_refresh`` rebuilds everything and produces the same tables.

1. :func:`stage_sources` - bronze -> ``silver/staged_<role>``: rows bronze gained or lost since
   the versions staged last time (a diff of data files, see :mod:`tasks.core.incremental`) are
   normalised and checked against their role's contract; invalid rows go to ``ops/quarantine``
   first, then valid ones are appended to the role's staging log in the commit that records
   the bronze versions consumed (a crash in between redoes the role; a redo adds no
   quarantine record twice). Cost follows the changed rows, not bronze.
2. :func:`build_silver` - staging -> ``silver/orders``, ``silver/events``, ``silver/contacts``:
   the log rows appended since the last build name the affected people (emails, including the
   *old* email of a changed record), orders, events and anonymous ids; each affected person,
   order and event is rebuilt from its complete staged history by the same pure functions a
   full build uses, and only rows that changed are written (a MERGE that rewrites only the
   files holding them; stale keys are deleted in the same commit).
3. :func:`build_gold` - silver -> ``gold/customer_features`` and ``gold/audience_members``
   (partitioned by segment) for the affected contacts. Two things depend on more than a
   contact's own rows and are handled explicitly:

   - **time**: features are computed as of ``as_of`` (midnight UTC by default). Recency,
     windows and "days since" change for everyone when ``as_of`` moves, so the first run with a
     new ``as_of`` recomputes the features of *every* contact from silver (joins and
     aggregations over silver only - no normalisation, no identity resolution); later runs that
     day are incremental again;
   - **RFM quintiles** rank contacts against each other: they are recomputed over the whole
     features table on every run (a rank over three columns), and the rows whose scores moved
     are rewritten with the affected ones.
4. :func:`commit_transform_state` records what silver and gold were built from (staging
   sequence numbers, ``as_of``, a config fingerprint, table versions) in the metadata of an
   empty commit to ``gold/customer_features``. A different config or pepper, a table changed
   by someone else, or a missing state makes the next run a full rebuild.

Every stage reports row balances over the rows it processed in this run, quarantine counts per
rule, and row counts for ``ops/volume_metrics``: the *table totals* after the run (per source
from the staging state, per segment from the audience), so a small incremental run never looks
like a volume drop. A source's quarantined count is a total too - its current bronze rows that
fail the contract, kept in the staging state - so a rerun after a crash, which finds the work
done, reports (and holds publishing) exactly as the run that did it would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.connectors.lake import Lake, LakeError
from tasks.core.canonical import (
    NormaliseOptions,
    canonical_schema,
    normalisation_losses,
    to_canonical,
)
from tasks.core.config import PipelineConfig, SourceBase
from tasks.core.contracts import (
    QUARANTINE_SCHEMA,
    AudienceMember,
    ContactCandidate,
    Contract,
    CustomerFeatures,
    EnrichmentCandidate,
    EventCandidate,
    SilverContact,
    SilverEvent,
    SilverOrder,
    Split,
    order_contract,
    rule_counts,
    split_valid,
)
from tasks.core.entities import (
    dedupe_enrichment,
    dedupe_events,
    dedupe_orders,
    resolve_contacts,
    silver_events,
    silver_orders,
)
from tasks.core.feature_catalog import FEATURE_COLUMNS
from tasks.core.features import SCORE_COLUMNS, customer_metrics, score_rfm
from tasks.core.incremental import (
    COPIES,
    RECORD_HASH,
    SEQ,
    StagingState,
    TransformState,
    changed_rows,
    distinct_records,
    fingerprint,
    latest_ops,
    live_rows,
    net_changes,
    staging_updates,
    values_in,
)
from tasks.core.normalise import UTC_MICROS, contact_key
from tasks.core.segments import audience_members
from tasks.core.tables import (
    AUDIENCE,
    AUDIENCE_SCHEMA,
    BUILT_TABLES,
    CONTACTS,
    EVENTS,
    FEATURES,
    ORDERS,
    ROLE_TABLES,
    ROLES,
    STAGED,
    bronze_table,
    staging_schema,
    table,
)
from tasks.quarantine import records_batch_id, write_quarantine_records
from tasks.reports import TableReport
from tasks.resources import open_lake, pepper

# Re-exported: the volume metrics live in tasks.volume (ingest records them too).
from tasks.volume import VOLUME_METRICS as VOLUME_METRICS
from tasks.volume import Metric
from tasks.volume import record_volumes as record_volumes

# A table whose stale keys (gone from the new result) exceed this share is rewritten whole
# instead of merged and pruned: one overwrite beats a merge touching most of the table.
REWRITE_SHARE = 0.1
REWRITE_MIN = 1_000
# An incremental build whose changed staging rows exceed this share of the live rows rebuilds
# everything instead: at that size, key lookups cost more than a full pass.
FULL_BUILD_SHARE = 0.3
# Commits searched (newest first) for the latest state; older states mean a rebuild.
STATE_HISTORY = 200
# Rounds of the event/anonymous-id closure before giving up on incremental (a pathological
# chain of devices shared across many people); each round is one filtered scan.
MAX_CLOSURE_ROUNDS = 25

Logger = logging.Logger | logging.LoggerAdapter[Any]
_State = TypeVar("_State")


@dataclass(frozen=True)
class StageReport:
    """What one transform stage did: row balances, counts for volume metrics, data quality."""

    tables: list[TableReport]
    metrics: list[Metric]
    rule_counts: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)
    audience_sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StagingReport:
    """What staging did per role this run: rows checked and rejected, and how (mode)."""

    checked: dict[str, int]
    rejected: dict[str, int]
    modes: dict[str, str]
    metrics: list[Metric]
    rule_counts: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SilverReport(StageReport):
    """:class:`StageReport` plus what gold must rebuild and the state to record afterwards.

    ``mode``: ``full``, ``incremental`` or ``unchanged``; ``contact_keys``: the contacts gold
    must recompute (None: every contact); ``state``: the transform state to commit once gold
    is built (None: nothing was built, nothing to record).
    """

    mode: str = "full"
    contact_keys: tuple[str, ...] | None = None
    state: dict[str, str] | None = None


class Checker:
    """Checks frames against contracts for one stage and keeps the quarantine records.

    :meth:`flush` writes the records kept so far; a caller about to commit rows whose invalid
    siblings must not be lost flushes first (see :func:`_stage_role`).
    """

    def __init__(self, *, run_id: str, now: datetime, logger: Logger) -> None:
        self.run_id = run_id
        self.now = now
        self.logger = logger
        self.quarantine: list[pl.DataFrame] = []
        self._flushed = 0

    def check(self, frame: pl.DataFrame, contract: Contract, *, table: str) -> Split:
        """Valid rows of ``frame``; its quarantine records are kept for :meth:`write`."""
        split = split_valid(frame, contract, table=table, run_id=self.run_id, now=self.now)
        self.quarantine.append(split.quarantine)
        if split.rejected:
            self.logger.warning(
                "%s: %d row(s) quarantined by %s", table, split.rejected, _name(contract)
            )
        return split

    def records(self) -> pl.DataFrame:
        if not self.quarantine:
            return pl.DataFrame(schema=QUARANTINE_SCHEMA)
        return pl.concat(self.quarantine).unique("quarantine_id", maintain_order=True)

    def flush(self, lake: Lake, *, stage: str) -> None:
        """Write the records kept since the last flush (idempotently: a redo adds nothing)."""
        pending = self.quarantine[self._flushed :]
        self._flushed = len(self.quarantine)
        records = pl.concat(pending).unique("quarantine_id") if pending else None
        if records is not None and records.height:
            write_quarantine_records(
                lake, records, batch_id=records_batch_id(f"transform-{stage}", records)
            )

    def write(self, lake: Lake, *, stage: str) -> list[dict[str, Any]]:
        """Write this stage's quarantine (idempotently) and return its counts per rule."""
        self.flush(lake, stage=stage)
        return rule_counts(self.records().lazy()).collect().to_dicts()


def _name(contract: Contract) -> str:
    return getattr(contract, "__name__", None) or str(getattr(contract, "name", "contract"))


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- writing only what changed ----------------------------------------------------------------
def sync_table(
    lake: Lake,
    table: str,
    df: pl.DataFrame,
    *,
    keys: Sequence[str],
    scope: pl.Series | None = None,
    scope_column: str | None = None,
    partition_by: Sequence[str] | None = None,
) -> int:
    """Make ``table`` hold ``df`` for the keys in ``scope`` (all keys if None); write only changes.

    Within the scope (values of ``scope_column``, default the first key), rows of ``df`` that
    differ from the table are upserted and table rows whose key ``df`` lacks are deleted, in one
    MERGE commit that rewrites only the files holding those keys; an unchanged result commits
    nothing. Without a scope, a changed schema or mostly-new keys rewrite the table whole.
    Returns the number of rows written or deleted.
    """
    key_list = list(keys)
    if not lake.exists(table):
        lake.overwrite(table, df, partition_by=partition_by)
        return df.height
    current = lake.scan(table)
    same_schema = dict(current.collect_schema()) == dict(df.schema)
    if scope is not None:
        if not same_schema:
            raise LakeError(
                f"{table}: the built rows' schema differs from the table's; an incremental "
                "build cannot change a schema (run with full_refresh)"
            )
        current = current.filter(values_in(scope_column or key_list[0], scope))
    elif not same_schema:
        lake.overwrite(table, df, partition_by=partition_by)
        return df.height
    upserts, deletes = (
        frame.collect() for frame in changed_rows(df.lazy(), current.select(df.columns), keys=keys)
    )
    if scope is None and deletes.height > max(REWRITE_MIN, REWRITE_SHARE * df.height):
        lake.overwrite(table, df, partition_by=partition_by)
        return df.height
    if upserts.height or deletes.height:
        lake.upsert(table, upserts, keys=key_list, delete=deletes, partition_by=partition_by)
    return upserts.height + deletes.height


def replace_table(lake: Lake, table: str, df: pl.DataFrame, *, key: str) -> None:
    """Make ``table`` hold exactly ``df`` (one row per ``key``), touching as little as possible.

    Rows that did not change are not rewritten and an unchanged result commits nothing; keys
    that disappeared (a person whose last record was corrected away, an order now quarantined)
    are deleted, so silver never keeps a stale row - a stale contact could carry a stale
    consent. A changed schema, or mostly-new keys, rewrites the table.
    """
    sync_table(lake, table, df, keys=[key])


# --- reading pinned versions and states --------------------------------------------------------
def _pinned(lake: Lake, table: str, version: int | None) -> pl.LazyFrame:
    """The table's rows at ``version``, however it changes while we read."""
    return lake.scan_files(table, lake.file_uris(table, version=version))


def _version(lake: Lake, table: str) -> int:
    """The table's version, -1 if it does not exist."""
    version = lake.version(table)
    return -1 if version is None else version


def _latest_state(
    lake: Lake, table: str, parse: Callable[[Mapping[str, Any]], _State | None]
) -> tuple[_State | None, int | None]:
    """The newest state ``parse`` finds in the table's commit metadata, and its version."""
    if not lake.exists(table):
        return None, None
    seen = 0
    for limit in (1, 10, STATE_HISTORY):  # the newest commit usually carries it: read few
        commits = lake.history(table, limit=limit)
        for commit in commits[seen:]:
            state = parse(commit)
            if state is not None:
                return state, int(commit["version"])
        if len(commits) < limit:
            break
        seen = len(commits)
    return None, None


def staging_state(lake: Lake, role: str) -> StagingState | None:
    """The state of ``role``'s staging table (None before it is built)."""
    state, _ = _latest_state(lake, STAGED[role], StagingState.from_commit)
    return state


# --- stage 1: bronze -> staging ---------------------------------------------------------------
def _conform(frame: pl.LazyFrame, role: str) -> pl.LazyFrame:
    """Exactly the role's canonical columns and types, whatever the sources provided."""
    present = set(frame.collect_schema().names())
    return frame.select(
        [
            pl.col(name).cast(dtype) if name in present else pl.lit(None, dtype).alias(name)
            for name, dtype in canonical_schema(role).items()
        ]
    )


def _mapping_digest(source: SourceBase) -> str:
    return fingerprint({"role": source.role, "fields": dict(sorted(source.fields.items()))})


def _role_fingerprint(role: str, config: PipelineConfig) -> str:
    rates = config.transform.currency.to_reporting()
    return fingerprint(
        {
            "stage": role,
            "phone_region": config.transform.default_phone_region,
            "currencies": sorted(rates) if role == "orders" else [],
        }
    )


@dataclass
class _RoleStaging:
    """What staging a role did (``checked``, ``rejected``: this run) and what the staging
    table reflects afterwards, per source (``live`` rows, ``quarantined`` current bronze rows)."""

    mode: str
    checked: int = 0
    rejected: int = 0
    live: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    losses: pl.DataFrame | None = None


def _rejected_by_source(checked: pl.DataFrame, valid: pl.DataFrame) -> dict[str, int]:
    """Rows of ``checked`` that did not pass (are not in ``valid``), per ``_source``."""
    passed = dict(valid.group_by("_source").len().iter_rows())
    return {
        str(source): int(count) - int(passed.get(source, 0))
        for source, count in checked.group_by("_source").len().iter_rows()
    }


def _stage_role(
    lake: Lake,
    config: PipelineConfig,
    role: str,
    *,
    contract: Contract,
    checker: Checker,
    options: NormaliseOptions,
    full_refresh: bool,
    logger: Logger,
) -> _RoleStaging:
    """Bring ``silver/staged_<role>`` up to the current bronze of the role's sources.

    The rows this consumes fail or pass the role's contract: the failures are written to
    ``ops/quarantine`` *before* the staging commit that records the bronze versions as
    consumed, so a crash in between redoes the role and a crash after it loses nothing. The
    same commit records, per source, how many current bronze rows are quarantined (see
    :class:`StagingState`), so counts never depend on which run did the work.
    """
    table = STAGED[role]
    role_fp = _role_fingerprint(role, config)
    state, _ = _latest_state(lake, table, StagingState.from_commit)
    sources = {
        name: source
        for name, source in config.sources_with_role(role).items()
        if lake.exists(bronze_table(name))
    }
    versions = {name: int(lake.version(bronze_table(name)) or 0) for name in sources}
    mappings = {name: _mapping_digest(source) for name, source in sources.items()}
    # A state without quarantine counts predates them: restage once to learn them.
    full = full_refresh or state is None or state.fingerprint != role_fp or state.rejected is None
    if not full and state is not None and state.versions == versions and state.mappings == mappings:
        return _RoleStaging(
            mode="unchanged", live=dict(state.live), quarantined=dict(state.rejected or {})
        )

    def canonical(name: str, rows: pl.LazyFrame) -> pl.LazyFrame:
        return _conform(to_canonical(rows, sources[name], source_name=name, options=options), role)

    added: list[pl.LazyFrame] = []
    removed: list[pl.LazyFrame] = []  # distinct records (with copies)
    dropped: list[pl.LazyFrame] = []  # canonical rows bronze lost (valid or not)
    restaged: set[str] = set()  # sources whose every current row is in `added`
    log = None if full or state is None else _pinned(lake, table, lake.version(table))
    for name in sorted(set(sources) | (set() if full or state is None else set(state.versions))):
        bronze = bronze_table(name) if name in sources else None
        if full or state is None:
            assert bronze is not None
            added.append(canonical(name, _pinned(lake, bronze, versions[name])))
            restaged.add(name)
            continue
        assert log is not None
        staged_records = (
            latest_ops(log.filter(pl.col("_source") == name)).filter(pl.col(COPIES) > 0).drop(SEQ)
        )
        if bronze is None:  # the source was removed or disabled: its rows leave silver
            removed.append(staged_records)
            continue
        since = state.versions.get(name)
        if since is None or state.mappings.get(name) != mappings[name]:
            # New source or changed field mapping: restage it whole (unchanged records cancel).
            removed.append(staged_records)
            added.append(canonical(name, _pinned(lake, bronze, versions[name])))
            restaged.add(name)
            continue
        if since == versions[name]:
            continue
        try:
            before = set(lake.file_uris(bronze, version=since))
            after = set(lake.file_uris(bronze, version=versions[name]))
            columns = lake.scan(bronze).collect_schema().names()
            gained, lost = net_changes(
                lake.scan_files(bronze, sorted(after - before)),
                lake.scan_files(bronze, sorted(before - after)),
                columns=columns,
            )
            gained_rows, lost_rows = pl.collect_all([gained, lost])
        except LakeError as exc:
            # Version or files gone (log cleanup, vacuum): restage the source whole.
            logger.warning(
                "%s: cannot diff %s since v%s (%s); restaging it", table, bronze, since, exc
            )
            removed.append(staged_records)
            added.append(canonical(name, _pinned(lake, bronze, versions[name])))
            restaged.add(name)
            continue
        added.append(canonical(name, gained_rows.lazy()))
        dropped.append(canonical(name, lost_rows.lazy()))
        removed.append(distinct_records(dropped[-1]))

    frames = pl.collect_all(added) if added else []
    candidates = (
        pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=canonical_schema(role))
    )
    del frames  # frames this size are worth releasing early
    split = checker.check(candidates, contract, table=ROLE_TABLES[role])
    rejected = _rejected_by_source(candidates, split.valid)
    # Rows bronze lost leave the quarantined count if they had failed: check them again (a
    # contract judges each row on its own), without recording them anywhere.
    gone_rows = pl.concat(pl.collect_all(dropped), how="vertical") if dropped else None
    lost_rejected: dict[str, int] = {}
    if gone_rows is not None and gone_rows.height:
        recheck = split_valid(
            gone_rows, contract, table=ROLE_TABLES[role], run_id=checker.run_id, now=checker.now
        )
        lost_rejected = _rejected_by_source(gone_rows, recheck.valid)
    earlier = {} if full or state is None else dict(state.rejected or {})
    seq = (state.seq if state is not None else 0) + 1
    result = _RoleStaging(
        mode="full" if full else "incremental",
        checked=candidates.height,
        rejected=split.rejected,
        quarantined={
            name: rejected.get(name, 0)
            + (0 if name in restaged else earlier.get(name, 0) - lost_rejected.get(name, 0))
            for name in sources
        },
        losses=normalisation_losses(candidates.lazy()).collect(),
    )
    # The rows failing the contract are recorded before the commit that marks them consumed.
    checker.flush(lake, stage=f"staging-{role}")
    del candidates
    valid_rows = split.valid.height
    records = distinct_records(split.valid.lazy()).with_columns(pl.lit(seq, pl.Int64).alias(SEQ))
    records = records.select([pl.col(c).cast(t) for c, t in staging_schema(role).items()])
    staged = records.collect()
    del split, records
    if full or state is None:
        result.live = {name: 0 for name in sources} | {
            str(k): int(v)
            for k, v in staged.group_by("_source").agg(pl.col(COPIES).sum()).iter_rows()
        }
        new_state = StagingState(role_fp, seq, versions, mappings, result.live, result.quarantined)
        lake.overwrite(table, staged, metadata=new_state.to_metadata())
        logger.info("%s: rebuilt from bronze (%d valid rows)", table, valid_rows)
        return result

    assert log is not None
    gone = pl.concat(removed, how="vertical").collect() if removed else staged.head(0).drop(SEQ)
    touched = pl.concat([staged.get_column(RECORD_HASH), gone.get_column(RECORD_HASH)])
    current = (
        latest_ops(log.filter(values_in(RECORD_HASH, touched)))
        .select(RECORD_HASH, COPIES)
        .collect()
    )
    updates = staging_updates(current.lazy(), staged.lazy(), gone.lazy(), seq=seq).collect()
    updates = updates.select([pl.col(c).cast(t) for c, t in staging_schema(role).items()])
    moved = (
        updates.select("_source", RECORD_HASH, COPIES)
        .join(current.rename({COPIES: "_old"}), on=RECORD_HASH, how="left")
        .group_by("_source")
        .agg((pl.col(COPIES) - pl.col("_old").fill_null(0)).sum().alias("_delta"))
    )
    live = {name: state.live.get(name, 0) for name in sources}
    for source, delta in moved.iter_rows():
        if source in live:
            live[str(source)] = live.get(str(source), 0) + int(delta)
    result.live = live
    new_state = StagingState(role_fp, seq, versions, mappings, live, result.quarantined)
    written = lake.append_once(
        table, updates, batch_id=f"{table}:{seq}", metadata=new_state.to_metadata()
    )
    if not written:
        raise LakeError(
            f"{table}: sequence {seq} was staged by another transform run meanwhile; "
            "run the transform again"
        )
    logger.info(
        "%s: %d changed row(s) checked, %d record(s) updated in the staging log",
        table,
        result.checked,
        updates.height,
    )
    return result


def stage_bronze(
    lake: Lake,
    config: PipelineConfig,
    *,
    run_id: str,
    now: datetime,
    full_refresh: bool = False,
    logger: Logger,
) -> StagingReport:
    """Stage every role (see :func:`stage_sources`); the body without Prefect, for benchmarks."""
    settings = config.transform
    options = NormaliseOptions(default_phone_region=settings.default_phone_region)
    contracts: dict[str, Contract] = {
        "contacts": ContactCandidate,
        "enrichment": EnrichmentCandidate,
        "orders": order_contract(settings.currency.to_reporting()),
        "events": EventCandidate,
    }
    checker = Checker(run_id=run_id, now=now, logger=logger)
    staged = {
        role: _stage_role(
            lake,
            config,
            role,
            contract=contracts[role],
            checker=checker,
            options=options,
            full_refresh=full_refresh,
            logger=logger,
        )
        for role in ROLES
    }
    metrics: list[Metric] = [
        {
            "table": ROLE_TABLES[role],
            "source": source,
            "rows": rows,
            "quarantined": result.quarantined.get(source, 0),
        }
        for role, result in staged.items()
        for source, rows in sorted(result.live.items())
    ]
    losses = [result.losses for result in staged.values() if result.losses is not None]
    return StagingReport(
        checked={role: r.checked for role, r in staged.items()},
        rejected={role: r.rejected for role, r in staged.items()},
        modes={role: r.mode for role, r in staged.items()},
        metrics=metrics,
        rule_counts=checker.write(lake, stage="staging"),
        losses=pl.concat(losses).to_dicts() if losses else [],
    )


@task(cache_policy=NO_CACHE)
def stage_sources(
    config: PipelineConfig, *, run_id: str, now: datetime, full_refresh: bool = False
) -> StagingReport:
    """bronze -> ``silver/staged_<role>``: normalise and check only rows bronze gained or lost."""
    return stage_bronze(
        open_lake(),
        config,
        run_id=run_id,
        now=now,
        full_refresh=full_refresh,
        logger=get_run_logger(),
    )


# --- stage 2: staging -> silver ---------------------------------------------------------------
def _transform_fingerprint(config: PipelineConfig, secret: bytes, version: int) -> str:
    settings = config.transform
    probe = pl.select(contact_key(pl.lit("fingerprint"), pepper=secret, version=version)).item()
    return fingerprint(
        {
            "identity": settings.identity.model_dump(mode="json"),
            "features": settings.features.model_dump(mode="json"),
            "rates": settings.currency.to_reporting(),
            "segments": [s.model_dump(mode="json") for s in config.segments],
            "pepper": probe,  # changes with the pepper; reveals nothing about it
        }
    )


@dataclass(frozen=True)
class _Plan:
    full: bool
    gold_all: bool
    since: dict[str, int]
    seqs: dict[str, int]
    versions: dict[str, int]
    live_rows: int
    fingerprint: str
    reason: str


def _plan(
    lake: Lake, config: PipelineConfig, *, as_of: datetime, full_refresh: bool, fp: str
) -> _Plan:
    """Full, incremental or nothing: what silver and gold must rebuild this run."""
    versions = {role: int(lake.version(STAGED[role]) or 0) for role in ROLES}
    staged = {role: staging_state(lake, role) for role in ROLES}
    seqs = {role: s.seq if s is not None else 0 for role, s in staged.items()}
    state, marker = _latest_state(lake, FEATURES, TransformState.from_commit)
    reason = ""
    if full_refresh:
        reason = "full_refresh requested"
    elif state is None:
        reason = "no transform state recorded yet"
    elif state.fingerprint != fp:
        reason = "configuration, pepper or code changed since the last build"
    elif lake.version(FEATURES) != marker or any(
        _version(lake, t) != state.versions.get(t) for t in BUILT_TABLES
    ):
        reason = "a silver or gold table changed since the last build (crash or outside write)"
    elif any(seqs[role] < state.seqs.get(role, 0) for role in ROLES):
        reason = "a staging table was recreated"
    full = bool(reason)
    return _Plan(
        full=full,
        gold_all=full or state is None or state.as_of != as_of.isoformat(),
        since={} if full or state is None else dict(state.seqs),
        seqs=seqs,
        versions=versions,
        live_rows=sum(sum(s.live.values()) for s in staged.values() if s is not None),
        fingerprint=fp,
        reason=reason,
    )


@dataclass(frozen=True)
class _Scope:
    """What an incremental build rebuilds: people (emails), orders and events.

    ``contact_keys`` are the keys of ``emails`` plus those of people who may lose an order or
    an event link (found through silver); ``changed_rows`` counts the staging rows behind it.
    """

    emails: pl.Series
    order_ids: pl.Series
    event_ids: pl.Series
    contact_keys: pl.Series
    changed_rows: int


def _live_where(log: pl.LazyFrame, predicate: pl.Expr) -> pl.LazyFrame:
    """Live staged rows of the records matching ``predicate`` (a condition on their content;
    every log row of a record has the same content, so a record is kept or dropped whole)."""
    return live_rows(log.filter(predicate))


ANON = "_anon"
"""Source and anonymous id joined by a unit separator: an id means something only in its
source."""


def _with_anon(events_log: pl.LazyFrame) -> pl.LazyFrame:
    return events_log.with_columns(
        pl.concat_str(["_source", "anonymous_id"], separator="\x1f").alias(ANON)
    )


def _event_closure(
    events_log: pl.LazyFrame, ids: pl.Series, anons: pl.Series
) -> pl.DataFrame | None:
    """Live staged events reachable from event ``ids`` and ``anons`` (see :data:`ANON`).

    Every delivery of an event and every event of an anonymous id, to a fixpoint, so dedupe and
    anonymous-id links are computed from complete groups exactly as a full build computes them.
    None if it does not settle within :data:`MAX_CLOSURE_ROUNDS` rounds.
    """
    ids, anons = ids.drop_nulls().unique(), anons.drop_nulls().unique()
    for _ in range(MAX_CLOSURE_ROUNDS):
        rows = _live_where(
            _with_anon(events_log), values_in("event_id", ids) | values_in(ANON, anons)
        )
        found = rows.collect()
        more_ids = found.get_column("event_id").unique()
        more_ids = more_ids.filter(~more_ids.is_in(ids))
        more_anons = found.get_column(ANON).drop_nulls().unique()
        more_anons = more_anons.filter(~more_anons.is_in(anons))
        if more_ids.is_empty() and more_anons.is_empty():
            return found
        ids = pl.concat([ids, more_ids])
        anons = pl.concat([anons, more_anons])
    return None


def _column(frames: Iterable[pl.DataFrame], name: str) -> pl.Series:
    """The non-null values of ``name`` across ``frames``."""
    parts = [f.get_column(name) for f in frames if name in f.columns]
    if not parts:
        return pl.Series(name, [], pl.String)
    return pl.concat(parts).drop_nulls().unique()


def _scope(
    lake: Lake,
    logs: dict[str, pl.LazyFrame],
    since: dict[str, int],
    *,
    secret: bytes,
    version: int,
) -> _Scope | None:
    """The people, orders and events touched by staging rows newer than ``since``.

    The log rows appended since name records that appeared, changed or disappeared (with their
    old content), hence:

    - people: every email on a changed contact, enrichment, order or event row, on any version
      of a changed order (it may move between people), on any event sharing a delivery or an
      anonymous id with a changed event (links may move), and the people silver links to the
      changed orders and events now;
    - orders: the changed ones and every order of an affected person;
    - events: the changed ones and every event of an affected person, closed over deliveries
      and anonymous ids (:func:`_event_closure`).

    None when the change is too entangled to pay off (a full build is cheaper).
    """
    changed = dict(
        zip(
            ROLES,
            pl.collect_all([logs[r].filter(pl.col(SEQ) > since.get(r, 0)) for r in ROLES]),
            strict=True,
        )
    )
    order_ids = _column([changed["orders"]], "order_id")
    seed_events = _event_closure(
        logs["events"],
        _column([changed["events"]], "event_id"),
        _with_anon(changed["events"].lazy()).collect().get_column(ANON),
    )
    if seed_events is None:
        return None
    lookups = [_live_where(logs["orders"], values_in("order_id", order_ids)).select("email")]
    if lake.exists(ORDERS):
        lookups.append(
            lake.scan(ORDERS).filter(values_in("order_id", order_ids)).select("contact_key")
        )
    if lake.exists(EVENTS):
        seed_ids = seed_events.get_column("event_id")
        lookups.append(
            lake.scan(EVENTS).filter(values_in("event_id", seed_ids)).select("contact_key")
        )
    found = pl.collect_all(lookups)
    old_keys = _column(found[1:], "contact_key")
    old_people = (
        lake.scan(CONTACTS).filter(values_in("contact_key", old_keys)).select("email").collect()
        if lake.exists(CONTACTS) and old_keys.len()
        else pl.DataFrame(schema={"email": pl.String()})
    )
    emails = _column([*changed.values(), found[0], seed_events, old_people], "email").sort()
    person_events, person_orders = pl.collect_all(
        [
            _live_where(_with_anon(logs["events"]), values_in("email", emails)).select(
                "event_id", ANON
            ),
            _live_where(logs["orders"], values_in("email", emails)).select("order_id"),
        ]
    )
    events = _event_closure(
        logs["events"],
        _column([seed_events, person_events], "event_id"),
        _column([seed_events, person_events], ANON),
    )
    if events is None:
        return None
    keys = pl.DataFrame({"email": emails}).select(
        contact_key(pl.col("email"), pepper=secret, version=version).alias("contact_key")
    )
    return _Scope(
        emails=emails,
        order_ids=_column([changed["orders"], person_orders], "order_id"),
        event_ids=events.get_column("event_id").unique(),
        contact_keys=pl.concat([keys.get_column("contact_key"), old_keys]).unique().sort(),
        changed_rows=sum(f.height for f in changed.values()),
    )


def build_silver_tables(
    lake: Lake,
    config: PipelineConfig,
    *,
    staging: StagingReport,
    run_id: str,
    now: datetime,
    as_of: datetime,
    full_refresh: bool = False,
    logger: Logger,
) -> SilverReport:
    """Staging -> silver (see :func:`build_silver`); the body without Prefect, for benchmarks."""
    contact_sources = config.sources_with_role("contacts")
    if not any(lake.exists(bronze_table(name)) for name in contact_sources):
        logger.warning("no contact source ingested yet: silver not built")
        return SilverReport(tables=[], metrics=[], mode="unchanged")
    secret, version = pepper()
    plan = _plan(
        lake,
        config,
        as_of=as_of,
        full_refresh=full_refresh,
        fp=_transform_fingerprint(config, secret, version),
    )
    logs = {role: _pinned(lake, STAGED[role], plan.versions[role]) for role in ROLES}
    scope: _Scope | None = None
    mode = "full"
    if plan.full:
        logger.info("silver: full build (%s)", plan.reason)
    else:
        scope = _scope(lake, logs, plan.since, secret=secret, version=version)
        if scope is None or scope.changed_rows > FULL_BUILD_SHARE * max(plan.live_rows, 1):
            logger.info("silver: the change is too large for an incremental build: full build")
            scope = None
        else:
            mode = "incremental" if scope.changed_rows else "unchanged"
            logger.info(
                "silver: %d changed staging row(s) -> %d people, %d orders, %d events rebuilt",
                scope.changed_rows,
                scope.emails.len(),
                scope.order_ids.len(),
                scope.event_ids.len(),
            )
    checker = Checker(run_id=run_id, now=now, logger=logger)
    if mode == "unchanged":
        tables = _unchanged_reports(staging)
    else:
        tables = _build_silver_rows(
            lake,
            config,
            logs,
            scope,
            staging=staging,
            checker=checker,
            secret=secret,
            version=version,
        )
    metrics: list[Metric] = [
        {"table": table, "source": None, "rows": lake.count(table), "quarantined": 0}
        for table in (ORDERS, EVENTS, CONTACTS)
        if lake.exists(table)
    ]
    built = mode != "unchanged" or plan.gold_all
    state = TransformState(plan.fingerprint, as_of.isoformat(), plan.seqs, versions={})
    keys: tuple[str, ...] | None = None
    if not plan.gold_all and scope is not None:
        keys = tuple(scope.contact_keys.to_list()) if mode == "incremental" else ()
    return SilverReport(
        tables=tables,
        metrics=metrics,
        rule_counts=checker.write(lake, stage="silver"),
        mode=mode,
        contact_keys=keys,
        state=state.to_metadata() if built else None,
    )


def _unchanged_reports(staging: StagingReport) -> list[TableReport]:
    """Balances of a run that rebuilt nothing: only rows rejected by staging were processed."""
    rejected = staging.rejected
    return [
        TableReport(
            CONTACTS,
            rows_in=rejected["contacts"] + rejected["enrichment"],
            rows_out=0,
            quarantined=rejected["contacts"] + rejected["enrichment"],
            duplicates=0,
        ),
        TableReport(ORDERS, rejected["orders"], 0, rejected["orders"], 0),
        TableReport(EVENTS, rejected["events"], 0, rejected["events"], 0),
    ]


def _build_silver_rows(
    lake: Lake,
    config: PipelineConfig,
    logs: dict[str, pl.LazyFrame],
    scope: _Scope | None,
    *,
    staging: StagingReport,
    checker: Checker,
    secret: bytes,
    version: int,
) -> list[TableReport]:
    """Rebuild silver for ``scope`` (everything if None) from live staged rows; write changes."""
    settings = config.transform
    rates = settings.currency.to_reporting()
    if scope is None:
        wanted = {role: pl.lit(True) for role in ROLES}
    else:
        wanted = {
            "contacts": values_in("email", scope.emails),
            "enrichment": values_in("email", scope.emails),
            "orders": values_in("order_id", scope.order_ids),
            "events": values_in("event_id", scope.event_ids),
        }
    rows = dict(
        zip(ROLES, pl.collect_all([_live_where(logs[r], wanted[r]) for r in ROLES]), strict=True)
    )
    orders = dedupe_orders(rows["orders"].lazy()).collect()
    events = dedupe_events(rows["events"].lazy()).collect()
    enrichment = dedupe_enrichment(rows["enrichment"].lazy()).collect()
    person = pl.lit(True) if scope is None else values_in("email", scope.emails)

    built_orders = silver_orders(
        orders.lazy(), rates=rates, pepper=secret, key_version=version
    ).collect()
    out_orders = checker.check(built_orders, SilverOrder, table=ORDERS)
    sync_table(
        lake,
        ORDERS,
        out_orders.valid,
        keys=["order_id"],
        scope=None if scope is None else scope.order_ids,
    )
    built_events = silver_events(events.lazy(), pepper=secret, key_version=version).collect()
    out_events = checker.check(built_events, SilverEvent, table=EVENTS)
    sync_table(
        lake,
        EVENTS,
        out_events.valid,
        keys=["event_id"],
        scope=None if scope is None else scope.event_ids,
    )
    person_orders = orders.filter(person)
    contacts = (
        resolve_contacts(
            rows["contacts"].lazy(),
            enrichment.lazy(),
            person_orders.lazy(),
            events.lazy(),
            identity=settings.identity,
            pepper=secret,
            key_version=version,
        )
        .filter(person)
        .collect()
    )
    out_contacts = checker.check(contacts, SilverContact, table=CONTACTS)
    sync_table(
        lake,
        CONTACTS,
        out_contacts.valid,
        keys=["contact_key"],
        scope=None if scope is None else scope.contact_keys,
    )

    # Balances over the rows processed this run: the changed rows staging rejected, plus the
    # staged rows each rebuild read. Duplicates are counted from the inputs, independently of
    # what was built, so a balance that holds proves one row per key and no lost record.
    def superseded(frame: pl.DataFrame, key: str) -> int:
        return frame.height - frame.get_column(key).n_unique()

    rejected = staging.rejected
    merged_people = int(contacts.get_column("record_count").sum() or 0) - contacts.height
    return [
        TableReport(
            CONTACTS,
            rows_in=rejected["contacts"]
            + rejected["enrichment"]
            + rows["contacts"].height
            + rows["enrichment"].height
            + _distinct_people(person_orders)
            + _distinct_people(events.filter(person)),
            rows_out=out_contacts.valid.height,
            quarantined=rejected["contacts"] + rejected["enrichment"] + out_contacts.rejected,
            duplicates=superseded(rows["enrichment"], "email") + merged_people,
        ),
        TableReport(
            ORDERS,
            rows_in=rejected["orders"] + rows["orders"].height,
            rows_out=out_orders.valid.height,
            quarantined=rejected["orders"] + out_orders.rejected,
            duplicates=superseded(rows["orders"], "order_id"),
        ),
        TableReport(
            EVENTS,
            rows_in=rejected["events"] + rows["events"].height,
            rows_out=out_events.valid.height,
            quarantined=rejected["events"] + out_events.rejected,
            duplicates=superseded(rows["events"], "event_id"),
        ),
    ]


def _distinct_people(frame: pl.DataFrame) -> int:
    """Distinct ``(source, email)`` with an email: the identity records a role contributes."""
    return frame.filter(pl.col("email").is_not_null()).select("_source", "email").n_unique()


@task(cache_policy=NO_CACHE)
def build_silver(
    config: PipelineConfig,
    *,
    staging: StagingReport,
    run_id: str,
    now: datetime,
    as_of: datetime,
    full_refresh: bool = False,
) -> SilverReport:
    """staging -> ``silver/orders``, ``silver/events``, ``silver/contacts`` (changed keys only).

    One task because identity resolution needs every role at once: the customers behind
    orders and the users behind events become contacts too.
    """
    return build_silver_tables(
        open_lake(),
        config,
        staging=staging,
        run_id=run_id,
        now=now,
        as_of=as_of,
        full_refresh=full_refresh,
        logger=get_run_logger(),
    )


# --- stage 3: silver -> gold ------------------------------------------------------------------
_EMPTY_ORDERS: dict[str, pl.DataType] = {
    "contact_key": pl.String(),
    "amount_reporting": pl.Float64(),
    "category": pl.String(),
    "status": pl.String(),
    "created_at": UTC_MICROS,
}
_EMPTY_EVENTS: dict[str, pl.DataType] = {"contact_key": pl.String(), "occurred_at": UTC_MICROS}


def _scan_or_empty(lake: Lake, table: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    return lake.scan(table) if lake.exists(table) else pl.LazyFrame(schema=schema)


def build_gold_tables(
    lake: Lake,
    config: PipelineConfig,
    *,
    as_of: datetime,
    run_id: str,
    now: datetime,
    contact_keys: Sequence[str] | None,
    logger: Logger,
) -> StageReport:
    """Silver -> gold (see :func:`build_gold`); the body without Prefect, for benchmarks."""
    if not lake.exists(CONTACTS):
        logger.warning("%s does not exist yet: gold not built", CONTACTS)
        return StageReport(tables=[], metrics=[])
    checker = Checker(run_id=run_id, now=now, logger=logger)
    if contact_keys is not None and not contact_keys and lake.exists(FEATURES):
        return _gold_totals(lake, config, checker)  # nothing changed: counts only
    keys = None if contact_keys is None else pl.Series("contact_key", contact_keys, pl.String)

    def of_affected(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame if keys is None else frame.filter(values_in("contact_key", keys))

    contacts = lake.scan(CONTACTS)
    metrics = customer_metrics(
        of_affected(contacts),
        of_affected(_scan_or_empty(lake, ORDERS, _EMPTY_ORDERS)),
        of_affected(_scan_or_empty(lake, EVENTS, _EMPTY_EVENTS)),
        as_of=as_of,
        rfm_window_days=config.transform.features.rfm_window_days,
    ).collect()
    current = (
        lake.read(FEATURES) if lake.exists(FEATURES) else pl.DataFrame(schema=FEATURE_COLUMNS)
    ).select(list(FEATURE_COLUMNS))
    if keys is None:
        population = metrics
    else:
        kept = current.filter(~values_in("contact_key", keys)).drop(SCORE_COLUMNS)
        population = pl.concat([kept, metrics], how="vertical")
    # Quintiles rank every contact against the others: always scored over the whole table.
    scored = score_rfm(population.lazy()).collect()
    rescored, _ = changed_rows(scored.lazy(), current.lazy(), keys=["contact_key"])
    candidates = (
        scored
        if keys is None
        else scored.filter(
            values_in("contact_key", keys)
            | values_in("contact_key", rescored.select("contact_key").collect().to_series())
        )
    )
    checked = checker.check(candidates, CustomerFeatures, table=FEATURES)
    rejected_keys = candidates.join(checked.valid, on="contact_key", how="anti").get_column(
        "contact_key"
    )
    sync_table(
        lake,
        FEATURES,
        checked.valid,
        keys=["contact_key"],
        scope=None
        if keys is None
        else candidates.get_column("contact_key").append(
            current.filter(values_in("contact_key", keys)).get_column("contact_key")
        ),
    )
    # The audience of every contact whose features or contact row may have changed.
    changed_keys = (
        None
        if keys is None
        else pl.concat([keys, candidates.get_column("contact_key"), rejected_keys]).unique()
    )
    features_for = checked.valid.lazy()
    members = audience_members(
        features_for,
        contacts
        if changed_keys is None
        else contacts.filter(values_in("contact_key", changed_keys)),
        config.segments,
    ).collect()
    checked_members = checker.check(members, AudienceMember, table=AUDIENCE)
    valid_members = checked_members.valid.select(list(AUDIENCE_SCHEMA))
    sync_table(
        lake,
        AUDIENCE,
        valid_members,
        keys=["segment", "contact_key"],
        scope=changed_keys,
        scope_column="contact_key",
        partition_by=list(table(AUDIENCE).partition_by),
    )
    tables = [
        TableReport(
            FEATURES,
            rows_in=candidates.height,
            rows_out=checked.valid.height,
            quarantined=checked.rejected,
            duplicates=0,
        ),
        TableReport(
            AUDIENCE,
            rows_in=members.height,
            rows_out=valid_members.height,
            quarantined=checked_members.rejected,
            duplicates=0,
        ),
    ]
    return _gold_totals(lake, config, checker, tables=tables)


def _gold_totals(
    lake: Lake, config: PipelineConfig, checker: Checker, *, tables: list[TableReport] | None = None
) -> StageReport:
    """Gold's report: this run's balances and the tables' totals (for volume metrics)."""
    rejected = sum(t.quarantined for t in tables or [] if t.table == FEATURES)
    sizes = {s.name: 0 for s in config.segments}
    if lake.exists(AUDIENCE):
        counts = lake.scan(AUDIENCE).group_by("segment").len().collect()
        sizes.update({str(segment): int(n) for segment, n in counts.iter_rows()})
    volume: list[Metric] = [
        {"table": FEATURES, "source": None, "rows": lake.count(FEATURES), "quarantined": rejected},
        *(
            {"table": AUDIENCE, "segment": name, "rows": size, "quarantined": 0}
            for name, size in sorted(sizes.items())
        ),
    ]
    if tables is None:
        tables = [TableReport(FEATURES, 0, 0, 0, 0), TableReport(AUDIENCE, 0, 0, 0, 0)]
    return StageReport(
        tables=tables,
        metrics=volume,
        rule_counts=checker.write(lake, stage="gold"),
        audience_sizes=sizes,
    )


@task(cache_policy=NO_CACHE)
def build_gold(
    config: PipelineConfig,
    *,
    as_of: datetime,
    run_id: str,
    now: datetime | None = None,
    contact_keys: Sequence[str] | None = None,
) -> StageReport:
    """silver -> ``gold/customer_features`` and ``gold/audience_members`` (by segment).

    ``contact_keys`` limits the rebuild to those contacts (None: every contact); RFM scores
    are re-ranked over all contacts either way.
    """
    return build_gold_tables(
        open_lake(),
        config,
        as_of=as_of,
        run_id=run_id,
        now=now or as_of,
        contact_keys=contact_keys,
        logger=get_run_logger(),
    )


# --- state ------------------------------------------------------------------------------------
def record_transform_state(lake: Lake, state: dict[str, str], *, run_id: str) -> bool:
    """Record what silver and gold were built from, after they were built (see the module doc)."""
    if not lake.exists(FEATURES):
        return False
    parsed = TransformState.from_commit(state)
    if parsed is None:
        return False
    versions = {table: _version(lake, table) for table in BUILT_TABLES}
    complete = TransformState(parsed.fingerprint, parsed.as_of, parsed.seqs, versions)
    empty = pl.DataFrame(schema=lake.scan(FEATURES).collect_schema())
    return lake.append_once(
        FEATURES,
        empty,
        batch_id=f"transform-state:{run_id}:{fingerprint(complete.to_metadata())}",
        metadata=complete.to_metadata(),
    )


@task(cache_policy=NO_CACHE)
def commit_transform_state(state: dict[str, str], *, run_id: str) -> bool:
    """Record the transform state once gold is built (an empty commit carrying it)."""
    return record_transform_state(open_lake(), state, run_id=run_id)


def affected(keys: Iterable[str] | None) -> int | None:
    """How many contacts a build touched (None: all)."""
    return None if keys is None else len(list(keys))

"""A crash or a failure anywhere in a transform loses nothing, proven by injecting it everywhere.

The transform commits to many tables in turn: each role's staging log, ``ops/quarantine``,
silver, gold, the transform state and ``ops/volume_metrics``. Each test runs a transform on a
copy of an ingested lake (:mod:`tests.faults.staging`), stops it at a commit boundary — crashed
right after the k-th Delta commit for *every* k of the run (in this process, see
:class:`~tests.faults.staging.Crash`), or killed with ``os._exit`` in a child process at a
sample of them — or fails one of its writes with "No space left on device", then reruns it to
the end and compares the lake with an uninterrupted run's:

* ``ops/quarantine`` holds the same records (rule, source, column, row), none twice;
* silver, gold and the staging logs hold the same rows;
* the newest transform row counts in ``ops/volume_metrics`` are the same, so
  :func:`tasks.publish.publish_holds` decides the same: a source whose rows are mostly
  quarantined holds its audiences after a crash exactly as without one.

Three lakes of 120 sample contacts: the sample data as generated (a few invalid rows, no
hold), the same with every 2nd CRM email broken (a full build that holds), and a complete first
build followed by a change that breaks every 2nd CRM email (an incremental build that holds).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.child import EXIT_CODE
from tests.faults.staging import (
    Crash,
    Outcome,
    StagingWorld,
    build_staging_world,
    crash_after,
    instrument_commits,
)
from tests.faults.world import ChildPool

# What each lake is for: whether an uninterrupted transform holds the audiences.
HOLDS = {"clean": False, "broken": True, "changed": True}
STAGED = {f"silver/staged_{role}" for role in ("contacts", "enrichment", "orders", "events")}
BUILT = {"silver/contacts", "silver/orders", "silver/events", "gold/audience_members"}
# Every kind of commit a full build makes (gold/customer_features carries the transform state).
FULL_BUILD_TABLES = STAGED | BUILT | {"gold/customer_features", "ops/quarantine"}
FULL_BUILD_TABLES |= {"ops/volume_metrics", "gold/audience_holdouts"}
FULL_BUILD_TABLES |= {"ops/consent_events"}  # the ledger, before silver


@pytest.fixture(scope="module")
def staging_world(
    tmp_path_factory: pytest.TempPathFactory, child_pool: ChildPool
) -> Iterator[StagingWorld]:
    del child_pool  # started first: its child warms up (imports) while the world is built
    yield from build_staging_world(tmp_path_factory.mktemp("staging"), contacts=120, seed=3)


@pytest.fixture(scope="module")
def uninterrupted(staging_world: StagingWorld) -> dict[str, tuple[Outcome, list[tuple[str, str]]]]:
    """Per lake: an uninterrupted transform's outcome and its commits, in order."""
    baselines = {}
    for template in HOLDS:
        lake = staging_world.copy(template)
        commits: list[tuple[str, str]] = []
        undo = instrument_commits(
            lambda n, method, table, seen=commits: seen.append((method, table))
        )
        try:
            staging_world.transform(lake, run_id="uninterrupted")
        finally:
            undo()
        baselines[template] = (staging_world.outcome(lake), commits)
    return baselines


@pytest.mark.parametrize("template", list(HOLDS))
def test_a_crash_after_each_commit_of_a_transform_then_rerun(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
    template: str,
) -> None:
    """Every commit boundary of the run, k = 1..N: crash right after the k-th commit, rerun."""
    expected, commits = uninterrupted[template]
    assert bool(expected.holds) == HOLDS[template], expected.holds
    assert expected.quarantine.height > 0  # something to lose
    if template != "changed":  # a full build commits to every table, the quarantine included
        assert {table for _, table in commits} == FULL_BUILD_TABLES
    else:
        assert ("append_once", "silver/staged_contacts") in commits
    failures: list[str] = []
    boundaries = 0
    for k in range(1, len(commits) + 1):
        lake = staging_world.copy(template)
        undo = crash_after(k)
        try:
            with pytest.raises(Crash) as crashed:
                staging_world.transform(lake, run_id=f"crashed-{k}")
        finally:
            undo()
        method, table = commits[k - 1]
        # The run died right after the same commit the uninterrupted run made k-th.
        assert str(crashed.value) == f"crashed after commit {k} ({method} {table})"
        boundaries += 1
        staging_world.transform(lake, run_id=f"rerun-{k}")
        try:
            staging_world.outcome(lake).assert_same(
                expected, where=f"crashed after commit {k} ({method} {table})"
            )
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert boundaries == len(commits)  # every boundary of the run was crashed into
    summary = f"{template}: {len(failures)} of {len(commits)} crash points failed:"
    assert not failures, "\n".join([summary, *failures])


# A real process killed (os._exit in the fault child) at the kill point - right after
# the contacts' staging commit - in a full and an incremental build: a deterministic sample of
# the boundaries, since each child costs a Python start-up (the test above crashes at every
# one). The two tests sit apart so the second child warms up while other tests run.
def test_killed_after_staging_contacts_in_a_full_build_then_rerun(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
    child_pool: ChildPool,
) -> None:
    _kill_and_rerun(
        staging_world, uninterrupted, child_pool, "broken", ("overwrite", "silver/staged_contacts")
    )


def _kill_and_rerun(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
    child_pool: ChildPool,
    template: str,
    boundary: tuple[str, str],
) -> None:
    expected, commits = uninterrupted[template]
    k = commits.index(boundary) + 1
    lake = staging_world.copy(template)
    spec: dict[str, Any] = {
        "job": "transform",
        "run_id": f"killed-{k}",
        "fault": {"kind": "exit_after_commits", "n": k},
        "env": staging_world.env(lake),
    }
    child = child_pool.take(spec)
    assert child.finish() == EXIT_CODE, child.describe()
    # The child died right after the same commit the uninterrupted run made k-th.
    seen = [tuple(line.split()[2:4]) for line in child.lines if line.startswith("commit ")]
    assert seen == commits[:k], child.describe()
    staging_world.transform(lake, run_id=f"rerun-{k}")
    staging_world.outcome(lake).assert_same(expected, where=f"killed after commit {k} {boundary}")


@pytest.mark.parametrize(
    ("template", "table"),
    [
        ("broken", "silver/staged_orders"),  # a later role: contacts are staged by then
        ("broken", "silver/staged_events"),
        ("broken", "ops/quarantine"),
        ("clean", "silver/contacts"),
        ("changed", "gold/customer_features"),
    ],
)
def test_a_write_failing_with_no_space_left_then_rerun(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    table: str,
) -> None:
    """The disk fills up while a write of ``table`` goes out; the run fails, the rerun repairs.

    The failure is injected where the disk would report it: the Delta writer raises ENOSPC.
    """
    from tasks.connectors.lake import LakeError
    from tasks.connectors.lake import writes as lake_module

    expected, _ = uninterrupted[template]
    lake = staging_world.copy(template)
    real_write = lake_module.write_deltalake
    failed: list[str] = []

    def write_deltalake(target: Any, *args: Any, **kwargs: Any) -> Any:
        uri = str(getattr(target, "table_uri", target)).rstrip("/")
        if uri.endswith(table) and not failed:
            failed.append(uri)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(target, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(lake_module, "write_deltalake", write_deltalake)
        with pytest.raises(LakeError, match="(?i)no space left") as error:
            staging_world.transform(lake, run_id="disk-full")
    assert repr(table) in str(error.value)  # the error names the table
    assert failed, f"no write to {table} was attempted"
    staging_world.transform(lake, run_id="after-disk-full")
    staging_world.outcome(lake).assert_same(expected, where=f"{table} failed with ENOSPC")


def test_an_unchanged_rerun_keeps_the_hold(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
) -> None:
    """The same class of fault without a crash: a rerun that finds nothing new to check."""
    for template in ("broken", "changed"):
        expected, _ = uninterrupted[template]
        lake = staging_world.copy(template)
        staging_world.transform(lake, run_id="first")
        staging_world.transform(lake, run_id="again")
        staging_world.outcome(lake).assert_same(expected, where=f"{template}: unchanged rerun")


def test_the_hold_lifts_when_the_source_is_fixed(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
) -> None:
    """The quarantined count follows the source's current rows, down as well as up."""
    clean, _ = uninterrupted["clean"]
    lake = staging_world.copy("fixed")
    staging_world.transform(lake, run_id="fixed")
    fixed = staging_world.outcome(lake)
    assert fixed.holds == {}
    assert fixed.metrics.equals(clean.metrics)  # as many rows and quarantined as before the break


def test_the_outcome_comparison_can_fail(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
) -> None:
    """The verdict is not vacuous: a lake missing one quarantine record is told apart."""
    from tasks.connectors.lake import Lake

    expected, _ = uninterrupted["broken"]
    lake_path = staging_world.copy("broken")
    staging_world.transform(lake_path, run_id="complete")
    lake = Lake(str(lake_path))
    first = lake.read("ops/quarantine").get_column("quarantine_id")[0]
    lake.delete("ops/quarantine", f"quarantine_id = '{first}'")
    with pytest.raises(AssertionError, match="ops/quarantine has"):
        staging_world.outcome(lake_path).assert_same(expected, where="forged")


def test_killed_after_staging_contacts_in_an_incremental_build_then_rerun(
    staging_world: StagingWorld,
    uninterrupted: dict[str, tuple[Outcome, list[tuple[str, str]]]],
    child_pool: ChildPool,
) -> None:
    _kill_and_rerun(
        staging_world,
        uninterrupted,
        child_pool,
        "changed",
        ("append_once", "silver/staged_contacts"),
    )

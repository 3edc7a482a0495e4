"""Exactly-once to bronze, proven by injecting the fault — never by argument.

Each test crashes or fails a real ingest (``tasks.ingest.ingest_source``) of four real sources —
the CRM stand-in (merged on ``id``), an SQLite orders table (merged on ``order_id``), NDJSON file
drops (appended once per file) and webhook-landed events (inserted once per ``event_id``) — at a
chosen point, changes the sources, reruns, and compares bronze with what the sources hold:
same ids, one row per id, current values.

Crashes happen in a child process (``python -m tests.faults.child``; delta-rs must not be forked):

* killed while the CRM holds a search page (mid-pagination, some batches committed);
* ``os._exit`` right after the k-th lake commit returned;
* ``os._exit`` after every write of a source but before its watermark is read back;
* SIGKILL at a random (seeded) moment of the run;
* on S3, the k-th Delta commit PUT is held by a fault proxy and the writer killed while it is in
  flight: either the commit never reaches the store (``lost``) or it does and the writer never
  hears back (``landed``).

Retries and failures (not crashes) run in-process: a dropped connection and 429/503
mid-pagination (retried by the client), and a run that fails mid-pagination on a permanent error
after committing some pages, followed by the next run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from tasks.errors import SourceError
from tests.conftest import S3Endpoint
from tests.faults.child import EXIT_CODE
from tests.faults.proxy import FaultProxy, commit_rule
from tests.faults.world import (
    SOURCES,
    ChildPool,
    World,
    assert_bronze_matches,
    build_world,
    environment,
)


@pytest.fixture
def world(tmp_path: Path, child_pool: ChildPool) -> Iterator[World]:
    yield from build_world(tmp_path, child_pool)


def test_a_clean_run_lands_every_source_exactly_once(world: World) -> None:
    # The baseline the fault tests compare against, and proof that the checker can fail:
    # re-landing a file under a new batch id must be caught as a duplicate.
    world.rerun()
    assert_bronze_matches(world)
    lake = world.lake()
    versions = {name: lake.version(f"bronze/{name}") for name in SOURCES}
    world.rerun()  # an unchanged rerun commits nothing at all
    assert {name: lake.version(f"bronze/{name}") for name in SOURCES} == versions
    extra = lake.read("bronze/drops").head(3)
    lake.append_once("bronze/drops", extra, batch_id="forged")
    with pytest.raises(AssertionError, match="file drops landed twice"):
        assert_bronze_matches(world)


def test_killed_mid_pagination_then_rerun_resumes_from_the_committed_watermark(
    world: World,
) -> None:
    # 20 contacts a page, a merge every 40+ rows: by the 8th page at least 2 batches are in
    # (each keyset query re-reads the rows on its lower bound, so pages are not all new rows).
    world.crm.hold_at = 8
    child = world.spawn()
    assert world.crm.held.wait(60), child.describe()
    child.kill()
    world.crm.unhold.set()
    assert child.proc.returncode == -9
    assert child.commits("bronze/crm") >= 2, child.describe()
    pages_before = world.crm.searches

    world.change_sources()
    world.rerun()
    assert_bronze_matches(world)
    # The rerun resumed at the committed watermark instead of re-reading the CRM from the start.
    total_pages = len(world.crm.contacts()) // 20 + 1
    assert world.crm.searches - pages_before < total_pages


def test_exit_right_after_the_kth_commit_then_rerun(world: World) -> None:
    # The 5th of 12 SQL chunks: rows sharing an updated_at straddle the chunk boundaries, and
    # the rerun resumes from the committed watermark with a zero overlap window.
    child = world.spawn(fault={"kind": "exit_after_commits", "n": 5})
    assert child.finish() == EXIT_CODE, child.describe()
    assert child.commits() == child.commits("bronze/orders") == 5

    world.change_sources()
    world.rerun()
    assert_bronze_matches(world)


@pytest.mark.parametrize("source", ["crm", "orders"])
def test_exit_after_the_writes_before_the_watermark_is_read_back(world: World, source: str) -> None:
    child = world.spawn(fault={"kind": "exit_before_watermark", "source": source})
    assert child.finish() == EXIT_CODE, child.describe()
    assert any(line.startswith(f"exit before watermark bronze/{source}") for line in child.lines)

    world.change_sources()
    world.rerun()
    assert_bronze_matches(world)


def test_sigkill_at_a_random_point_then_rerun(world: World) -> None:
    # Seeded, so a failure reproduces: after a random one of the ~25 commits, plus a random few
    # milliseconds, so the kill lands inside the next read, page or commit, while the run is live.
    rng = random.Random(20261128)
    after, delay = rng.randint(1, 22), rng.uniform(0.0, 0.03)
    child = world.spawn()
    child.wait_for(lambda line: line.startswith(f"commit {after} "))
    time.sleep(delay)
    child.kill()
    assert child.proc.returncode == -9 and not any(x.startswith("done") for x in child.lines)
    world.post_events(1)  # deliveries keep arriving meanwhile
    world.change_sources()
    world.rerun()
    assert_bronze_matches(world)


def test_retries_mid_pagination_leave_no_duplicate(world: World) -> None:
    # A connection dropped on the 4th page, then a 429 and a 503 on the 7th: the client
    # retries each (searches are reads), and the run completes without a duplicate.
    with FaultProxy(world.crm.url, rule=_nth_search(4), mode="lost", hold_timeout=0) as proxy:
        world.config.write_text(world.config.read_text().replace(world.crm.url, proxy.url))
        world.crm.fail_at, world.crm.fail_status, world.crm.fail_count = 7, 429, 1
        world.rerun()
        assert proxy.tripped.is_set()
        world.crm.fail_at, world.crm.fail_status = world.crm.searches + 2, 503
        world.change_sources()
        world.rerun()
    assert_bronze_matches(world)


def test_a_run_failing_mid_pagination_then_the_next_run(world: World) -> None:
    from tasks.core.config import load_pipeline
    from tasks.ingest import ingest_source

    world.rerun()
    world.change_sources()
    for n in range(60):  # three pages of changes, so the failing run commits some first
        world.crm.upsert_contact({"email": f"wave{n}@example.com"})
    # Batches of 20 rows here, so the pages before the failure are committed first.
    world.config.write_text(
        world.config.read_text().replace("rows_per_batch: 40", "rows_per_batch: 20")
    )
    # A permanent error on the 3rd page (a retry cannot fix a 400): the run fails at once.
    world.crm.fail_at, world.crm.fail_status, world.crm.fail_count = world.crm.searches + 3, 400, 1
    config = load_pipeline(world.config)
    lake = world.lake()
    before = lake.version("bronze/crm")
    with _env(world), disable_run_logger(), pytest.raises(SourceError, match="answered 400"):
        ingest_source.fn("crm", config.sources["crm"], run_id="failing", started_at=_now())
    assert (lake.version("bronze/crm") or 0) - (before or 0) == 2  # two pages were committed
    world.rerun()
    assert_bronze_matches(world)


@pytest.mark.s3
@pytest.mark.parametrize(
    ("mode", "source"),
    [("landed", "drops"), ("landed", "web_events"), ("lost", "orders")],
    ids=["file-commit-landed-unacknowledged", "events-commit-landed-unacknowledged", "merge-lost"],
)
def test_killed_during_the_commit_on_s3(
    tmp_path: Path,
    child_pool: ChildPool,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    mode: str,
    source: str,
) -> None:
    if not s3_endpoint.managed:
        pytest.skip("the fault proxy needs the session's moto server (it ignores signatures)")
    table = f"bronze/{source}"
    rule = commit_rule(f"lake/{table}", 2)
    with FaultProxy(s3_endpoint.url, rule=rule, mode=mode) as proxy:  # type: ignore[arg-type]
        env = {
            "AUDIENCE_LAKE_S3_ENDPOINT": proxy.url,
            "AWS_ACCESS_KEY_ID": s3_endpoint.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s3_endpoint.secret_access_key,
            "AWS_REGION": s3_endpoint.region,
        }
        lake_uri = f"s3://{s3_bucket}/lake"
        for world in build_world(
            tmp_path, child_pool, lake_uri=lake_uri, lake_env=env, chunk_size=100
        ):
            child = world.spawn(sources=[source])
            assert proxy.tripped.wait(60), child.describe()
            child.kill()
            proxy.release()
            world.lake_env["AUDIENCE_LAKE_S3_ENDPOINT"] = s3_endpoint.url  # the rerun goes direct
            lake = world.lake()
            # "landed": the commit is in the store although its writer died waiting for the
            # answer; "lost": it never arrived.
            assert lake.version(table) == (1 if mode == "landed" else 0), child.describe()
            if source == "web_events":
                # The landed commit recorded both files it wrote (two per commit here), though
                # the writer never learned it and did not archive them: the rerun skips them.
                pending = [p.name for p in world.landing.glob("*.ndjson")]
                recorded = [n for n in pending if lake.committed(table, f"web_events:{n}")]
                assert (len(pending), len(recorded)) == (4, 2)
            world.change_sources()
            world.rerun([source])
            assert_bronze_matches(world, [source])


def _nth_search(nth: int) -> Callable[[str, str], bool]:
    seen = 0

    def rule(method: str, path: str) -> bool:
        nonlocal seen
        if method == "POST" and path.startswith("/crm/v3/objects/contacts/search"):
            seen += 1
            return seen == nth
        return False

    return rule


def _env(world: World) -> AbstractContextManager[None]:
    return environment(world.child_env())


def _now() -> datetime:
    return datetime.now(UTC)

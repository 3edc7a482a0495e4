"""Three publish processes at once against one lake and one Mailchimp: each contact sent once.

Each child process runs the real publish code (:mod:`tests.faults.publish_child`) for both
audiences of :mod:`tests.faults.publish_world`, all started at the same moment (their imports
done beforehand). The Mailchimp stand-in answers each batch after a short delay, so the runs
overlap for the whole send. The lake is a local directory and a bucket on the S3 test server.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.logging import disable_run_logger

from infra.sandbox.mailchimp import MailchimpStandIn
from tasks.connectors.destinations import open_platform
from tasks.connectors.destinations.protocol import Destination as Platform
from tasks.connectors.destinations.protocol import Member, RecordResult
from tasks.connectors.lake import Lake
from tasks.connectors.leases import Lease, LeaseLostError, LeaseStore, lease_key
from tasks.core.config import Destination, load_pipeline
from tasks.publishing import publish_segment
from tests.conftest import S3Endpoint
from tests.faults.publish_world import (
    API_KEY,
    BATCH_SIZE,
    LISTS,
    WINDOW_BATCHES,
    PublishChild,
    PublishChildPool,
    initial,
    ledger_view,
    pipeline_yaml,
    write_people,
)
from tests.faults.world import environment

PROCESSES = 3
RESPONSE_DELAY_S = 0.3  # per platform batch: a list takes ~1 s to send


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PublishChildPool]:
    children = PublishChildPool(tmp_path_factory.mktemp("publish-children"))
    try:
        yield children
    finally:
        children.close()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def lake_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Lake, dict[str, str]]:
    """A fresh lake and the environment that points a child process at it."""
    if request.param == "local":
        root = str(tmp_path / "lake")
        return Lake(root), {"AUDIENCE_LAKE_LAKE_URI": root}
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    uri = f"s3://{bucket}/lake"
    env = {
        "AUDIENCE_LAKE_LAKE_URI": uri,
        "AUDIENCE_LAKE_S3_ENDPOINT": endpoint.url,
        "AWS_ACCESS_KEY_ID": endpoint.access_key_id,
        "AWS_SECRET_ACCESS_KEY": endpoint.secret_access_key,
        "AWS_REGION": endpoint.region,
    }
    return Lake(uri, endpoint.storage_options()), env


def publish_at_once(
    pool: PublishChildPool, config: Path, env: dict[str, str]
) -> list[PublishChild]:
    children = pool.warm_many(PROCESSES)
    for n, child in enumerate(children):
        child.start({"config": str(config), "run_id": f"run-{n}", "env": env})
    for child in children:
        assert child.finish() == 0 and child.lines[-1] == "done", child.describe()
    return children


@pytest.mark.parametrize("lease_wait_seconds", [30.0, 0.0], ids=["wait", "skip"])
def test_concurrent_publishes_send_each_contact_exactly_once(
    pool: PublishChildPool,
    lake_spec: tuple[Lake, dict[str, str]],
    tmp_path: Path,
    lease_wait_seconds: float,
) -> None:
    lake, env = lake_spec
    write_people(lake, initial())
    with MailchimpStandIn(
        api_key=API_KEY, lists=LISTS.values(), response_delay=RESPONSE_DELAY_S
    ) as mailchimp:
        config = tmp_path / "pipeline.yaml"
        config.write_text(
            pipeline_yaml(mailchimp.url, lease_seconds=60, lease_wait_seconds=lease_wait_seconds)
        )
        children = publish_at_once(pool, config, env)
        sends = {list_id: mailchimp.sends_per_member(list_id) for list_id in LISTS.values()}

    expected = {
        list_id: {p.email for p in initial() if segment in p.segments}
        for segment, list_id in LISTS.items()
    }
    for list_id, counts in sends.items():
        assert set(counts) == expected[list_id], list_id
        assert set(counts.values()) == {1}, f"{list_id}: contacts sent more than once: {counts}"
    reports: list[dict[str, Any]] = [r for c in children for r in c.reports()]
    assert len(reports) == PROCESSES * len(LISTS)
    for segment, list_id in LISTS.items():
        mine = [r for r in reports if r["segment"] == segment]
        assert sum(r["sent"] for r in mine) == len(expected[list_id])
        senders = [r for r in mine if r["sent"]]
        assert len(senders) == 1, mine
        losers = [r for r in mine if not r["sent"]]
        if lease_wait_seconds:
            # They waited for the holder, then found nothing left to send.
            assert all(r["skipped"] is None and r["planned"] == 0 for r in losers), losers
        else:
            for r in losers:  # skipped with a message naming the holder, or came too late
                assert r["skipped"] is None or (
                    f"list mailchimp/{list_id} is claimed by run-" in r["skipped"]
                ), r
    kept_back = [r for r in reports if r["skipped"] or r["waited_seconds"] > 0.4]
    assert kept_back, f"the runs never met: {reports}"
    ledger = ledger_view(lake)
    assert ledger.height == sum(len(v) for v in expected.values())
    assert set(ledger["status"]) == {"ok"}
    assert Counter(ledger["audience"]) == {k: len(v) for k, v in expected.items()}


def test_a_holder_that_lost_its_claim_stops_before_its_next_window(tmp_path: Path) -> None:
    """A run stalled past its claim (GC pause, slow platform) must not send on another's claim."""
    lake = Lake(str(tmp_path / "lake"))
    write_people(lake, initial())
    with (
        MailchimpStandIn(api_key=API_KEY, lists=LISTS.values()) as mailchimp,
        environment({"AUDIENCE_LAKE_SECRET_FAULT_MAILCHIMP": API_KEY}),
        disable_run_logger(),
    ):
        config_path = tmp_path / "pipeline.yaml"
        config_path.write_text(
            pipeline_yaml(mailchimp.url, lease_seconds=0.5, lease_wait_seconds=0)
        )
        config = load_pipeline(str(config_path))

        class StallingSink:
            """The real Mailchimp adapter; after each batch the claim runs out and is taken (the
            same other run re-claims it for each batch of a window)."""

            def __init__(self, destination: Destination) -> None:
                self._inner = open_platform(destination)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

            def upsert(self, list_id: str, members: Sequence[Member]) -> Iterator[RecordResult]:
                results = list(self._inner.upsert(list_id, members))
                time.sleep(0.6)
                taken = LeaseStore(lake).try_claim(
                    lease_key("mailchimp", list_id), "other-run", ttl=60, now=datetime.now(UTC)
                )
                assert isinstance(taken, Lease)
                return iter(results)

            unsubscribe = upsert

        def stalling(destination: Destination) -> Platform:
            return cast(Platform, StallingSink(destination))

        with pytest.raises(LeaseLostError, match="claimed by other-run"):
            publish_segment(
                lake, "mailchimp", config.destinations["mailchimp"], "seg_a", run_id="stalled",
                settings=config.publish, open_sink=stalling,
            )  # fmt: skip
        sent = mailchimp.member_requests(LISTS["seg_a"])
    # The first window only (12 members were due: three batches), its results recorded.
    assert len(sent) == BATCH_SIZE * WINDOW_BATCHES
    ledger = ledger_view(lake)
    assert ledger.height == BATCH_SIZE * WINDOW_BATCHES and set(ledger["status"]) == {"ok"}

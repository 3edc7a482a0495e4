"""The transform on real Dask clusters gives the same lake as the transform in one process.

One ingest of the sandbox's sample data; copies of that lake are transformed inline (one process)
and on a Dask cluster of two worker *processes* - started by the run from ``engine`` in
pipeline.yaml, or already running and named by its scheduler address - and every silver, gold
and ops table must come out identical, apart from the columns that stamp which run wrote a row
and when. The runs off the inline baseline build silver and gold in three buckets of
people (``engine.buckets: 3``), one task per bucket (and per gold pass) on the runner,
committed in bucket order; the baseline builds them in one pass. The worker processes inherit
the test's environment (the lake URI), as a deployed worker gets its own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
import yaml
from distributed import Client, LocalCluster
from polars.testing import assert_frame_equal
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

from flows.ingest import ingest
from flows.transform import TransformReport, transform
from tasks.core.tables import ROLES, RUNS
from tasks.runners import ClusterUnreachableError
from tests.conftest import S3Endpoint
from tests.flows.conftest import CONFIG, Sandbox

pytestmark = pytest.mark.flow

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)  # the sample data's "now"
LAYERS = ("silver", "gold", "ops")
BUCKETS = 3
# Which run wrote a row, and when: different in every run by design.
RUN_STAMPS = frozenset({"run_id", "_run_id", "quarantined_at", "measured_at", "recorded_at"})


def engine_config(tmp_path: Path, engine: dict[str, object]) -> str:
    """The sample pipeline.yaml with its ``engine`` section replaced."""
    raw = yaml.safe_load(Path(CONFIG).read_text())
    raw["engine"] = engine
    path = tmp_path / f"pipeline-{len(list(tmp_path.glob('pipeline-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def comparable(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` without run stamps, its rows in a stable order."""
    frame = frame.drop([c for c in frame.columns if c in RUN_STAMPS])
    sortable = [c for c, t in frame.schema.items() if not t.is_nested()]
    return frame.sort(sortable, nulls_last=True)


def lake_tables(root: Path) -> dict[str, pl.DataFrame]:
    """Every Delta table of the silver, gold and ops layers, run stamps dropped, rows sorted."""
    tables: dict[str, pl.DataFrame] = {}
    for log in sorted(root.glob("*/**/_delta_log")):
        name = str(log.parent.relative_to(root))
        if name.split("/")[0] in LAYERS:
            tables[name] = comparable(pl.read_delta(str(log.parent)))
    return tables


def s3_lake_tables(endpoint: S3Endpoint, bucket: str, prefix: str) -> dict[str, pl.DataFrame]:
    """:func:`lake_tables` for a lake at ``s3://bucket/prefix``."""
    listed = endpoint.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=1000)
    assert not listed.get("IsTruncated")
    names = {
        key.removeprefix(f"{prefix}/").split("/_delta_log/")[0]
        for key in (item["Key"] for item in listed.get("Contents", []))
        if "/_delta_log/" in key
    }
    return {
        name: comparable(
            pl.read_delta(
                f"s3://{bucket}/{prefix}/{name}", storage_options=endpoint.storage_options()
            )
        )
        for name in sorted(names)
        if name.split("/")[0] in LAYERS
    }


def assert_same_lake(expected: Path, actual: Path) -> None:
    assert_same_tables(lake_tables(expected), lake_tables(actual))


# The run audit records each run's own ids, times and versions: a log of runs, not a result.
RUN_LOGS = {RUNS}


def assert_same_tables(want: dict[str, pl.DataFrame], got: dict[str, pl.DataFrame]) -> None:
    want = {name: frame for name, frame in want.items() if name not in RUN_LOGS}
    got = {name: frame for name, frame in got.items() if name not in RUN_LOGS}
    assert sorted(got) == sorted(want)
    assert {"silver/contacts", "gold/audience_members", "ops/quarantine"} <= set(want)
    for name, frame in want.items():
        try:
            assert_frame_equal(got[name], frame)
        except AssertionError as exc:
            raise AssertionError(f"{name} differs: {exc}") from None


def flow_run_logs(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)]))
        )
    return "\n".join(log.message for log in logs)


# The task runs of a build in buckets: silver's buckets, gold's two passes.
BUCKET_UNITS = ("silver-bucket", "gold-metrics", "gold-bucket")


def bucket_task_runs(flow_run_id: str) -> list[tuple[str, str | None]]:
    """Name and final state of the flow run's bucket task runs, by name."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    return sorted(
        (run.name, run.state_type.value if run.state_type else None)
        for run in runs
        if run.name.startswith(tuple(f"{unit}-" for unit in BUCKET_UNITS))
    )


def assert_every_bucket_once(flow_run_id: str) -> None:
    """Each bucket ran as one task that completed: none skipped, none run twice."""
    assert bucket_task_runs(flow_run_id) == sorted(
        (f"{unit}-{b}", "COMPLETED") for unit in BUCKET_UNITS for b in range(BUCKETS)
    )


def assert_no_scratch(root: Path) -> None:
    """The build removed its scratch folder (units' hand-overs on the lake's storage)."""
    assert not any((root / ".scratch").glob("*")), sorted((root / ".scratch").rglob("*"))


def run_transform(lake: Path, config: str, monkeypatch: pytest.MonkeyPatch) -> TransformReport:
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(lake))
    return transform(config_path=config, as_of=AS_OF)


@pytest.fixture
def bronze_copies(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Path, ...]]:
    """Four lakes holding the same bronze (one ingest, copied)."""
    ingest(config_path=CONFIG)
    first = Path(sandbox.lake.root)
    copies = tuple(tmp_path / f"lake-copy-{n}" for n in (1, 2, 3))
    for copy in copies:
        shutil.copytree(first, copy)
    yield first, *copies


@pytest.mark.timeout(900)  # four transforms, one of them starting a cluster of processes
def test_local_cluster_of_two_processes_gives_the_same_tables(
    bronze_copies: tuple[Path, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline_lake, dask_lake, threads_lake, inline_buckets_lake = bronze_copies
    inline = run_transform(
        inline_lake, engine_config(tmp_path, {"task_runner": "inline", "buckets": 1}), monkeypatch
    )
    # The suite's runs do not ship logs to the API; this one must, to read the workers' back.
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: True}):
        on_dask = run_transform(
            dask_lake,
            engine_config(tmp_path, {"task_runner": "dask", "n_workers": 2, "buckets": BUCKETS}),
            monkeypatch,
        )
        APILogWorker.drain_all(timeout=10)
    assert (
        on_dask.staging
        == inline.staging
        == {
            "contacts": "full",
            "enrichment": "full",
            "orders": "full",
            "events": "full",
        }
    )
    # The balances are the buckets' summed: a bucket skipped or counted twice breaks them.
    assert on_dask.tables == inline.tables
    assert sorted(on_dask.rule_counts, key=str) == sorted(inline.rule_counts, key=str)
    assert on_dask.losses == inline.losses
    assert_same_lake(inline_lake, dask_lake)
    assert_every_bucket_once(on_dask.run_id)
    assert_no_scratch(dask_lake)
    # What the units logged on the workers reached the flow run's logs before they stopped.
    logged = flow_run_logs(on_dask.run_id)
    assert all(f"silver/staged_{role}: rebuilt from bronze" in logged for role in ROLES), logged
    assert f"silver: full build in {BUCKETS} buckets of people" in logged
    assert f"gold: every contact, in {BUCKETS} buckets of people" in logged

    # Threads in the flow's process share one lake adapter: the same tables again.
    threads = run_transform(
        threads_lake,
        engine_config(tmp_path, {"task_runner": "threads", "n_workers": 4, "buckets": BUCKETS}),
        monkeypatch,
    )
    assert threads.tables == inline.tables
    assert_same_lake(inline_lake, threads_lake)
    # And the buckets one after the other in the flow's process.
    one_by_one = run_transform(
        inline_buckets_lake,
        engine_config(tmp_path, {"task_runner": "inline", "buckets": BUCKETS}),
        monkeypatch,
    )
    assert one_by_one.tables == inline.tables
    assert_same_lake(inline_lake, inline_buckets_lake)
    assert_every_bucket_once(one_by_one.run_id)
    assert_no_scratch(inline_buckets_lake)


def test_existing_cluster_by_address_gives_the_same_tables(
    bronze_copies: tuple[Path, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline_lake, dask_lake, *_ = bronze_copies
    run_transform(inline_lake, engine_config(tmp_path, {"task_runner": "inline"}), monkeypatch)
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", str(dask_lake))  # what the workers inherit
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster) as client,
    ):
        config = engine_config(
            tmp_path,
            {
                "task_runner": "dask",
                "dask_address": cluster.scheduler_address,
                "buckets": BUCKETS,
            },
        )
        run_transform(dask_lake, config, monkeypatch)
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    # One unit per role, one per bucket of silver and of each of gold's two passes.
    units = len(ROLES) + len(BUCKET_UNITS) * BUCKETS
    assert len(executed) == 2 and sum(executed.values()) == units
    assert all(count > 0 for count in executed.values()), executed  # both workers worked
    assert_same_lake(inline_lake, dask_lake)


@pytest.mark.s3
@pytest.mark.timeout(900)  # two transforms on an S3 lake, one on a cluster of processes
def test_workers_open_an_s3_lake_from_their_own_environment(
    sandbox: Sandbox,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On S3 too: units get no client or credential, only the environment they run in."""
    ingest(config_path=CONFIG)
    bronze = Path(sandbox.lake.root)
    client = s3_endpoint.client()
    for prefix in ("inline", "dask"):
        for file in sorted(p for p in bronze.rglob("*") if p.is_file()):
            client.upload_file(str(file), s3_bucket, f"{prefix}/{file.relative_to(bronze)}")
    monkeypatch.setenv("AUDIENCE_LAKE_S3_ENDPOINT", s3_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    monkeypatch.setenv("AWS_REGION", s3_endpoint.region)
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{s3_bucket}/inline")
    inline = transform(
        config_path=engine_config(tmp_path, {"task_runner": "inline", "buckets": 1}), as_of=AS_OF
    )
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", f"s3://{s3_bucket}/dask")
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
    ) as cluster:
        config = engine_config(
            tmp_path,
            {
                "task_runner": "dask",
                "dask_address": cluster.scheduler_address,
                "buckets": BUCKETS,
            },
        )
        report = transform(config_path=config, as_of=AS_OF)
    assert report.staging == dict.fromkeys(ROLES, "full")
    assert report.tables == inline.tables
    assert_every_bucket_once(report.run_id)
    # The buckets handed their rows over in the lake's own bucket; nothing is left there.
    scratch = client.list_objects_v2(Bucket=s3_bucket, Prefix="dask/.scratch/")
    assert scratch.get("KeyCount", 0) == 0, scratch.get("Contents")
    assert_same_tables(
        s3_lake_tables(s3_endpoint, s3_bucket, "inline"),
        s3_lake_tables(s3_endpoint, s3_bucket, "dask"),
    )


def test_an_unreachable_cluster_fails_the_run_naming_its_address(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    config = engine_config(
        tmp_path,
        {"task_runner": "dask", "dask_address": address, "connect_timeout_seconds": 2},
    )
    with pytest.raises(ClusterUnreachableError, match=f"Dask scheduler at {address}"):
        transform(config_path=config, as_of=AS_OF)
    assert not (Path(sandbox.lake.root) / "silver").exists()  # nothing was staged


def test_units_on_a_local_cluster_report_to_the_flows_temporary_server(tmp_path: Path) -> None:
    """The default: no Prefect server configured, so the flow runs on a temporary one.

    Dask workers get the flow's settings, which name no API; without help each worker would
    start a temporary server of its own (seconds each; under load it times out). The unit must
    run in another process, on the flow's server, and its task run be recorded there.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    child = subprocess.run(
        [sys.executable, "-m", "tests.flows.ephemeral_dask_child"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    assert child.returncode == 0 and lines, child.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["unit_pid"] != result["flow_pid"]
    assert result["unit_api"] == result["flow_api"]  # no temporary server of its own
    assert result["recorded_state"] == "COMPLETED"

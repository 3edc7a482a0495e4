"""``engine`` in pipeline.yaml: defaults, validation at load, and the task runner it selects.

No cluster is started here (tests/flows/test_transform_dask.py runs real ones): these check what
is asked for and what would be built, and that a unit's parameters carry no secret.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

import cloudpickle
import pytest
import yaml
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask.task_runners import DaskTaskRunner

from tasks.core.config import load_pipeline
from tasks.core.config_engine import EngineConfig
from tasks.errors import ConfigError, OrchestratorError
from tasks.runners import local_cluster_kwargs, machine_cores, open_task_runner, task_runner_for

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipeline.yaml"


def write_config(tmp_path: Path, engine: dict[str, object] | None) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    if engine is None:
        raw.pop("engine", None)
    else:
        raw["engine"] = engine
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_default_is_a_local_dask_cluster_sized_to_the_machine(tmp_path: Path) -> None:
    engine = load_pipeline(write_config(tmp_path, None), env={}).engine
    assert engine.task_runner == "dask" and engine.dask_address is None
    assert engine.uses_local_cluster
    kwargs = local_cluster_kwargs(engine)
    assert kwargs["n_workers"] == machine_cores()
    assert kwargs["processes"] is True and kwargs["threads_per_worker"] == 1
    assert kwargs["host"] == "127.0.0.1" and kwargs["dashboard_address"] == "127.0.0.1:0"
    assert kwargs["scheduler_kwargs"] == {"dashboard": False}


def test_the_sample_pipeline_runs_inline_unless_the_environment_says_otherwise() -> None:
    assert load_pipeline(CONFIG, env={}).engine.task_runner == "inline"
    engine = load_pipeline(
        CONFIG,
        env={
            "AUDIENCE_LAKE_TASK_RUNNER": "dask",
            "AUDIENCE_LAKE_DASK_ADDRESS": "tcp://dask-scheduler:8786",
        },
    ).engine
    assert engine.task_runner == "dask"
    assert engine.dask_address == "tcp://dask-scheduler:8786"
    assert not engine.uses_local_cluster


@pytest.mark.parametrize(
    "address",
    ["tcp://10.0.0.5:8786", "tls://dask.example.org:8786", "127.0.0.1:8786", "tcp://[::1]:8786"],
)
def test_scheduler_addresses_are_accepted(address: str) -> None:
    assert EngineConfig(task_runner="dask", dask_address=address).dask_address == address


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (
            {"task_runner": "dask", "dask_address": "http://scheduler:8786"},
            "engine.dask_address: 'http://scheduler:8786' is not a Dask scheduler address; "
            "expected tcp://HOST:PORT",
        ),
        (
            {"task_runner": "dask", "dask_address": "tcp://scheduler"},
            "is not a Dask scheduler address",
        ),
        (
            {"task_runner": "dask", "dask_address": "tcp://scheduler:70000"},
            "is not a Dask scheduler address",
        ),
        ({"task_runner": "spark"}, "engine.task_runner: Input should be 'inline', 'threads'"),
        (
            {"task_runner": "inline", "dask_address": "tcp://scheduler:8786"},
            "dask_address: only used with task_runner: dask",
        ),
        (
            {"task_runner": "dask", "dask_address": "tcp://scheduler:8786", "n_workers": 4},
            "n_workers: size a local cluster; the cluster at dask_address tcp://scheduler:8786",
        ),
        ({"task_runner": "dask", "n_workers": 0}, "engine.n_workers: Input should be greater"),
        ({"task_runner": "dask", "memory_limit": "lots"}, "'lots' is not a size"),
        ({"task_runner": "dask", "n_wokers": 2}, "engine.n_wokers: Extra inputs are not permitted"),
    ],
)
def test_a_bad_engine_fails_at_load_naming_the_key(
    tmp_path: Path, engine: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write_config(tmp_path, engine), env={})
    assert message in str(caught.value)


def test_each_kind_selects_its_runner() -> None:
    inline = task_runner_for(EngineConfig(task_runner="inline"))
    assert isinstance(inline, ThreadPoolTaskRunner) and inline._max_workers == 1
    threads = task_runner_for(EngineConfig(task_runner="threads", n_workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    local = task_runner_for(EngineConfig(n_workers=2, memory_limit="1GiB"))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["memory_limit"] == "1GiB"
    remote = task_runner_for(EngineConfig(dask_address="tcp://scheduler:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://scheduler:8786"
    assert remote.cluster_kwargs == {}


def test_local_workers_share_the_cores_between_their_polars_pools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POLARS_MAX_THREADS", raising=False)
    monkeypatch.setattr("tasks.runners.machine_cores", lambda: 8)
    assert local_cluster_kwargs(EngineConfig(n_workers=2))["env"] == {"POLARS_MAX_THREADS": "4"}
    assert local_cluster_kwargs(EngineConfig(n_workers=16))["env"] == {"POLARS_MAX_THREADS": "1"}
    monkeypatch.setenv("POLARS_MAX_THREADS", "3")  # an operator's choice wins
    assert local_cluster_kwargs(EngineConfig(n_workers=2))["env"] == {}


def test_a_units_parameters_carry_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Dask worker receives, pickled: the config, names, the clock - no credential.

    The environment holds the pepper and S3 keys (a worker reads its own); the pickled
    parameters of a staging unit must contain none of them.
    """
    secrets = {
        "AUDIENCE_LAKE_PEPPER": "pepper-that-must-stay-home",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-that-must-stay-home",
        "AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET": "crm-secret-that-must-stay-home",
        "AUDIENCE_LAKE_SECRET_MAILCHIMP_API_KEY": "mailchimp-key-that-must-stay-home",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    config = load_pipeline(CONFIG)
    parameters = {
        "config": config,
        "role": "contacts",
        "run_id": "run-1",
        "now": datetime(2026, 11, 1, tzinfo=UTC),
        "full_refresh": False,
    }
    shipped = cloudpickle.dumps(parameters)
    for value in secrets.values():
        assert value.encode() not in shipped
    assert pickle.loads(shipped)["config"] == config  # and it arrives whole


def test_a_remote_cluster_cannot_report_to_a_temporary_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flow on a temporary loopback Prefect server cannot send units to another machine.

    The temporary server is stood in for by its URL (starting one costs seconds): the check
    must refuse before any connection to the cluster is tried.
    """
    monkeypatch.setattr("tasks.runners._temporary_server_url", lambda: "http://127.0.0.1:8123/api")
    remote = EngineConfig(dask_address="tcp://10.20.30.40:8786", connect_timeout_seconds=1)
    with (
        pytest.raises(OrchestratorError, match="set PREFECT_API_URL to a Prefect server"),
        open_task_runner(remote),
    ):
        pytest.fail("the runner must not start")


def test_buckets_default_to_the_size_of_the_lake_and_must_be_positive(tmp_path: Path) -> None:
    from tasks.engine.buckets import PEOPLE_PER_BUCKET, ROWS_PER_BUCKET, bucket_count

    engine = load_pipeline(write_config(tmp_path, None), env={}).engine
    assert engine.buckets is None
    assert bucket_count(engine.buckets, 300) == 1  # the demo: one pass
    assert bucket_count(engine.buckets, 4 * ROWS_PER_BUCKET + 1) == 5
    assert bucket_count(None, 1_000_000, per_bucket=PEOPLE_PER_BUCKET) == 4
    assert bucket_count(3, 10**9) == 3
    configured = write_config(tmp_path, {"task_runner": "inline", "buckets": 8})
    assert load_pipeline(configured, env={}).engine.buckets == 8
    with pytest.raises(ConfigError, match=r"engine\.buckets"):
        load_pipeline(write_config(tmp_path, {"task_runner": "inline", "buckets": 0}), env={})


def test_staging_chunk_rows_default_and_must_be_positive(tmp_path: Path) -> None:
    assert load_pipeline(write_config(tmp_path, None), env={}).engine.staging_chunk_rows == 500_000
    configured = write_config(tmp_path, {"task_runner": "inline", "staging_chunk_rows": 1000})
    assert load_pipeline(configured, env={}).engine.staging_chunk_rows == 1000
    with pytest.raises(ConfigError, match=r"engine\.staging_chunk_rows"):
        load_pipeline(
            write_config(tmp_path, {"task_runner": "inline", "staging_chunk_rows": 0}), env={}
        )

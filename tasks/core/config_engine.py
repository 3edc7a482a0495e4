"""``pipeline.yaml`` → ``engine``: where the transform's independent units of work run.

The transform splits its work into units that do not depend on each other (today: one per
staging role; later: one per bucket of people) and submits them as Prefect tasks to a task
runner chosen here:

- ``dask`` (the default): a Dask cluster. Without ``dask_address`` a local cluster of worker
  *processes* is started for the run, one per CPU core unless ``n_workers`` says otherwise;
  with ``dask_address`` the units go to an existing cluster (a team's Kubernetes or cloud Dask)
  and the run starts nothing.
- ``threads``: a thread pool inside the flow's process (``n_workers`` threads).
- ``inline``: one unit after another inside the flow's process - no start-up cost, the choice
  for small lakes, demos and tests.

This module depends on pydantic only (no Dask): it says *what* was asked for and checks it at
load; :mod:`tasks.runners` builds the runner.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskRunnerKind = Literal["inline", "threads", "dask"]

# tcp://host:port, tls://host:port, ws(s)://host:port or a bare host:port; host is a name, an
# IPv4 address or a bracketed IPv6 address.
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
_DASK_ADDRESS = re.compile(rf"^(?:(?:tcp|tls|ws|wss)://)?{_HOST}:(?P<port>\d{{1,5}})$")
_BYTES = re.compile(r"^\d+(?:\.\d+)?\s*(?:B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")


class EngineConfig(BaseModel):
    """Which task runner executes the transform's units, and how a local cluster is sized."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_runner: TaskRunnerKind = Field(
        default="dask",
        description=(
            "dask: a Dask cluster (local worker processes, or the one at dask_address); "
            "threads: a thread pool in the flow's process; inline: one unit after another in "
            "the flow's process (no start-up cost: small lakes, demos, tests)."
        ),
    )
    dask_address: str | None = Field(
        default=None,
        description=(
            "Scheduler address of an existing Dask cluster, e.g. tcp://dask-scheduler:8786 "
            "(empty: start a local cluster for the run). Only with task_runner: dask."
        ),
    )
    n_workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Local Dask cluster: worker processes; threads: pool size (empty: one per CPU "
            "core). Not with dask_address: an existing cluster is sized by whoever runs it."
        ),
    )
    threads_per_worker: int = Field(
        default=1,
        ge=1,
        le=256,
        description=(
            "Local Dask cluster: units one worker process runs at once. Each unit already "
            "uses several cores through polars, so one is usually right."
        ),
    )
    memory_limit: str | None = Field(
        default=None,
        description=(
            "Local Dask cluster: memory per worker process, e.g. 2GiB, past which Dask "
            "restarts the worker (empty: the machine's memory split between the workers)."
        ),
    )
    buckets: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=(
            "Buckets of people a full silver build is split into, each read, built and "
            "committed on its own so memory follows the bucket, not the lake (1: one pass "
            "over everything; empty: one bucket per 2 million staged rows). The tables are "
            "the same whatever the number."
        ),
    )
    staging_chunk_rows: int = Field(
        default=500_000,
        ge=1,
        le=100_000_000,
        description=(
            "Bronze rows a full restage of a role normalises and checks at a time; the valid "
            "rows are spilled to local temporary files and counted into the staging log one "
            "spill partition at a time, so memory follows this number, not the lake. The "
            "staging tables are the same whatever it is."
        ),
    )
    connect_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="How long to wait for the Dask scheduler at dask_address to answer.",
    )

    @field_validator("dask_address", "memory_limit", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        """``${VAR:-}`` interpolates to an empty string: the same as not set."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dask_address")
    @classmethod
    def _address_is_a_scheduler_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _DASK_ADDRESS.match(value.strip())
        if match is None or not 0 < int(match.group("port")) < 65536:
            raise ValueError(
                f"{value!r} is not a Dask scheduler address; expected tcp://HOST:PORT "
                "(or tls://, ws://, wss://), e.g. tcp://dask-scheduler:8786"
            )
        return value.strip()

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit_is_a_size(cls, value: str | None) -> str | None:
        if value is not None and _BYTES.match(value.strip()) is None:
            raise ValueError(f"{value!r} is not a size; expected e.g. 2GiB, 1500MB")
        return value

    @model_validator(mode="after")
    def _options_fit_the_runner(self) -> EngineConfig:
        dask_only = {
            "dask_address": self.dask_address is not None,
            "threads_per_worker": self.threads_per_worker != 1,
            "memory_limit": self.memory_limit is not None,
        }
        if self.task_runner != "dask":
            misplaced = [name for name, given in dask_only.items() if given]
            if misplaced:
                raise ValueError(
                    f"{', '.join(misplaced)}: only used with task_runner: dask "
                    f"(task_runner is {self.task_runner!r})"
                )
            if self.task_runner == "inline" and self.n_workers is not None:
                raise ValueError("n_workers: task_runner 'inline' runs one unit at a time")
        if self.dask_address is not None:
            sized = [
                name
                for name, given in {
                    "n_workers": self.n_workers is not None,
                    "threads_per_worker": self.threads_per_worker != 1,
                    "memory_limit": self.memory_limit is not None,
                }.items()
                if given
            ]
            if sized:
                raise ValueError(
                    f"{', '.join(sized)}: size a local cluster; the cluster at dask_address "
                    f"{self.dask_address} is sized by whoever runs it"
                )
        return self

    @property
    def uses_local_cluster(self) -> bool:
        """Does a run start (and stop) a Dask cluster of its own?"""
        return self.task_runner == "dask" and self.dask_address is None

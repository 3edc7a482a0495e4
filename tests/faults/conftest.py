"""Fault-test fixtures: a session-wide pool of warm child processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.world import ChildPool


@pytest.fixture(scope="session")
def child_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildPool]:
    pool = ChildPool(tmp_path_factory.mktemp("children"))
    try:
        yield pool
    finally:
        pool.close()

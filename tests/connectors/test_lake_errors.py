"""Lake failures a retry cannot fix come back as one line naming the table, in a class that says so.

Real faults only: a Delta commit file truncated on disk (local and S3), a real full volume (a 1 MiB
tmpfs; the test needs permission to mount one), and an S3 server that really refuses credentials.
"""

from __future__ import annotations

import glob
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from tasks.connectors.lake import Lake, LakeError, s3_storage_options
from tasks.errors import CorruptTableError, LakeFullError, StoreAccessError
from tasks.retries import PERMANENT
from tests.authenticating_s3 import EXPECTED_CODE, REFUSALS, Refusal, authenticating_s3
from tests.conftest import S3Endpoint

TABLE = "bronze/web_events"


def _one_line(message: str, *names: str) -> None:
    """One line, no Rust backtrace, and not much more than the names it must carry."""
    assert "\n" not in message and "<unknown>" not in message and " 0: " not in message
    assert len(message) < 260 + sum(len(name) for name in names), message


def _truncate_last_commit(lake: Lake, endpoint: S3Endpoint | None) -> str:
    """Cut the newest commit file of TABLE in half, as a torn write would; return its location."""
    if not lake.is_remote:
        newest = sorted(glob.glob(f"{lake.uri(TABLE)}/_delta_log/*.json"))[-1]
        text = Path(newest).read_bytes()
        Path(newest).write_bytes(text[: len(text) // 2])
        return newest
    assert endpoint is not None
    bucket, _, prefix = lake.uri(TABLE).removeprefix("s3://").partition("/")
    client = endpoint.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_delta_log/")
    newest_key = sorted(o["Key"] for o in listed["Contents"] if o["Key"].endswith(".json"))[-1]
    body = client.get_object(Bucket=bucket, Key=newest_key)["Body"].read()
    client.put_object(Bucket=bucket, Key=newest_key, Body=body[: len(body) // 2])
    return f"s3://{bucket}/{newest_key}"


def test_a_corrupt_delta_log_names_the_table_and_the_commit_file(
    lake: Lake, request: pytest.FixtureRequest
) -> None:
    lake.append_once(TABLE, pl.DataFrame({"event_id": ["a"]}), batch_id="one")
    lake.append_once(TABLE, pl.DataFrame({"event_id": ["b"]}), batch_id="two")
    endpoint = request.getfixturevalue("s3_endpoint") if lake.is_remote else None
    commit = _truncate_last_commit(lake, endpoint)

    fresh = Lake(lake.root, lake.storage_options)  # nothing cached from before the damage
    for operation in (
        lambda: fresh.read(TABLE),
        lambda: fresh.append_once(TABLE, pl.DataFrame({"event_id": ["c"]}), batch_id="three"),
    ):
        with pytest.raises(CorruptTableError) as caught:
            operation()
        message = str(caught.value)
        assert f"table {TABLE!r}" in message and f"commit file {commit} " in message
        _one_line(message, commit)
    assert isinstance(caught.value, PERMANENT)


@pytest.fixture
def full_volume(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real ENOSPC. Mounting needs root (CAP_SYS_ADMIN)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=30)


def _big_frame(rows: int = 100_000) -> pl.DataFrame:
    # Incompressible text: a parquet file of several MiB.
    return pl.DataFrame({"event_id": [f"evt-{i}" for i in range(rows)]}).with_columns(
        payload=pl.col("event_id").hash(seed=1).cast(pl.String)
        + pl.col("event_id").hash(seed=2).cast(pl.String)
    )


def test_a_full_volume_says_so_and_names_the_table(full_volume: Path) -> None:
    lake = Lake(str(full_volume / "lake"))
    lake.append_once(TABLE, pl.DataFrame({"event_id": ["a"], "payload": ["x"]}), batch_id="one")
    with pytest.raises(LakeFullError) as caught:
        lake.append_once(TABLE, _big_frame(), batch_id="big")
    message = str(caught.value)
    assert message.startswith(f"no space left on the volume holding lake {lake.root}")
    assert f"table {TABLE!r}" in message and "ENOSPC" in message
    assert "parquet" not in message
    _one_line(message, lake.root, lake.uri(TABLE))
    assert isinstance(caught.value, PERMANENT)
    assert lake.read(TABLE)["event_id"].to_list() == ["a"]  # the failed batch left no rows


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_store_refusing_credentials_is_a_permanent_error(
    refusal: Refusal, tmp_path: Path
) -> None:
    with authenticating_s3(tmp_path / "moto.log") as server:
        key_id, secret = server.credentials(refusal)
        options = s3_storage_options(
            endpoint=server.url, access_key_id=key_id, secret_access_key=secret, region="us-east-1"
        )
        lake = Lake("s3://lake-bucket/lake", options)
        started = time.monotonic()
        with pytest.raises(StoreAccessError) as caught:
            lake.append_once(TABLE, pl.DataFrame({"event_id": ["a"]}), batch_id="one")
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"table {TABLE!r}" in message and f"HTTP 403 {EXPECTED_CODE[refusal]}" in message
    assert secret not in message
    _one_line(message, lake.uri(TABLE))
    assert isinstance(caught.value, PERMANENT) and isinstance(caught.value, LakeError)
    assert elapsed < 10  # object_store does not retry a 403 either

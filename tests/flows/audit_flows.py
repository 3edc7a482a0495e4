"""Small audited flows for the run-audit tests (importable by path: a deployment's entrypoint).

They read and write real Delta tables through the lake, so the versions ``ops/runs`` records
are real commits.
"""

from __future__ import annotations

import polars as pl
from prefect import flow
from prefect.states import Completed

from flows.audit import audited
from tasks.resources import open_lake

TABLE = "ops/audit_probe"
ATTEMPTS: dict[str, int] = {}


def _touch(tag: str) -> int:
    lake = open_lake()
    lake.append_once(TABLE, pl.DataFrame({"tag": [tag]}), batch_id=tag)
    return lake.read(TABLE).height


@flow(name="audit-probe")
@audited
def probe(tag: str = "probe", api_token: str | None = None) -> int:
    """Appends one row (once per ``tag``) and reads the table back."""
    return _touch(tag)


@flow(name="audit-flaky", retries=1, retry_delay_seconds=0)
@audited
def flaky(tag: str) -> int:
    """Fails its first attempt after committing; the retry (same flow run) succeeds."""
    ATTEMPTS[tag] = ATTEMPTS.get(tag, 0) + 1
    rows = _touch(f"{tag}-{ATTEMPTS[tag]}")
    if ATTEMPTS[tag] == 1:
        raise ConnectionError("first attempt lost the connection")
    return rows


@flow(name="audit-leaky")
@audited
def leaky(url: str, password: str) -> None:
    """Fails with a message that carries secrets (they must not reach ops/runs)."""
    raise RuntimeError(f"could not reach {url} with\n  password={password}")


@flow(name="audit-held")
@audited
def held() -> object:
    """Ends Held, like a publish that kept an audience back."""
    return Completed(data=None, name="Held", message="mailchimp/vip: volume anomaly; x/y: lease")

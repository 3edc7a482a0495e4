"""``audience-lake sync history``: every send to one person, with the values it carried.

Reads ``ops/sync_history`` (:mod:`tasks.sync_explain`) and prints, per send: when, the
destination and list, the action and its status, the run and the gold version it read, and the
mapped values re-read from gold at that version, identifiers masked. No email is printed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def contact_key_of(email: str) -> str:
    """The contact key of ``email`` under the lake's current pepper.

    Raises:
        ConfigError: the address is not a valid email (it is not repeated: it may be PII).
    """
    import polars as pl

    from tasks.core.normalise import contact_key, is_valid_email, normalise_email
    from tasks.errors import ConfigError
    from tasks.resources import pepper

    secret, version = pepper()
    address = normalise_email(pl.lit(email, dtype=pl.String))
    valid, key = pl.select(
        is_valid_email(address).alias("valid"),
        contact_key(address, pepper=secret, version=version).alias("key"),
    ).row(0)
    if not valid:
        raise ConfigError("sync history: --email is not a valid email address")
    return str(key)


def show_sync_history(config_path: str, *, email: str | None, contact_key: str | None) -> int:
    """Print the sends to one person (by ``email`` or ``contact_key``), oldest first."""
    from tasks.core.config import load_pipeline
    from tasks.core.tables import AUDIENCE
    from tasks.resources import open_lake
    from tasks.sync_explain import contact_sends

    config = load_pipeline(config_path)
    key = contact_key or contact_key_of(email or "")
    sends = contact_sends(open_lake(), config, key)
    print(f"contact {key}: {len(sends)} send(s)")
    for send in sends:
        pinned = f" (pinned as of run {send.as_of_run})" if send.as_of_run else ""
        version = "-" if send.audience_version is None else f"v{send.audience_version}"
        print(
            f"  {send.synced_at:%Y-%m-%d %H:%M:%S}Z  {send.destination}/{send.audience} "
            f"({send.segment})  {send.action}  {send.status}  run {send.run_id}  "
            f"{AUDIENCE} {version}{pinned}"
        )
        if send.error:
            print(f"      error: {send.error}")
        if send.values is not None:
            print(f"      values: {json.dumps(send.values, sort_keys=True)}  [{send.note}]")
        else:
            print(f"      [{send.note}]")
    return 0

"""``transform`` flow: bronze -> silver -> gold, with quarantine and volume metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from prefect import flow

from flows.common import current_run_id, load_config, table_artifact, utc_now
from tasks.reports import TableReport
from tasks.transform import (
    build_contacts,
    build_events,
    build_gold,
    build_orders,
    record_volumes,
)


@dataclass(frozen=True)
class TransformReport:
    tables: list[TableReport]
    audience_sizes: dict[str, int]


def default_as_of() -> datetime:
    """Midnight UTC today: features stay stable across reruns on the same day."""
    today = datetime.now(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC)


@flow(name="transform", log_prints=True)
def transform(
    config_path: str | None = None,
    full_refresh: bool = False,
    as_of: datetime | None = None,
    run_id: str | None = None,
) -> TransformReport:
    """Rebuild silver and gold from bronze.

    ``full_refresh`` is accepted for UI reruns; this version always recomputes from bronze and
    merges, so it behaves the same either way.
    """
    del full_refresh
    config = load_config(config_path)
    run_id = current_run_id(run_id)
    now = utc_now()
    contacts, m1 = build_contacts(config, run_id=run_id, now=now)
    orders, m2 = build_orders(config, run_id=run_id, now=now)
    events, m3 = build_events(config, run_id=run_id, now=now)
    sizes, m4 = build_gold(config, as_of=as_of or default_as_of(), run_id=run_id)
    record_volumes([*m1, *m2, *m3, *m4], run_id=run_id, stage="transform", now=now)
    tables = [contacts, orders, events]
    table_artifact(
        "transform-balance",
        [{**asdict(t), "balanced": t.balanced} for t in tables],
        "Row balance: rows_in = rows_out + quarantined + duplicates",
    )
    table_artifact(
        "audience-sizes",
        [{"segment": k, "members": v} for k, v in sizes.items()],
        "Publishable members per segment",
    )
    return TransformReport(tables=tables, audience_sizes=sizes)

"""Writing ``ops/quarantine`` from the ingest task: idempotent, once per batch of records.

Records follow :data:`tasks.core.contracts.QUARANTINE_SCHEMA` (the same table the transform's
contracts write). Each write is an exactly-once Delta batch whose id is derived from what it
records, so a retry or rerun that meets the same bad rows adds nothing, and a record already in
the table (same ``quarantine_id``) is never written twice.

A file rejected whole is recorded under its own batch id (:func:`rejected_batch_id`): the ingest
task checks it before reading a file again, so a corrupt object version is quarantined once and
then reported as "known bad" on every later run instead of being retried silently forever.
"""

from __future__ import annotations

import hashlib

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.tables import QUARANTINE as QUARANTINE
from tasks.core.tables import QUARANTINE_SCHEMA


def rejected_batch_id(table: str, batch_id: str) -> str:
    """The quarantine batch id marking source batch ``batch_id`` of ``table`` as rejected whole."""
    return f"rejected:{table}:{batch_id}"


def records_batch_id(table: str, records: pl.DataFrame) -> str:
    """A batch id for row-level records, derived from their ids (same records -> same id)."""
    digest = hashlib.sha256()
    for quarantine_id in sorted(records.get_column("quarantine_id").to_list()):
        digest.update(quarantine_id.encode("ascii"))
    return f"quarantine:{table}:{digest.hexdigest()[:32]}"


def write_quarantine_records(lake: Lake, records: pl.DataFrame, *, batch_id: str) -> int:
    """Append the records not yet in ``ops/quarantine``, exactly once per ``batch_id``.

    The batch id is committed even when every record was already present (an empty append), so
    :meth:`Lake.committed` answers "was this batch recorded?" truthfully.

    Returns:
        How many records this call added.
    """
    records = records.select([pl.col(n).cast(t) for n, t in QUARANTINE_SCHEMA.items()])
    if lake.committed(QUARANTINE, batch_id):
        return 0
    if lake.exists(QUARANTINE) and records.height:
        known = lake.scan(QUARANTINE).select("quarantine_id")
        records = records.lazy().join(known, on="quarantine_id", how="anti").collect()
    written = lake.append_once(QUARANTINE, records, batch_id=batch_id)
    return records.height if written else 0

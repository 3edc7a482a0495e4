"""The lake adapter: Delta tables under one root, written from and read into polars.

The public surface is importable from here; each concern lives in a module of its own:

* :mod:`.facade` - :class:`Lake`, the one object callers use (reads in :mod:`.reads`, the shared
  locking, caching and error reporting in :mod:`.base`);
* :mod:`.writes` - one Delta operation per function: create, append, merge, upsert, overwrite;
* :mod:`.streams` - overwriting a table from a stream of frames (:class:`FrameStream`), in one
  commit;
* :mod:`.changes` - the Delta change data feed: turning it on, reading a table's changes;
* :mod:`.maintenance` - compaction, Z-order, checkpoints and vacuum;
* :mod:`.commits` - commit metadata and Delta app transactions (exactly-once batches);
* :mod:`.expressions` - the SQL handed to delta-rs (MERGE conditions, partition predicates);
* :mod:`.options` - S3 storage options and their polars spelling;
* :mod:`.failures` - turning deltalake errors into a LakeError that names the table;
* :mod:`.listing` - finding the tables under a local or S3 root;
* :mod:`.scratch` - a run's scratch files on the lake's storage (never a table).
"""

from __future__ import annotations

from tasks.connectors.lake.base import DATA_NEUTRAL_OPERATIONS
from tasks.connectors.lake.changes import CHANGE_COLUMNS, CHANGE_FEED
from tasks.connectors.lake.facade import Lake
from tasks.connectors.lake.failures import TableNotFoundError, clean
from tasks.connectors.lake.maintenance import (
    FileStats,
    TableMaintenance,
    file_stats,
    maintain_table,
    vacuum_table,
)
from tasks.connectors.lake.options import (
    DEFAULT_S3_CLIENT_OPTIONS,
    polars_storage_options,
    s3_storage_options,
    settings_storage_options,
)
from tasks.connectors.lake.scratch import STALE_AFTER as STALE_SCRATCH
from tasks.connectors.lake.scratch import Scratch
from tasks.connectors.lake.streams import FrameStream
from tasks.connectors.lake.writes import MergeStats
from tasks.errors import LakeError

__all__ = [
    "CHANGE_COLUMNS",
    "CHANGE_FEED",
    "DATA_NEUTRAL_OPERATIONS",
    "DEFAULT_S3_CLIENT_OPTIONS",
    "STALE_SCRATCH",
    "FileStats",
    "FrameStream",
    "Lake",
    "LakeError",
    "MergeStats",
    "Scratch",
    "TableMaintenance",
    "TableNotFoundError",
    "clean",
    "file_stats",
    "maintain_table",
    "polars_storage_options",
    "s3_storage_options",
    "settings_storage_options",
    "vacuum_table",
]

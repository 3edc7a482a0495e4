"""The transform's computation written three other ways, for ``transform_bench``.

Each contender reads the same bronze parquet files, does the same work as the project's full
transform - normalise (emails with IDNA, phones to E.164 with ``phonenumbers``, countries to
ISO alpha-2, names, labels, timestamps, booleans, amounts), drop rows that break the role's
contract, dedupe orders/events/enrichment, link anonymous events, resolve one contact per
email with source-priority survivorship, source ids and current consent, key contacts by
HMAC-SHA256, compute customer features with RFM quintiles, and build the opted-in audience
per segment (priority segments exclusive) - and writes the five result tables.

What they leave out, on purpose, is what the project adds around the computation: pandera
contracts and quarantine records, the staging log that makes the next run incremental, and
Delta MERGEs that write only changes. Values the generator never produces are not handled
(e.g. accented country names, exotic timestamp formats): the project's normalisers handle
them, these contenders only need to agree on the benchmark's data, and ``transform_bench``
prints their row counts side by side to show that they do.
"""

from benchmarks.contenders.duckdb_contender import duckdb_sql
from benchmarks.contenders.pandas_contender import pandas_frames, pandas_transform
from benchmarks.contenders.polars_contender import bare_polars
from benchmarks.contenders.shared import Counts

__all__ = ["Counts", "bare_polars", "duckdb_sql", "pandas_frames", "pandas_transform"]

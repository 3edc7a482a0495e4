"""Benchmark bronze for more people than fit in memory at once: a part at a time.

:func:`bronze_chunks` yields the people and bronze frames of :mod:`benchmarks.bronze_gen` a
part (a million people by default) at a time, each part numbering its rows in a range of its
own, so 10 M people (80 M bronze rows) are written part by part.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from benchmarks.bronze_gen import bronze_part, people

# Row numbers a part may use (records, orders, events, enrichment rows), so ids never collide
# across parts; far above a million people's ~10 rows each.
PART_STRIDE = 10**8


def bronze_chunks(
    contacts: int, seed: int = 7, *, chunk: int = 1_000_000
) -> Iterator[tuple[pl.DataFrame, dict[str, pl.DataFrame]]]:
    """``contacts`` people generated ``chunk`` at a time: ``(people, bronze frames)`` per part,
    so 10 M people never sit in memory at once. One part (``contacts <= chunk``) is exactly
    :func:`~benchmarks.bronze_gen.bronze_tables`; more parts give a dataset of the same shape
    with other ids."""
    for part, first in enumerate(range(0, contacts, chunk)):
        persons = people(min(chunk, contacts - first), seed, start=first)
        yield persons, bronze_part(persons, seed, start=part * PART_STRIDE)

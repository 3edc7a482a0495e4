"""Erased people stay erased: the suppression list and the filter every writer of person rows
applies.

An erasure records the person's ``contact_key`` in ``ops/erasure_requests`` (never the email).
A source may still hold the person; the next ingest and transform must not bring them back. So
the ingest drops a suppressed person's rows before they reach bronze, and staging drops them
before the contracts see them (no staging row, no quarantine row, hence no silver, gold or
publish). Both compare the keyed hash of the normalised email with the list: the only way to
recognise a person without keeping their address.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.normalise import contact_key, normalise_email
from tasks.core.tables import ERASURE_REQUESTS


@dataclass(frozen=True)
class Suppression:
    """The contact keys of erased people, and the pepper that computes keys from emails."""

    keys: frozenset[str]
    pepper: bytes
    version: int

    def __bool__(self) -> bool:
        return bool(self.keys)

    def key_of(self, email: pl.Expr) -> pl.Expr:
        """The contact key of an email column (raw or normalised)."""
        return contact_key(normalise_email(email), pepper=self.pepper, version=self.version)

    def keeps(self, email: pl.Expr) -> pl.Expr:
        """True for rows whose email is not suppressed (rows without an email are kept)."""
        listed = pl.Series("keys", sorted(self.keys), dtype=pl.String)
        return ~self.key_of(email).is_in(listed).fill_null(False)

    def drop(self, frame: pl.LazyFrame, email_column: str) -> pl.LazyFrame:
        """``frame`` without the suppressed people's rows (unchanged when nobody is)."""
        if not self.keys or email_column not in frame.collect_schema().names():
            return frame
        return frame.filter(self.keeps(pl.col(email_column)))


def load_suppression(lake: Lake, *, pepper: bytes, version: int) -> Suppression:
    """The suppression list of ``lake`` (empty before the first erasure)."""
    if not lake.exists(ERASURE_REQUESTS):
        return Suppression(frozenset(), pepper, version)
    keys = lake.read(ERASURE_REQUESTS, columns=["contact_key"]).get_column("contact_key")
    return Suppression(frozenset(keys.drop_nulls().to_list()), pepper, version)

"""Segment assignment: which contacts each segment holds, and the audience to publish.

A segment is a predicate over the customer features (checked against
:data:`tasks.core.feature_catalog.FEATURE_COLUMNS` when ``pipeline.yaml`` loads, see
:class:`tasks.core.config.Segment`). :func:`audience_members` turns the features of the
contacts into rows of ``gold/audience_members``: one per segment a contact is in, for contacts
whose current consent is an opt-in only.
"""

from __future__ import annotations

import polars as pl

from tasks.core.config import Segment
from tasks.core.tables import AUDIENCE_SCHEMA

AUDIENCE_FIELDS = ("email", "first_name", "last_name", "phone", "country")
"""What every destination needs to address and greet a member."""


def segment_membership(
    features: pl.LazyFrame, segments: list[Segment], *, prefix: str = ""
) -> pl.LazyFrame:
    """``contact_key`` and one boolean column per segment (``prefix`` + its name): is the
    contact a member?

    A predicate that evaluates to null (a comparison with a missing feature) is false. Segments
    with a ``priority`` are mutually exclusive: a contact is a member only of the matching one
    with the lowest priority number; segments without a priority are independent.
    """
    matches = {s.name: s.expr().fill_null(False) for s in segments}
    exclusive = sorted(
        (s for s in segments if s.priority is not None), key=lambda s: s.priority or 0
    )
    columns = {s.name: matches[s.name] for s in segments if s.priority is None}
    taken: pl.Expr = pl.lit(False)
    for segment in exclusive:
        columns[segment.name] = matches[segment.name] & ~taken
        taken = taken | matches[segment.name]
    return features.select(
        "contact_key", *(columns[s.name].alias(prefix + s.name) for s in segments)
    )


def audience_members(
    features: pl.LazyFrame, contacts: pl.LazyFrame, segments: list[Segment]
) -> pl.LazyFrame:
    """Rows ``(segment, contact_key, fields to send)`` for every segment a contact is in.

    Only contacts whose *current* consent is an opt-in are members: consent fails closed.
    """
    if not segments:
        return pl.LazyFrame(schema=AUDIENCE_SCHEMA)
    # Contacts resolved without the consent ledger name no deciding event.
    named = "consent_event_id" in contacts.collect_schema().names()
    publishable = contacts.filter(pl.col("consent_status") == "subscribed").select(
        "contact_key",
        *(f for f in AUDIENCE_FIELDS if f != "country"),
        "consent_status",
        "consent_at",
        pl.col("consent_event_id") if named else pl.lit(None, pl.String).alias("consent_event_id"),
    )
    membership = segment_membership(features, segments, prefix="_in_").join(
        features.select("contact_key", "country"), on="contact_key", how="left"
    )
    base = membership.join(publishable, on="contact_key", how="inner")
    frames = [
        base.filter(pl.col(f"_in_{segment.name}")).select(
            pl.lit(segment.name).alias("segment"), *list(AUDIENCE_SCHEMA)[1:]
        )
        for segment in segments
    ]
    return (
        pl.concat(frames)
        .select([pl.col(n).cast(t) for n, t in AUDIENCE_SCHEMA.items()])
        .sort("segment", "contact_key")
    )

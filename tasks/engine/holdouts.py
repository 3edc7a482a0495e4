"""Gold -> ``gold/audience_holdouts``: who is in each audience's control group, recorded in gold.

An audience in ``pipeline.yaml`` may keep a share of its segment out as a control group
(``holdout``). Whether a member is held out is a keyed hash of its contact key and the segment
name (:func:`tasks.core.mapping.holdout_share`, keyed with the lake's pepper), so it does not
depend on the run, the destination or who else is in the segment. The transform records each
member's position and assignment here, and the publish reads them from gold (at the pinned
version on a pinned rerun) instead of computing them while sending.

One row per member of every segment that some destination holds out (``share`` > 0): the
segment's largest configured share, the member's ``position`` in [0, 1) and ``held_out``
(``position < share``). A destination with a smaller share holds out ``position < its share``,
a subset: raising a share only adds people to the control group.

The table is rebuilt as a whole on every gold step, but cheaply: a member's position never
changes, so only members without one yet are hashed, and only changed rows are written.
Segments whose holdout was removed from the config lose their rows; a crash between the
audience and this table heals on the next run.
"""

from __future__ import annotations

import polars as pl

from tasks.connectors.lake import Lake
from tasks.core.config import PipelineConfig
from tasks.core.mapping import holdout_share
from tasks.core.tables import AUDIENCE, HOLDOUTS, HOLDOUTS_SCHEMA
from tasks.engine.delta import sync_table
from tasks.engine.reports import Logger


def holdout_shares(config: PipelineConfig) -> dict[str, float]:
    """Per segment held out by some destination: the largest share configured for it."""
    shares: dict[str, float] = {}
    for destination in config.destinations.values():
        for segment, audience in destination.audiences.items():
            if audience.holdout > 0:
                shares[segment] = max(shares.get(segment, 0.0), audience.holdout)
    return shares


def holdout_rows(
    members: pl.LazyFrame, known: pl.LazyFrame, shares: dict[str, float], pepper: bytes
) -> pl.LazyFrame:
    """The table's rows for ``members`` (``segment``, ``contact_key``) of the held-out segments.

    ``known`` holds positions computed before (any rows of the table); members without one are
    hashed now. The result does not depend on which members were known.
    """
    share_frame = pl.LazyFrame(
        {"segment": list(shares), "share": list(shares.values())},
        schema={"segment": pl.String(), "share": pl.Float64()},
    )
    wanted = members.select("segment", "contact_key").join(share_frame, on="segment")
    positioned = wanted.join(
        known.select("segment", "contact_key", "position"),
        on=["segment", "contact_key"],
        how="left",
    )
    hashed = pl.struct("contact_key", "segment").map_elements(
        lambda row: holdout_share(row["contact_key"], row["segment"], pepper),
        return_dtype=pl.Float64,
    )
    return (
        positioned.with_columns(
            pl.when(pl.col("position").is_null())
            .then(hashed)
            .otherwise(pl.col("position"))
            .alias("position")
        )
        .with_columns((pl.col("position") < pl.col("share")).alias("held_out"))
        .select(list(HOLDOUTS_SCHEMA))
        .cast(HOLDOUTS_SCHEMA)  # type: ignore[arg-type]
    )


def build_holdouts(
    lake: Lake, config: PipelineConfig, *, logger: Logger, pepper: bytes | None = None
) -> int:
    """Bring ``gold/audience_holdouts`` in line with ``gold/audience_members`` and the config.

    Returns the number of rows written or deleted (0: nothing changed, nothing committed).
    """
    shares = holdout_shares(config)
    has_table = lake.exists(HOLDOUTS)
    if not shares and not has_table:
        return 0
    if pepper is None:
        from tasks.resources import pepper as lake_pepper

        pepper = lake_pepper()[0]
    members = (
        lake.scan(AUDIENCE).filter(pl.col("segment").is_in(list(shares)))
        if lake.exists(AUDIENCE)
        else pl.LazyFrame(schema={"segment": pl.String(), "contact_key": pl.String()})
    )
    known = lake.scan(HOLDOUTS) if has_table else pl.LazyFrame(schema=HOLDOUTS_SCHEMA)
    rows = holdout_rows(members, known, shares, pepper).collect()
    changed = sync_table(lake, HOLDOUTS, rows, keys=["segment", "contact_key"])
    if changed:
        held = int(rows.get_column("held_out").sum())
        logger.info("%s: %d members, %d held out (%d rows changed)",
                    HOLDOUTS, rows.height, held, changed)  # fmt: skip
    return changed

"""The large-removal guard: hold a publish that would take too many contacts off a list.

:func:`audience_removals` counts, for one destination list, the contacts the sync ledger says
are on it and how many of them the planned publish would remove; :func:`removal_hold` compares
that share with the configured :class:`~tasks.core.config_anomaly.RemovalGuard`.
"""

from __future__ import annotations

import polars as pl

from tasks.core.config_anomaly import RemovalGuard


def audience_removals(
    plan: pl.LazyFrame, ledger: pl.LazyFrame, *, destination: str, audience: str
) -> pl.LazyFrame:
    """One row ``on_list, removals`` for one destination list.

    ``on_list``: contacts the list holds per the sync ledger (last sent as subscribed, with
    success); ``removals``: how many of them the planned publish (``plan``, rows of
    :func:`tasks.core.sync.plan_sync`) would take off it: unsubscribes and (mirror mode)
    removals. Counting the plan rather than comparing audiences follows whatever the sync
    removes, and not contacts that merely left an upsert-mode segment while staying on the list.
    The hold this feeds delays removals, subscribes and updates; never an unsubscribe.
    """
    on_list = (
        ledger.filter(
            (pl.col("destination") == destination)
            & (pl.col("audience") == audience)
            & (pl.col("action") == "subscribe")
            & (pl.col("status") == "ok")
        )
        .select("contact_key")
        .unique()
    )
    removals = (
        plan.filter(pl.col("action").is_in(["unsubscribe", "remove"]))
        .select("contact_key")
        .unique()
        .join(on_list, on="contact_key", how="semi")
    )
    return pl.concat(
        [
            on_list.select(pl.len().cast(pl.Int64).alias("on_list")),
            removals.select(pl.len().cast(pl.Int64).alias("removals")),
        ],
        how="horizontal",
    )


def removal_hold(on_list: int, removals: int, guard: RemovalGuard) -> str | None:
    """Why a publish that would remove ``removals`` of ``on_list`` contacts must wait, or None."""
    if on_list == 0 or removals < guard.min_count or removals / on_list <= guard.max_share:
        return None
    return (
        f"large removal: the publish would take {removals:,} of the {on_list:,} contacts off "
        f"the list ({removals / on_list:.0%}; limit {guard.max_share:.0%})"
    )

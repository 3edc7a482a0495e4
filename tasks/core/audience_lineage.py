"""Lineage: which audiences a source or a table's series feeds, by the source roles behind them.

A feature column is computed from some source roles (declared in the feature catalogue,
:data:`~tasks.core.feature_catalog.FEATURE_ROLES`); a segment depends on contacts, the roles its
predicate reads, and those of the segments ranked before it. A series (a source, or a table that
holds one role) feeds every segment that shares a role with it. :mod:`tasks.core.anomaly` holds
audiences on this lineage; a failed source holds the same ones (:func:`source_audiences`).
"""

from __future__ import annotations

from collections.abc import Mapping

from tasks.core.config import ROLE_FIELDS, PipelineConfig, Segment
from tasks.core.feature_catalog import FEATURE_ROLES
from tasks.core.predicates import predicate_columns

ALL_ROLES = frozenset(ROLE_FIELDS)
# Feature columns and the roles they are computed from: tasks.core.feature_catalog. A column
# neither a feature nor a canonical field of some role counts as fed by every role: a gap holds
# more audiences, not fewer.


def column_roles(column: str) -> frozenset[str]:
    """The source roles a feature column is computed from.

    Declared in the feature catalogue (:data:`FEATURE_ROLES`), else the roles that carry a
    canonical field of that name, else every role.
    """
    if column in FEATURE_ROLES:
        return FEATURE_ROLES[column]
    carriers = frozenset(
        role for role, (required, optional) in ROLE_FIELDS.items() if column in required + optional
    )
    return carriers or ALL_ROLES


def predicate_roles(where: str) -> frozenset[str]:
    """The source roles the columns of a segment predicate are computed from."""
    roles: set[str] = set()
    for column in predicate_columns(where):
        roles |= column_roles(column)
    return frozenset(roles)


def segment_roles(config: PipelineConfig, segment: Segment) -> frozenset[str]:
    """The source roles a segment's members depend on.

    Contacts always (identity and consent come from them), the roles its predicate reads, and,
    for a prioritised segment, the roles of every segment ranked before it (a contact matching
    one of those is taken out of this one).
    """
    roles = {"contacts"} | predicate_roles(segment.where)
    if segment.priority is not None:
        for other in config.segments:
            if other.priority is not None and other.priority < segment.priority:
                roles |= predicate_roles(other.where)
    return frozenset(roles)


def series_roles(
    config: PipelineConfig,
    *,
    table: str,
    source: str | None,
    table_roles: Mapping[str, str],
) -> frozenset[str]:
    """The source roles a series measures (every role when it cannot tell)."""
    if source is not None:
        configured = config.sources.get(source)
        return ALL_ROLES if configured is None else frozenset({configured.role})
    role = table_roles.get(table)
    return ALL_ROLES if role is None else frozenset({role})


def source_audiences(config: PipelineConfig, source: str) -> list[str]:
    """Names of the segments fed by ``source`` (every segment if the source is unknown)."""
    roles = series_roles(config, table="", source=source, table_roles={})
    return [s.name for s in config.segments if roles & segment_roles(config, s)]

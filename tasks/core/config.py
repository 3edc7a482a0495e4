"""``pipeline.yaml``: what data moves (sources, segments, destinations, thresholds).

Parsed once at the edge into frozen pydantic models with ``extra="forbid"``, so a typo, a wrong
type or a dangling reference fails at load with a message that names the key path, e.g.::

    pipeline.yaml: sources.crm.auth.token_url: Field required

Values may reference the environment as ``${NAME}`` or ``${NAME:-default}``, except variables
whose names look like credentials; secrets are never written in the file: a field of type
:class:`SecretRef` names a secret that the environment supplies (see :mod:`tasks.core.settings`
and :func:`missing_secrets`). The YAML itself is read with bounded alias expansion, duplicate keys
refused and one-line syntax errors (:mod:`tasks.core.config_yaml`); segment predicates are
restricted expressions (:mod:`tasks.core.predicates`).

This module holds the whole (:class:`PipelineConfig`, its cross-section checks) and the loading:
YAML to models, error paths as the user wrote them, secrets, the JSON schema. Each section has
its own ``config_*`` module (sources in ``config_sql_files``, ``config_events`` and
``config_rest``; ``config_segments``; ``config_destinations``; ...), re-exported here; none of
them imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tasks.core.config_anomaly import VolumeConfig
from tasks.core.config_base import NAME_PATTERN as NAME_PATTERN
from tasks.core.config_base import ROLE_FIELDS as ROLE_FIELDS
from tasks.core.config_base import Model as Model
from tasks.core.config_base import Name as Name
from tasks.core.config_base import Role as Role
from tasks.core.config_base import SecretRef as SecretRef
from tasks.core.config_base import SourceBase as SourceBase
from tasks.core.config_destinations import AUDIENCE_COLUMNS as AUDIENCE_COLUMNS
from tasks.core.config_destinations import GOLD_COLUMNS as GOLD_COLUMNS
from tasks.core.config_destinations import Destination as Destination
from tasks.core.config_destinations import HubSpotDestination as HubSpotDestination
from tasks.core.config_destinations import KlaviyoDestination as KlaviyoDestination
from tasks.core.config_destinations import MailchimpDestination as MailchimpDestination
from tasks.core.config_destinations import check_field_mappings as check_field_mappings
from tasks.core.config_engine import EngineConfig
from tasks.core.config_events import EventSource
from tasks.core.config_maintenance import MaintenanceConfig
from tasks.core.config_rest import UNION_TAGS as _REST_UNION_TAGS
from tasks.core.config_rest import RestSource
from tasks.core.config_segments import Segment as Segment
from tasks.core.config_segments import check_segment_predicate as check_segment_predicate
from tasks.core.config_segments import predicate_columns_or_error as predicate_columns_or_error
from tasks.core.config_sql_files import FileDropS3 as FileDropS3
from tasks.core.config_sql_files import FileDropSource as FileDropSource
from tasks.core.config_sql_files import SqlSource as SqlSource
from tasks.core.config_sql_files import sql_dialect as sql_dialect
from tasks.core.config_transform import TransformConfig
from tasks.core.config_yaml import Substitutions, interpolate, read_yaml
from tasks.core.feature_catalog import FEATURE_COLUMNS as FEATURE_COLUMNS
from tasks.core.secret_sources import lookup_secret
from tasks.core.tables import BRONZE_PREFIX, TABLES, bronze_table, is_bronze
from tasks.errors import ConfigError

Source = Annotated[
    SqlSource | FileDropSource | EventSource | RestSource,
    Field(discriminator="kind"),
]


class Thresholds(Model):
    quarantine_max_ratio: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Hold publishing when more than this share of a source's rows is quarantined.",
    )


class PublishConfig(Model):
    """How a publish claims each destination list before sending (see ``ops/publish_leases``)."""

    lease_seconds: float = Field(
        default=600,
        gt=0,
        description="A claim on a destination list lasts this long unless renewed; the holder "
        "renews it before every window of platform batches. A crashed run blocks its lists at "
        "most this long.",
    )
    lease_wait_seconds: float = Field(
        default=60,
        ge=0,
        description="How long a publish waits for a list another run holds before skipping it.",
    )
    window_batches: int | None = Field(
        default=None,
        ge=1,
        description="Platform batches sent at once between two sync-ledger commits (at most the "
        "platform's connection ceiling in flight). A crash leaves at most this many batches per "
        "audience sent but not recorded; they are sent again by the next run. Default: eight "
        "rounds of the platform's max_connections (Mailchimp, HubSpot and Klaviyo: 80).",
    )


class PipelineConfig(Model):
    """The whole of ``pipeline.yaml``."""

    version: Literal[1] = 1
    sources: dict[Name, Source] = Field(min_length=1)
    segments: list[Segment] = Field(default_factory=list)
    destinations: dict[Name, Destination] = Field(default_factory=dict)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    transform: TransformConfig = Field(default_factory=TransformConfig)
    volume: VolumeConfig = Field(default_factory=VolumeConfig)
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="Where the transform's independent units run (Dask, threads, inline).",
    )

    @field_validator("sources")
    @classmethod
    def _source_tables_are_free(cls, sources: dict[str, Source]) -> dict[str, Source]:
        """A source's bronze table must not be a table the pipeline itself writes there."""
        for name in sources:
            table = bronze_table(name)
            if table in TABLES:
                raise ValueError(
                    f"source {name!r}: the name is reserved: {table!r} is the pipeline's own "
                    f"table ({TABLES[table].doc.split(':')[0].rstrip('.')}); rename the source"
                )
        return sources

    @field_validator("segments")
    @classmethod
    def _segments_compile(cls, segments: list[Segment]) -> list[Segment]:
        seen: set[str] = set()
        priorities: dict[int, str] = {}
        for segment in segments:
            if segment.name in seen:
                raise ValueError(f"segment {segment.name!r} is defined twice")
            seen.add(segment.name)
            if segment.priority is not None:
                if segment.priority in priorities:
                    raise ValueError(
                        f"segment {segment.name!r}: priority {segment.priority} is already "
                        f"used by segment {priorities[segment.priority]!r}"
                    )
                priorities[segment.priority] = segment.name
        return segments

    @model_validator(mode="after")
    def _references_resolve(self) -> PipelineConfig:
        if not any(s.role == "contacts" for s in self.sources.values()):
            raise ValueError("sources: at least one source must have role 'contacts'")
        unknown_sources = sorted(self.transform.identity.referenced_sources() - set(self.sources))
        if unknown_sources:
            raise ValueError(
                f"transform.identity: unknown source(s) {unknown_sources}; "
                f"defined sources: {sorted(self.sources)}"
            )
        for table in self.maintenance.retention:
            source = table.removeprefix(BRONZE_PREFIX)
            if is_bronze(table) and table not in TABLES and source not in self.sources:
                raise ValueError(
                    f"maintenance.retention.{table}: no source {source!r}; defined "
                    f"sources: {sorted(self.sources)}"
                )
        segment_names = {s.name for s in self.segments}
        for dest_name, dest in self.destinations.items():
            for segment in dest.audiences:
                if segment not in segment_names:
                    raise ValueError(
                        f"destinations.{dest_name}.audiences.{segment}: unknown segment "
                        f"{segment!r}; defined segments: {sorted(segment_names)}"
                    )
                check_field_mappings(f"destinations.{dest_name}.audiences.{segment}",
                                     dest.kind, dest.audiences[segment])  # fmt: skip
        return self

    def sources_with_role(self, role: str) -> dict[str, Source]:
        return {n: s for n, s in self.sources.items() if s.role == role and s.enabled}


# Discriminator values pydantic inserts into error locations of tagged unions.
_UNION_TAGS = {
    "sql",
    "files",
    "events",
    "mailchimp",
    "klaviyo",
    "hubspot",
    "slack_webhook",
    *_REST_UNION_TAGS,
}


def _user_path(loc: tuple[int | str, ...], raw: Any) -> str:
    """The key path as the user wrote it: pydantic's union-member tags (e.g. ``sql`` after a
    source name) are dropped, but only where they are not real keys of the input."""
    parts: list[str] = []
    node: Any = raw
    for part in loc:
        if isinstance(node, dict) and part in node:  # noqa: SIM114 (mypy narrows each type)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and part in _UNION_TAGS:
            continue
        else:
            node = None
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


def _format_errors(
    exc: ValidationError, raw: Any, origin: str, substitutions: Substitutions
) -> str:
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {_user_path(error['loc'], raw)}: {message}")
    # A validator may quote the value it rejects; a value that came from ${NAME} is shown as
    # ${NAME}, never as what the environment held.
    return substitutions.scrub("\n".join(lines))


def parse_pipeline(
    text: str, *, env: Mapping[str, str] | None = None, origin: str = "pipeline.yaml"
) -> PipelineConfig:
    """Parse and validate ``pipeline.yaml`` text; raise :class:`ConfigError` naming key paths.

    The YAML is read with the limits of :mod:`tasks.core.config_yaml` (bounded alias expansion,
    no duplicate keys, one-line syntax errors) and ``${NAME}`` is interpolated from ``env``
    (default: the process environment), except secret-named variables.
    """
    raw = read_yaml(text, origin)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    substitutions = Substitutions()
    try:
        raw = interpolate(raw, os.environ if env is None else env, "", substitutions)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, raw, origin, substitutions)) from None


def load_pipeline(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    check_secrets: bool = False,
) -> PipelineConfig:
    """Read and validate a ``pipeline.yaml`` file.

    With ``check_secrets``, also fail (one line, see :func:`require_secrets`) when a secret the
    config references is not set in ``env``: what ``validate`` and ``run`` do before anything
    starts.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read pipeline config: {exc.strerror}") from exc
    config = parse_pipeline(text, env=env, origin=str(path))
    if check_secrets:
        require_secrets(config, env=env, origin=str(path))
    return config


@dataclass(frozen=True)
class MissingSecret:
    """A ``{secret: NAME}`` the config references whose environment variable is not set."""

    path: str  # key path in pipeline.yaml, e.g. sources.crm.auth.client_secret
    secret: str
    env_var: str


def _secret_refs(value: Any, path: str) -> Iterator[tuple[str, SecretRef]]:
    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_refs(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _secret_refs(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _secret_refs(item, f"{path}.{i}")


def missing_secrets(
    config: PipelineConfig, env: Mapping[str, str] | None = None
) -> list[MissingSecret]:
    """Every secret referenced by an enabled source, a destination or a notifier that ``env``
    (default: the process environment) does not set, in key-path order."""
    env = os.environ if env is None else env
    missing = []
    for path, ref in _secret_refs(config, ""):
        parts = path.split(".")
        if parts[0] == "sources" and not config.sources[parts[1]].enabled:
            continue
        if not env.get(ref.env_var) and lookup_secret(ref.secret) is None:
            missing.append(MissingSecret(path, ref.secret, ref.env_var))
    return missing


def require_secrets(
    config: PipelineConfig, *, env: Mapping[str, str] | None = None, origin: str = "pipeline.yaml"
) -> None:
    """:class:`ConfigError` in one line naming each missing secret, the variable to export and
    the key path that references it."""
    missing = missing_secrets(config, env)
    if missing:
        raise ConfigError(
            "; ".join(
                f"{origin}: {m.path}: secret {m.secret!r} is not set (export {m.env_var})"
                for m in missing
            )
        )


def pipeline_json_schema() -> dict[str, Any]:
    """JSON schema of ``pipeline.yaml`` (field descriptions included)."""
    return PipelineConfig.model_json_schema()

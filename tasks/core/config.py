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
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tasks.core.config_anomaly import VolumeConfig
from tasks.core.config_base import NAME_PATTERN as NAME_PATTERN
from tasks.core.config_base import ROLE_FIELDS as ROLE_FIELDS
from tasks.core.config_base import Model as Model
from tasks.core.config_base import Name as Name
from tasks.core.config_base import Role as Role
from tasks.core.config_base import SecretRef as SecretRef
from tasks.core.config_base import SourceBase as SourceBase
from tasks.core.config_engine import EngineConfig
from tasks.core.config_events import EventSource
from tasks.core.config_maintenance import MaintenanceConfig
from tasks.core.config_publish import (
    AudienceConfig,
    BudgetOption,
    coerce_audiences,
    resolved_fields,
)
from tasks.core.config_rest import UNION_TAGS as _REST_UNION_TAGS
from tasks.core.config_rest import RestSource
from tasks.core.config_sql_files import FileDropS3 as FileDropS3
from tasks.core.config_sql_files import FileDropSource as FileDropSource
from tasks.core.config_sql_files import SqlSource as SqlSource
from tasks.core.config_sql_files import sql_dialect as sql_dialect
from tasks.core.config_transform import TransformConfig
from tasks.core.config_yaml import Substitutions, interpolate, read_yaml
from tasks.core.feature_catalog import FEATURE_COLUMNS as FEATURE_COLUMNS
from tasks.core.predicates import (
    FUNCTIONS,
    MAX_PREDICATE_CHARS,
    PredicateError,
    compile_predicate,
    predicate_columns,
)
from tasks.core.secret_sources import lookup_secret
from tasks.core.tables import BRONZE_PREFIX, TABLES, bronze_table, is_bronze
from tasks.core.transport import TransportOptions
from tasks.errors import ConfigError

Source = Annotated[
    SqlSource | FileDropSource | EventSource | RestSource,
    Field(discriminator="kind"),
]


class Segment(Model):
    """An audience: a SQL predicate over the columns of ``gold/customer_features``.

    The predicate is checked when the model is built (see :func:`check_segment_predicate`), so a
    ``Segment`` always holds a predicate in the restricted language of
    :mod:`tasks.core.predicates`; :meth:`expr` compiles it.
    """

    name: Name
    where: str = Field(
        max_length=MAX_PREDICATE_CHARS,
        description=(
            "SQL predicate over customer features, e.g. 'order_count >= 3'. Restricted to "
            "feature columns, literals, comparisons, AND/OR/NOT, IS [NOT] NULL, IN (...), "
            "BETWEEN, LIKE, arithmetic and the functions " + ", ".join(sorted(FUNCTIONS)) + "."
        ),
    )
    description: str = ""
    priority: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Makes the segment mutually exclusive with the other prioritised segments: a contact "
            "matching several lands only in the one with the lowest number (1 = first). "
            "Segments without a priority are independent of all others."
        ),
    )

    @model_validator(mode="after")
    def _predicate_is_allowed(self) -> Segment:
        check_segment_predicate(self)
        return self

    def expr(self) -> pl.Expr:
        """The predicate as a polars expression (null where a feature it reads is null)."""
        return compile_predicate(self.where, FEATURE_COLUMNS)


class MailchimpDestination(Model, TransportOptions, BudgetOption):
    kind: Literal["mailchimp"]
    base_url: str = Field(description="e.g. https://us6.api.mailchimp.com")
    api_key: SecretRef
    batch_size: int = Field(default=500, ge=1, le=500)
    audiences: dict[Name, AudienceConfig] = Field(
        min_length=1, description="Segment name -> Mailchimp list id (or an audience object)."
    )

    _coerce = field_validator("audiences", mode="before")(coerce_audiences)

    def list_ids(self) -> list[str]:
        return [a.list_id for a in self.audiences.values()]

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


class KlaviyoDestination(Model, TransportOptions, BudgetOption):
    """A Klaviyo account (private API key), publishing to static lists by id."""

    kind: Literal["klaviyo"]
    base_url: str = Field(default="https://a.klaviyo.com", description="Klaviyo API host.")
    api_key: SecretRef = Field(description="Private API key (Klaviyo-API-Key ...).")
    revision: str = Field(
        default="2026-07-15",
        pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$",
        description="API revision sent in the `revision` header on every request.",
    )
    batch_size: int = Field(
        default=10_000, ge=1, le=10_000, description="Profiles per bulk import job (max 10,000)."
    )
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Wait between two reads of an import job."
    )
    poll_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="An import job not finished after this long is sent again next run.",
    )
    tags_property: str = Field(
        default="tags",
        min_length=1,
        description="Profile property holding a member's tags (Klaviyo has no profile tags).",
    )
    audiences: dict[Name, AudienceConfig] = Field(
        min_length=1, description="Segment name -> Klaviyo list id (or an audience object)."
    )

    _coerce = field_validator("audiences", mode="before")(coerce_audiences)

    def list_ids(self) -> list[str]:
        return [a.list_id for a in self.audiences.values()]

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


class HubSpotDestination(Model, TransportOptions, BudgetOption):
    """A HubSpot portal (private app token), publishing to MANUAL contact lists by id."""

    kind: Literal["hubspot"]
    base_url: str = Field(
        default="https://api.hubapi.com",
        description="HubSpot API root, e.g. https://api.hubapi.com",
    )
    token: SecretRef = Field(description="Private app access token, sent as a Bearer token.")
    subscription_type_id: int = Field(
        ge=1,
        description="The email subscription type (communication preferences) whose opt-outs "
        "are read before each publish and written for opted-out contacts.",
    )
    unsubscribe_scope: Literal["subscription", "all"] = Field(
        default="subscription",
        description="'subscription': opt-outs unsubscribe from subscription_type_id only; "
        "'all': from every email subscription of the portal.",
    )
    batch_size: int = Field(
        default=100, ge=1, le=100, description="Contacts per batch call (HubSpot's maximum: 100)."
    )
    audiences: dict[Name, AudienceConfig] = Field(
        min_length=1,
        description="Segment name -> id (digits) of a MANUAL HubSpot contact list (or an "
        "audience object).",
    )

    _coerce = field_validator("audiences", mode="before")(coerce_audiences)

    @field_validator("audiences")
    @classmethod
    def _hubspot_lists(cls, audiences: dict[str, AudienceConfig]) -> dict[str, AudienceConfig]:
        for segment, audience in audiences.items():
            if not re.fullmatch(r"[1-9][0-9]{0,18}", audience.list_id):
                raise ValueError(
                    f"{segment}.list: {audience.list_id!r} is not a HubSpot list id (digits)"
                )
            if audience.tags:
                raise ValueError(f"{segment}.tags: HubSpot contacts have no tags; map a property")
        return audiences

    def list_ids(self) -> list[str]:
        return [a.list_id for a in self.audiences.values()]

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        yield "base_url", self.base_url


Destination = Annotated[
    MailchimpDestination | KlaviyoDestination | HubSpotDestination, Field(discriminator="kind")
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


def predicate_columns_or_error(segment: Segment) -> set[str]:
    """The columns ``segment.where`` reads; ``ValueError`` naming the segment if it is not an
    allowed predicate."""
    try:
        return predicate_columns(segment.where)
    except PredicateError as exc:
        raise ValueError(
            f"segment {segment.name!r}: invalid predicate {segment.where!r}: {exc}"
        ) from exc


AUDIENCE_COLUMNS: dict[str, pl.DataType] = {
    "segment": pl.String(),
    "email": pl.String(),
    "first_name": pl.String(),
    "last_name": pl.String(),
    "phone": pl.String(),
    "consent_at": pl.Datetime("us", "UTC"),
}
"""Columns of gold/audience_members a field mapping may use besides the features."""

GOLD_COLUMNS: dict[str, pl.DataType] = {**FEATURE_COLUMNS, **AUDIENCE_COLUMNS}
"""Every gold column a field mapping may read (``country`` comes from the features)."""


def check_field_mappings(path: str, kind: str, audience: AudienceConfig) -> None:
    """Fail naming the key path if a mapping reads an unknown gold column or formats a column
    of a kind the format cannot apply to."""
    for name, mapping in resolved_fields(kind, audience).items():
        where = f"{path}.fields.{name}"
        if mapping.column is None:
            continue
        dtype = GOLD_COLUMNS.get(mapping.column)
        if dtype is None:
            raise ValueError(
                f"{where}.column: unknown column {mapping.column!r}; available: "
                f"{sorted(GOLD_COLUMNS)}"
            )
        if mapping.format is None:
            continue
        if dtype.is_temporal() and mapping.decimals is not None:
            raise ValueError(f"{where}.format: {mapping.column} is a date; use a strftime pattern")
        if dtype.is_numeric() and mapping.decimals is None:
            raise ValueError(f"{where}.format: {mapping.column} is a number; use 0, 0.0, 0.00...")
        if not (dtype.is_numeric() or dtype.is_temporal()):
            raise ValueError(f"{where}.format: {mapping.column} is text; it takes no format")


def check_segment_predicate(segment: Segment) -> None:
    """Fail with the segment's name if its predicate is outside the allowed language, reads an
    unknown column, or is not a boolean.

    The text is parsed by :mod:`tasks.core.predicates` first; polars only ever sees the canonical
    rendering of an allowed tree, never the user's text (its SQL layer would run table functions
    such as ``read_csv`` while merely building the expression).
    """
    unknown = sorted(predicate_columns_or_error(segment) - set(FEATURE_COLUMNS))
    if unknown:
        raise ValueError(
            f"segment {segment.name!r}: unknown column(s) {unknown} in {segment.where!r}; "
            f"available: {sorted(FEATURE_COLUMNS)}"
        )
    try:
        expr = compile_predicate(segment.where, FEATURE_COLUMNS)
    except PredicateError as exc:
        raise ValueError(
            f"segment {segment.name!r}: invalid predicate {segment.where!r}: {exc}"
        ) from exc
    except Exception as exc:  # polars rejected a rendering of an allowed tree
        raise ValueError(
            f"segment {segment.name!r}: invalid predicate {segment.where!r}: {exc}"
        ) from exc
    # One all-null row: evaluating (not only typing) the predicate catches comparisons polars
    # accepts in the schema but rejects on data, e.g. a string column against a number.
    row = pl.DataFrame([[None] * len(FEATURE_COLUMNS)], schema=FEATURE_COLUMNS, orient="row")
    try:
        result = row.lazy().select(expr.alias("_match")).collect().schema["_match"]
    except Exception as exc:
        raise ValueError(f"segment {segment.name!r}: predicate {segment.where!r}: {exc}") from exc
    if result != pl.Boolean:
        raise ValueError(
            f"segment {segment.name!r}: predicate {segment.where!r} is {result}, not a boolean"
        )


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

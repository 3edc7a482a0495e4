"""Base models every ``pipeline.yaml`` section builds on.

:class:`Model` (frozen, unknown keys rejected), :data:`Name`, :class:`SecretRef` and the source
roles (:data:`ROLE_FIELDS`, :class:`SourceBase`). The section modules (``config_rest``,
``config_sql_files``, ``config_events``, ``config_transform``, ``config_anomaly``) import these
from here and :mod:`tasks.core.config` assembles them into :class:`PipelineConfig`, so nothing
imports :mod:`tasks.core.config` part-way through.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]


class Model(BaseModel):
    """Base for every config model: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Model):
    """A secret supplied by the environment as ``AUDIENCE_LAKE_SECRET_<NAME>``."""

    secret: Name = Field(description="Secret name; read from AUDIENCE_LAKE_SECRET_<NAME upper>.")

    @property
    def env_var(self) -> str:
        return f"AUDIENCE_LAKE_SECRET_{self.secret.upper()}"


# --- source roles ---------------------------------------------------------------------------
# A role says what a source's rows mean to the transform; `fields` maps each canonical field of
# the role to the source's own column name, so a new source is YAML, not code.
Role = Literal["contacts", "orders", "events", "enrichment"]

CONSENT_EVIDENCE_FIELDS = (
    "lawful_basis",
    "consent_form_id",
    "double_opt_in_at",
    "consent_wording_version",
    "consent_ip",
)
"""Optional contact fields that document a consent statement (the ledger's lawful basis and
evidence); ``consent_ip`` is an identifier: the ledger keeps only a keyed hash of it."""

ROLE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # role: (required canonical fields, optional canonical fields)
    "contacts": (
        ("source_id", "email", "updated_at"),
        (
            "first_name",
            "last_name",
            "phone",
            "country",
            "opted_in",
            "opted_in_at",
            "opted_out",
            # consent evidence, carried into the consent ledger (tasks.core.consent)
            *CONSENT_EVIDENCE_FIELDS,
        ),
    ),
    "orders": (
        ("order_id", "email", "amount", "updated_at"),
        ("currency", "category", "status", "created_at"),
    ),
    "events": (("event_id", "occurred_at", "event_type"), ("email", "anonymous_id", "url")),
    "enrichment": (("email", "updated_at"), ("company", "job_title", "city", "country")),
}


class SourceBase(Model):
    role: Role = Field(description="What the rows mean to the transform.")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> source column; unmapped fields use their own name.",
    )
    enabled: bool = True

    @model_validator(mode="after")
    def _fields_belong_to_role(self) -> SourceBase:
        required, optional = ROLE_FIELDS[self.role]
        unknown = sorted(set(self.fields) - set(required) - set(optional))
        if unknown:
            raise ValueError(
                f"fields: unknown canonical field(s) {unknown} for role {self.role!r}; "
                f"allowed: {sorted(required + optional)}"
            )
        return self

    def column(self, canonical: str) -> str:
        """The source column that holds ``canonical``."""
        return self.fields.get(canonical, canonical)

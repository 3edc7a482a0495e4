"""``kind: events`` sources: web-analytics events pushed to a webhook, landed as micro-batches.

A sender POSTs batches of events to the receiver (``audience-lake receive-events``), which
verifies the HMAC signature and its timestamp, answers 2xx at once and lands each accepted
request as one immutable NDJSON file in ``landing`` (a local folder or an ``s3://`` prefix). The
``land_events`` flow then moves new files into ``bronze/<source>``: each file exactly once,
and each ``event_id`` once across every delivery (deliveries are at-least-once).

Example (``pipeline.yaml``)::

    web_events:
      kind: events
      landing: s3://landing/web-events
      fields: {event_id: messageId, occurred_at: timestamp, event_type: event}
      receiver:
        port: 8713
        signing_secret: {secret: web_events_hmac}   # AUDIENCE_LAKE_SECRET_WEB_EVENTS_HMAC

A receiver must either have a ``signing_secret`` or say ``signing: none`` (accept unsigned
batches, for a receiver only trusted local senders can reach); neither is a config error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from tasks.core.config_base import Model, Role, SecretRef, SourceBase

_HEADER_NAME = r"^[A-Za-z0-9][A-Za-z0-9-]*$"

Signing = Literal["hmac_sha256", "none"]


class WebhookReceiverOptions(Model):
    """How the webhook receiver listens and what it accepts."""

    host: str = Field(default="127.0.0.1", description="Bind address of the receiver.")
    port: int = Field(default=8713, ge=0, le=65535, description="Port (0 picks a free one).")
    path: str = Field(default="/events", description="URL path that accepts POSTed batches.")
    signing: Signing = Field(
        default="hmac_sha256",
        description="hmac_sha256: every request must carry a valid signature made with "
        "signing_secret. none: accept unsigned batches (anyone who can reach the receiver can "
        "land events; logged as a warning at start) - only for loopback or trusted senders.",
    )
    signing_secret: SecretRef | None = Field(
        default=None,
        validate_default=True,
        description="HMAC-SHA256 key (a {secret: NAME} reference); required unless signing: none.",
    )
    signature_header: str = Field(
        default="X-Signature-SHA256",
        pattern=_HEADER_NAME,
        description="Header with hex HMAC-SHA256 of '<timestamp>.<body>' (or of the body "
        "when timestamp_header is null); a 'sha256=' prefix is allowed.",
    )
    timestamp_header: str | None = Field(
        default="X-Signature-Timestamp",
        pattern=_HEADER_NAME,
        description="Header with the signing time (epoch seconds, digits only). The signature "
        "covers '<timestamp>.<body>' and the timestamp must lie within tolerance_seconds of "
        "now, so a captured request cannot be replayed later. null signs the body alone "
        "(for senders that cannot send a timestamp; replays are then only deduplicated).",
    )
    tolerance_seconds: float = Field(
        default=300,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="Largest accepted distance between the signed timestamp and now.",
    )
    max_body_bytes: int = Field(
        default=512_000,
        ge=1,
        description="Largest accepted request body, on the wire and after decoding.",
    )
    max_events: int = Field(default=10_000, ge=1, description="Most events in one request.")
    max_connections: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="Connections served at once; one more is answered 503 with Retry-After.",
    )
    request_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="Deadline for a whole request (headers and body); slower ones get 408.",
    )

    @field_validator("signing_secret")
    @classmethod
    def _secret_matches_signing(
        cls, value: SecretRef | None, info: ValidationInfo
    ) -> SecretRef | None:
        signing = info.data.get("signing")
        if signing == "hmac_sha256" and value is None:
            raise ValueError(
                "a signing secret is required: set signing_secret: {secret: NAME} "
                "(read from AUDIENCE_LAKE_SECRET_<NAME>), or signing: none to accept "
                "unsigned batches on purpose"
            )
        if signing == "none" and value is not None:
            raise ValueError("signing: none and a signing_secret contradict each other")
        return value

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "#" in value:
            raise ValueError(f"path {value!r} must start with '/' and hold no query or fragment")
        return value


class EventSource(SourceBase):
    """Events delivered at least once to a webhook and landed as NDJSON micro-batches."""

    kind: Literal["events"]
    role: Role = Field(default="events", description="What the rows mean to the transform.")
    landing: str = Field(
        description="Folder or s3://bucket/prefix where the receiver lands micro-batch files."
    )
    event_id: str | None = Field(
        default=None,
        min_length=1,
        description="Column holding the unique event id that deliveries are deduped on. "
        "Default: the column mapped to the canonical field event_id (else 'event_id').",
    )
    pattern: str = Field(default="*.ndjson", description="Glob of landed files to pick up.")
    max_files_per_run: int = Field(
        default=10_000,
        ge=1,
        description="Most files one run lands; the rest wait for the next run (never dropped).",
    )
    files_per_commit: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Landed files written to bronze in one commit (each still recorded).",
    )
    archive_landed: bool = Field(
        default=True,
        description="Move each file to archive/ under the landing root once its rows are in "
        "bronze, so runs list only pending files.",
    )
    receiver: WebhookReceiverOptions | None = Field(
        default=None,
        description="The webhook receiver (audience-lake receive-events) for this source; "
        "absent when something else lands the files.",
    )

    @field_validator("landing")
    @classmethod
    def _known_location(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("landing must name a folder or an s3://bucket/prefix")
        if "://" in value and not value.startswith(("s3://", "s3a://", "file://")):
            raise ValueError(f"landing {value!r}: only local folders and s3:// are supported")
        if value.startswith(("s3://", "s3a://")) and not value.split("://", 1)[1].strip("/"):
            raise ValueError(f"landing {value!r}: the s3 URI names no bucket")
        return value

    @property
    def event_id_column(self) -> str:
        """The column deliveries are deduped on."""
        return self.event_id or self.fields.get("event_id", "event_id")

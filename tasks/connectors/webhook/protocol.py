"""What senders and the receiver agree on: signature, landed file name, refusal, landed batch."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from tasks.connectors.webhook_http import HttpRejection

NDJSON_SUFFIX = ".ndjson"


@dataclass(frozen=True)
class LandedBatch:
    """What one accepted request became: the landed file, its event count, and whether the
    same body had landed before (a redelivery)."""

    source: str
    name: str
    location: str
    events: int
    duplicate: bool


class WebhookRejection(HttpRejection):
    """A request the receiver refuses; ``status`` is the HTTP answer, ``message`` the reason
    (sent to the client and logged: it never quotes the body or a header value)."""


def batch_file_name(body: bytes) -> str:
    """The landed file's name: a digest of the body, so one body always lands as one file."""
    return hashlib.sha256(body).hexdigest() + NDJSON_SUFFIX


def sign(secret: bytes, body: bytes, timestamp: str | None = None) -> str:
    """Hex HMAC-SHA256 of ``body`` (or of ``"<timestamp>.<body>"``) — what senders send."""
    message = body if timestamp is None else timestamp.encode("ascii") + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()

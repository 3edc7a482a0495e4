"""A webhook receiver for event batches, and the landing zone it writes micro-batches to.

Senders POST a batch of events (a JSON array, a Segment-style ``{"batch": [...]}`` object, one
event object, or NDJSON; optionally gzip-encoded). The receiver

1. verifies an HMAC-SHA256 signature in constant time over ``"<timestamp>.<body>"`` (the raw
   body), and that the timestamp lies within a replay window of now; a receiver without a
   secret must be asked for explicitly (``allow_unsigned=True``) and says so loudly at start,
2. checks that every event is a JSON object carrying a non-empty event id (a bad batch is
   refused whole with a 400 naming the line, so nothing is silently dropped),
3. lands the batch as **one immutable NDJSON file** named after the SHA-256 of the body, written
   create-if-absent (``os.link`` locally, ``If-None-Match: *`` on S3) unless a file of that name
   is already landed or archived — so a redelivery (or a replay) of the same body is a no-op
   that answers 200 again, also after the events reader archived the first delivery,
4. answers at once (it does no lake work) and only then tells ``on_landed`` (the CLI emits a
   Prefect event there, which triggers the ``land_events`` deployment).

The HTTP side (:mod:`tasks.connectors.webhook_http`) bounds every request in bytes, time and
threads and answers every request, bad ones with a 4xx naming the problem.

Deliveries are at-least-once: a sender that times out resends, perhaps re-batched. The events
reader (:mod:`tasks.connectors.sources.events`) ingests each landed file exactly once and each
event id once across files.

Where each part lives: :mod:`.receiver` (the receiver and its request work),
:mod:`.options` (a receiver from ``pipeline.yaml``), :mod:`.landing` (the landing zone),
:mod:`.protocol` (signature, file name, refusal, landed batch) and :mod:`.strict_json`.

Example:
    >>> landing = LocalLanding("/tmp/landing")  # doctest: +SKIP
    >>> with WebhookReceiver(landing, source_name="web_events", secret=b"k" * 32) as receiver:
    ...     print(receiver.url)  # doctest: +SKIP
    http://127.0.0.1:54321/events
"""

from __future__ import annotations

from tasks.connectors.webhook.landing import (
    ARCHIVE,
    LandedObject,
    Landing,
    LocalLanding,
    S3Landing,
    open_landing,
)
from tasks.connectors.webhook.options import receiver_from_options
from tasks.connectors.webhook.protocol import LandedBatch, WebhookRejection, batch_file_name, sign
from tasks.connectors.webhook.receiver import WebhookReceiver

__all__ = [
    "ARCHIVE",
    "LandedBatch",
    "LandedObject",
    "Landing",
    "LocalLanding",
    "S3Landing",
    "WebhookReceiver",
    "WebhookRejection",
    "batch_file_name",
    "open_landing",
    "receiver_from_options",
    "sign",
]

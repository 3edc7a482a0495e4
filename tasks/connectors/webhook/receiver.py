"""The webhook receiver: verifies, validates and lands each POSTed batch, then announces it.

:class:`WebhookReceiver` owns the request work (signature and replay window, decoding, parsing
and checking every event, the NDJSON it lands) and serves it through
:class:`~tasks.connectors.webhook_http.LimitedHTTPServer`.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tasks.connectors.serving import BackgroundHTTPServer
from tasks.connectors.webhook.landing import Landing
from tasks.connectors.webhook.protocol import LandedBatch, WebhookRejection, batch_file_name, sign
from tasks.connectors.webhook.strict_json import _MAX_NESTING, _depth, _loads
from tasks.connectors.webhook_http import HttpLimits, LimitedHTTPServer, Reply, Routes

# Records keep the package's name: what log configuration and readers filter on.
logger = logging.getLogger("tasks.connectors.webhook")

DEFAULT_TIMESTAMP_HEADER = "X-Signature-Timestamp"
# Epoch seconds as plain decimal digits: no sign, exponent, "nan" or "inf".
_TIMESTAMP = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class WebhookReceiver(BackgroundHTTPServer):
    """Accepts POSTed event batches on loopback (or any bind address) and lands them.

    Args:
        landing: where micro-batches are written.
        source_name: the event source this receiver feeds (named in errors and events).
        event_id_field: the field every event must carry (the dedupe key downstream).
        path: the URL path that accepts POSTs, exactly (``GET /healthz`` answers 200 for
            probes; any other method on ``path`` gets 405).
        secret: HMAC-SHA256 key. Required unless ``allow_unsigned`` is set.
        allow_unsigned: accept unsigned requests when there is no ``secret`` — for a receiver
            that only loopback can reach; logged as a WARNING at start.
        signature_header: header holding the hex digest (``sha256=`` prefix allowed).
        timestamp_header: the signature covers ``"<ts>.<body>"`` and ``ts`` (epoch seconds,
            digits only) must be within ``tolerance_seconds`` of now. ``None`` signs the body
            alone and leaves replays of an old body to the landing dedupe (a WARNING at start).
        max_body_bytes: largest body accepted, on the wire and after gzip decoding (413).
        max_events: most events per request (413 above it).
        max_connections: connections served at once (one more gets 503).
        request_timeout_seconds: deadline for a whole request, headers and body (408).
        on_landed: called after the response is sent, once per accepted request (also for a
            redelivered body). Exceptions are logged, never sent to the client.
        clock: seconds since the epoch (injectable for replay-window tests).
    """

    def __init__(
        self,
        landing: Landing,
        *,
        source_name: str,
        event_id_field: str = "event_id",
        path: str = "/events",
        secret: bytes | None = None,
        allow_unsigned: bool = False,
        signature_header: str = "X-Signature-SHA256",
        timestamp_header: str | None = DEFAULT_TIMESTAMP_HEADER,
        tolerance_seconds: float = 300.0,
        max_body_bytes: int = 512_000,
        max_events: int = 10_000,
        max_connections: int = 32,
        request_timeout_seconds: float = 30.0,
        host: str = "127.0.0.1",
        port: int = 0,
        on_landed: Callable[[LandedBatch], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is not None and not secret:
            raise ValueError(f"source {source_name!r}: the webhook signing secret is empty")
        if secret is None and not allow_unsigned:
            raise ValueError(
                f"source {source_name!r}: the webhook receiver has no signing secret; pass "
                "one, or allow_unsigned=True to accept unsigned batches on purpose"
            )
        if not (math.isfinite(tolerance_seconds) and tolerance_seconds > 0):
            raise ValueError(f"source {source_name!r}: tolerance_seconds must be finite and > 0")
        self.landing = landing
        self.source_name = source_name
        self.event_id_field = event_id_field
        self.path = path
        super().__init__(host=host, port=port)
        self._secret = secret
        self._signature_header = signature_header
        self._timestamp_header = timestamp_header
        self._tolerance = tolerance_seconds
        self._max_body = max_body_bytes
        self._max_events = max_events
        self._limits = HttpLimits(
            max_body_bytes=max_body_bytes,
            request_timeout_s=request_timeout_seconds,
            max_connections=max_connections,
        )
        self._on_landed = on_landed
        self._clock = clock
        self._stats_lock = threading.Lock()
        self.accepted = 0
        self.redelivered = 0
        self.rejected = 0

    def __repr__(self) -> str:
        # Never show the secret.
        return f"WebhookReceiver(source={self.source_name!r}, landing={self.landing.location!r})"

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL senders POST to, e.g. ``http://127.0.0.1:8713/events``."""
        if self._server is None:
            raise RuntimeError("the webhook receiver is not running; call start() first")
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def signed(self) -> bool:
        """Whether every request must carry a valid signature."""
        return self._secret is not None

    def _build_server(self) -> LimitedHTTPServer:
        if self._secret is None:
            logger.warning(
                "source %r: the webhook receiver on %s:%s ACCEPTS UNSIGNED BATCHES: anyone who "
                "can reach it can land events. Configure a signing secret unless only trusted "
                "local senders can connect.",
                self.source_name,
                self.host,
                self.port,
            )
        elif self._timestamp_header is None:
            logger.warning(
                "source %r: signatures carry no timestamp: a captured request can be replayed "
                "(it lands once, then is deduplicated); set a timestamp header",
                self.source_name,
            )
        routes = Routes(
            post_path=self.path,
            on_post=self._on_post,
            get={"/healthz": self._health},
            name=f"webhook {self.source_name!r}",
        )
        return LimitedHTTPServer((self.host, self.port), routes, self._limits)

    def _thread_name(self) -> str:
        return f"webhook:{self.source_name}:{self.port}"

    def _health(self) -> Reply:
        return Reply(HTTPStatus.OK, {"status": "ok", "source": self.source_name})

    def _on_post(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        try:
            batch = self.receive(body, headers)
        except BaseException:
            self._count(None)
            raise
        self._count(batch)
        payload = {
            "status": "ok",
            "batch": batch.name,
            "events": batch.events,
            "duplicate": batch.duplicate,
        }
        # The sender has its answer first; then the batch is announced (may take a moment).
        return Reply(HTTPStatus.OK, payload, after=lambda: self._notify(batch))

    # --- the work ----------------------------------------------------------------------------

    def receive(self, body: bytes, headers: Mapping[str, str]) -> LandedBatch:
        """Verify, validate and land one request body (``headers`` with lower-case names).

        Raises:
            WebhookRejection: with the HTTP status and a message for the sender.
        """
        self._verify(body, headers)
        decoded = self._decode(body, headers.get("content-encoding", "identity"))
        events = self._parse(decoded)
        lines = b"".join(self._ndjson_line(event, index) for index, event in enumerate(events))
        name = batch_file_name(decoded)
        try:
            created = self.landing.put_if_absent(name, lines)
        except (OSError, ClientError, BotoCoreError) as exc:
            logger.error("source %r: landing %s failed: %s", self.source_name, name, exc)
            raise WebhookRejection(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "the batch could not be stored; retry later",
                headers={"Retry-After": "5"},
            ) from exc
        return LandedBatch(
            source=self.source_name,
            name=name,
            location=f"{self.landing.location}/{name}",
            events=len(events),
            duplicate=not created,
        )

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        if self._secret is None:
            return
        given = headers.get(self._signature_header.lower(), "").strip()
        if not given:
            raise WebhookRejection(
                HTTPStatus.UNAUTHORIZED, f"missing {self._signature_header} header"
            )
        given = given.removeprefix("sha256=")
        timestamp: str | None = None
        if self._timestamp_header is not None:
            timestamp = headers.get(self._timestamp_header.lower(), "").strip()
            if not _TIMESTAMP.match(timestamp):
                raise WebhookRejection(
                    HTTPStatus.UNAUTHORIZED,
                    f"missing or invalid {self._timestamp_header}: epoch seconds as digits",
                )
            skew = abs(self._clock() - float(timestamp))
            if not skew <= self._tolerance:  # also refuses a NaN clock
                raise WebhookRejection(
                    HTTPStatus.UNAUTHORIZED,
                    f"{self._timestamp_header} is {skew:.0f}s away from now "
                    f"(tolerance {self._tolerance:.0f}s)",
                )
        expected = sign(self._secret, body, timestamp)
        # Constant-time comparison; both sides are ASCII so compare bytes.
        if not hmac.compare_digest(expected.encode(), given.lower().encode("ascii", "replace")):
            raise WebhookRejection(HTTPStatus.UNAUTHORIZED, "signature does not match the body")

    def _decode(self, body: bytes, encoding: str) -> bytes:
        encoding = encoding.strip().lower()
        if encoding in {"", "identity"}:
            return body
        if encoding not in {"gzip", "x-gzip"}:
            raise WebhookRejection(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported Content-Encoding"
            )
        # Bounded inflate: a small gzip bomb must not become gigabytes in memory.
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, self._max_body + 1)
        except zlib.error as exc:
            raise WebhookRejection(
                HTTPStatus.BAD_REQUEST, f"body is not valid gzip: {exc}"
            ) from exc
        if len(data) > self._max_body or inflater.unconsumed_tail:
            raise WebhookRejection(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"decoded body exceeds {self._max_body} bytes",
            )
        # Nothing silently dropped: a cut-off stream or bytes after it are refused, not ignored.
        if not inflater.eof:
            raise WebhookRejection(HTTPStatus.BAD_REQUEST, "gzip body is truncated")
        if inflater.unused_data:
            raise WebhookRejection(HTTPStatus.BAD_REQUEST, "data after the end of the gzip body")
        return data

    def _parse(self, body: bytes) -> list[dict[str, Any]]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookRejection(
                HTTPStatus.BAD_REQUEST, f"body is not UTF-8 (byte {exc.start})"
            ) from None
        if not text.strip():
            raise WebhookRejection(HTTPStatus.BAD_REQUEST, "empty batch")
        try:
            whole: Any = _loads(text, "body")
        except json.JSONDecodeError:
            events = self._parse_lines(text)
        else:
            events = self._unwrap(whole)
        if not events:
            raise WebhookRejection(HTTPStatus.BAD_REQUEST, "empty batch")
        if len(events) > self._max_events:
            raise WebhookRejection(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(events)} events in one request; at most {self._max_events}",
            )
        for index, event in enumerate(events):
            self._check_event(event, f"event {index}")
        return events

    def _unwrap(self, whole: Any) -> list[Any]:
        if isinstance(whole, list):
            return whole
        if isinstance(whole, dict) and isinstance(whole.get("batch"), list):
            return list(whole["batch"])  # Segment-style {"batch": [...], "sentAt": ...}
        if isinstance(whole, dict):
            return [whole]
        raise WebhookRejection(
            HTTPStatus.BAD_REQUEST,
            f"expected a JSON array of events, a {{'batch': [...]}} object or NDJSON, "
            f"got {type(whole).__name__}",
        )

    def _parse_lines(self, text: str) -> list[Any]:
        events: list[Any] = []
        # Split on LF only: str.splitlines() would also cut at U+2028 etc. inside a string.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                events.append(_loads(line, f"line {number}"))
            except json.JSONDecodeError as exc:
                raise WebhookRejection(
                    HTTPStatus.BAD_REQUEST, f"line {number} is not valid JSON: {exc.msg}"
                ) from None
        return events

    def _check_event(self, event: Any, where: str) -> None:
        if not isinstance(event, dict):
            raise WebhookRejection(
                HTTPStatus.BAD_REQUEST, f"{where} is a {type(event).__name__}, not an object"
            )
        value = event.get(self.event_id_field)
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
            raise WebhookRejection(
                HTTPStatus.BAD_REQUEST,
                f"{where} has no {self.event_id_field!r} (a non-empty string or integer): "
                "deliveries are deduplicated on it",
            )
        if _depth(event) > _MAX_NESTING:
            raise WebhookRejection(
                HTTPStatus.BAD_REQUEST, f"{where} is nested deeper than {_MAX_NESTING} levels"
            )

    def _ndjson_line(self, event: dict[str, Any], index: int) -> bytes:
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        # json escapes control characters but not U+0085/U+2028/U+2029, which str.splitlines()
        # and other line readers treat as line breaks: escape them so one event is one line.
        # They can only occur inside JSON strings, where the escape means the same character.
        text = text.translate(_LINE_BREAK_ESCAPES)
        try:
            return text.encode("utf-8") + b"\n"
        except UnicodeEncodeError:
            raise WebhookRejection(
                HTTPStatus.BAD_REQUEST,
                f"event {index} holds an unpaired UTF-16 surrogate escape (not valid Unicode)",
            ) from None

    def _count(self, batch: LandedBatch | None) -> None:
        with self._stats_lock:
            if batch is None:
                self.rejected += 1
            elif batch.duplicate:
                self.redelivered += 1
            else:
                self.accepted += 1

    def _notify(self, batch: LandedBatch) -> None:
        if self._on_landed is None:
            return
        try:
            self._on_landed(batch)
        except Exception:
            logger.exception("source %r: on_landed hook failed for %s", self.source_name, batch)

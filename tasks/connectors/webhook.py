"""A webhook receiver for event batches, and the landing zone it writes micro-batches to.

Senders POST a batch of events (a JSON array, a Segment-style ``{"batch": [...]}`` object, one
event object, or NDJSON; optionally gzip-encoded). The receiver

1. verifies an optional HMAC-SHA256 signature over the raw body in constant time (API_NOTES
   §6.4; optionally over ``"<timestamp>.<body>"`` with a replay window),
2. checks that every event is a JSON object carrying a non-empty event id (a bad batch is
   refused whole with a 400 naming the line, so nothing is silently dropped),
3. lands the batch as **one immutable NDJSON file** named after the SHA-256 of the body, written
   create-if-absent (``os.link`` locally, ``If-None-Match: *`` on S3) — so a redelivery of the
   same body is a no-op that answers 200 again,
4. answers at once (it does no lake work) and only then tells ``on_landed`` (the CLI emits a
   Prefect event there, which triggers the ``land_events`` deployment).

Deliveries are at-least-once: a sender that times out resends, perhaps re-batched. The events
reader (:mod:`tasks.connectors.sources.events`) ingests each landed file exactly once and each
event id once across files.

Example:
    >>> landing = LocalLanding("/tmp/landing")  # doctest: +SKIP
    >>> with WebhookReceiver(landing, source_name="web_events", secret=b"k") as receiver:
    ...     print(receiver.url)  # doctest: +SKIP
    http://127.0.0.1:54321/events
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from tasks.connectors.serving import BackgroundHTTPServer
from tasks.connectors.storage import is_s3_uri, s3_client, split_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

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
    "sign",
]

logger = logging.getLogger(__name__)

NDJSON_SUFFIX = ".ndjson"
_READ_TIMEOUT_S = 10.0  # a client that stops sending mid-body must not hold a thread forever
_CHUNK_LINE_MAX = 1024


# --- landing zone ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LandedObject:
    """One landed micro-batch file: its name under the landing root and when it landed."""

    name: str
    location: str
    size: int
    landed_at: datetime


class Landing(Protocol):
    """Where micro-batches land: write-once files under one root."""

    @property
    def location(self) -> str: ...

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Write ``name`` unless it exists; True if this call created it."""
        ...

    def list(self, pattern: str) -> list[LandedObject]:
        """Files directly under the root matching ``pattern``, oldest first."""
        ...

    def read(self, name: str) -> bytes: ...

    def archive(self, name: str) -> None:
        """Move a file whose rows are committed to ``archive/`` (out of :meth:`list`'s sight)."""
        ...


ARCHIVE = "archive"


class LocalLanding:
    """A landing folder on a local (or mounted) file system."""

    def __init__(self, folder: str | Path) -> None:
        self._folder = Path(str(folder).removeprefix("file://")).expanduser().absolute()

    @property
    def location(self) -> str:
        return str(self._folder)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        _check_name(name)
        final = self._folder / name
        if final.exists():
            return False
        staging = self._folder / ".incoming"
        staging.mkdir(parents=True, exist_ok=True)
        temp = staging / f"{name}.{uuid.uuid4().hex}.tmp"
        try:
            with temp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                # link() never replaces: the file appears whole, once, or not at all.
                os.link(temp, final)
            except FileExistsError:
                return False
            _fsync_dir(self._folder)
            return True
        finally:
            temp.unlink(missing_ok=True)

    def list(self, pattern: str) -> list[LandedObject]:
        if not self._folder.is_dir():
            return []
        found: list[LandedObject] = []
        with os.scandir(self._folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if not fnmatch.fnmatchcase(entry.name, pattern):
                    continue
                stat = entry.stat()
                found.append(
                    LandedObject(
                        name=entry.name,
                        location=entry.path,
                        size=stat.st_size,
                        landed_at=datetime.fromtimestamp(stat.st_mtime, UTC),
                    )
                )
        return sorted(found, key=lambda o: (o.landed_at, o.name))

    def read(self, name: str) -> bytes:
        _check_name(name)
        return (self._folder / name).read_bytes()

    def archive(self, name: str) -> None:
        _check_name(name)
        target = self._folder / ARCHIVE
        target.mkdir(exist_ok=True)
        # replace(): a body redelivered after archiving lands again with identical content.
        os.replace(self._folder / name, target / name)


class S3Landing:
    """A landing prefix on S3 or an S3-compatible store (conditional PUT required)."""

    def __init__(self, uri: str, client: S3Client) -> None:
        self._bucket, self._prefix = split_s3_uri(uri)
        self._client = client

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        _check_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    def put_if_absent(self, name: str, data: bytes) -> bool:
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key(name),
                Body=data,
                IfNoneMatch="*",
                ContentType="application/x-ndjson",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
                return False  # already landed: the same body was delivered before
            raise
        return True

    def list(self, pattern: str) -> list[LandedObject]:
        base = f"{self._prefix}/" if self._prefix else ""
        found: list[LandedObject] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=base, Delimiter="/"):
            for item in page.get("Contents", []):
                name = item.get("Key", "")[len(base) :]
                if not name or name.startswith(".") or not fnmatch.fnmatchcase(name, pattern):
                    continue
                modified = item.get("LastModified") or datetime.fromtimestamp(0, UTC)
                found.append(
                    LandedObject(
                        name=name,
                        location=f"s3://{self._bucket}/{base}{name}",
                        size=int(item.get("Size", 0)),
                        landed_at=modified.astimezone(UTC),
                    )
                )
        return sorted(found, key=lambda o: (o.landed_at, o.name))

    def read(self, name: str) -> bytes:
        response = self._client.get_object(Bucket=self._bucket, Key=self._key(name))
        return response["Body"].read()

    def archive(self, name: str) -> None:
        # Copy, then delete: a crash in between leaves the file in place, to be skipped (it is
        # committed) and archived by the next run.
        source = self._key(name)
        self._client.copy_object(
            Bucket=self._bucket,
            Key=self._key(ARCHIVE) + "/" + name,
            CopySource={"Bucket": self._bucket, "Key": source},
        )
        self._client.delete_object(Bucket=self._bucket, Key=source)


def open_landing(location: str, storage_options: Mapping[str, str] | None = None) -> Landing:
    """The landing zone at ``location`` (folder or ``s3://bucket/prefix``)."""
    if is_s3_uri(location):
        client = s3_client(storage_options or {}, connect_timeout=3.0, read_timeout=30.0)
        return S3Landing(location, client)
    return LocalLanding(location)


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid landing file name {name!r}")


def _fsync_dir(folder: Path) -> None:
    # Make the new directory entry durable (a no-op where directories cannot be opened).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- request handling ------------------------------------------------------------------------


@dataclass(frozen=True)
class LandedBatch:
    """What one accepted request became: the landed file, its event count, and whether the
    same body had landed before (a redelivery)."""

    source: str
    name: str
    location: str
    events: int
    duplicate: bool


class WebhookRejection(Exception):
    """A request the receiver refuses; ``status`` is the HTTP answer, ``message`` the reason."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def batch_file_name(body: bytes) -> str:
    """The landed file's name: a digest of the body, so one body always lands as one file."""
    return hashlib.sha256(body).hexdigest() + NDJSON_SUFFIX


def sign(secret: bytes, body: bytes, timestamp: str | None = None) -> str:
    """Hex HMAC-SHA256 of ``body`` (or of ``"<timestamp>.<body>"``) — what senders send."""
    message = body if timestamp is None else timestamp.encode("ascii") + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class WebhookReceiver(BackgroundHTTPServer):
    """Accepts POSTed event batches on loopback (or any bind address) and lands them.

    Args:
        landing: where micro-batches are written.
        source_name: the event source this receiver feeds (named in errors and events).
        event_id_field: the field every event must carry (the dedupe key downstream).
        path: the URL path that accepts POSTs (``GET /healthz`` answers 200 for probes).
        secret: HMAC-SHA256 key; None accepts unsigned requests.
        signature_header: header holding the hex digest (``sha256=`` prefix allowed).
        timestamp_header: if set, the signature covers ``"<ts>.<body>"`` and ``ts`` (epoch
            seconds) must be within ``tolerance_seconds`` of now.
        max_body_bytes: largest body accepted, after gzip decoding (413 above it).
        max_events: most events per request (413 above it).
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
        signature_header: str = "X-Signature-SHA256",
        timestamp_header: str | None = None,
        tolerance_seconds: float = 300.0,
        max_body_bytes: int = 512_000,
        max_events: int = 10_000,
        host: str = "127.0.0.1",
        port: int = 0,
        on_landed: Callable[[LandedBatch], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is not None and not secret:
            raise ValueError(f"source {source_name!r}: the webhook signing secret is empty")
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

    def _build_server(self) -> ThreadingHTTPServer:
        return _Server((self.host, self.port), _handler_for(self))

    def _thread_name(self) -> str:
        return f"webhook:{self.source_name}:{self.port}"

    # --- the work ----------------------------------------------------------------------------

    def receive(self, body: bytes, headers: Mapping[str, str]) -> LandedBatch:
        """Verify, validate and land one request body (``headers`` with lower-case names).

        Raises:
            WebhookRejection: with the HTTP status and a message for the sender.
        """
        self._verify(body, headers)
        decoded = self._decode(body, headers.get("content-encoding", "identity"))
        events = self._parse(decoded)
        lines = "".join(
            json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n" for event in events
        )
        name = batch_file_name(decoded)
        try:
            created = self.landing.put_if_absent(name, lines.encode("utf-8"))
        except (OSError, ClientError, BotoCoreError) as exc:
            logger.error("source %r: landing %s failed: %s", self.source_name, name, exc)
            raise WebhookRejection(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "the batch could not be stored; retry later",
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
            try:
                skew = abs(self._clock() - float(timestamp))
            except ValueError:
                raise WebhookRejection(
                    HTTPStatus.UNAUTHORIZED, f"missing or non-numeric {self._timestamp_header}"
                ) from None
            if skew > self._tolerance:
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
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"unsupported Content-Encoding {encoding!r}"
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
        return data

    def _parse(self, body: bytes) -> list[dict[str, Any]]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookRejection(HTTPStatus.BAD_REQUEST, f"body is not UTF-8: {exc}") from exc
        if not text.strip():
            raise WebhookRejection(HTTPStatus.BAD_REQUEST, "empty batch")
        try:
            whole: Any = json.loads(text)
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
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise WebhookRejection(
                    HTTPStatus.BAD_REQUEST, f"line {number} is not valid JSON: {exc.msg}"
                ) from exc
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("webhook connection from %s failed", client_address, exc_info=True)


def _handler_for(owner: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "AudienceLakeWebhook/1"
        timeout = _READ_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("webhook %s: " + format, owner.source_name, *args)

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/healthz":
                self._reply(HTTPStatus.OK, {"status": "ok", "source": owner.source_name})
            elif self.path.split("?", 1)[0] == owner.path:
                self._reply(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    {"status": "error", "message": f"use POST {owner.path}"},
                    extra={"Allow": "POST"},
                )
            else:
                self._not_found()

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != owner.path:
                self._discard_body()
                self._not_found()
                return
            try:
                body = self._read_body()
                batch = owner.receive(body, {k.lower(): v for k, v in self.headers.items()})
            except WebhookRejection as rejection:
                owner._count(None)
                extra = {"Retry-After": "5"} if rejection.status >= 500 else {}
                if rejection.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                    self.close_connection = True  # the rest of the body may still be unread
                self._reply(
                    rejection.status,
                    {"status": "error", "message": rejection.message},
                    extra=extra,
                )
                return
            owner._count(batch)
            self._reply(
                HTTPStatus.OK,
                {
                    "status": "ok",
                    "batch": batch.name,
                    "events": batch.events,
                    "duplicate": batch.duplicate,
                },
            )
            # The sender has its answer; now announce the batch (may take a moment).
            owner._notify(batch)

        def _not_found(self) -> None:
            self._reply(HTTPStatus.NOT_FOUND, {"status": "error", "message": "no such path"})

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return b"".join(self._chunks())
            length_header = self.headers.get("Content-Length")
            if length_header is None:
                raise WebhookRejection(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            try:
                length = int(length_header)
            except ValueError:
                raise WebhookRejection(HTTPStatus.BAD_REQUEST, "invalid Content-Length") from None
            if length < 0:
                raise WebhookRejection(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
            if length > owner._max_body:
                raise WebhookRejection(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"body of {length} bytes exceeds {owner._max_body}",
                )
            body = self.rfile.read(length)
            if len(body) != length:
                raise WebhookRejection(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
            return body

        def _chunks(self) -> Iterator[bytes]:
            total = 0
            for _ in range(owner._max_body + 1):  # bounded: every chunk is at least 1 byte
                line = self.rfile.readline(_CHUNK_LINE_MAX)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise WebhookRejection(
                        HTTPStatus.BAD_REQUEST, "malformed chunked body"
                    ) from None
                if size == 0:
                    while self.rfile.readline(_CHUNK_LINE_MAX).strip():
                        pass  # trailers
                    return
                total += size
                if total > owner._max_body:
                    raise WebhookRejection(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"chunked body exceeds {owner._max_body} bytes",
                    )
                chunk = self.rfile.read(size)
                self.rfile.readline(_CHUNK_LINE_MAX)
                if len(chunk) != size:
                    raise WebhookRejection(HTTPStatus.BAD_REQUEST, "chunked body ended early")
                yield chunk

        def _discard_body(self) -> None:
            length = self.headers.get("Content-Length", "0")
            if length.isdigit() and int(length) <= owner._max_body:
                self.rfile.read(int(length))
            else:
                self.close_connection = True

        def _reply(
            self,
            status: HTTPStatus,
            payload: dict[str, Any],
            *,
            extra: Mapping[str, str] | None = None,
        ) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

    return Handler

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

Example:
    >>> landing = LocalLanding("/tmp/landing")  # doctest: +SKIP
    >>> with WebhookReceiver(landing, source_name="web_events", secret=b"k" * 32) as receiver:
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
import math
import os
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from tasks.connectors.s3 import (
    SseArguments,
    is_s3_uri,
    s3_client,
    split_s3_uri,
    sse_put_arguments,
)
from tasks.connectors.serving import BackgroundHTTPServer
from tasks.connectors.webhook_http import (
    HttpLimits,
    HttpRejection,
    LimitedHTTPServer,
    Reply,
    Routes,
)
from tasks.core.config_events import WebhookReceiverOptions
from tasks.core.settings import resolve_secret

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
    "receiver_from_options",
    "sign",
]

logger = logging.getLogger(__name__)

NDJSON_SUFFIX = ".ndjson"
DEFAULT_TIMESTAMP_HEADER = "X-Signature-Timestamp"
# Epoch seconds as plain decimal digits: no sign, exponent, "nan" or "inf".
_TIMESTAMP = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_MAX_NUMBER_CHARS = 64  # longer number literals are refused, not handed to int()/float()
_MAX_NESTING = 64  # deepest JSON nesting an event may have
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


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
        """Write ``name`` unless it exists, landed or archived; True if this call created it."""
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
        # A body whose file was committed and archived was delivered: it must not land again.
        if final.exists() or (self._folder / ARCHIVE / name).exists():
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
        # replace(): a redelivery racing the archiving of its first copy may have landed again
        # (with identical content, skipped by the reader as committed); the copies are equal.
        os.replace(self._folder / name, target / name)


class S3Landing:
    """A landing prefix on S3 or an S3-compatible store (conditional PUT required)."""

    def __init__(self, uri: str, client: S3Client, *, sse: SseArguments | None = None) -> None:
        self._bucket, self._prefix = split_s3_uri(uri)
        self._client = client
        # Landed files and their archive copies get the lake's server-side encryption.
        self._sse: SseArguments = sse or {}

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        _check_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    def put_if_absent(self, name: str, data: bytes) -> bool:
        if self._exists(self._key(ARCHIVE) + "/" + name):
            return False  # delivered before, committed and archived
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key(name),
                Body=data,
                IfNoneMatch="*",
                ContentType="application/x-ndjson",
                **self._sse,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
                return False  # already landed: the same body was delivered before
            raise
        return True

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
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
            **self._sse,
        )
        self._client.delete_object(Bucket=self._bucket, Key=source)


def open_landing(location: str, storage_options: Mapping[str, str] | None = None) -> Landing:
    """The landing zone at ``location`` (folder or ``s3://bucket/prefix``)."""
    if is_s3_uri(location):
        options = storage_options or {}
        client = s3_client(options, connect_timeout=3.0, read_timeout=30.0)
        return S3Landing(location, client, sse=sse_put_arguments(options))
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


def receiver_from_options(
    landing: Landing,
    options: WebhookReceiverOptions,
    *,
    source_name: str,
    event_id_field: str = "event_id",
    host: str | None = None,
    port: int | None = None,
    on_landed: Callable[[LandedBatch], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> WebhookReceiver:
    """The receiver a source's ``receiver:`` options describe (``host``/``port`` override them).

    Raises:
        ConfigError: the signing secret is not set in the environment.
    """
    secret = None
    if options.signing_secret is not None:
        secret = resolve_secret(options.signing_secret, env).get_secret_value().encode()
    return WebhookReceiver(
        landing,
        source_name=source_name,
        event_id_field=event_id_field,
        path=options.path,
        secret=secret,
        allow_unsigned=options.signing == "none",
        signature_header=options.signature_header,
        timestamp_header=options.timestamp_header,
        tolerance_seconds=options.tolerance_seconds,
        max_body_bytes=options.max_body_bytes,
        max_events=options.max_events,
        max_connections=options.max_connections,
        request_timeout_seconds=options.request_timeout_seconds,
        host=options.host if host is None else host,
        port=options.port if port is None else port,
        on_landed=on_landed,
    )


# --- strict JSON -----------------------------------------------------------------------------


class _Unacceptable(ValueError):
    """A JSON text the receiver will not land (a reason, never a quote of the input)."""


def _reject_constant(name: str) -> Any:
    raise _Unacceptable(f"{name} is not a JSON value")


def _bounded_int(literal: str) -> int:
    if len(literal) > _MAX_NUMBER_CHARS:
        raise _Unacceptable(f"an integer literal has {len(literal)} digits")
    return int(literal)


def _finite_float(literal: str) -> float:
    if len(literal) > _MAX_NUMBER_CHARS:
        raise _Unacceptable(f"a number literal has {len(literal)} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise _Unacceptable("a number is out of the float range")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float
)


def _loads(text: str, where: str) -> Any:
    """RFC 8259 JSON: no NaN/Infinity, numbers of bounded length, bounded depth.

    Raises:
        json.JSONDecodeError: the text is not JSON (the caller may try another framing).
        WebhookRejection: the text is JSON the receiver refuses.
    """
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except _Unacceptable as exc:
        raise WebhookRejection(HTTPStatus.BAD_REQUEST, f"{where}: {exc}") from None
    except RecursionError:
        raise WebhookRejection(HTTPStatus.BAD_REQUEST, f"{where}: JSON nested too deeply") from None


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > _MAX_NESTING:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest

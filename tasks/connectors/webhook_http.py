"""A small HTTP/1.1 server with hard limits: the transport of the webhook receiver.

It exists because the receiver faces the internet (through a proxy) and must answer every
request, bounded in memory, time and threads, before anything reaches the application:

* **bytes** — the request line and header lines are read with a per-line limit and a total
  header budget (431 above it); a body is read only after its declared size (``Content-Length``,
  or each strictly parsed hex chunk size) was checked against the body limit (413), and the
  whole chunked framing (sizes, extensions, trailers) counts against a budget too. Nothing is
  ever read "to EOF".
* **time** — one deadline per request, from its first awaited byte to the end of its body (408
  after it; an idle keep-alive connection is closed silently). A client dribbling one byte a
  second cannot hold a worker longer than that.
* **threads** — at most ``max_connections`` connections are served at once; one more is told
  ``503`` with ``Retry-After`` by a small, bounded set of refusal threads, and beyond those the
  connection is closed.
* **answers** — every request with at least one byte gets a status line: 4xx naming the
  problem for bad input (logged at WARNING, without the body or any header value), 500 for a
  bug of ours (logged at ERROR with the traceback frames, not the exception text, which could
  quote the body). A 4xx closes the connection, since the framing may be broken.

The stdlib ``http.server`` does none of the above (a per-read timeout, a thread per connection,
100 headers of 64 KiB each, HTML 501 pages for unknown methods, HTTP/0.9 replies without a
status line), which is why the receiver does not build on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

__all__ = ["HttpLimits", "HttpRejection", "LimitedHTTPServer", "Reply", "Request", "Routes"]

logger = logging.getLogger(__name__)

_LINE_MAX = 8_192  # request line, one header line, one chunk-size line or trailer line
_RECV_SIZE = 65_536
_REFUSERS = 8  # threads that may be busy telling excess connections 503 at once
_WARNINGS_PER_S = 20  # a flood of bad requests must not become a flood of log lines
_LINGER_S = 0.5  # how long a closing connection is drained so the client can read our answer
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/([0-9])\.([0-9])$")
_TARGET = re.compile(rb"^[\x21-\x7e]+$")  # visible ASCII, no spaces or controls
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,16})[ \t]*(;[\x09\x20-\x7e\x80-\xff]*)?$")
_DIGITS = re.compile(r"^[0-9]{1,15}$")
# Headers whose single value the server or the application acts on: a repeat is ambiguous.
_SINGLE = {"content-length", "transfer-encoding", "content-encoding", "expect", "host"}


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost.

    Args:
        max_body_bytes: largest request body on the wire (413 above it).
        max_header_bytes: request line plus headers (431 above it); also the budget for
            chunk-size lines and trailers.
        max_headers: most header lines in one request (431 above it).
        request_timeout_s: the whole request, headers and body, must arrive within this.
        max_connections: connections served at once; one more gets 503.
    """

    max_body_bytes: int = 512_000
    max_header_bytes: int = 16_384
    max_headers: int = 64
    request_timeout_s: float = 30.0
    max_connections: int = 32

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_header_bytes, self.max_headers) < 1:
            raise ValueError(f"HTTP limits must be positive: {self}")
        if self.max_connections < 1 or not 0 < self.request_timeout_s < float("inf"):
            raise ValueError(f"HTTP limits must be positive and finite: {self}")


class HttpRejection(Exception):
    """A request answered with an error status; ``message`` is safe to send and to log."""

    def __init__(
        self, status: HTTPStatus, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class _LogThrottle:
    """Allows ``per_second`` warnings a second; the next allowed one says how many were
    dropped meanwhile."""

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._lock = threading.Lock()
        self._window = 0
        self._used = 0
        self._dropped = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            window = int(time.monotonic())
            if window != self._window:
                self._window, self._used = window, 0
            if self._used >= self._per_second:
                self._dropped += 1
                return
            self._used += 1
            dropped, self._dropped = self._dropped, 0
        if dropped:
            message += f" ({dropped} similar warnings dropped)"
        logger.warning(message, *args)


class _Timeout(Exception):
    """The request deadline passed."""


class _Closed(Exception):
    """The peer closed the connection."""


@dataclass(frozen=True)
class Request:
    """One parsed request head; ``headers`` has lower-case names."""

    method: str
    target: str
    version: tuple[int, int]
    headers: Mapping[str, str]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


@dataclass(frozen=True)
class Reply:
    """A JSON answer; ``after`` runs once the answer is sent (its errors are logged)."""

    status: HTTPStatus
    payload: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None


@dataclass(frozen=True)
class Routes:
    """What the server answers: POST on exactly ``post_path``, GET on the ``get`` paths."""

    post_path: str
    on_post: Callable[[bytes, Mapping[str, str]], Reply]
    get: Mapping[str, Callable[[], Reply]] = field(default_factory=dict)
    name: str = "http"


class _Connection:
    """Bounded reads from one socket, against the current request's deadline and budget."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "(gone)"
        self._buffer = bytearray()
        self._deadline = 0.0
        self.received = 0  # bytes of the current request consumed so far

    def begin(self, timeout_s: float) -> None:
        self._deadline = time.monotonic() + timeout_s
        self.received = 0

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _fill(self) -> None:
        left = self.remaining()
        if left <= 0:
            raise _Timeout
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise _Timeout from None
        except OSError as exc:
            raise _Closed from exc
        if not data:
            raise _Closed
        self._buffer += data

    def readline(self, limit: int, what: str, status: HTTPStatus) -> bytes:
        """One line without its CRLF (or LF); ``status`` if it exceeds ``limit`` bytes."""
        while True:
            end = self._buffer.find(b"\n", 0, limit + 1)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self.received += end + 1
                return line.removesuffix(b"\r")
            if len(self._buffer) > limit:
                raise HttpRejection(status, f"{what} longer than {limit} bytes")
            self._fill()

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes (the caller has checked ``size`` against its limit)."""
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.received += size
        return data

    def started(self) -> bool:
        """Whether any byte of the current request has arrived."""
        return self.received > 0 or bool(self._buffer)

    def drain(self, limit: int, seconds: float) -> None:
        """Read and drop what the peer still sends (bounded in bytes and time), so that closing
        sends FIN rather than RST and the client gets to read our answer."""
        until = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            while limit > 0 and (left := until - time.monotonic()) > 0:
                self.sock.settimeout(left)
                data = self.sock.recv(_RECV_SIZE)
                if not data:
                    break
                limit -= len(data)


class LimitedHTTPServer(socketserver.TCPServer):
    """A TCP server that serves each connection in a thread, at most ``max_connections`` at a
    time, with the limits of :class:`HttpLimits` (see the module docstring)."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], routes: Routes, limits: HttpLimits) -> None:
        self.routes = routes
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._refusers = threading.BoundedSemaphore(_REFUSERS)
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()
        self._warn = _LogThrottle(_WARNINGS_PER_S).warning
        super().__init__(address, socketserver.BaseRequestHandler)

    # --- connection lifecycle ----------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        if self._slots.acquire(blocking=False):
            target: Callable[[socket.socket], None] = self._serve
        elif self._refusers.acquire(blocking=False):
            target = self._refuse
        else:
            self._warn("%s: connection limit reached; closing a connection", self.routes.name)
            self.shutdown_request(sock)
            return
        with self._active_lock:
            self._active.add(sock)
        try:
            threading.Thread(target=target, args=(sock,), daemon=True).start()
        except RuntimeError:  # no thread to be had: give the slot back and drop the connection
            (self._slots if target == self._serve else self._refusers).release()
            self._release(sock)
            raise

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._serve_connection(_Connection(sock))
        finally:
            self._release(sock)
            self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        try:
            self._warn(
                "%s: %d connections busy; answering 503",
                self.routes.name,
                self.limits.max_connections,
            )
            connection = _Connection(sock)
            message = "too many concurrent connections; retry later"
            self._send(
                connection,
                Reply(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    {"status": "error", "message": message},
                    {"Retry-After": "1"},
                ),
                close=True,
            )
            self._linger(connection)
        finally:
            self._release(sock)
            self._refusers.release()

    def _release(self, sock: socket.socket) -> None:
        with self._active_lock:
            self._active.discard(sock)
        self.shutdown_request(sock)

    def server_close(self) -> None:
        super().server_close()
        with self._active_lock:
            active = list(self._active)
        for sock in active:  # wake workers blocked in recv so they exit
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.error("%s: connection failed", self.routes.name, exc_info=True)

    # --- one connection ----------------------------------------------------------------------

    def _serve_connection(self, connection: _Connection) -> None:
        while True:
            connection.begin(self.limits.request_timeout_s)
            request: Request | None = None
            close = True
            try:
                request = self._read_head(connection)
                reply, close = self._dispatch(connection, request)
            except _Closed:
                if not connection.started():
                    return  # the client is done: no request, nothing to answer
                reply = self._rejected(
                    connection,
                    HttpRejection(HTTPStatus.BAD_REQUEST, "connection closed mid-request"),
                )
            except _Timeout:
                if not connection.started():
                    return  # an idle keep-alive connection
                reply = self._rejected(
                    connection,
                    HttpRejection(
                        HTTPStatus.REQUEST_TIMEOUT,
                        f"request not complete within {self.limits.request_timeout_s:g}s",
                    ),
                )
            except HttpRejection as rejection:
                reply = self._rejected(connection, rejection)
            except Exception as exc:  # a bug of ours: answer, and log where it happened
                logger.error(
                    "%s: internal error %s while handling a request:\n%s",
                    self.routes.name,
                    type(exc).__name__,
                    "".join(traceback.format_tb(exc.__traceback__)),
                )
                reply = Reply(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    {"status": "error", "message": "internal error"},
                )
            close = close or request is None or not request.keep_alive
            if not self._send(connection, reply, close=close):
                return
            if reply.after is not None:
                try:
                    reply.after()
                except Exception:
                    logger.exception("%s: after-reply hook failed", self.routes.name)
            if close:
                self._linger(connection)
                return

    def _rejected(self, connection: _Connection, rejection: HttpRejection) -> Reply:
        self._warn(
            "%s: request from %s refused with %d %s: %s",
            self.routes.name,
            connection.peer,
            rejection.status.value,
            rejection.status.phrase,
            rejection.message,
        )
        return Reply(
            rejection.status, {"status": "error", "message": rejection.message}, rejection.headers
        )

    def _read_head(self, connection: _Connection) -> Request:
        line = connection.readline(_LINE_MAX, "request line", HTTPStatus.REQUEST_URI_TOO_LONG)
        while not line and connection.received <= 4:
            # RFC 9112 2.2: a server should ignore an empty line or two before the request.
            line = connection.readline(_LINE_MAX, "request line", HTTPStatus.REQUEST_URI_TOO_LONG)
        parts = line.split(b" ")
        if len(parts) != 3:
            raise HttpRejection(HTTPStatus.BAD_REQUEST, "malformed request line")
        method, target, version = parts
        if not _TOKEN.match(method) or not _TARGET.match(target):
            raise HttpRejection(HTTPStatus.BAD_REQUEST, "malformed request line")
        matched = _VERSION.match(version)
        if matched is None:
            raise HttpRejection(HTTPStatus.BAD_REQUEST, "malformed HTTP version")
        major, minor = int(matched.group(1)), int(matched.group(2))
        if (major, minor) not in {(1, 0), (1, 1)}:
            raise HttpRejection(
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1 are served"
            )
        headers = self._read_fields(connection, "header", self.limits.max_header_bytes)
        return Request(method.decode("ascii"), target.decode("ascii"), (major, minor), headers)

    def _read_fields(self, connection: _Connection, what: str, budget_end: int) -> dict[str, str]:
        """Header (or trailer) lines up to the empty line, while ``connection.received`` stays
        within ``budget_end`` and the count within ``max_headers``."""
        fields: dict[str, str] = {}
        too_large = HttpRejection(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"{what}s exceed {self.limits.max_headers} lines or "
            f"{self.limits.max_header_bytes} bytes",
        )
        for _ in range(self.limits.max_headers + 1):
            left = budget_end - connection.received
            if left <= 0:
                raise too_large
            line = connection.readline(
                min(_LINE_MAX, left), f"{what} line", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            )
            if not line:
                return fields
            if line[:1] in {b" ", b"\t"}:
                raise HttpRejection(HTTPStatus.BAD_REQUEST, f"folded {what} lines are not allowed")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise HttpRejection(HTTPStatus.BAD_REQUEST, f"malformed {what} line")
            if b"\r" in value or b"\x00" in value:
                raise HttpRejection(HTTPStatus.BAD_REQUEST, f"control character in a {what}")
            key = name.decode("ascii").lower()
            if key in fields and key in _SINGLE:
                raise HttpRejection(HTTPStatus.BAD_REQUEST, f"{what} {key!r} given twice")
            text = value.strip(b" \t").decode("latin-1")
            fields[key] = f"{fields[key]}, {text}" if key in fields else text
        raise too_large

    def _dispatch(self, connection: _Connection, request: Request) -> tuple[Reply, bool]:
        """The reply, and whether the connection must close after it."""
        routes = self.routes
        if request.target == routes.post_path:
            if request.method != "POST":
                raise _not_allowed("POST")
            body = self._read_body(connection, request)
            return routes.on_post(body, request.headers), False
        handler = routes.get.get(request.target)
        if handler is None:
            raise HttpRejection(HTTPStatus.NOT_FOUND, "no such path")
        if request.method != "GET":
            raise _not_allowed("GET")
        # A GET with a body is not read: close after answering rather than misread it.
        closing = "transfer-encoding" in request.headers or request.headers.get(
            "content-length", "0"
        ) not in {"", "0"}
        return handler(), closing

    def _read_body(self, connection: _Connection, request: Request) -> bytes:
        headers = request.headers
        limit = self.limits.max_body_bytes
        expect = headers.get("expect")
        if expect is not None and expect.lower() != "100-continue":
            raise HttpRejection(HTTPStatus.EXPECTATION_FAILED, "unsupported Expect header")
        transfer = headers.get("transfer-encoding")
        if transfer is not None:
            if "content-length" in headers:
                raise HttpRejection(
                    HTTPStatus.BAD_REQUEST, "both Transfer-Encoding and Content-Length given"
                )
            if transfer.strip().lower() != "chunked" or request.version < (1, 1):
                raise HttpRejection(
                    HTTPStatus.BAD_REQUEST, "only Transfer-Encoding: chunked (HTTP/1.1) is read"
                )
            self._continue(connection, request, expect)
            return self._read_chunks(connection)
        declared = headers.get("content-length")
        if declared is None:
            raise HttpRejection(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if not _DIGITS.match(declared):
            raise HttpRejection(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
        length = int(declared)
        if length > limit:
            raise HttpRejection(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {limit}"
            )
        self._continue(connection, request, expect)
        return connection.read_exact(length)

    def _read_chunks(self, connection: _Connection) -> bytes:
        limit = self.limits.max_body_bytes
        start = connection.received
        parts: list[bytes] = []
        total = 0
        while True:
            line = connection.readline(_LINE_MAX, "chunk-size line", HTTPStatus.BAD_REQUEST)
            matched = _CHUNK_SIZE.match(line)
            if matched is None:
                raise HttpRejection(HTTPStatus.BAD_REQUEST, "malformed chunk size")
            size = int(matched.group(1), 16)
            if size == 0:
                # Framing (sizes, extensions, line ends, trailers) may cost as much as the body.
                self._read_fields(connection, "trailer", start + 2 * limit + _LINE_MAX)
                return b"".join(parts)
            total += size
            if total > limit:
                raise HttpRejection(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"chunked body exceeds {limit} bytes"
                )
            parts.append(connection.read_exact(size))
            if connection.readline(2, "chunk end", HTTPStatus.BAD_REQUEST):
                raise HttpRejection(HTTPStatus.BAD_REQUEST, "chunk longer than its size")
            if connection.received - start > 2 * limit:
                raise HttpRejection(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "chunked framing exceeds its budget"
                )

    def _continue(self, connection: _Connection, request: Request, expect: str | None) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` (curl, for bodies over 1 KiB) to
        send the body, once its declared size has passed the limit."""
        if expect is not None and request.version >= (1, 1):
            connection.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    # --- answers ------------------------------------------------------------------------------

    def _send(self, connection: _Connection, reply: Reply, *, close: bool) -> bool:
        data = json.dumps(reply.payload).encode("utf-8")
        lines = [
            f"HTTP/1.1 {reply.status.value} {reply.status.phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
            *(f"{key}: {value}" for key, value in reply.headers.items()),
        ]
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            connection.sock.settimeout(max(1.0, connection.remaining()))
            connection.sock.sendall(head + data)
        except OSError:
            return False  # the client is gone; nothing more to do
        return True

    def _linger(self, connection: _Connection) -> None:
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_WR)
        connection.drain(self.limits.max_body_bytes, _LINGER_S)


def _not_allowed(allow: str) -> HttpRejection:
    return HttpRejection(
        HTTPStatus.METHOD_NOT_ALLOWED, f"method not allowed; use {allow}", headers={"Allow": allow}
    )

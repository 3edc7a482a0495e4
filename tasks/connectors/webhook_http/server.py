"""The bounded HTTP/1.1 server: connection slots, request parsing, dispatch and answers."""

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
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from tasks.connectors.webhook_http.connection import _Closed, _Connection, _Timeout
from tasks.connectors.webhook_http.messages import HttpLimits, HttpRejection, Reply, Request, Routes

# Records keep the package's name: what log configuration and readers filter on.
logger = logging.getLogger("tasks.connectors.webhook_http")

_LINE_MAX = 8_192  # request line, one header line, one chunk-size line or trailer line
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


class LimitedHTTPServer(socketserver.TCPServer):
    """A TCP server that serves each connection in a thread, at most ``max_connections`` at a
    time, with the limits of :class:`HttpLimits` (see the package docstring)."""

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

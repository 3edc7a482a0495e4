"""Shared plumbing for the loopback stand-in servers (standard library only).

Each stand-in subclasses :class:`StandInServer` and implements :meth:`StandInServer.handle`,
which turns a parsed :class:`Request` into a :class:`Response`. The base class owns the
``ThreadingHTTPServer``, its daemon thread, the request log and the start/stop lifecycle.
"""

from __future__ import annotations

import json
import threading
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tasks.connectors.serving import BackgroundHTTPServer

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class StandInError(RuntimeError):
    """A stand-in server was used wrongly (e.g. started twice, or read before it started)."""


@dataclass(frozen=True)
class Request:
    """One HTTP request as seen by a stand-in handler."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return a header value by case-insensitive name, or ``None``."""
        return self.headers.get(name.lower())

    def query_value(self, name: str) -> str | None:
        """Return the first value of a query parameter, or ``None`` when absent."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class Response:
    """One HTTP response produced by a stand-in handler."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    status: int,
    payload: Any,
    *,
    content_type: str = JSON_CONTENT_TYPE,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build a response whose body is ``payload`` serialised as JSON."""
    body = json.dumps(payload).encode("utf-8")
    return Response(status, body, content_type, dict(headers or {}))


def empty_response(status: int = HTTPStatus.NO_CONTENT) -> Response:
    """Build a response without a body (e.g. 204)."""
    return Response(status, b"", None, {})


class _QuietThreadingHTTPServer(ThreadingHTTPServer):
    """Threading server with a deeper accept backlog and daemon request threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up mid-request; they are expected in fault tests."""
        return


class StandInServer(BackgroundHTTPServer):
    """Base class for a stand-in HTTP server running in a daemon thread on loopback.

    Subclasses implement :meth:`handle`. Use as a context manager or call :meth:`start` and
    :meth:`stop`. ``requests`` logs ``(method, path)`` pairs (path without the query string).
    """

    name = "stand-in"

    poll_interval = 0.02

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.requests: list[tuple[str, str]] = []
        self._log_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:PORT``; only valid while running."""
        if self._server is None:
            raise StandInError(
                f"{type(self).__name__} is not running; call start() or use it as a "
                "context manager before reading .url"
            )
        return f"http://{self.host}:{self.port}"

    def _build_server(self) -> ThreadingHTTPServer:
        return _QuietThreadingHTTPServer((self.host, self.port), _make_handler(self))

    # -- request handling ------------------------------------------------------------------
    def record(self, request: Request) -> None:
        """Append ``(method, path)`` to :attr:`requests` (thread-safe)."""
        with self._log_lock:
            self.requests.append((request.method, request.path))

    def handle(self, request: Request) -> Response:
        """Turn one request into a response; subclasses must override."""
        raise NotImplementedError

    def dispatch(self, request: Request) -> Response:
        """Log and handle a request; unexpected exceptions become a descriptive 500."""
        self.record(request)
        try:
            return self.handle(request)
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return json_response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"status": "error", "message": f"{self.name} stand-in bug: {detail}"},
            )


def _make_handler(owner: StandInServer) -> type[BaseHTTPRequestHandler]:
    """Create a request-handler class bound to ``owner``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes
        server_version = f"AudienceLakeSandbox/{owner.name}"

        def log_message(self, format: str, *args: Any) -> None:
            return  # keep test output clean

        def _serve(self) -> None:
            response = owner.dispatch(self._read_request())
            self._write_response(response)

        def _read_request(self) -> Request:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            parts = urlsplit(self.path)
            return Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={key.lower(): value for key, value in self.headers.items()},
                body=body,
            )

        def _write_response(self, response: Response) -> None:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            if response.status != HTTPStatus.NO_CONTENT:
                if response.content_type is not None:
                    self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.body and response.status != HTTPStatus.NO_CONTENT:
                self.wfile.write(response.body)

        do_GET = _serve
        do_POST = _serve
        do_PUT = _serve
        do_PATCH = _serve
        do_DELETE = _serve

    return Handler

"""A loopback HTTP fault proxy: forwards to one upstream, and can stop a chosen request dead.

Put it between a writer and its S3 server (or a client and its API) and pick a request with a
rule, e.g. "the 2nd PUT of ``bronze/web_events/_delta_log/*.json``" — a Delta commit. When the
rule trips, the proxy signals :attr:`FaultProxy.tripped` and holds the request until
:meth:`FaultProxy.release` (the test kills the writer meanwhile), then

* ``"lost"``: closes the connection without forwarding — the commit never reached the store;
* ``"landed"``: has already forwarded it and received the store's answer, and closes without
  replying — the commit is in the store but the writer never learned it.

Bounded everywhere: a held request waits at most ``hold_timeout`` seconds.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

Mode = Literal["lost", "landed"]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


def commit_rule(table: str, nth: int) -> Callable[[str, str], bool]:
    """Match the ``nth`` commit (PUT of ``<table>/_delta_log/<version>.json``) to ``table``."""
    pattern = re.compile(rf"/{re.escape(table)}/_delta_log/\d+\.json$")
    seen = 0
    lock = threading.Lock()

    def rule(method: str, path: str) -> bool:
        nonlocal seen
        if method != "PUT" or not pattern.search(path.split("?", 1)[0]):
            return False
        with lock:
            seen += 1
            return seen == nth

    return rule


class FaultProxy:
    """Forwarding proxy on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        upstream: str,
        *,
        rule: Callable[[str, str], bool] | None = None,
        mode: Mode = "lost",
        hold_timeout: float = 20.0,
    ) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._rule = rule
        self._mode = mode
        self._hold_timeout = hold_timeout
        self.tripped = threading.Event()
        self._released = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def release(self) -> None:
        """Let the held request finish its fault (close without forwarding or replying)."""
        self._released.set()

    def _trips(self, method: str, path: str) -> bool:
        with self._lock:
            self.requests.append((method, path))
            if self.tripped.is_set() or self._rule is None:
                return False
            return self._rule(method, path)

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers:
                if key.lower() not in _HOP_BY_HOP:
                    connection.putheader(key, value)
            if body and not any(k.lower() == "content-length" for k, _ in headers):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()

    def _hold(self) -> None:
        self.tripped.set()
        self._released.wait(self._hold_timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # the killed writer hangs up mid-request by design


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = list(self.headers.items())
            method, path = self.command, self.path
            trip = proxy._trips(method, path)
            if trip and proxy._mode == "lost":
                proxy._hold()
                self.close_connection = True
                return
            status, reason, response_headers, data = proxy._forward(method, path, headers, body)
            if trip:  # "landed": the store has it; the writer will never hear back
                proxy._hold()
                self.close_connection = True
                return
            self.send_response(status, reason)
            for key, value in response_headers:
                name = key.lower()
                if name in _HOP_BY_HOP or name in {"server", "date"}:
                    continue
                if name == "content-length" and method != "HEAD":
                    continue  # re-sent below for the body as read (HEAD keeps the object's)
                self.send_header(key, value)
            if method != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD" and data:
                self.wfile.write(data)

        do_GET = _serve
        do_PUT = _serve
        do_POST = _serve
        do_HEAD = _serve
        do_DELETE = _serve

    return Handler

"""A stdlib ``socketserver`` server served from a daemon thread: start, stop, context manager.

Shared by the webhook receiver (a bounded HTTP server of its own) and the local stand-in APIs
(``ThreadingHTTPServer``), which differ only in the server they build and the requests they
answer.
"""

from __future__ import annotations

import socketserver
import threading
from types import TracebackType
from typing import Self


class BackgroundHTTPServer:
    """Lifecycle of one HTTP server on ``host:port`` (port 0 picks a free one on start)."""

    poll_interval = 0.05

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: socketserver.TCPServer | None = None
        self._thread: threading.Thread | None = None

    def _build_server(self) -> socketserver.TCPServer:
        """The server to run, bound to ``(self.host, self.port)``."""
        raise NotImplementedError

    def _thread_name(self) -> str:
        return f"{type(self).__name__}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server thread is serving requests."""
        return self._server is not None

    def start(self) -> Self:
        """Bind the socket and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} already listens on {self.host}:{self.port}")
        server = self._build_server()
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            name=self._thread_name(),
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

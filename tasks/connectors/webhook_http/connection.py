"""Bounded reads from one client socket, against the current request's deadline and budget."""

from __future__ import annotations

import contextlib
import socket
import time
from http import HTTPStatus

from tasks.connectors.webhook_http.messages import HttpRejection

_RECV_SIZE = 65_536


class _Timeout(Exception):
    """The request deadline passed."""


class _Closed(Exception):
    """The peer closed the connection."""


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

"""What the server and the application exchange: limits, request, reply, routes, rejection."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


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

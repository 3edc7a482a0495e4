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

Where each part lives: :mod:`.server` (:class:`LimitedHTTPServer`: slots, parsing, dispatch,
answers), :mod:`.connection` (bounded reads from one socket) and :mod:`.messages` (limits,
request, reply, routes, rejection).
"""

from __future__ import annotations

from tasks.connectors.webhook_http.messages import HttpLimits, HttpRejection, Reply, Request, Routes
from tasks.connectors.webhook_http.server import LimitedHTTPServer

__all__ = ["HttpLimits", "HttpRejection", "LimitedHTTPServer", "Reply", "Request", "Routes"]

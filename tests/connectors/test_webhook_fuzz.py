"""Fuzzing the real webhook receiver on 127.0.0.1 over raw sockets (issue 12).

Hypothesis sends arbitrary bytes, request lines, headers, chunked framings, encodings and
bodies — some of them correctly signed batches — and checks after every request:

* an HTTP/1.1 status line comes back, within a timeout (never a silent close or a hang);
* a correctly signed, well-formed batch is accepted (200);
* every file in the landing zone is a batch this test signed, holding only JSON objects with
  an event id (nothing lands unsigned or invalid);
* the process's resident memory stays within a bound while the fuzzer runs.

Bounded: a few hundred examples and a per-example deadline; the module runs in seconds.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.connectors.webhook import LocalLanding, WebhookReceiver, batch_file_name, sign

SECRET = b"whsec-fuzz"
MAX_BODY = 64_000
ANSWER_TIMEOUT_S = 5.0
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def rss_bytes() -> int:
    """Resident set size of this process (the receiver runs in it), from /proc."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Target:
    receiver: WebhookReceiver
    landing: Path
    signed_digests: set[str] = field(default_factory=set)
    rss_before: int = 0
    examples: int = 0


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    landing = tmp_path_factory.mktemp("fuzz") / "landing"
    with WebhookReceiver(
        LocalLanding(landing),
        source_name="fuzz",
        secret=SECRET,
        max_body_bytes=MAX_BODY,
        max_events=500,
        request_timeout_seconds=3.0,
        max_connections=8,
    ) as receiver:
        yield Target(receiver, landing, rss_before=rss_bytes())


def exchange(port: int, data: bytes) -> bytes:
    """Send, half-close, and read the first answer (or whatever arrived before a close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before we finished sending: the answer is still there
        received = b""
        until = time.monotonic() + ANSWER_TIMEOUT_S
        while b"\r\n" not in received and time.monotonic() < until:
            sock.settimeout(max(0.01, until - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


# --- strategies -------------------------------------------------------------------------------

_json_scalars = (
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.floats() | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_events = st.lists(
    st.fixed_dictionaries(
        {"event_id": st.text(min_size=1, max_size=12) | st.integers(0, 10**12)},
        optional={"props": _json_values, "n": st.integers(-(10**6), 10**6)},
    ),
    min_size=1,
    max_size=5,
)
_valid_bodies = _events.map(lambda events: json.dumps(events).encode())
_bodies = st.one_of(
    _valid_bodies,
    _valid_bodies,  # twice: correct batches are drawn about as often as broken ones
    _json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=512),
    st.sampled_from(
        [
            b'[{"event_id": "a", "x": "\\ud800"}]',
            b"[" * 5000,
            b'[{"event_id": 1, "n": ' + b"7" * 5000 + b"}]",
            b'{"event_id": "a", "n": NaN}',
            b'{"event_id": "a"}\n{"event_id": ',
        ]
    ),
)
_methods = st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE", b"HEAD", b"OPTIONS"]) | st.binary(
    min_size=1, max_size=8
)
_paths = st.sampled_from(
    [b"/events", b"//events", b"/events?x=1", b"/events/", b"/healthz", b"/", b"*"]
) | st.binary(min_size=1, max_size=20)
_versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 extra", b""])
_header_names = st.sampled_from(
    [
        b"Content-Length",
        b"Transfer-Encoding",
        b"Content-Encoding",
        b"Expect",
        b"Connection",
        b"X-Signature-SHA256",
        b"X-Signature-Timestamp",
        b"Host",
    ]
) | st.binary(min_size=0, max_size=12)
_header_values = st.sampled_from(
    [b"chunked", b"gzip", b"-1", b"0", b"99999999999", b"100-continue", b"close", b"nan", b""]
) | st.binary(max_size=40)
_extra_headers = st.lists(st.tuples(_header_names, _header_values), max_size=4)


def _chunked(body: bytes, cuts: list[int], bogus: bytes | None) -> bytes:
    pieces, start = [], 0
    for cut in sorted({c % (len(body) + 1) for c in cuts}):
        pieces.append(body[start:cut])
        start = cut
    pieces.append(body[start:])
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    if bogus is not None:
        framed = bogus + b"\r\n" + framed
    return framed + b"0\r\n\r\n"


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """Raw request bytes, and the landed file name if it is a correct, signed batch."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=4096)), None
    body = draw(_bodies)
    gzipped = draw(st.booleans()) and draw(st.integers(0, 3)) == 0
    wire = gzip.compress(body) if gzipped else body
    ts = str(int(time.time()) - draw(st.sampled_from([0, 5, 1000])))
    headers = [
        (b"Host", b"127.0.0.1"),
        (b"X-Signature-SHA256", sign(SECRET, wire, ts).encode()),
        (b"X-Signature-Timestamp", ts.encode()),
    ]
    if gzipped:
        headers.append((b"Content-Encoding", b"gzip"))
    framing = draw(st.sampled_from(["length", "chunked", "none", "wrong-length"]))
    bogus: bytes | None = None
    if framing == "chunked":
        bogus = draw(
            st.none() | st.sampled_from([b"-1", b"-2", b"FFFFFFFF", b"zz", b"1;" + b"x" * 9000])
        )
        payload = _chunked(wire, draw(st.lists(st.integers(0, 10_000), max_size=6)), bogus)
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif framing == "length":
        payload = wire
        headers.append((b"Content-Length", str(len(wire)).encode()))
    elif framing == "wrong-length":
        payload = wire
        headers.append((b"Content-Length", str(len(wire) + draw(st.integers(1, 10**9))).encode()))
    else:
        payload = wire
    extra = draw(_extra_headers)
    method, path, version = draw(_methods), draw(_paths), draw(_versions)
    mutated = bool(extra) or (method, path, version) != (b"POST", b"/events", b"HTTP/1.1")
    if draw(st.integers(0, 2)) == 0:  # most requests keep the well-formed head
        method, path, version, extra = b"POST", b"/events", b"HTTP/1.1", []
        mutated = False
    head = b"%s %s %s\r\n" % (method, path, version)
    head += b"".join(b"%s: %s\r\n" % pair for pair in headers + extra)
    data = head + b"\r\n" + payload
    fresh = ts == str(int(time.time())) or int(ts) > time.time() - 300
    valid = (
        not mutated
        and fresh
        and framing in {"length", "chunked"}
        and (framing == "length" or bogus is None)
        and len(body) <= MAX_BODY
        and len(wire) <= MAX_BODY
        and body in _valid_body_cache(body)
    )
    return data, batch_file_name(body) if valid else None


def _valid_body_cache(body: bytes) -> set[bytes]:
    """``{body}`` if the body is a batch the receiver must accept, else an empty set."""
    try:
        events = json.loads(body)
    except (ValueError, RecursionError):
        return set()
    ok = (
        isinstance(events, list)
        and 0 < len(events) <= 500
        and all(isinstance(e, dict) and _usable_id(e.get("event_id")) for e in events)
        and "NaN" not in body.decode("utf-8", "replace")
        and "Infinity" not in body.decode("utf-8", "replace")
        and "\\ud8" not in body.decode("utf-8", "replace")
    )
    return {body} if ok else set()


def _usable_id(value: object) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int) and not isinstance(value, bool)
    )


# --- the properties -----------------------------------------------------------------------------


# Hypothesis compares the global `random` state before and after each draw; the receiver under
# test runs on threads of this same process while examples are drawn, so a use of the global
# module there (never in the strategy, which draws only from hypothesis) can trip that check
# now and then (seen once in a full CI run, not reproducible): it is not a finding of this test.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@settings(
    max_examples=250,
    deadline=4000,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_every_request_gets_an_answer_and_only_signed_valid_batches_land(
    target: Target, request: tuple[bytes, str | None]
) -> None:
    data, expected = request
    if b"X-Signature-SHA256" in data:
        # Any body this test signed may land (a valid one among mutated framings, too).
        target.signed_digests.update(_signed_names(data))
    answer = exchange(target.receiver.port, data)
    assert answer.startswith(b"HTTP/1.1 "), (data[:200], answer[:200])
    code = int(answer[9:12])
    assert 100 <= code <= 599
    if expected is not None:
        assert code == 200, (data[:300], answer[:300])
        assert (target.landing / expected).exists()
    for path in target.landing.glob("*.ndjson"):
        assert path.name in target.signed_digests, path.name
        for line in path.read_text(encoding="utf-8").splitlines():  # any line splitter
            event = json.loads(line)
            assert isinstance(event, dict) and event.get("event_id") not in (None, "")
    target.examples += 1
    assert rss_bytes() - target.rss_before < RSS_GROWTH_LIMIT


def _signed_names(data: bytes) -> set[str]:
    """Names of every body that could be the decoded payload of a request this test built."""
    _, _, payload = data.partition(b"\r\n\r\n")
    candidates = {payload}
    with_chunks = _unchunk(payload)
    if with_chunks is not None:
        candidates.add(with_chunks)
    for candidate in list(candidates):
        with contextlib.suppress(OSError, EOFError, ValueError):
            candidates.add(gzip.decompress(candidate))
    return {batch_file_name(c) for c in candidates}


def _unchunk(payload: bytes) -> bytes | None:
    out, rest = b"", payload
    try:
        while True:
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size <= 0:
                return out
            out, rest = out + rest[:size], rest[size + 2 :]
    except ValueError:
        return None


def test_a_sender_that_never_stops_is_cut_off_after_a_bounded_read(target: Target) -> None:
    """40 MB offered as one endless header line: the receiver answers 431 after a few KB and
    stops reading; neither the bytes it accepts nor its memory follow the sender."""
    before = rss_bytes()
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", target.receiver.port), timeout=5) as sock:
        sock.sendall(b"POST /events HTTP/1.1\r\nX-Flood: ")
        block = b"a" * 65536
        stop = threading.Event()

        def flood() -> None:
            nonlocal sent
            try:
                while not stop.is_set() and sent < 40 * 1024 * 1024:
                    sock.sendall(block)
                    sent += len(block)
            except OSError:
                pass  # the receiver closed the connection: what we want

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        sender.join(timeout=10)
        stop.set()
        sock.settimeout(2)
        with contextlib.suppress(OSError):
            answer = sock.recv(4096)
    assert sent < 40 * 1024 * 1024, "the receiver kept reading"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert rss_bytes() - before < 16 * 1024 * 1024


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 1000000000\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3B9ACA00\r\n",  # one chunk of 10**9 bytes
        b"Transfer-Encoding: chunked\r\n\r\n-1\r\n",
    ],
    ids=["content-length", "declared-chunk", "negative-chunk"],
)
def test_a_large_declared_body_is_answered_before_it_is_sent(target: Target, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", target.receiver.port), timeout=5) as sock:
        sock.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\n" + head)
        sock.settimeout(3)
        answer = sock.recv(4096)  # no body was sent: the answer cannot depend on reading it
    assert answer.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400")), answer[:100]

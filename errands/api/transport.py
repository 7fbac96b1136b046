"""Limits on what an unauthenticated client can make the HTTP server hold, and for how long.

uvicorn's httptools protocol bounds none of them: headers grow without limit,
a connection that sends its headers or body slowly (slowloris) is kept for ever,
and its `limit_concurrency` counts such connections as requests, so a few dozen
of them make every request, /health included, answer 503. h11, uvicorn's other
protocol, bounds the header size but has no time limit either, and parses in
pure Python. No public setting of uvicorn offers the rest, so the server keeps
httptools and adds the limits in a small subclass of its protocol, an internal
of uvicorn: pyproject.toml pins uvicorn to the versions in PROVEN_UVICORN, and
tests/test_transport_limits.py fails on any other (docs/explanation/http-server.md).

* the request line and headers: at most `max_head_bytes` bytes and
  `max_headers` lines (431), received within `head_timeout` seconds of the
  connection or of the request's first byte (408);
* the body: received within `body_timeout` seconds of the headers (408);
* connections: at most `max_connections` at once. Beyond, the connection that
  has waited longest without a request in the application (one kept alive
  between requests, or still sending its head) is closed to make room; only
  when every connection has a request in hand is the new one answered 503.
  Silent or slow sockets therefore cannot keep /health out.

uvicorn writes a response's head and its body in two system calls, two TCP
segments; the subclass hands its responses a transport that holds a write until
the next one or the end of the event loop's turn, so that a small response
leaves in one (OneWrite below).

A connection that sends a complete request and then bytes that are not HTTP
gets the answer to its request, then a 400, then is closed. The concurrency
limit on requests (the application's) is separate: it counts only requests
whose body has arrived, so slow clients cost a socket, never a slot. Every
refusal uses the API's JSON error shape, is logged, and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from errands.log import get_logger

# The uvicorn releases whose httptools protocol this subclass was tested against.
PROVEN_UVICORN = ("0.55.0",)

_log = get_logger("errands.api")


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 512
    keep_alive: float = 30.0  # idle time allowed between two requests of a connection


DEFAULT_LIMITS = Limits()


def protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` (for uvicorn.Config's `http`)."""
    if uvicorn.__version__ not in PROVEN_UVICORN:
        _log.warning(
            "the HTTP limits were tested with other uvicorn versions; they may not hold",
            uvicorn=uvicorn.__version__,
            proven=", ".join(PROVEN_UVICORN),
        )
    return type("LimitedHttpToolsProtocol", (LimitedProtocol,), {"limits": limits})


class LimitedProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits] = DEFAULT_LIMITS
    _out: OneWrite  # set with the connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for, or reading, a request line and headers
        self._head_bytes = 0  # received while in the head: bounds a head that never ends
        self._head_size = 0  # of the request line and headers parsed: bounds one that ends
        self._header_count = 0
        self._refused = False
        self._deferred: tuple[int, str, str] | None = None  # a refusal awaiting an answer
        self._deadline: asyncio.TimerHandle | None = None
        self._idle_since = 0.0  # since when no request of it has been in the application

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._out = OneWrite(transport, self.loop)  # what its responses write through
        self._idle_since = time.monotonic()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._refuse(503, "too_many_connections", "the server has too many connections")
            return
        self._arm(self.limits.head_timeout)

    def _make_room(self) -> bool:
        """Close the connection idle the longest, if the open ones are too many; False if
        every one has a request in the application."""
        open_ = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_) <= self.limits.max_connections:
            return True
        idle = [c for c in open_ if isinstance(c, LimitedProtocol) and c is not self and c.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since)
        oldest._refuse(503, "too_many_connections", "closed to make room for a new connection")
        return True

    @property
    def idle(self) -> bool:
        """No request of this connection is in the application: it may make room for another."""
        return self._in_head and not self._refused and self._all_answered

    @property
    def _all_answered(self) -> bool:
        cycle = self.cycle
        return not self.pipeline and (cycle is None or cycle.response_complete)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._deadline is None:  # the first byte of a request on a kept-alive connection
                self._arm(self.limits.head_timeout)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_head_bytes:
            self._refuse_large_head()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to unparsable HTTP, in the API's error shape.
        self._refuse(400, "bad_request", f"the request is not valid HTTP/1.1: {msg}")

    def on_response_complete(self) -> None:
        self._out.flush()  # the end of a response (a HEAD's head) leaves now, before what follows
        super().on_response_complete()
        self._idle_since = time.monotonic()
        if self._deferred is not None and self._all_answered:
            self._answer(*self._deferred)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = self._head_size = 0
        if self._deadline is None:
            self._arm(self.limits.head_timeout)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size <= self.limits.max_head_bytes:  # beyond: refused once complete
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count <= self.limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:  # a request pipelined behind a refused one, in the same bytes
            return
        if self._head_size > self.limits.max_head_bytes:
            self._refuse_large_head()
            return
        if self._header_count > self.limits.max_headers:
            self._refuse(
                431, "headers_too_large", f"more than {self.limits.max_headers} header lines"
            )
            return
        self._in_head, self._head_bytes = False, 0
        self._arm(self.limits.body_timeout)
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = self._out  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._in_head = True
        super().on_message_complete()

    # -- helpers -----------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse_large_head(self) -> None:
        message = f"the request line and headers exceed {self.limits.max_head_bytes} bytes"
        self._refuse(431, "headers_too_large", message)

    def _timed_out(self) -> None:
        self._deadline = None
        part = "headers" if self._in_head else "body"
        seconds = self.limits.head_timeout if self._in_head else self.limits.body_timeout
        self._refuse(408, "request_timeout", f"the request's {part} took over {seconds:g} s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` and close the connection; after the answer to a request still in
        the application, if there is one; without an answer if its own has begun."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        client = self.client[0] if self.client else None
        (_log.warning if status == 503 else _log.info)(
            "connection refused", status=status, code=code, reason=message, client=client
        )
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head and not self._all_answered:
            # The head of a request that follows one still being answered: answer that
            # one first.
            self._deferred = (status, code, message)
            self.transport.pause_reading()
        elif cycle is None or cycle.response_complete or not cycle.response_started:
            self._answer(status, code, message)
        else:
            self.transport.close()

    def _answer(self, status: int, code: str, message: str) -> None:
        self._out.flush()  # what a response wrote goes first
        body = json.dumps(
            {"error": {"code": code, "message": message, "details": []}}, separators=(",", ":")
        ).encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


class OneWrite:
    """A connection's transport as its responses see it: a write waits for the next one or
    for the end of the event loop's turn, so that a response's head and body leave together.

    uvicorn writes the status line and headers, then the body: on loopback two
    system calls that each run the TCP stack and wake the client. At most one
    write is held (a stream's chunks pair up), so uvicorn's flow control still sees
    every byte, and nothing waits past the loop's turn.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            held, self._held = self._held, None
            self._transport.write(held + data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

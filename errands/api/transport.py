"""Limits on what an unauthenticated client can make the HTTP server hold, and for how long.

uvicorn's httptools protocol bounds none of them: headers grow without limit,
a connection that sends its headers or body slowly (slowloris) is kept for ever,
and its `limit_concurrency` counts such connections as requests, so a few dozen
of them make every request, /health included, answer 503. h11, uvicorn's other
protocol, bounds the header size but has no time limit either, and parses in
pure Python. So the server keeps httptools and adds the limits in a small
subclass of its protocol:

* the request line and headers: at most `max_head_bytes` bytes and
  `max_headers` lines (431), received within `head_timeout` seconds of the
  connection or of the request's first byte (408);
* the body: received within `body_timeout` seconds of the headers (408);
* connections: at most `max_connections` at once; the next is answered 503.

The concurrency limit on requests (the application's) is separate: it counts
only requests whose body has arrived, so slow clients cost a socket, never a
slot. Every refusal uses the API's JSON error shape and closes the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from errands.api.http import HTTPError


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
    return type("LimitedHttpToolsProtocol", (LimitedProtocol,), {"limits": limits})


class LimitedProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits] = DEFAULT_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for, or reading, a request line and headers
        self._head_bytes = 0  # received while in the head: bounds a head that never ends
        self._head_size = 0  # of the request line and headers parsed: bounds one that ends
        self._header_count = 0
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too_many_connections", "the server has too many connections")
            return
        self._arm(self.limits.head_timeout)

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
        """Answer `status` unless a response is under way, and close the connection."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        # While a head is read, self.cycle is the previous request's (if any), whose answer
        # must not be cut into; once the headers are in, it is this request's own.
        cycle = self.cycle
        if (
            cycle is None
            or cycle.response_complete
            or (not self._in_head and not cycle.response_started)
        ):
            response = HTTPError(status, code, message).response()
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[status],
                        b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(response.body),
                        b"connection: close\r\n\r\n",
                        response.body,
                    ]
                )
            )
        self.transport.close()

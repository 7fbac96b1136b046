"""What an unauthenticated client can make the server hold, and for how long: bounded.

Through the real server (the production protocol and limits; `errands api` itself
where memory is measured) and raw sockets. Timeouts are shortened for the tests;
the assertions are about what happens, never about how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from structlog.testing import capture_logs
from uvicorn.server import ServerState

from errands import Client
from errands.api.transport import PROVEN_UVICORN, Limits, protocol
from errands.harness.process import rss_megabytes
from errands.harness.waiting import wait_for
from tests.conftest import ApiProcess, ServeApi
from tests.rawhttp import connect, exchange, parse, read_until_closed, request

SHORT = Limits(head_timeout=1.0, body_timeout=1.0)


def port_of(http: httpx.Client) -> int:
    port = http.base_url.port
    assert port is not None
    return port


def assert_error_shape(answer: Any, status: int, code: str) -> None:
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert answer.code == code


# -- size ------------------------------------------------------------------------------------


def test_headers_beyond_64_kib_are_refused_with_431(api: httpx.Client) -> None:
    big = [("X-Filler", "a" * 8000)] * 9  # 72 KB of headers
    answer = exchange(port_of(api), request("GET", "/health", big))
    assert_error_shape(answer, 431, "headers_too_large")


def test_a_long_request_line_counts_as_headers(api: httpx.Client) -> None:
    answer = exchange(port_of(api), request("GET", "/health?" + "a" * 70_000))
    assert_error_shape(answer, 431, "headers_too_large")


def test_more_than_100_header_lines_are_refused_with_431(api: httpx.Client) -> None:
    many = [(f"X-H{n}", "v") for n in range(101)]
    answer = exchange(port_of(api), request("GET", "/health", many))
    assert_error_shape(answer, 431, "headers_too_large")
    assert exchange(port_of(api), request("GET", "/health", many[:90])).status == 200


def test_200_mib_of_headers_leave_the_server_memory_bounded(api_process: ApiProcess) -> None:
    before = rss_megabytes(api_process.process.pid)
    sent = 0
    with connect(api_process.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        chunk = b"a" * (1 << 20)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 200 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        answer = read_until_closed(sock)
    # The server stopped reading long before 200 MiB: it answered 431 and closed (the answer
    # may be lost to the reset that closing with unread bytes sends).
    assert sent < 200 << 20
    assert not answer or parse(answer).status == 431
    assert rss_megabytes(api_process.process.pid) - before < 16
    assert api_process.http.get("/health").status_code == 200


# -- time ------------------------------------------------------------------------------------


def slowloris(sock: socket.socket, stop: threading.Event) -> None:
    """A header line every 0.2 s, never the blank line that ends them."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    with contextlib.suppress(OSError):
        while not stop.wait(0.2):
            sock.sendall(b"X-Slow: 1\r\n")


@contextlib.contextmanager
def dripping(sock: socket.socket) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=slowloris, args=(sock, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_headers_sent_a_line_at_a_time_are_cut_off_with_408(serve_api: ServeApi) -> None:
    port = port_of(serve_api(limits=SHORT))
    with connect(port) as sock, dripping(sock):
        answer = parse(read_until_closed(sock))
    assert_error_shape(answer, 408, "request_timeout")


def test_a_connection_that_sends_nothing_is_closed(serve_api: ServeApi) -> None:
    port = port_of(serve_api(limits=SHORT))
    with connect(port) as sock:
        assert parse(read_until_closed(sock)).status == 408


def test_a_body_that_stops_is_cut_off_and_stores_nothing(serve_api: ServeApi, conn: Any) -> None:
    port = port_of(serve_api(limits=SHORT))
    head = request("POST", "/jobs", [("Content-Type", "application/json")], b"x" * 100)
    with connect(port) as sock:
        sock.sendall(head[:-100] + b'{"task": "t"')  # 12 of the 100 bytes announced
        answer = parse(read_until_closed(sock))
    assert_error_shape(answer, 408, "request_timeout")
    assert conn.execute("select count(*) from errands_jobs").fetchone() == (0,)


def test_a_kept_alive_connection_gets_the_same_head_deadline(serve_api: ServeApi) -> None:
    port = port_of(serve_api(limits=SHORT))
    with connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the second request never ends its headers
        raw = read_until_closed(sock)
    first, _, second = raw.partition(b'{"status":"ok"}')
    assert parse(first).status == 200
    assert_error_shape(parse(second), 408, "request_timeout")


def test_health_and_ready_answer_while_45_slow_sockets_are_open(serve_api: ServeApi) -> None:
    # A request limit of 40, and 45 slowloris sockets (headers, and bodies that stop).
    api = serve_api(max_in_flight=40, limits=Limits(head_timeout=60, body_timeout=60))
    port = port_of(api)
    slow_body = request("POST", "/jobs", [("Content-Type", "application/json")], b"{" * 50)[:-40]
    with contextlib.ExitStack() as stack:
        for n in range(45):
            sock = stack.enter_context(connect(port))
            if n % 2:
                stack.enter_context(dripping(sock))
            else:
                sock.sendall(slow_body)
        time.sleep(0.5)  # let the server take them all in
        assert api.get("/health").status_code == 200
        assert api.get("/ready").status_code == 200
        assert api.post("/jobs", json={"task": "t"}).status_code == 201


def test_a_connection_beyond_the_limit_takes_the_place_of_the_one_idle_longest(
    serve_api: ServeApi,
) -> None:
    port = port_of(serve_api(limits=Limits(max_connections=5, head_timeout=60)))
    with contextlib.ExitStack() as stack, capture_logs() as logs:
        silent = [stack.enter_context(connect(port)) for _ in range(5)]
        silent[0].sendall(b"GET /health HTTP/1.1\r\n")  # the oldest, mid-head
        time.sleep(0.3)  # let the server accept them
        assert exchange(port, request("GET", "/health")).status == 200
        assert_error_shape(parse(read_until_closed(silent[0])), 503, "too_many_connections")
    (refusal,) = [e for e in logs if e["event"] == "connection refused"]  # logged, not silent
    assert (refusal["status"], refusal["code"]) == (503, "too_many_connections")


def test_kept_alive_connections_that_call_now_and_then_give_way_to_new_ones(
    serve_api: ServeApi,
) -> None:
    port = port_of(serve_api(limits=Limits(max_connections=5)))
    with contextlib.ExitStack() as stack:
        kept = [stack.enter_context(connect(port)) for _ in range(5)]
        for sock in kept:  # each has asked once and keeps its connection for the next call
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b'{"status":"ok"}' in sock.recv(65536)
        for _ in range(3):
            assert exchange(port, request("GET", "/health")).status == 200


def test_connections_beyond_the_limit_get_a_json_503_while_each_has_a_request_in_hand(
    serve_api: ServeApi, client: Client
) -> None:
    port = port_of(serve_api(limits=Limits(max_connections=3)))
    job = client.enqueue("t")
    poll = request("GET", f"/jobs/{job.id}?wait=30")
    with contextlib.ExitStack() as stack:
        for _ in range(3):  # long polls: each holds its connection inside the application
            stack.enter_context(connect(port)).sendall(poll)
        time.sleep(0.5)  # let them reach the application
        assert_error_shape(exchange(port, request("GET", "/health")), 503, "too_many_connections")
    # Once they are gone, there is room again.
    wait_for(lambda: exchange(port, request("GET", "/health")).status == 200, what="room")


def test_requests_beyond_the_limit_get_a_json_503_but_health_answers(
    serve_api: ServeApi, db_url: str, conn: Any
) -> None:
    api = serve_api(max_in_flight=1)
    with psycopg.connect(db_url) as locker:
        locker.execute("lock table errands_jobs in access exclusive mode")
        held = threading.Thread(target=api.get, args=("/jobs",), daemon=True)
        held.start()
        # The one request in hand: it waits on the lock.
        wait_for(
            lambda: conn.execute(
                "select 1 from pg_stat_activity where wait_event_type = 'Lock'"
            ).fetchone(),
            what="GET /jobs to wait on the lock",
        )
        refused = api.get("/ready")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        assert api.get("/health").status_code == 200
        locker.rollback()
    held.join(30)
    assert api.get("/stats").status_code == 200


# -- writes ----------------------------------------------------------------------------------


class RecordingTransport(asyncio.Transport):
    """A socket's transport that keeps what the server writes, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer_body(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
    )
    await send({"type": "http.response.body", "body": b"body"})


def writes_answering(request: bytes) -> list[bytes]:
    """What the server's protocol writes, write by write, answering `request` on one
    connection (the application answers every request with the body b"body")."""

    async def exchange() -> list[bytes]:
        config = uvicorn.Config(answer_body, http=protocol(Limits()), log_config=None)
        config.load()
        server = protocol(Limits())(config, ServerState(), {}, asyncio.get_running_loop())
        transport = RecordingTransport()
        server.connection_made(transport)
        server.data_received(request)

        async def answered() -> None:
            while server.tasks or not server.cycle.response_complete:
                await asyncio.sleep(0)

        await asyncio.wait_for(answered(), 10)
        await asyncio.sleep(0)  # the end of the loop's turn
        return transport.writes

    return asyncio.run(exchange())


def test_a_response_leaves_in_one_write() -> None:
    (write,) = writes_answering(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\nbody")


def test_the_head_of_a_response_without_body_leaves_too() -> None:
    (write,) = writes_answering(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\n")


def test_pipelined_responses_leave_whole_and_in_order() -> None:
    writes = writes_answering(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    assert len(writes) == 2 and all(w.endswith(b"\r\n\r\nbody") for w in writes)


def test_uvicorn_is_the_release_the_limits_were_proven_on() -> None:
    # transport.py subclasses an internal of uvicorn: any other release must be proven by
    # this module's tests first, then added to PROVEN_UVICORN and to pyproject.toml's pin.
    assert uvicorn.__version__ in PROVEN_UVICORN, (
        f"uvicorn {uvicorn.__version__} is installed; the HTTP limits are proven on "
        f"{', '.join(PROVEN_UVICORN)} only"
    )
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("uvicorn")]
    assert len(pins) == 1 and pins[0].startswith("uvicorn==")  # exactly, no range
    assert pins[0].removeprefix("uvicorn==") in PROVEN_UVICORN

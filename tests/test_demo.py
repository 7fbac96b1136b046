"""Demo tasks any API client may submit: bounded inputs, no fetching of internal addresses."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from errands import Client, JobState, demo
from errands.demo import ForbiddenAddress, fetch, is_public_address
from errands.harness.waiting import wait_for
from errands.tasks import CurrentJob, running
from tests.test_daemon import StartDaemon

INTERNAL_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "3fff::/20",
    "fc00::/7",
    "fec0::/10",
    "fe80::/10",
    "ff00::/8",
]


@given(st.sampled_from(INTERNAL_NETWORKS).flatmap(lambda net: st.ip_addresses(network=net)))
def test_internal_addresses_are_not_public(address: Any) -> None:
    assert not is_public_address(address)


@given(
    st.sampled_from([n for n in INTERNAL_NETWORKS if "." in n]).flatmap(
        lambda net: st.ip_addresses(network=net)
    ),
    st.sampled_from(["::ffff:0:0/96", "2002::/16", "64:ff9b::/96"]),
)
def test_ipv6_forms_of_internal_ipv4_addresses_are_not_public(inner: Any, form: str) -> None:
    """IPv4-mapped, 6to4 and NAT64 addresses that carry an internal IPv4 address."""
    prefix = int(ipaddress.ip_network(form).network_address)
    shift = 80 if form == "2002::/16" else 0
    assert not is_public_address(ipaddress.IPv6Address(prefix | (int(inner) << shift)))


@pytest.mark.parametrize("text", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_public(text: str) -> None:
    assert is_public_address(ipaddress.ip_address(text))


# -- bounded inputs --------------------------------------------------------------------------


@pytest.fixture
def as_job() -> Iterator[None]:
    with running(CurrentJob(7, "demo", "default", 1, 5, {}, datetime.now(UTC))):
        yield


not_numbers = st.one_of(st.text(), st.booleans(), st.none(), st.lists(st.integers()))
BOUNDED: list[tuple[Callable[..., Any], str, st.SearchStrategy[Any]]] = [
    (
        demo.sleep,
        "seconds",
        st.one_of(not_numbers, st.floats(max_value=-0.001), st.floats(300.001)),
    ),
    (
        demo.generate_report,
        "rows",
        st.one_of(not_numbers, st.floats(), st.integers(max_value=-1), st.integers(1_000_001)),
    ),
    (
        demo.flaky,
        "fail_rate",
        st.one_of(not_numbers, st.floats(max_value=-0.001), st.floats(1.001)),
    ),
    (demo.fail, "message", st.one_of(st.integers(), st.text(min_size=10_001, max_size=10_002))),
    (demo.http_call, "timeout", st.one_of(not_numbers, st.floats(max_value=0), st.floats(30.001))),
]


@pytest.mark.parametrize(("func", "argument", "values"), BOUNDED, ids=[b[1] for b in BOUNDED])
@given(data=st.data())
def test_out_of_range_inputs_fail_naming_the_argument(
    as_job: None,
    func: Callable[..., Any],
    argument: str,
    values: st.SearchStrategy[Any],
    data: st.DataObject,
) -> None:
    value = data.draw(values)
    arguments = {"url": "http://example.invalid/"} if func is demo.http_call else {}
    with pytest.raises(ValueError, match=argument):
        func(**arguments, **{argument: value})


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost", "gopher://x/", "//x/"]
)
def test_http_call_takes_http_urls_only(as_job: None, url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        demo.http_call(url)


def test_generate_report_keeps_memory_flat(as_job: None) -> None:
    report = demo.generate_report(rows=demo.MAX_REPORT_ROWS)
    assert report["rows"] == demo.MAX_REPORT_ROWS and 0 < report["max"] < 1


# -- http_call against real sockets ----------------------------------------------------------


class Recorder(http.server.ThreadingHTTPServer):
    """A local HTTP server that records every request it receives."""

    def __init__(self, host: str, reply: Callable[[http.server.BaseHTTPRequestHandler], None]):
        self.requests: list[tuple[str, str | None]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append((self.path, self.headers.get("Host")))
                reply(self)

            def log_message(self, *args: Any) -> None: ...

        super().__init__((host, 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


def _hello(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "5")
    handler.end_headers()
    handler.wfile.write(b"hello")


@pytest.fixture
def serve() -> Iterator[Callable[..., Recorder]]:
    servers: list[Recorder] = []

    def start(host: str = "127.0.0.1", reply: Any = _hello) -> Recorder:
        servers.append(Recorder(host, reply))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _loopback_only(address: Any) -> bool:
    return str(address) == "127.0.0.1"


def test_fetch_reads_an_allowed_address(serve: Callable[..., Recorder]) -> None:
    server = serve()
    assert fetch(server.url + "/x", 5, _loopback_only) == {
        "status": 200,
        "bytes": 5,
        "truncated": False,
    }
    assert server.requests == [("/x", server.url.removeprefix("http://"))]


def test_a_redirect_to_a_refused_address_is_not_followed(serve: Callable[..., Recorder]) -> None:
    hidden = serve("127.0.0.2")

    def redirect(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", hidden.url + "/secret")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    front = serve(reply=redirect)
    with pytest.raises(ForbiddenAddress, match=r"127\.0\.0\.2"):
        fetch(front.url, 5, _loopback_only)
    assert len(front.requests) == 1 and hidden.requests == []


def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(
    serve: Callable[..., Recorder],
) -> None:
    """DNS rebinding: the name is resolved once, checked, and that very address is dialled."""
    server = serve()
    port = server.server_address[1]
    target = demo._Target("http", "rebound.invalid", port, "/", "127.0.0.1")
    conn = demo._connection(target, 5)  # "rebound.invalid" cannot resolve: no lookup happens
    try:
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert server.requests == [("/", f"rebound.invalid:{port}")]


def test_a_real_worker_refuses_internal_urls_and_the_server_sees_nothing(
    start_daemon: StartDaemon, client: Client, serve: Callable[..., Recorder]
) -> None:
    server = serve()
    port = server.server_address[1]
    daemon = start_daemon("--workers", "1", ERRANDS_TASKS="errands.demo")
    urls = [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://[::1]:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://0.0.0.0:{port}/",
        f"http://2130706433:{port}/",  # 127.0.0.1 as one decimal number
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
    ]
    jobs = client.enqueue_many(
        [
            {"task": "http_call", "payload": {"url": u, "timeout": 2}, "max_attempts": 1}
            for u in urls
        ]
    )
    big = client.enqueue("generate_report", {"rows": 10_000_000}, max_attempts=1)
    for job in [*jobs, big]:
        wait_for(lambda job=job: client.get(job.id).state is JobState.DEAD, what=f"job {job.id}")  # type: ignore[union-attr, misc]
    for job in jobs:
        error = client.get(job.id).last_error  # type: ignore[union-attr]
        assert error is not None and "not a public address" in error, error
    refusal = client.get(big.id).last_error  # type: ignore[union-attr]
    assert refusal is not None and refusal.startswith("InvalidArgument: rows: "), refusal
    assert "1000000" in refusal
    assert server.requests == []
    assert daemon.stop() == 0

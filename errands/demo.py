"""Demo tasks, loaded when no task module is configured, so a fresh install does real work.

Any API client may submit them, so every input is bounded and `http_call` only
reaches public addresses: a fresh `make run` or `docker compose up` must not be a
way to burn the workers' memory or to probe the network behind them.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import ipaddress
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast
from urllib.parse import urljoin, urlsplit

from pydantic import ConfigDict, Field, ValidationError, validate_call

from errands.errors import InvalidArgument
from errands.log import get_logger
from errands.queue.requests import field_errors
from errands.tasks import current_job, task

_log = get_logger("errands.demo")

MAX_SLEEP_SECONDS = 300.0
MAX_REPORT_ROWS = 1_000_000
MAX_TEXT_CHARS = 10_000
MAX_HTTP_TIMEOUT = 30.0
MAX_HTTP_BYTES = 10 * 1024 * 1024  # read (and counted, not kept) before stopping
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Special-purpose ranges that Python's `is_global` (3.11) still counts as global.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.0.0/24", "192.88.99.0/24", "fec0::/10", "3fff::/20")
)


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
F = TypeVar("F", bound=Callable[..., Any])


def _checked(func: F) -> F:
    """`func` with its arguments checked by pydantic, as every request is: strictly (a string
    is not a number, nor a boolean an integer); a bad one is an InvalidArgument naming it."""
    validated = validate_call(config=ConfigDict(strict=True))(func)

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return validated(*args, **kwargs)
        except ValidationError as exc:
            raise InvalidArgument(field_errors(exc)) from None

    return cast(F, call)


@task
@_checked
def sleep(seconds: Annotated[float, Field(ge=0, le=MAX_SLEEP_SECONDS)] = 1.0) -> dict[str, float]:
    """Wait (at most MAX_SLEEP_SECONDS), standing in for slow work."""
    time.sleep(seconds)
    return {"slept": seconds}


@task
@_checked
def send_email(
    to: Annotated[str, Field(max_length=320)],
    subject: Annotated[str, Field(max_length=998)] = "",
    body: Text = "",
) -> dict[str, Any]:
    """Pretend to deliver an email: a short wait and a log line, no network."""
    time.sleep(0.05)
    message_id = hashlib.sha256(f"{current_job().id}:{to}:{subject}".encode()).hexdigest()[:16]
    _log.info("email delivered (simulated)", to=to, subject=subject, chars=len(body))
    return {"delivered": True, "to": to, "message_id": message_id}


@task
@_checked
def generate_report(rows: Annotated[int, Field(ge=0, le=MAX_REPORT_ROWS)] = 1000) -> dict[str, Any]:
    """Real CPU work: aggregate `rows` generated rows, one at a time (memory stays flat)."""
    total, largest = 0.0, None
    for _ in range(rows):
        value = random.random()
        total += value
        largest = value if largest is None else max(largest, value)
    return {"rows": rows, "total": total, "max": largest}


@task
@_checked
def flaky(fail_rate: Annotated[float, Field(ge=0, le=1)] = 0.5) -> dict[str, Any]:
    """Fail at random, to watch retries and backoff at work."""
    if random.random() < fail_rate:
        raise RuntimeError(f"flaky failure (fail_rate={fail_rate})")
    return {"attempt": current_job().attempt}


@task
@_checked
def fail(message: Text = "boom") -> None:
    """Always raise, to watch a job spend its budget and end dead."""
    raise RuntimeError(message)


@task
@_checked
def http_call(
    url: str, timeout: Annotated[float, Field(ge=0.001, le=MAX_HTTP_TIMEOUT)] = 5.0
) -> dict[str, Any]:
    """GET a public http(s) URL; private, loopback and other internal addresses are refused."""
    return fetch(url, timeout, is_public_address)


# -- http_call's fetching ------------------------------------------------------------------


class ForbiddenAddress(ValueError):
    """A URL whose host is, or resolves to, an address http_call must not reach."""


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` is globally routable: not loopback, private, link-local, multicast,
    reserved or unspecified, nor an IPv6 form of such an IPv4 address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None and not is_public_address(embedded):
        return False
    if address.is_multicast or address.is_reserved or any(address in n for n in _NOT_GLOBAL):
        return False
    return address.is_global


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked address the connection goes to: no second DNS lookup


def _target(url: str, allowed: Callable[[IPAddress], bool]) -> _Target:
    if not isinstance(url, str):
        raise ValueError("url must be a string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an http:// or https:// URL with a host, not {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot resolve the host of {url!r}: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    refused = sorted({str(a) for a in addresses if not allowed(a)})
    if refused or not addresses:
        raise ForbiddenAddress(
            f"refusing {url!r}: {parts.hostname} resolves to {', '.join(refused) or 'nothing'}, "
            "not a public address (loopback, private, link-local, multicast and reserved "
            "addresses are never fetched)"
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, parts.hostname, port, path, str(addresses[0]))


def _connection(target: _Target, timeout: float) -> http.client.HTTPConnection:
    cls = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    conn = cls(target.host, target.port, timeout=timeout)  # Host header and TLS name: the host

    def to_checked_address(
        _: tuple[str, int], timeout: float | None = None, source: Any = None
    ) -> socket.socket:
        return socket.create_connection((target.address, target.port), timeout, source)

    conn._create_connection = to_checked_address  # type: ignore[attr-defined]
    return conn


def fetch(url: str, timeout: float, allowed: Callable[[IPAddress], bool]) -> dict[str, Any]:
    """GET `url` within about `timeout` seconds, following redirects only to allowed hosts.

    The body is counted, not kept, and reading stops at MAX_HTTP_BYTES or the deadline
    (`truncated` says so).
    """
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        target = _target(url, allowed)
        conn = _connection(target, max(0.001, deadline - time.monotonic()))
        try:
            conn.request("GET", target.path, headers={"User-Agent": "errands-demo"})
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            size, complete = 0, False
            while not complete and size < MAX_HTTP_BYTES and time.monotonic() < deadline:
                chunk = response.read(_CHUNK)
                size += len(chunk)
                complete = not chunk
            return {"status": response.status, "bytes": size, "truncated": not complete}
        finally:
            conn.close()
    raise ValueError(f"more than {MAX_REDIRECTS} redirects")

"""HTTP/1.1 over a raw socket: for requests no well-behaved client library would send."""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any

# Long enough for a loaded machine, short enough that a hung server fails the test.
PATIENCE = 60.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


def parse_all(raw: bytes) -> list[Answer]:
    """Every answer in `raw`, in order: each body as long as its Content-Length says."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(parse(head + b"\r\n\r\n").headers.get("content-length", "0"))
        answers.append(parse(head + b"\r\n\r\n" + rest[:length]))
        raw = rest[length:]
    return answers


def exchange(port: int, request: bytes) -> Answer:
    """Send `request` on a fresh connection; the server closes it after answering.

    (Not half-closed from this side: uvicorn drops a connection on EOF, answer or not.)
    """
    with connect(port) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may answer and close before reading it all
        return parse(read_until_closed(sock))


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str = "localhost",
    close: bool = True,
) -> bytes:
    """A request's bytes, with Host, Connection: close (unless not `close`) and
    Content-Length added."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += ["Connection: close"] if close else []
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body

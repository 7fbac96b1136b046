"""The API's listening socket: bound before anything else starts, by the lightest module.

`errands run` binds it in the supervisor and hands it to its HTTP child, so this
module imports neither uvicorn nor the application: a supervisor restarted after
a crash gets to releasing its dead workers' jobs sooner.
"""

from __future__ import annotations

import errno
import socket
import time

from errands.errors import ConfigurationError

BACKLOG = 2048
# A supervisor killed a moment ago leaves an HTTP child that exits within a second (it
# notices the death within 0.25 s, and gives its last log line 0.5 s at most): wait that out.
BIND_PATIENCE_SECONDS = 2.0


def listen(
    host: str,
    port: int,
    *,
    host_from: str = "ERRANDS_HTTP_ADDR",
    port_from: str = "ERRANDS_HTTP_ADDR",
) -> socket.socket:
    """The API's listening socket, bound now so that a taken port is one clear start-up error.

    `errands run` binds it before forking anything: the HTTP child inherits it (and a
    restarted child takes it over without a gap), so a port in use can never make the
    child crash-loop. `host_from` and `port_from` name the settings that gave the host
    and the port (ERRANDS_HTTP_ADDR, --host, --port): the message says which to change.
    """
    deadline = time.monotonic() + BIND_PATIENCE_SECONDS
    while True:
        try:
            return _bound(host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and time.monotonic() <= deadline:
                time.sleep(0.05)
                continue
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(f"port {port} is in use (set {port_from})") from None
            setting = port_from if exc.errno == errno.EACCES else host_from
            raise ConfigurationError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (set {setting})"
            ) from None


def _bound(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

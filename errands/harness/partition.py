"""Faults that close nothing: a proxy that stops forwarding, and a PostgreSQL that stops.

`PartitionProxy` listens on the loopback and forwards every connection to
PostgreSQL (over TCP, or to its Unix socket). `freeze(pid)` stops forwarding,
both ways, on every connection that process holds or opens, and keeps them
open, as a network path that silently stops delivering would (or a pooler, or
a server, that stopped answering); `heal(pid)` forwards what waited. The kernel
still acknowledges what the proxy does not forward, so TCP keepalives and
tcp_user_timeout see a live peer: what is proven under a freeze is what errands
does without any help from TCP. Which process owns a connection comes from
/proc (Linux): the client socket's inode, found by its port in /proc/net/tcp,
among the descriptors the process holds and its parent does not.

`stop_postgres` and `resume_postgres` SIGSTOP and SIGCONT the server's
processes: a PostgreSQL that hangs, its sockets open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from errands.harness.process import ProcStat, children_of

T = TypeVar("T")
CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's socket inode, and the gate both pumps wait at."""

    inode: int | None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    frozen_by: int | None = None


class PartitionProxy:
    """A TCP proxy on 127.0.0.1 in front of the PostgreSQL of `server_url`."""

    def __init__(self, server_url: str) -> None:
        params = conninfo_to_dict(server_url)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._upstream = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="errands-partition-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._frozen: set[int] = set()
        self.port = 0

    def start(self) -> PartitionProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def url(self, database_url: str) -> str:
        """`database_url` (a database of the proxied server) through the proxy."""
        return make_conninfo(database_url, host="127.0.0.1", port=str(self.port))

    def freeze(self, pid: int) -> int:
        """Forward nothing more for process `pid`, now or on connections it opens; how many
        connections of its were open."""

        async def freeze() -> int:
            self._frozen.add(pid)
            owned = _opened_by(pid)
            frozen = [link for link in self._links if link.inode in owned]
            for link in frozen:
                link.gate.clear()
                link.frozen_by = pid
            return len(frozen)

        return self._call(freeze())

    def heal(self, pid: int) -> None:
        """Forward again for `pid`, what waited first."""

        async def heal() -> None:
            self._frozen.discard(pid)
            for link in self._links:
                if link.frozen_by == pid:
                    link.frozen_by = None
                    link.gate.set()

        self._call(heal())

    def stop(self) -> None:
        """Close every connection and the listener, and end the proxy's thread."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        client_port = int(client_w.get_extra_info("peername")[1])
        link = _Link(_client_inode(client_port, self.port))
        owner = next((pid for pid in self._frozen if link.inode in _opened_by(pid)), None)
        if owner is None:
            link.gate.set()
        link.frozen_by = owner
        self._links.add(link)
        try:
            if self._unix is not None:
                server_r, server_w = await asyncio.open_unix_connection(self._unix)
            else:
                server_r, server_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            self._links.discard(link)
            client_w.close()
            return
        try:
            await asyncio.gather(
                _pump(client_r, server_w, link.gate), _pump(server_r, client_w, link.gate)
            )
        finally:
            self._links.discard(link)


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: asyncio.Event
) -> None:
    """Forward until either side closes; nothing passes, not even the close, while frozen."""
    try:
        while True:
            data = await source.read(CHUNK)
            await gate.wait()
            if not data:
                break
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


def _client_inode(client_port: int, proxy_port: int) -> int | None:
    """The inode of the client's end of a loopback connection to the proxy."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if _port(local) == client_port and _port(remote) == proxy_port:
                    return int(fields[9])
    return None


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def _opened_by(pid: int) -> set[int]:
    """The sockets process `pid` holds that its parent does not: a forked child holds copies
    of its parent's connections, which are the parent's, not its own."""
    stat = ProcStat.read(pid)
    inherited = _socket_inodes(stat.ppid) if stat is not None else set()
    return _socket_inodes(pid) - inherited


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` has open (empty once it is gone)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def postgres_pids(pgdata: Path) -> list[int]:
    """The postmaster of `pgdata` and every process it forked."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    return [postmaster, *children_of(postmaster)]


def stop_postgres(pgdata: Path) -> list[int]:
    """SIGSTOP every process of the server: it hangs, its connections open. Returns them."""
    pids = postgres_pids(pgdata)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return pids


def resume_postgres(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

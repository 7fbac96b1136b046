"""Which worker processes are alive, as recorded in `errands_workers`.

Besides its host and pid, a worker records which process it is in terms that
do not repeat (`ProcessIdentity`), so that a supervisor on the same machine can
tell a dead worker from a live one without waiting for its leases to expire.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from errands.queue.queries import query
from errands.queue.steps import Execute, Operation, run


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime


def worker_id(host: str, pid: int, token: str) -> str:
    """A worker's id, `host:pid:token`: it names the lease owner of every job it holds."""
    return f"{host}:{pid}:{token}"


def host_of(worker_id: str) -> str:
    return worker_id.partition(":")[0]


@dataclass(frozen=True)
class ProcessIdentity:
    """A process, unambiguously: pids mean something only within one boot and pid namespace."""

    boot_id: str
    pid_namespace: str
    pid: int
    started: int  # clock ticks after boot; another process reusing the pid starts later

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the live process `pid` as this process sees it; None if unknown."""
        namespace = _namespace()
        started = _start_ticks(pid)
        if namespace is None or started is None:
            return None
        return cls(namespace[0], namespace[1], pid, started)

    def is_gone(self) -> bool:
        """Certainly gone: same boot and namespace as this process, and no such process runs.

        False whenever in doubt (another machine, container or boot): leases cover those.
        """
        if _namespace() != (self.boot_id, self.pid_namespace):
            return False
        return _start_ticks(self.pid) != self.started


@cache
def _namespace() -> tuple[str, str] | None:
    """This kernel's boot id and this process's pid namespace (Linux only)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return boot_id, os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot; None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # After the command name (in parentheses, may hold anything): state is field 3,
    # start time field 22. A zombie has exited: only its exit status is left.
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def announce(
    conn: psycopg.Connection[Any], worker_id: str, queues: Sequence[str], concurrency: int
) -> None:
    """Record (or refresh) this process as a live worker."""
    identity = ProcessIdentity.of(os.getpid())
    conn.execute(
        query("worker_heartbeat"),
        {
            "id": worker_id,
            "host": host_of(worker_id),
            "pid": os.getpid(),
            "queues": list(queues),
            "concurrency": concurrency,
            "boot_id": identity.boot_id if identity else None,
            "pid_namespace": identity.pid_namespace if identity else None,
            "process_started": identity.started if identity else None,
        },
    )


def gone_workers(conn: psycopg.Connection[Any], host: str) -> list[str]:
    """Workers of `host` recorded on this machine and pid namespace, certainly gone.

    Only `host`'s: supervisors sharing a machine under other host names (ERRANDS_HOSTNAME)
    each release their own children's jobs.
    """
    namespace = _namespace()
    if namespace is None:
        return []
    rows = conn.execute(
        query("workers_of_namespace"), {"boot_id": namespace[0], "pid_namespace": namespace[1]}
    ).fetchall()
    return [
        worker_id
        for worker_id, pid, started in rows
        if host_of(worker_id) == host and ProcessIdentity(*namespace, pid, started).is_gone()
    ]


def forget(conn: psycopg.Connection[Any], worker_id: str) -> None:
    conn.execute(query("worker_gone"), {"id": worker_id})


def live_workers(conn: psycopg.Connection[Any], silence_seconds: float) -> list[WorkerInfo]:
    """Workers heard from within `silence_seconds`; older records are dropped."""
    return run(conn, live_workers_steps(silence_seconds))


def live_workers_steps(silence_seconds: float) -> Operation[list[WorkerInfo]]:
    rows = yield Execute(query("live_workers"), {"silence_seconds": silence_seconds}, dicts=True)
    return [WorkerInfo(**row) for row in rows]

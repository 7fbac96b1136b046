"""Which worker processes are alive, as recorded in `errands_workers`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from errands.queue.queries import query


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


def announce(
    conn: psycopg.Connection[Any], worker_id: str, queues: Sequence[str], concurrency: int
) -> None:
    """Record (or refresh) this process as a live worker."""
    conn.execute(
        query("worker_heartbeat"),
        {
            "id": worker_id,
            "host": host_of(worker_id),
            "pid": os.getpid(),
            "queues": list(queues),
            "concurrency": concurrency,
        },
    )


def forget(conn: psycopg.Connection[Any], worker_id: str) -> None:
    conn.execute(query("worker_gone"), {"id": worker_id})


def live_workers(conn: psycopg.Connection[Any], silence_seconds: float) -> list[WorkerInfo]:
    """Workers heard from within `silence_seconds`; older records are dropped."""
    with conn.cursor(row_factory=class_row(WorkerInfo)) as cur:
        return cur.execute(query("live_workers"), {"silence_seconds": silence_seconds}).fetchall()

"""The Client's statements with and without psycopg's server-side prepared statements.

What decided that errands.Client never prepares on the server (README: PgBouncer in
transaction pooling mode; bench/RESULTS.md). Each statement runs on one connection,
directly to PostgreSQL, prepared (psycopg's default: after 5 runs) or not.

    .venv/bin/python bench/ab_prepared.py postgresql://...   (a scratch database: it
    creates and drops errands_prepared_ab)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from errands.database import configure
from errands.queue.admin import get, list_jobs, stats
from errands.queue.requests import parse_request
from errands.queue.submit import enqueue
from errands.schema import migrate

DATABASE = "errands_prepared_ab"
Conn = psycopg.Connection[Any]


def timed(conn: Conn, statement: Callable[[Conn, int], object], runs: int) -> float:
    """Microseconds per call, the best of five rounds."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for n in range(runs):
            statement(conn, n)
        rounds.append((time.perf_counter() - started) / runs * 1e6)
    return min(rounds)


def main(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"drop database if exists {DATABASE} with (force)")
        admin.execute(f"create database {DATABASE}")
        # The commit's wait for the disk is the same either way; leave it out.
        admin.execute(f"alter database {DATABASE} set synchronous_commit = off")
    url = make_conninfo(server_url, dbname=DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    request = parse_request({"task": "t", "payload": {"to": "a@example.com"}, "queue": "mail"})
    statements: dict[str, tuple[Callable[[Conn, int], object], int]] = {
        "enqueue": (lambda conn, n: enqueue(conn, request), 400),
        "get": (lambda conn, n: get(conn, 1 + n % 200), 400),
        "list (20 jobs)": (lambda conn, n: list_jobs(conn, queue="mail", limit=20), 400),
        "stats": (lambda conn, n: stats(conn, worker_silence_seconds=30), 100),
    }
    try:
        for prepared in (True, False):
            options = {} if prepared else {"prepare_threshold": None}
            with psycopg.connect(url, autocommit=True, **options) as conn:
                configure(conn)
                for _ in range(200):
                    enqueue(conn, request)
                figures = {name: timed(conn, s, runs) for name, (s, runs) in statements.items()}
            label = "prepared  " if prepared else "unprepared"
            print(label, "  ".join(f"{k} {v:7.1f} µs" for k, v in figures.items()))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"drop database if exists {DATABASE} with (force)")


if __name__ == "__main__":
    main(sys.argv[1])

"""Waiting for what nobody announces: poll until it is true, or give up with its name."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import psycopg

from errands.database import open_connection

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float = 60.0, what: str = "", interval: float = 0.05
) -> T:
    """Call `check` until it returns something truthy, and return it; TimeoutError at `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)
    return result


def answers(url: str) -> bool:
    """Whether an HTTP GET of `url` succeeds now."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def drained(url: str) -> bool:
    """Whether no job is left pending, failed or in progress (False while the database is down)."""
    try:
        with open_connection(url, connect_timeout=2) as conn:
            return not _unfinished(conn)
    except psycopg.OperationalError:
        return False


def wait_until_drained(url: str, timeout: float, what: str) -> None:
    """Wait until `drained`, on one connection: a benchmark's wait must not cost the server
    what it measures (a connection per check is a backend started 20 times a second, and
    counting every state read the 20,000 jobs of a drain each time: 0.1 s of PostgreSQL's CPU
    per 1,000 jobs, as much as the workers' statements)."""
    with open_connection(url, autocommit=True) as conn:
        wait_for(lambda: not _unfinished(conn), timeout=timeout, what=what)


def _unfinished(conn: psycopg.Connection[Any]) -> bool:
    """Whether a job is pending, failed or in progress: the first entry of a partial index.

    A waiting job needs no look of its own (it would be a scan: no index covers it): it
    waits for a parent that is not completed, and a parent that ended otherwise has
    cancelled it or let it run, so some job it waits on is pending, failed or in progress."""
    row = conn.execute(
        "select exists (select from errands_jobs where state in ('pending', 'failed'))"
        " or exists (select from errands_jobs where state = 'in_progress')"
    ).fetchone()
    return bool(row and row[0])

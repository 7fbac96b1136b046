"""Waiting for what nobody announces: poll until it is true, or give up with its name."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import psycopg

from errands.database import open_connection
from errands.queue.admin import job_counts
from errands.queue.jobs import JobState

T = TypeVar("T")
UNFINISHED = (JobState.WAITING, JobState.PENDING, JobState.FAILED, JobState.IN_PROGRESS)


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
            counts = job_counts(conn)
    except psycopg.OperationalError:
        return False
    return not any(q.counts[state] for q in counts for state in UNFINISHED)

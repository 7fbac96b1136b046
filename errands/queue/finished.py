"""Hearing that jobs have finished: one LISTEN connection per process, polling as the fallback.

A statement that leaves jobs completed, dead or cancelled notifies the channel
`errands_finished` with their ids (migration 0003). A `FinishWatcher` listens on
one connection of its own, on its own thread, and calls back whoever watches
one of those ids. Every `poll_seconds` it also reads the watched jobs, which
covers notifications missed while its connection was down; it reads them too
as soon as it (re)connects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from errands.database import open_connection
from errands.log import get_logger
from errands.queue.jobs import Job, JobState
from errands.queue.queries import query

CHANNEL = "errands_finished"
FINISHED = frozenset({JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED})
RECONNECT_MAX_SECONDS = 5.0
# The longest the thread blocks before it looks whether it was closed.
WAKE_SECONDS = 0.5

_log = get_logger("errands.queue")

Callback = Callable[[], None]


def is_finished(job: Job) -> bool:
    """Completed, dead or cancelled: nothing will happen to the job unless someone retries it."""
    return job.state in FINISHED


class FinishWatcher:
    """Calls back, once, when a watched job has finished; safe to use from any thread."""

    def __init__(
        self, url: str, poll_seconds: float = 1.0, connect_options: Mapping[str, Any] | None = None
    ) -> None:
        self._url = url
        self._connect_options = dict(connect_options or {})  # e.g. no prepared statements
        self._poll = poll_seconds
        self._lock = threading.Lock()
        self._watches: dict[int, list[Callback]] = {}
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, job_id: int, callback: Callback) -> Callable[[], None]:
        """Call `callback` (from the watcher's thread) once job `job_id` has finished.

        Watch first, then read the job: a finish after the read is then heard.
        Returns the function that stops watching.
        """
        with self._lock:
            self._watches.setdefault(job_id, []).append(callback)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="errands-finish-watcher", daemon=True
                )
                self._thread.start()

        def unwatch() -> None:
            with self._lock:
                callbacks = self._watches.get(job_id, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._watches.pop(job_id, None)

        return unwatch

    def close(self) -> None:
        """Stop watching; the thread closes its connection within WAKE_SECONDS."""
        self._stopped.set()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.1
        while not self._stopped.is_set():
            try:
                with open_connection(
                    self._url, autocommit=True, connect_timeout=5, **self._connect_options
                ) as conn:
                    conn.execute(f"listen {CHANNEL}")
                    delay = 0.1
                    self._listen(conn)
            except psycopg.OperationalError as exc:
                if self._stopped.is_set():
                    return
                _log.warning(
                    "finish watcher lost its connection; polling resumes on reconnection",
                    error=str(exc),
                    retry_in=delay,
                )
                self._stopped.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        next_poll = 0.0  # on (re)connection, then every poll interval: what finished unheard
        while not self._stopped.is_set():
            if time.monotonic() >= next_poll:
                self._poll_watched(conn)
                next_poll = time.monotonic() + self._poll
            wake = min(WAKE_SECONDS, max(0.0, next_poll - time.monotonic()))
            for notification in conn.notifies(timeout=wake):
                self._fire(_ids(notification.payload))

    def _poll_watched(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            watched = list(self._watches)
        if not watched:
            return
        rows = conn.execute(query("finished_among"), {"ids": watched}).fetchall()
        self._fire({row[0] for row in rows})

    def _fire(self, ids: set[int]) -> None:
        with self._lock:
            callbacks = [cb for job_id in ids for cb in self._watches.pop(job_id, [])]
        for callback in callbacks:
            callback()


def _ids(payload: str) -> set[int]:
    return {int(part) for part in payload.split(",") if part.isdigit()}

"""The lease keeper: a thread with its own connection that never waits for a job.

Every lease/3 it renews the leases of all running jobs in one statement and
refreshes the worker's presence; on every tick it stops attempts that ran past
their task's timeout . A busy or
slow job therefore never looks dead, and renewals go on while the worker drains.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from errands.database import connect
from errands.metrics import record_failure
from errands.queue import Job, announce, fail, heartbeat
from errands.workers.running import Entry, RunningJobs, log_fields

_log = structlog.get_logger("errands.worker")


class LeaseKeeper(threading.Thread):
    def __init__(
        self,
        *,
        url: str,
        worker_id: str,
        queues: Sequence[str],
        concurrency: int,
        lease_seconds: float,
        running: RunningJobs,
        retry_delay: Callable[[Job], float],
        on_timeout: Callable[[], None],
    ) -> None:
        super().__init__(name="errands-lease-keeper", daemon=True)
        self._url = url
        self._worker_id = worker_id
        self._queues = list(queues)
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._running = running
        self._retry_delay = retry_delay
        self._on_timeout = on_timeout
        self._stopped = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._renewed_at = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        tick = min(0.25, self._lease / 6)
        next_renewal = 0.0
        while not self._stopped.wait(tick):
            now = time.monotonic()
            if overdue := self._running.take_overdue(now):
                self._fail_timed_out(overdue)
                self._on_timeout()
            if now >= next_renewal:
                next_renewal = now + (self._lease / 3 if self._renew() else min(1.0, tick * 4))
        if self._conn is not None:
            self._conn.close()

    def _renew(self) -> bool:
        held = self._running.held()
        try:
            conn = self._connection()
            still_held = heartbeat(conn, self._worker_id, [e.held for e in held], self._lease)
            announce(conn, self._worker_id, self._queues, self._concurrency)
        except psycopg.OperationalError as exc:
            self._drop_connection()
            self._give_up_expired(held, exc)
            return False
        self._renewed_at = time.monotonic()
        lost = [e for e in held if e.job.id not in still_held]
        for entry in lost:
            _log.warning(
                "lease lost; the result of this attempt will not be written",
                **log_fields(entry, self._worker_id),
            )
        self._running.mark_lost(lost)
        return True

    def _give_up_expired(self, held: list[Entry], exc: Exception) -> None:
        """Past its lease without a renewal, a job may already run elsewhere: treat it as lost."""
        now = time.monotonic()
        expired = [e for e in held if now - max(self._renewed_at, e.claimed) > self._lease]
        _log.warning("cannot renew leases; database unreachable", error=str(exc), running=len(held))
        for entry in expired:
            _log.warning(
                "lease expired while the database was unreachable; job treated as lost",
                **log_fields(entry, self._worker_id),
            )
        self._running.mark_lost(expired)

    def _fail_timed_out(self, overdue: list[Entry]) -> None:
        for entry in overdue:
            error = (
                f"TimeoutError: the task ran past its timeout of {entry.timeout:g}s and was stopped"
            )
            _log.error(
                "job timed out; the worker will be replaced to stop it",
                **log_fields(entry, self._worker_id),
            )
            try:
                state = fail(
                    self._connection(),
                    self._worker_id,
                    entry.held,
                    error,
                    None,
                    self._retry_delay(entry.job),
                )
                if state is not None:
                    record_failure(entry.job, state)
            except psycopg.OperationalError as exc:
                # Its lease expires and the reaper takes it back, attempt spent.
                self._drop_connection()
                _log.warning("could not record the timeout", error=str(exc), job_id=entry.job.id)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url, connect_timeout=5)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

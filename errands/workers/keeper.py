"""The lease keeper: a thread with its own connection that never waits for a job.

Every lease/3 it renews the leases of all running jobs in one statement and
refreshes the worker's presence; on every tick it fails the attempts that ran
past their task's timeout. A busy or slow job therefore never looks dead, and
renewals go on while the worker drains.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import psycopg

from errands.database import LazyConnection
from errands.log import get_logger
from errands.queue.jobs import Job
from errands.queue.lease import heartbeat
from errands.queue.presence import announce
from errands.workers.acks import record_failed_attempt
from errands.workers.execution import Failed
from errands.workers.running import Entry, RunningJobs, log_fields

_log = get_logger("errands.worker")


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
        pgbouncer: bool = False,
    ) -> None:
        super().__init__(name="errands-lease-keeper", daemon=True)
        self._worker_id = worker_id
        self._queues = list(queues)
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._running = running
        self._retry_delay = retry_delay
        self._on_timeout = on_timeout
        self._stopped = threading.Event()
        self._db = LazyConnection(url, pgbouncer=pgbouncer)
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
        self._db.close()

    def _renew(self) -> bool:
        held = self._running.held()
        try:
            conn = self._db.get()
            still_held = heartbeat(conn, self._worker_id, [e.held for e in held], self._lease)
            announce(conn, self._worker_id, self._queues, self._concurrency)
        except psycopg.OperationalError as exc:
            self._db.drop()
            self._give_up_expired(held, exc)
            return False
        self._renewed_at = time.monotonic()
        # A job acknowledged since `held` was taken is not renewed either: it finished, and
        # `mark_lost` skips it because the claim loop no longer holds it.
        not_renewed = [e for e in held if e.job.id not in still_held]
        for entry in self._running.mark_lost(not_renewed):
            _log.warning(
                "lease lost; the result of this attempt will not be written",
                **log_fields(entry, self._worker_id),
            )
        return True

    def _give_up_expired(self, held: list[Entry], exc: Exception) -> None:
        """Past its lease without a renewal, a job may already run elsewhere: treat it as lost."""
        now = time.monotonic()
        expired = [e for e in held if now - max(self._renewed_at, e.claimed) > self._lease]
        _log.warning("cannot renew leases; database unreachable", error=str(exc), running=len(held))
        for entry in self._running.mark_lost(expired):
            _log.warning(
                "lease expired while the database was unreachable; job treated as lost",
                **log_fields(entry, self._worker_id),
            )

    def _fail_timed_out(self, overdue: list[Entry]) -> None:
        for entry in overdue:
            error = (
                f"TimeoutError: the task ran past its timeout of {entry.timeout:g}s and was stopped"
            )
            _log.error(
                "job timed out; the worker will be replaced to stop it",
                **log_fields(entry, self._worker_id),
            )
            failure = Failed(error, None, entry.timeout or 0.0)
            try:
                conn = self._db.get()
                record_failed_attempt(
                    conn, self._worker_id, entry, failure, self._retry_delay(entry.job)
                )
            except psycopg.OperationalError as exc:
                # Its lease expires and the reaper takes it back, attempt spent.
                self._db.drop()
                _log.warning("could not record the timeout", error=str(exc), job_id=entry.job.id)

"""The lease keeper: a thread with its own connection that never waits for a job.

Every lease/3 it renews the leases of all running jobs in one statement and
refreshes the worker's presence; on every tick it fails the attempts that ran
past their task's timeout. A busy or slow job therefore never looks dead, and
renewals go on while the worker drains. Each statement gets lease/3 (at least a
second) before its connection is cut and the next one tried on a new
connection; whether a lease has passed meanwhile is the fence's business
(fence.py), which waits on no statement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import psycopg

from errands.database import LazyConnection, statement_deadline
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
        self._deadline = statement_deadline(lease_seconds)
        self._running = running
        self._retry_delay = retry_delay
        self._on_timeout = on_timeout
        self._stopped = threading.Event()
        self._db = LazyConnection(url, lease_seconds=lease_seconds, pgbouncer=pgbouncer)
        self._failing_since: float | None = None  # renewals fail since then (monotonic)

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
        sent_at = time.monotonic()
        try:
            with self._db.within(self._deadline) as conn:
                still_held = heartbeat(conn, self._worker_id, [e.held for e in held], self._lease)
                announce(conn, self._worker_id, self._queues, self._concurrency)
        except psycopg.OperationalError as exc:
            self._db.drop()
            self._report_failing(exc, held)
            return False
        self._report_recovered()
        self._running.renewed([e for e in held if e.job.id in still_held], sent_at, self._lease)
        # A job acknowledged since `held` was taken is not renewed either: it finished, and
        # `mark_lost` skips it because the claim loop no longer holds it.
        not_renewed = [e for e in held if e.job.id not in still_held]
        for entry in self._running.mark_lost(not_renewed):
            _log.warning(
                "lease lost; the result of this attempt will not be written",
                **log_fields(entry, self._worker_id),
            )
        return True

    def _report_failing(self, exc: Exception, held: list[Entry]) -> None:
        """Once per outage: the fence stops the attempts whose leases pass meanwhile."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            _log.warning(
                "cannot renew leases; attempts stop when their leases pass by this worker's clock",
                error=str(exc),
                running=len(held),
                worker=self._worker_id,
            )

    def _report_recovered(self) -> None:
        if self._failing_since is not None:
            _log.info(
                "leases renewed again",
                after_seconds=round(time.monotonic() - self._failing_since, 2),
                worker=self._worker_id,
            )
            self._failing_since = None

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
                with self._db.within(self._deadline) as conn:
                    record_failed_attempt(
                        conn, self._worker_id, entry, failure, self._retry_delay(entry.job)
                    )
            except psycopg.OperationalError as exc:
                # Its lease expires and the reaper takes it back, attempt spent.
                self._db.drop()
                _log.warning("could not record the timeout", error=str(exc), job_id=entry.job.id)

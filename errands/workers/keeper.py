"""The lease keeper: a thread with its own connection that never waits for a job.

Every lease/3 it renews the leases of all running jobs in one statement and
refreshes the worker's presence; on every tick it fails the attempts that ran
past their task's timeout. A busy or slow job therefore never looks dead, and
renewals go on while the worker drains. Each statement gets lease/3 (at least a
second) before its connection is cut and the next one tried on a new
connection; whether a lease has passed meanwhile is the fence's business
(fence.py), which waits on no statement.

It also carries what running tasks and the queue say to each other: the
progress tasks report, stored at most once a second per job with a renewal
(of those jobs alone when no renewal is due); and cancel requests, heard by
LISTEN on errands_cancel (a notification names the worker, and wakes the
keeper between ticks), else asked for every poll interval (behind a
transaction pooler), and learnt from every renewal besides, in case a
notification was missed.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from errands.database import LazyConnection, statement_deadline
from errands.log import get_logger
from errands.queue.jobs import Job
from errands.queue.lease import cancel_requests, heartbeat
from errands.queue.presence import announce
from errands.workers.acks import record_failed_attempt
from errands.workers.execution import Failed
from errands.workers.running import Entry, RunningJobs, log_fields

CANCEL_CHANNEL = "errands_cancel"
# A job's progress is stored at most this often.
PROGRESS_SECONDS = 1.0

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
        on_cancel: Callable[[list[Entry], str], None] = lambda entries, heard: None,
        poll_seconds: float = 1.0,
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
        self._on_cancel = on_cancel
        self._poll_seconds = poll_seconds
        self._listen = not pgbouncer  # a transaction pooler does not bring NOTIFY back
        self._stopped = threading.Event()
        self._db = LazyConnection(
            url,
            lease_seconds=lease_seconds,
            pgbouncer=pgbouncer,
            on_connect=self._listen_for_cancels if self._listen else None,
        )
        self._failing_since: float | None = None  # renewals fail since then (monotonic)
        self._listener_lost = False  # renew at once: reconnect, listen, and catch up

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        tick = min(0.25, self._lease / 6)
        next_renewal = next_poll = 0.0
        while not self._sleep(tick):
            now = time.monotonic()
            if overdue := self._running.take_overdue(now):
                self._fail_timed_out(overdue)
                self._on_timeout()
            if self._listener_lost:
                self._listener_lost, next_renewal = False, now
            if now >= next_renewal:
                renewed = self._renew(self._running.held(), now)
                next_renewal = now + (self._lease / 3 if renewed else min(1.0, tick * 4))
            elif progress := self._running.progress_due(now, PROGRESS_SECONDS):
                self._renew(list(progress), now, presence=False)  # those jobs' leases only
            if self._listen:
                if self._notified():
                    self._ask_for_cancels("notification")
            elif now >= next_poll:
                next_poll = now + self._poll_seconds
                self._ask_for_cancels("poll")
        self._db.close()

    def _renew(self, held: list[Entry], now: float, presence: bool = True) -> bool:
        """Renew the leases of `held`, storing the progress due among them, and the
        worker's presence with them unless told not to."""
        due = {
            entry: progress
            for entry, progress in self._running.progress_due(now, PROGRESS_SECONDS).items()
            if entry in held
        }
        sent_at = time.monotonic()
        try:
            with self._db.within(self._deadline) as conn:
                renewal = heartbeat(
                    conn,
                    self._worker_id,
                    [e.held for e in held],
                    self._lease,
                    {entry.job.id: json for entry, (_, json) in due.items()},
                )
                if presence:
                    announce(conn, self._worker_id, self._queues, self._concurrency)
        except psycopg.OperationalError as exc:
            self._db.drop()
            self._report_failing(exc, held)
            return False
        self._report_recovered()
        renewed = [e for e in held if e.job.id in renewal.renewed]
        self._running.renewed(renewed, sent_at, self._lease)
        self._running.progress_sent({e: p for e, p in due.items() if e in renewed}, sent_at)
        self._cancel(renewal.cancel_requested, "renewal")
        # A job acknowledged since `held` was taken is not renewed either: it finished, and
        # `mark_lost` skips it because the claim loop no longer holds it. One whose row
        # another transaction holds locked is held still, though not renewed.
        not_held = [e for e in held if e.job.id not in renewal.held]
        for entry in self._running.mark_lost(not_held):
            _log.warning(
                "lease lost; the result of this attempt will not be written",
                **log_fields(entry, self._worker_id),
            )
        return True

    def _sleep(self, seconds: float) -> bool:
        """Wait a tick, or less when a notification arrives; whether to stop."""
        conn = self._db.current if self._listen else None
        if conn is None:
            return self._stopped.wait(seconds)
        try:
            select.select([conn.fileno()], [], [], seconds)
        except (OSError, ValueError, psycopg.OperationalError):
            # Lost under us: reading its notifications drops it, the next renewal reconnects.
            return self._stopped.wait(seconds)
        return self._stopped.is_set()

    # -- cancel requests ---------------------------------------------------------------------

    def _listen_for_cancels(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"listen {CANCEL_CHANNEL}")

    def _notified(self) -> bool:
        """Whether a notification named this worker since the last tick (never waits)."""
        conn = self._db.current
        if conn is None:
            return False
        try:
            return any(n.payload == self._worker_id for n in conn.notifies(timeout=0))
        except psycopg.OperationalError:
            # Requests may have been missed meanwhile: the renewal this calls for at once
            # reconnects, listens again, and brings them.
            self._db.drop()
            self._listener_lost = True
            return False

    def _ask_for_cancels(self, heard: str) -> None:
        attempts = self._running.attempts()
        if not attempts:
            return
        try:
            with self._db.within(self._deadline) as conn:
                wanted = cancel_requests(conn, self._worker_id, [e.held for e in attempts])
        except psycopg.OperationalError:
            self._db.drop()  # renewals report an outage; their answers carry requests too
            return
        self._cancel(wanted, heard)

    def _cancel(self, job_ids: set[int], heard: str) -> None:
        """Tell the worker of the attempts newly asked to cancel, and how it heard."""
        if job_ids and (entries := self._running.request_cancel(job_ids)):
            self._on_cancel(entries, heard)

    # -- outages and timeouts ---------------------------------------------------------------

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
            if entry.in_app_transaction:
                # Its completion is in the application's transaction, which holds the row:
                # the job is completed if that commits, else released when the process goes.
                continue
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

"""The jobs a worker process is running now, shared by its claim loop and its lease keeper."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from errands.queue.jobs import Job
from errands.queue.lease import Held


@dataclass(eq=False)
class Entry:
    """One claimed attempt. Identity matters: a newer claim of the same job is another Entry."""

    job: Job
    claimed: float = field(default_factory=time.monotonic)
    # When the lease may end, by this process's monotonic clock: the lease runs from the
    # database's now() of the claim or renewal, which came after the statement was sent,
    # so the send time plus the lease never falls after the lease's true end.
    expires: float = math.inf
    timeout: float | None = None  # the task's, once the attempt runs
    deadline: float | None = None  # monotonic time past which the attempt is timed out
    started: bool = False  # running on a thread or the event loop, not waiting for a slot
    cancel: Callable[[], object] | None = None  # stops it, for a coroutine
    ended: bool = False  # the coroutine returned or took its cancellation
    lost: bool = False  # the lease is gone: the outcome must not be written
    timed_out: bool = False  # failed by the lease keeper: the outcome is moot
    fenced: bool = False  # stopped when its lease passed by our clock: the outcome is moot
    # A cancel was requested: a coroutine is cancelled, a thread task told through
    # current_job().cancel_requested; the database records the job cancelled at its end.
    cancel_requested: bool = False
    # The progress the task reported: (how many reports so far, the latest as JSON), and
    # how many of those reports the lease keeper had when it last stored one, and when.
    progress: tuple[int, str] | None = None
    progress_stored: int = 0
    progress_stored_at: float = -math.inf
    # current_job().complete_in(): the completion is written, or being written, in the
    # application's transaction, which holds the job's row until it ends; the lease is
    # renewed no more (the row is locked) and the fence leaves the attempt alone.
    in_app_transaction: bool = False
    completed_in: str | None = None  # that transaction's id, once the completion is written

    @property
    def held(self) -> Held:
        return Held(self.job.id, self.job.attempts)

    def report_progress(self, progress_json: str) -> None:
        """Called from the task: one assignment, so the keeper reads a consistent pair."""
        reports = self.progress[0] + 1 if self.progress else 1
        self.progress = (reports, progress_json)

    def unstored_progress(self) -> str | None:
        """The latest progress, if the keeper has not stored it yet."""
        progress = self.progress
        return progress[1] if progress and progress[0] > self.progress_stored else None

    @property
    def settled(self) -> bool:
        """Whether the worker has already dealt with this attempt's end (logged, counted)."""
        return self.timed_out or self.fenced


class RunningJobs:
    """Thread-safe registry of the attempts a worker holds (running or about to), by job id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, Entry] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def hold(self, job: Job, leased_at: float, lease_seconds: float) -> Entry:
        """A claimed attempt, whose claim statement was sent at `leased_at` (monotonic)."""
        entry = Entry(job, expires=leased_at + lease_seconds)
        with self._lock:
            # A job claimed again while an older attempt of it still runs here
            # (its lease was lost, the job reclaimed): the old attempt is stale.
            if stale := self._entries.get(job.id):
                stale.lost = True
            self._entries[job.id] = entry
        return entry

    def begin(self, entry: Entry, timeout: float | None, grace: float = 0.0) -> None:
        """The attempt starts running now; its timeout counts from here.

        The lease keeper stops it `grace` seconds past its timeout: a coroutine
        is cancelled at its timeout by the event loop and gets that long to go.
        """
        with self._lock:
            entry.started = True
            entry.timeout = timeout
            entry.deadline = time.monotonic() + timeout + grace if timeout else None

    def finish(self, entry: Entry) -> bool:
        """Forget `entry`; True when its outcome may still be written."""
        with self._lock:
            if self._entries.get(entry.job.id) is entry:
                del self._entries[entry.job.id]
            return not entry.lost

    def held(self) -> list[Entry]:
        """The attempts whose leases to renew: those in an application's transaction are
        left alone, their rows locked by it."""
        with self._lock:
            return [e for e in self._entries.values() if not e.lost and not e.in_app_transaction]

    def attempts(self) -> list[Entry]:
        """Every attempt held here, in an application's transaction or not."""
        with self._lock:
            return [e for e in self._entries.values() if not e.lost]

    def request_cancel(self, job_ids: set[int]) -> list[Entry]:
        """Mark the attempts of `job_ids` held here as asked to cancel; returns those newly so."""
        with self._lock:
            marked = [
                e
                for e in self._entries.values()
                if e.job.id in job_ids and not e.lost and not e.cancel_requested
            ]
            for entry in marked:
                entry.cancel_requested = True
        return marked

    def progress_due(self, now: float, interval: float) -> dict[Entry, tuple[int, str]]:
        """Progress to store now: reported since it was last stored, at least `interval` ago."""
        with self._lock:
            due = {}
            for entry in self._entries.values():
                progress = entry.progress
                if (
                    progress is not None
                    and progress[0] > entry.progress_stored
                    and now - entry.progress_stored_at >= interval
                    and not entry.lost
                    and not entry.in_app_transaction
                ):
                    due[entry] = progress
            return due

    def progress_sent(self, sent: dict[Entry, tuple[int, str]], at: float) -> None:
        """The progress in `sent` was stored (its statement sent at `at`)."""
        with self._lock:
            for entry, (reports, _) in sent.items():
                entry.progress_stored = max(entry.progress_stored, reports)
                entry.progress_stored_at = at

    def mark_lost(self, entries: list[Entry]) -> list[Entry]:
        """Mark the attempts among `entries` still held here as lost; returns those.

        An attempt that has finished meanwhile is skipped: its outcome is being
        written, and the fenced write tells whether its lease was really lost.
        """
        with self._lock:
            marked = [e for e in entries if self._entries.get(e.job.id) is e and not e.lost]
            for entry in marked:
                entry.lost = True
        return marked

    def renewed(self, entries: list[Entry], sent_at: float, lease_seconds: float) -> None:
        """The renewal sent at `sent_at` (monotonic) extended these attempts' leases."""
        with self._lock:
            for entry in entries:
                entry.expires = max(entry.expires, sent_at + lease_seconds)

    def take_expired(self, now: float) -> list[Entry]:
        """Remove and return the attempts whose lease has passed by our clock (fenced)."""
        with self._lock:
            expired = [
                e
                for e in self._entries.values()
                if e.expires <= now and not e.lost and not e.in_app_transaction
            ]
            for entry in expired:
                entry.lost = entry.fenced = True
                del self._entries[entry.job.id]
        return expired

    def next_expiry(self) -> float:
        """The earliest lease end among the attempts held (inf when none)."""
        with self._lock:
            fenced = [e for e in self._entries.values() if not e.lost and not e.in_app_transaction]
            return min((e.expires for e in fenced), default=math.inf)

    def take_overdue(self, now: float) -> list[Entry]:
        """Remove and return the attempts past their deadline: their outcome is dropped."""
        with self._lock:
            overdue = [
                e
                for e in self._entries.values()
                if e.deadline is not None and e.deadline < now and not e.lost
            ]
            for entry in overdue:
                entry.lost = entry.timed_out = True
                del self._entries[entry.job.id]
        return overdue


def log_fields(entry: Entry, worker_id: str) -> dict[str, Any]:
    """What every log line about a job carries."""
    return {
        "job_id": entry.job.id,
        "task": entry.job.task,
        "attempt": entry.job.attempts,
        "worker": worker_id,
    }

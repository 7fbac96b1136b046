"""Acknowledgements: writing the outcomes of finished attempts, batched and fenced.

The claim loop hands every finished attempt to `Acknowledgements` (the shape of
River's job completer and PgQueuer's job buffer). Successes wait up to
ACK_FLUSH_SECONDS for others to share their statement, which is also the
worker's next claim (one round trip, one commit), except those of jobs that other
jobs wait for (the claim said so), sent at once with a claim repeated right after
(the completing statement's own claim cannot see the children it made pending),
so a chain runs a step per round trip; failures (and reschedules asked for with
errands.Retry) are written at once, one by one, each with its own retry delay
and traceback. Every write is fenced, so a batch
cut off by a lost connection is kept and sent again: a second copy changes
nothing. The window is the time in which a crash re-runs a job that had
already finished.

An attempt whose task completed its job inside the application's transaction
(current_job().complete_in) owes nothing once that transaction committed: the
worker reads the transaction's fate (pg_xact_status), and writes the attempt's
outcome only when the completion did not commit, a success then counting as a
failure (its effects were rolled back with it), fenced as ever.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from errands.log import get_logger, lines_together
from errands.metrics import metrics, record_failure
from errands.queue.jobs import Job, JobState
from errands.queue.lease import (
    AsyncSlots,
    Completed,
    Completion,
    complete_and_claim,
    completion_fates,
    fail,
    reschedule,
)
from errands.workers.execution import Failed, Outcome, Rescheduled, Succeeded
from errands.workers.running import Entry, log_fields

# The longest a finished job waits for its acknowledgement to be sent with others.
ACK_FLUSH_SECONDS = 0.01
# How often to ask again about complete_in transactions still open when their task ended.
SETTLE_SECONDS = 1.0

AckMode = Literal["batched", "immediate"]

_log = get_logger("errands.worker")


@dataclass(frozen=True)
class ClaimRequest:
    """The claim to send with the acknowledgements: from `queues`, up to `limit` jobs for
    threads and what `async_slots` allow for coroutines."""

    queues: Sequence[str]
    limit: int
    lease_seconds: float
    async_slots: AsyncSlots = field(default_factory=AsyncSlots)

    @property
    def wanted(self) -> bool:
        return self.limit > 0 or self.async_slots.limit > 0

    def nothing(self) -> ClaimRequest:
        """The same request claiming no job: acknowledgements only."""
        return ClaimRequest(self.queues, 0, self.lease_seconds)


class Acknowledgements:
    """The outcomes a worker owes the database, and the policy for when to send them."""

    def __init__(
        self,
        *,
        worker_id: str,
        mode: AckMode,
        retry_delay: Callable[[Job], float],
        on_lost: Callable[[Entry], None],
        window: float = ACK_FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker_id = worker_id
        self._mode = mode
        self._retry_delay = retry_delay
        self._on_lost = on_lost
        self._window = window
        self._clock = clock
        self._successes: list[tuple[Entry, Succeeded]] = []
        # From the last claim: when a claim may find jobs a limit holds back now (lease.Claimed).
        self.recheck_seconds: float | None = None
        self._failures: list[tuple[Entry, Failed | Rescheduled]] = []
        self._oldest = 0.0  # when the oldest unsent success finished
        # Attempts that wrote their completion in an application's transaction (complete_in),
        # until its fate is known; and those whose transaction committed yet may have
        # rolled the completion back to a savepoint: their outcome's fenced write tells.
        self._handed_over: list[tuple[Entry, Outcome]] = []
        self._settle_at = 0.0
        self._committed: set[Entry] = set()
        # Claimed jobs that other jobs wait for, until their attempt ends; and whether an
        # unsent success is one of them (the batch is then due at once).
        self._awaited: set[int] = set()
        self._hands_over = False

    def __len__(self) -> int:
        """Outcomes not yet written."""
        return len(self._successes) + len(self._failures) + len(self._handed_over)

    def add(self, entry: Entry, outcome: Outcome) -> None:
        if entry.completed_in is not None:
            self._handed_over.append((entry, outcome))
            self._settle_at = self._clock()  # ask at once: most have committed already
            return
        awaited = entry.job.id in self._awaited
        self._awaited.discard(entry.job.id)
        if not isinstance(outcome, Succeeded):
            self._failures.append((entry, outcome))
            return
        self._hands_over = self._hands_over or awaited
        if not self._successes:
            self._oldest = self._clock()
        self._successes.append((entry, outcome))

    def due(self, *, flush: bool) -> bool:
        """Whether to write now. `flush`: nothing else will join the batch (idle or draining)."""
        if self._failures or self._hands_over or self._settling_due():
            return True
        if not self._successes:
            return False
        return flush or self._mode == "immediate" or self._clock() - self._oldest >= self._window

    def seconds_until_due(self, ceiling: float) -> float:
        """How long the loop may sleep before a batch falls due, at most `ceiling`."""
        if self._failures or self._hands_over:
            return 0.0
        now = self._clock()
        waits = [ceiling]
        if self._successes:
            waits.append(self._oldest + self._window - now)
        if self._handed_over:
            waits.append(self._settle_at - now)
        return max(0.0, min(waits))

    def write(self, conn: psycopg.Connection[Any], claiming: ClaimRequest) -> list[Job]:
        """Write what is owed, in one round trip with the claim; returns the jobs claimed.

        On a lost connection (OperationalError) whatever was not written stays owed.
        """
        if self._settling_due():
            self._settle(conn)
        while self._failures:
            entry, outcome = self._failures[0]
            if isinstance(outcome, Rescheduled):
                written = record_reschedule(conn, self._worker_id, entry, outcome)
            else:
                retry_in = self._retry_delay(entry.job)
                state = record_failed_attempt(conn, self._worker_id, entry, outcome, retry_in)
                written = state is not None
            self._failures.pop(0)
            if entry in self._committed:
                self._committed.discard(entry)
                if not written:  # the completion had committed after all
                    _report_completed_in(entry, outcome, self._worker_id)
                    continue
            if not written:
                self._on_lost(entry)
        return self._complete_and_claim(conn, claiming)

    def _settling_due(self) -> bool:
        return bool(self._handed_over) and self._clock() >= self._settle_at

    def _settle(self, conn: psycopg.Connection[Any]) -> None:
        """Learn the fate of the complete_in transactions of ended attempts; an attempt whose
        completion did not commit has its outcome written (a success as a failure)."""
        handed = [(entry.held, entry.completed_in or "") for entry, _ in self._handed_over]
        fates = {fate.id: fate for fate in completion_fates(conn, self._worker_id, handed)}
        waiting = []
        for entry, outcome in self._handed_over:
            fate = fates[entry.job.id]
            if not fate.settled:
                waiting.append((entry, outcome))
            elif fate.completed:
                _report_completed_in(entry, outcome, self._worker_id)
            else:
                if fate.fate == "committed":
                    self._committed.add(entry)
                self._failures.append((entry, _undone(outcome)))
        self._handed_over = waiting
        self._settle_at = self._clock() + SETTLE_SECONDS

    def _complete_and_claim(
        self, conn: psycopg.Connection[Any], claiming: ClaimRequest
    ) -> list[Job]:
        if not self._successes and not claiming.wanted:
            return []
        sent, self._successes = self._successes, []
        hands_over, self._hands_over = self._hands_over, False
        owner, queues, limit, lease, slots = (
            self._worker_id,
            claiming.queues,
            claiming.limit,
            claiming.lease_seconds,
            claiming.async_slots,
        )
        done = [
            Completion(e.job.id, e.job.attempts, o.result_json, e.unstored_progress())
            for e, o in sent
        ]
        try:
            if self._mode == "immediate" and done:
                self._report(sent, complete_and_claim(conn, owner, done, (), 0, 0).completed)
                sent, done = [], []
                if not claiming.wanted:
                    return []
            answer = complete_and_claim(conn, owner, done, queues, limit, lease, slots)
        except psycopg.OperationalError:
            self._successes = sent + self._successes  # fenced: safe to send again
            self._hands_over = self._hands_over or hands_over
            raise
        self._report(sent, answer.completed)
        self.recheck_seconds = answer.recheck_seconds
        self._awaited |= answer.awaited
        if not (hands_over and done and not answer.jobs and claiming.wanted):
            return answer.jobs
        # The children made pending are visible to a new statement only.
        again = complete_and_claim(conn, owner, (), queues, limit, lease, slots)
        self.recheck_seconds = again.recheck_seconds
        self._awaited |= again.awaited
        return again.jobs

    def _report(self, sent: list[tuple[Entry, Succeeded]], completed: Completed) -> None:
        """A log line per completed job, the lines of the batch written together (see
        log.lines_together), the counter moved once per queue and task."""
        log = _log.bind()  # the logging configuration, looked up once for the batch
        counts: Counter[tuple[str, str]] = Counter()
        with lines_together():
            for entry, outcome in sent:
                if entry.job.id in completed.cancelled:
                    record_cancelled(entry, self._worker_id, "ran to its end")
                elif entry.job.id in completed.ids:
                    fields = log_fields(entry, self._worker_id)
                    log.info("job completed", seconds=round(outcome.seconds, 4), **fields)
                    counts[entry.job.queue, entry.job.task] += 1
                else:
                    self._on_lost(entry)
        for (queue, task), n in counts.items():
            metrics().jobs_completed.labels(queue, task).inc(n)


def record_failed_attempt(
    conn: psycopg.Connection[Any],
    worker_id: str,
    entry: Entry,
    outcome: Failed,
    retry_in: float,
) -> JobState | None:
    """Write a failed attempt (fenced), count it and log it; None when the lease was lost."""
    state = fail(
        conn,
        worker_id,
        entry.held,
        outcome.error,
        outcome.traceback,
        retry_in,
        permanent=outcome.permanent,
    )
    if state is JobState.CANCELLED:
        record_cancelled(entry, worker_id, outcome.error)
    elif state is not None:
        record_failure(entry.job, state)
        where = {"where": outcome.where} if outcome.where else {}
        _log.warning(
            "job failed",
            error=outcome.error,
            state=state.value,
            **where,
            **log_fields(entry, worker_id),
        )
    return state


def record_reschedule(
    conn: psycopg.Connection[Any], worker_id: str, entry: Entry, outcome: Rescheduled
) -> bool:
    """Write a reschedule asked for with errands.Retry (fenced); False when the lease was lost."""
    state = reschedule(conn, worker_id, entry.held, outcome.reason, outcome.in_seconds)
    if state is JobState.CANCELLED:
        record_cancelled(entry, worker_id, f"asked to run again: {outcome.reason}")
    elif state is not None:
        _log.info(
            "job rescheduled",
            reason=outcome.reason,
            retry_in=outcome.in_seconds,
            **log_fields(entry, worker_id),
        )
    return state is not None


def record_cancelled(entry: Entry, worker_id: str, ending: str) -> None:
    """An attempt ended after a cancel request, and its job was recorded cancelled."""
    _log.info("job cancelled", attempt_ended=ending, **log_fields(entry, worker_id))
    metrics().cancels_honoured.labels(entry.job.queue, entry.job.task).inc()


def _report_completed_in(entry: Entry, outcome: Outcome, worker_id: str) -> None:
    """The job was completed in the application's transaction, which committed."""
    fields = log_fields(entry, worker_id)
    _log.info("job completed in the application's transaction", **fields)
    metrics().jobs_completed.labels(entry.job.queue, entry.job.task).inc()
    if not isinstance(outcome, Succeeded):
        _log.warning(
            "the task did not return after its completion committed; the job stays completed",
            outcome=outcome.error if isinstance(outcome, Failed) else outcome.reason,
            **fields,
        )


def _undone(outcome: Outcome) -> Failed | Rescheduled:
    """The outcome to write for an attempt whose complete_in transaction did not commit: its
    effects were rolled back with the completion, so a success is a failure (retried)."""
    if not isinstance(outcome, Succeeded):
        return outcome
    return Failed(
        "the completion complete_in() wrote did not commit (its transaction rolled back), "
        "so the job runs again",
        None,
        outcome.seconds,
    )

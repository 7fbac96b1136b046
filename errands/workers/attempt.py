"""A running task's side of its attempt, reached through errands.current_job().

Cancel requests and progress travel through the attempt's Entry, which the
claim loop and the lease keeper share (running.py). complete_in() writes the
completion on the application's own connection, inside its transaction, and
from then on the attempt's fate is that transaction's: the lease keeper stops
renewing the lease (the transaction holds the row) and the fence leaves the
attempt alone; once the task has ended, the acknowledgements (acks.py) read
whether the transaction committed.
"""

from __future__ import annotations

from typing import Any

import psycopg

from errands.errors import Cancelled, LeaseLost
from errands.queue.lease import HandOver, complete_in_steps
from errands.queue.steps import Operation, run, run_async
from errands.tasks import AttemptLink
from errands.workers.running import Entry


class WorkerAttempt(AttemptLink):
    def __init__(self, entry: Entry, worker_id: str) -> None:
        self._entry = entry
        self._worker_id = worker_id

    @property
    def cancel_requested(self) -> bool:
        return self._entry.cancel_requested

    def report_progress(self, progress_json: str) -> None:
        self._entry.report_progress(progress_json)

    def complete_in(self, conn: psycopg.Connection[Any], result_json: str) -> None:
        self._begin()
        try:
            answer = run(conn, self._steps(result_json))
        except BaseException:
            self._end(None)
            raise
        self._end(answer)

    async def complete_in_async(self, conn: psycopg.AsyncConnection[Any], result_json: str) -> None:
        self._begin()
        try:
            answer = await run_async(conn, self._steps(result_json))
        except BaseException:
            self._end(None)
            raise
        self._end(answer)

    def _steps(self, result_json: str) -> Operation[HandOver]:
        entry = self._entry
        return complete_in_steps(
            self._worker_id, entry.held, result_json, entry.unstored_progress()
        )

    def _begin(self) -> None:
        # Before the statement: a renewal sent from now on leaves the row alone rather
        # than wait for the application's transaction (one sent already skips it locked).
        self._entry.in_app_transaction = True

    def _end(self, answer: HandOver | None) -> None:
        """Record what the statement did (None: it failed); raise what the task must hear."""
        entry = self._entry
        if answer is not None and answer.completed:
            entry.completed_in = answer.xact
            return
        entry.in_app_transaction = entry.completed_in is not None
        if answer is None:
            return
        if answer.cancel_requested:
            raise Cancelled(entry.job.id)
        if entry.completed_in == answer.xact:
            return  # completed earlier in this very transaction: once is enough
        raise LeaseLost(entry.job.id, entry.job.attempts)

"""current_job().complete_in(), in process: the completion commits or rolls back with the
application's own writes, fenced like every write of the attempt; the worker then learns
the transaction's fate and writes the attempt's outcome only if the completion did not
commit. (tests/test_running_daemon.py tries it through the real daemon.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from errands import Cancelled, Client, InvalidArgument, JobState, LeaseLost
from errands.queue.lease import claim, release
from errands.tasks import CurrentJob
from errands.workers.acks import SETTLE_SECONDS, Acknowledgements, ClaimRequest
from errands.workers.attempt import WorkerAttempt
from errands.workers.execution import Failed, Succeeded
from errands.workers.running import Entry, RunningJobs

Conn = psycopg.Connection[Any]
OWNER = "w1"
LEDGER = "create table ledger (job_id bigint primary key, amount int not null)"


@pytest.fixture
def app(db_url: str, conn: Conn) -> Any:
    """The application's own connection, in transactions of its own (not autocommit)."""
    conn.execute(LEDGER)
    with psycopg.connect(db_url) as connection:
        yield connection


class Attempt:
    """A claimed attempt as a worker holds it, and the task's view of it."""

    def __init__(self, client: Client, conn: Conn) -> None:
        client.enqueue("charge")
        (job,) = claim(conn, OWNER, ["default"], 1, 30)
        self.running = RunningJobs()
        self.entry = self.running.hold(job, time.monotonic(), 30)
        self.current = CurrentJob(
            job.id, job.task, job.queue, job.attempts, job.max_attempts, {}, job.run_at,
            WorkerAttempt(self.entry, OWNER),
        )  # fmt: skip

    def charge(self, app: Conn, amount: int = 10) -> None:
        """The ledger example: the application's row and the completion, in one transaction."""
        app.execute("insert into ledger values (%s, %s)", (self.current.id, amount))
        self.current.complete_in(app, {"charged": amount})


def job_state(client: Client, job_id: int) -> JobState:
    job = client.get(job_id)
    assert job is not None
    return job.state


def ledger(conn: Conn) -> list[tuple[int, int]]:
    return conn.execute("select job_id, amount from ledger").fetchall()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def acks(lost: list[Entry] | None = None, clock: Clock | None = None) -> Acknowledgements:
    return Acknowledgements(
        worker_id=OWNER,
        mode="batched",
        retry_delay=lambda job: 0.0,
        on_lost=(lost if lost is not None else []).append,
        clock=clock or Clock(),
    )


NO_CLAIM = ClaimRequest(["default"], 0, 30)


def test_the_applications_row_and_the_completion_commit_together(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with app.transaction():
        attempt.charge(app)
        assert job_state(client, attempt.current.id) is JobState.IN_PROGRESS  # not yet committed
    job = client.get(attempt.current.id)
    assert job is not None and (job.state, job.result) == (JobState.COMPLETED, {"charged": 10})
    assert ledger(conn) == [(attempt.current.id, 10)]


def test_a_rollback_takes_the_completion_back_with_the_applications_row(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with pytest.raises(ZeroDivisionError), app.transaction():
        attempt.charge(app)
        1 / 0  # noqa: B018
    assert job_state(client, attempt.current.id) is JobState.IN_PROGRESS
    assert ledger(conn) == []


def test_an_attempt_whose_lease_was_taken_gets_lease_lost_and_its_writes_roll_back(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    release(conn, OWNER)  # the job went back to the queue, and another worker took it
    claim(conn, "w2", ["default"], 1, 30)
    with pytest.raises(LeaseLost), app.transaction():
        attempt.charge(app)
    assert ledger(conn) == []
    job = client.get(attempt.current.id)
    assert job is not None and (job.state, job.lease_owner) == (JobState.IN_PROGRESS, "w2")


def test_a_cancel_requested_first_refuses_the_completion_and_its_writes_roll_back(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    client.cancel(attempt.current.id)
    with pytest.raises(Cancelled), app.transaction():
        attempt.charge(app)
    assert ledger(conn) == []
    assert job_state(client, attempt.current.id) is JobState.IN_PROGRESS  # until it ends


def test_a_second_call_in_the_same_transaction_changes_nothing(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with app.transaction():
        attempt.charge(app)
        attempt.current.complete_in(app, "ignored")
    job = client.get(attempt.current.id)
    assert job is not None and job.result == {"charged": 10}


def test_a_call_in_a_later_transaction_after_the_commit_gets_lease_lost(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with app.transaction():
        attempt.charge(app)
    with pytest.raises(LeaseLost), app.transaction():
        app.execute("update ledger set amount = amount * 2")
        attempt.current.complete_in(app)
    assert ledger(conn) == [(attempt.current.id, 10)]


def test_an_asyncio_connection_completes_the_job_when_awaited(
    client: Client, conn: Conn, db_url: str
) -> None:
    conn.execute(LEDGER)
    attempt = Attempt(client, conn)

    async def charge() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as app, app.transaction():
            await app.execute("insert into ledger values (%s, 10)", (attempt.current.id,))
            await attempt.current.complete_in(app, "charged")

    asyncio.run(charge())
    assert job_state(client, attempt.current.id) is JobState.COMPLETED
    assert ledger(conn) == [(attempt.current.id, 10)]


@pytest.mark.parametrize(
    ("conn_given", "result", "field"),
    [(None, None, "conn"), ("postgresql://", None, "conn"), ("app", float("nan"), "result")],
)
def test_a_bad_argument_is_refused_naming_it_before_anything_is_written(
    client: Client, conn: Conn, app: Conn, conn_given: Any, result: Any, field: str
) -> None:
    attempt = Attempt(client, conn)
    with pytest.raises(InvalidArgument) as refused:
        attempt.current.complete_in(app if conn_given == "app" else conn_given, result)
    assert [e.field for e in refused.value.errors] == [field]
    assert job_state(client, attempt.current.id) is JobState.IN_PROGRESS


def test_once_handed_over_the_lease_is_neither_renewed_nor_fenced_by_the_clock(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with app.transaction():
        attempt.charge(app)
        assert attempt.running.held() == []  # the transaction holds the row: no renewal
        assert attempt.running.take_expired(time.monotonic() + 3600) == []


def test_a_lease_lost_leaves_the_attempt_to_the_renewals_and_the_fence(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    release(conn, OWNER)
    with pytest.raises(LeaseLost), app.transaction():
        attempt.charge(app)
    assert attempt.running.held() == [attempt.entry]


# -- what the worker writes once the task has ended ------------------------------------------


def test_nothing_is_written_after_a_completion_that_committed_even_if_the_task_raised(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with app.transaction():
        attempt.charge(app)
    lost: list[Entry] = []
    owed = acks(lost)
    owed.add(attempt.entry, Failed("RuntimeError: after the commit", None, 0.1))
    assert owed.due(flush=False)
    owed.write(conn, NO_CLAIM)
    job = client.get(attempt.current.id)
    assert job is not None and (job.state, job.errors, lost) == (JobState.COMPLETED, [], [])
    assert len(owed) == 0


def test_a_success_whose_completion_rolled_back_is_written_as_a_failure_and_retried(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with pytest.raises(ZeroDivisionError), app.transaction():
        attempt.charge(app)
        1 / 0  # noqa: B018
    owed = acks()
    owed.add(attempt.entry, Succeeded('"returned anyway"', 0.1))
    owed.write(conn, NO_CLAIM)
    job = client.get(attempt.current.id)
    assert job is not None and job.state is JobState.FAILED
    assert "did not commit" in (job.last_error or "")


def test_a_completion_rolled_back_to_a_savepoint_of_a_committed_transaction_is_not_taken(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    with app.transaction():
        with pytest.raises(ZeroDivisionError), app.transaction():  # a savepoint
            attempt.charge(app)
            1 / 0  # noqa: B018
        app.execute("insert into ledger values (0, 0)")  # the outer transaction commits
    owed = acks()
    owed.add(attempt.entry, Succeeded("null", 0.1))
    owed.write(conn, NO_CLAIM)
    assert job_state(client, attempt.current.id) is JobState.FAILED


def test_a_transaction_still_open_when_the_task_ended_is_asked_about_again_later(
    client: Client, conn: Conn, app: Conn
) -> None:
    attempt = Attempt(client, conn)
    attempt.charge(app)  # and the task ended, leaving its transaction open
    clock = Clock()
    owed = acks(clock=clock)
    owed.add(attempt.entry, Succeeded("null", 0.1))
    conn.execute("set lock_timeout = '5s'")  # a wait on the locked row would fail the test
    owed.write(conn, NO_CLAIM)
    assert len(owed) == 1 and not owed.due(flush=True)
    assert owed.seconds_until_due(60) == SETTLE_SECONDS
    app.commit()
    clock.now += SETTLE_SECONDS
    assert owed.due(flush=False)
    owed.write(conn, NO_CLAIM)
    assert len(owed) == 0
    assert job_state(client, attempt.current.id) is JobState.COMPLETED

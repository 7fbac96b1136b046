"""Cancelling a running job, through the real statements: the request is recorded, the
worker told, and whatever statement ends the attempt records the job cancelled."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from errands import Client, InvalidState, JobState
from errands.queue.control import Filter, bulk, count_matching
from errands.queue.lease import (
    Completion,
    Held,
    cancel_requests,
    claim,
    complete,
    complete_and_claim,
    fail,
    heartbeat,
    reap,
    release,
    reschedule,
)

Conn = psycopg.Connection[Any]


def running_job(client: Client, conn: Conn, owner: str = "w1", **options: Any) -> Held:
    job = client.enqueue("t", **options)
    (claimed,) = claim(conn, owner, ["default"], 1, 30)
    assert claimed.id == job.id
    return Held(claimed.id, claimed.attempts)


def test_cancel_of_a_running_job_records_the_request_and_leaves_it_running(
    client: Client, conn: Conn
) -> None:
    held = running_job(client, conn)
    asked = client.cancel(held.id)
    assert asked.state is JobState.IN_PROGRESS and asked.lease_owner == "w1"
    assert asked.cancel_requested_at is not None and asked.finished_at is None
    again = client.cancel(held.id)  # asking twice changes nothing
    assert again.cancel_requested_at == asked.cancel_requested_at


def test_the_worker_holding_the_job_is_notified_by_its_lease_owner(
    client: Client, conn: Conn, db_url: str
) -> None:
    held = running_job(client, conn)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen errands_cancel")
        client.cancel(held.id)
        (heard,) = listener.notifies(timeout=5, stop_after=1)
    assert heard.payload == "w1"
    assert cancel_requests(conn, "w1", [held]) == {held.id}
    assert cancel_requests(conn, "w2", [held]) == set()  # the fence: only the holder's


def test_a_success_after_the_request_is_recorded_cancelled_with_its_result(
    client: Client, conn: Conn
) -> None:
    held = running_job(client, conn)
    client.cancel(held.id)
    completed = complete_and_claim(
        conn, "w1", [Completion(held.id, held.attempts, '"done"')], ["default"], 0, 30
    ).completed
    assert completed.ids == completed.cancelled == {held.id}
    job = client.get(held.id)
    assert job is not None and job.state is JobState.CANCELLED
    assert job.result == "done" and job.finished_at is not None and job.lease_owner is None


def test_a_failure_with_budget_left_after_the_request_is_cancelled_never_retried(
    client: Client, conn: Conn
) -> None:
    held = running_job(client, conn, max_attempts=5)
    client.cancel(held.id)
    assert fail(conn, "w1", held, "boom", None, retry_in=0) is JobState.CANCELLED
    job = client.get(held.id)
    assert job is not None and job.state is JobState.CANCELLED
    assert [e["error"] for e in job.errors] == ["boom"]  # the history keeps what happened
    assert claim(conn, "w2", ["default"], 1, 30) == []


def test_a_retry_asked_by_the_task_after_the_request_is_cancelled(
    client: Client, conn: Conn
) -> None:
    held = running_job(client, conn)
    client.cancel(held.id)
    assert reschedule(conn, "w1", held, "Retry: later", 0) is JobState.CANCELLED
    assert claim(conn, "w2", ["default"], 1, 30) == []


@pytest.mark.parametrize("recover", ["release", "reap"])
def test_a_lost_worker_whose_job_was_asked_to_cancel_leaves_it_cancelled(
    client: Client, conn: Conn, recover: str
) -> None:
    held = running_job(client, conn)
    client.cancel(held.id)
    if recover == "release":
        (recovered,) = release(conn, "w1")
    else:
        conn.execute("update errands_jobs set lease_expires_at = now() - interval '1 s'")
        (recovered,) = reap(conn) or []
    assert (recovered.id, recovered.state) == (held.id, JobState.CANCELLED)
    assert claim(conn, "w2", ["default"], 1, 30) == []


def test_a_completion_committed_before_the_request_stays_completed(
    client: Client, conn: Conn
) -> None:
    held = running_job(client, conn)
    complete(conn, "w1", [Completion(held.id, held.attempts, "1")])
    with pytest.raises(InvalidState, match="completed"):
        client.cancel(held.id)
    job = client.get(held.id)
    assert job is not None and (job.state, job.cancel_requested_at) == (JobState.COMPLETED, None)


def test_a_request_waiting_on_a_completion_in_flight_answers_as_the_completion_ends(
    client: Client, conn: Conn, db_url: str
) -> None:
    held = running_job(client, conn)
    with psycopg.connect(db_url) as app:  # an application's transaction, completing the job
        complete(app, "w1", [Completion(held.id, held.attempts, "1")])
        answer: list[Any] = []
        cancel = threading.Thread(target=lambda: answer.append(_cancel(client, held.id)))
        cancel.start()
        cancel.join(0.5)
        assert cancel.is_alive(), "the request waits for the transaction holding the row"
        app.commit()
        cancel.join(10)
    assert answer == ["cannot cancel job 1: it is completed"]


def _cancel(client: Client, job_id: int) -> str:
    try:
        return client.cancel(job_id).state.value
    except InvalidState as exc:
        return str(exc)


def test_a_manual_retry_of_a_job_cancelled_while_running_starts_afresh(
    client: Client, conn: Conn
) -> None:
    held = running_job(client, conn)
    client.cancel(held.id)
    complete(conn, "w1", [Completion(held.id, held.attempts, "1")])
    retried = client.retry(held.id)
    assert (retried.state, retried.cancel_requested_at) == (JobState.PENDING, None)
    (again,) = claim(conn, "w2", ["default"], 1, 30)
    complete(conn, "w2", [Completion(again.id, again.attempts, "2")])
    job = client.get(held.id)
    assert job is not None and job.state is JobState.COMPLETED


def test_the_database_refuses_a_cancel_request_on_a_job_that_is_not_running(
    client: Client, conn: Conn
) -> None:
    job = client.enqueue("t")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update errands_jobs set cancel_requested_at = now() where id = %s", (job.id,))


def test_a_heartbeat_skips_a_row_another_transaction_holds_without_waiting_or_losing_it(
    client: Client, conn: Conn, db_url: str
) -> None:
    locked = running_job(client, conn)
    other = running_job(client, conn)
    with psycopg.connect(db_url) as app:
        app.execute("select 1 from errands_jobs where id = %s for update", (locked.id,))
        conn.execute("set lock_timeout = '5s'")  # a wait would fail the test, not hang it
        renewal = heartbeat(conn, "w1", [locked, other], lease_seconds=30)
    assert renewal.held == {locked.id, other.id}
    assert renewal.renewed == {other.id}


def test_the_reaper_skips_a_row_another_transaction_holds_and_takes_it_once_free(
    client: Client, conn: Conn, db_url: str
) -> None:
    held = running_job(client, conn)
    conn.execute("update errands_jobs set lease_expires_at = now() - interval '1 s'")
    with psycopg.connect(db_url) as app:
        app.execute("select 1 from errands_jobs where id = %s for update", (held.id,))
        conn.execute("set lock_timeout = '5s'")
        assert reap(conn) == []
    (recovered,) = reap(conn) or []
    assert (recovered.id, recovered.state) == (held.id, JobState.PENDING)


def test_a_bulk_cancel_asks_running_jobs_to_stop_only_when_told(client: Client, conn: Conn) -> None:
    held = running_job(client, conn)
    waiting = client.enqueue("t")
    everything = Filter(queue="default")
    assert count_matching(conn, "cancel", everything, 100) == 1
    assert bulk(conn, "cancel", everything) == 1  # the pending one
    with_running = Filter(queue="default", running=True)
    assert count_matching(conn, "cancel", with_running, 100) == 1
    assert bulk(conn, "cancel", with_running) == 1
    assert bulk(conn, "cancel", with_running) == 0  # asked once is enough
    states = {j.id: (j.state, j.cancel_requested_at is not None) for j in client.list()}
    assert states == {
        waiting.id: (JobState.CANCELLED, False),
        held.id: (JobState.IN_PROGRESS, True),
    }

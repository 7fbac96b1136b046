"""The hand-over under READ COMMITTED, against a child enqueued while its parent completes:
whichever locks the parent first, the child is pending once both committed, never waiting
forever and never counted twice."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from errands import Client, JobState
from errands.queue.lease import Completion, claim, complete

Conn = psycopg.Connection[Any]


def running_parent(client: Client, conn: Conn) -> Completion:
    parent = client.enqueue("t")
    (claimed,) = claim(conn, "w1", ["default"], 1, 30)
    assert claimed.id == parent.id
    return Completion(claimed.id, claimed.attempts, "1")


def child_state(client: Client, job_id: int) -> JobState:
    job = client.get(job_id)
    assert job is not None
    return job.state


def test_a_completion_waits_for_an_enqueue_that_locked_the_parent_first(
    client: Client, conn: Conn, db_url: str
) -> None:
    done = running_parent(client, conn)
    with psycopg.connect(db_url) as enqueuing:
        enqueuing.execute("select 1")  # a transaction begins, left open
        child = client.enqueue("t", after=[done.id], conn=enqueuing)
        assert child.state is JobState.WAITING
        completing = threading.Thread(target=complete, args=(conn, "w1", [done]))
        completing.start()
        completing.join(0.5)
        assert completing.is_alive()  # waits for the enqueue's lock on the parent
        enqueuing.commit()
    completing.join(10)
    assert child_state(client, child.id) is JobState.PENDING


def test_an_enqueue_waits_for_a_completion_that_locked_the_parent_first(
    client: Client, conn: Conn, db_url: str
) -> None:
    done = running_parent(client, conn)
    answer: list[Any] = []
    with psycopg.connect(db_url) as completing:
        completing.execute("select 1")  # a transaction begins, left open
        assert complete(completing, "w1", [done]) == {done.id}
        enqueuing = threading.Thread(
            target=lambda: answer.append(client.enqueue("t", after=[done.id]))
        )
        enqueuing.start()
        enqueuing.join(0.5)
        assert enqueuing.is_alive()  # waits for the completion's row lock
        completing.commit()
    enqueuing.join(10)
    (child,) = answer
    assert child.state is JobState.PENDING  # the parent seen completed, never counted


def test_enqueues_racing_completions_never_leave_a_child_waiting(
    client: Client, conn: Conn, db_url: str
) -> None:
    children = []
    with psycopg.connect(db_url, autocommit=True) as other:
        for _ in range(150):
            done = running_parent(client, conn)
            start = threading.Barrier(2)

            def finish(done: Completion = done, start: threading.Barrier = start) -> None:
                start.wait()
                complete(other, "w1", [done])

            completing = threading.Thread(target=finish)
            completing.start()
            start.wait()
            children.append(client.enqueue("t", after=[done.id], queue="children").id)
            completing.join(10)
    states = {child_state(client, job_id) for job_id in children}
    assert states == {JobState.PENDING}

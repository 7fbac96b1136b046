"""Reading and managing jobs: get, list, manual retry and cancel, stats, pruning."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from errands import Client, InvalidState, JobNotFound, JobState
from errands.queue.admin import prune
from errands.queue.lease import Completion, Held, claim, complete, fail
from errands.queue.presence import announce, forget
from tests.clients import either_client as client

__all__ = ["client"]  # each test runs with both clients: tests/clients.py

Conn = psycopg.Connection[Any]


def make_dead(client: Client, conn: Conn, queue: str = "default") -> int:
    job = client.enqueue("t", queue=queue, max_attempts=1)
    (claimed,) = claim(conn, "w1", [queue], 1, 30)
    assert claimed.id == job.id
    fail(conn, "w1", Held(claimed.id, claimed.attempts), "boom", None, retry_in=0)
    return job.id


def test_get_of_an_unknown_id_is_none(client: Client) -> None:
    assert client.get(12345) is None


def test_retry_of_a_dead_job_gives_a_fresh_budget_and_keeps_history(
    client: Client, conn: Conn
) -> None:
    job_id = make_dead(client, conn)
    retried = client.retry(job_id)
    assert (retried.state, retried.finished_at) == (JobState.PENDING, None)
    assert (retried.attempts, retried.max_attempts) == (1, 2)  # one more attempt, as enqueued
    assert [e["error"] for e in retried.errors] == ["boom"]
    assert len(claim(conn, "w1", ["default"], 1, 30)) == 1


def test_retry_of_a_cancelled_job_makes_it_pending(client: Client) -> None:
    job = client.enqueue("t")
    client.cancel(job.id)
    assert client.retry(job.id).state is JobState.PENDING


@pytest.mark.parametrize("state", ["pending", "in_progress", "completed"])
def test_retry_is_refused_unless_dead_or_cancelled(client: Client, conn: Conn, state: str) -> None:
    job = client.enqueue("t")
    if state != "pending":
        (claimed,) = claim(conn, "w1", ["default"], 1, 30)
        if state == "completed":
            complete(conn, "w1", [Completion(claimed.id, claimed.attempts, "null")])
    with pytest.raises(InvalidState, match=state):
        client.retry(job.id)


def test_cancel_of_a_pending_job(client: Client) -> None:
    job = client.enqueue("t")
    cancelled = client.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None


def test_cancel_of_a_failed_job_waiting_for_its_retry(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    (claimed,) = claim(conn, "w1", ["default"], 1, 30)
    fail(conn, "w1", Held(claimed.id, claimed.attempts), "boom", None, retry_in=60)
    assert client.cancel(claimed.id).state is JobState.CANCELLED


def test_retry_or_cancel_of_an_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(JobNotFound):
        client.retry(999)
    with pytest.raises(JobNotFound):
        client.cancel(999)


def test_list_is_newest_first_and_filters(client: Client) -> None:
    a = client.enqueue("a", queue="q1")
    b = client.enqueue("b", queue="q2")
    c = client.enqueue("a", queue="q2")
    client.cancel(b.id)
    assert [j.id for j in client.list()] == [c.id, b.id, a.id]
    assert [j.id for j in client.list(task="a")] == [c.id, a.id]
    assert [j.id for j in client.list(queue="q2", state="pending")] == [c.id]
    assert [j.id for j in client.list(state=JobState.CANCELLED)] == [b.id]


def test_list_pages_neither_skip_nor_repeat_while_jobs_arrive(client: Client) -> None:
    client.enqueue_many([{"task": "t"}] * 10)
    seen: list[int] = []
    after = None
    while page := client.list(limit=3, after=after):
        seen += [job.id for job in page]
        after = page[-1].id
        client.enqueue("t")  # newer jobs land before the first page, not in the next
    assert seen == list(range(10, 0, -1))


def test_stats_count_jobs_per_queue_and_state(client: Client, conn: Conn) -> None:
    client.enqueue_many([{"task": "t"}] * 3 + [{"task": "t", "queue": "mail"}])
    (claimed,) = claim(conn, "w1", ["default"], 1, 30)
    complete(conn, "w1", [Completion(claimed.id, claimed.attempts, "null")])
    make_dead(client, conn, queue="graveyard")
    counts = {q.queue: q.counts for q in client.stats().queues}
    assert counts["default"][JobState.PENDING] == 2
    assert counts["default"][JobState.COMPLETED] == 1
    assert counts["mail"][JobState.PENDING] == 1
    assert counts["graveyard"][JobState.DEAD] == 1


def test_finished_counts_follow_retry_and_prune(client: Client, conn: Conn) -> None:
    job_id = make_dead(client, conn)
    client.retry(job_id)
    counts = {q.queue: q.counts for q in client.stats().queues}
    assert counts["default"][JobState.DEAD] == 0
    cancelled = client.enqueue("t")
    client.cancel(cancelled.id)
    assert prune(conn, retention_seconds=0) == 1
    counts = {q.queue: q.counts for q in client.stats().queues}
    assert counts["default"][JobState.CANCELLED] == 0


def test_prune_keeps_jobs_inside_the_retention_and_unfinished_ones(
    client: Client, conn: Conn
) -> None:
    pending = client.enqueue("t")
    cancelled = client.enqueue("t")
    client.cancel(cancelled.id)
    assert prune(conn, retention_seconds=3600) == 0
    assert prune(conn, retention_seconds=0) == 1
    assert [j.id for j in client.list()] == [pending.id]


def test_prune_works_in_bounded_batches(client: Client, conn: Conn) -> None:
    for job in client.enqueue_many([{"task": "t"}] * 7):
        client.cancel(job.id)
    assert prune(conn, retention_seconds=0, batch=3) == 7
    assert client.list() == []


def test_stats_list_live_workers(client: Client, conn: Conn) -> None:
    announce(conn, "host:1:abc", ["default"], concurrency=2)
    announce(conn, "host:2:def", ["mail"], concurrency=1)
    forget(conn, "host:2:def")
    workers = client.stats().workers
    assert [(w.id, w.queues, w.concurrency) for w in workers] == [("host:1:abc", ["default"], 2)]


def test_an_attempt_from_before_a_manual_retry_cannot_finish_the_job(
    client: Client, conn: Conn
) -> None:
    job_id = make_dead(client, conn)  # attempt 1 by w1, failed for good
    (stale,) = conn.execute("select id, attempts from errands_jobs where id = %s", (job_id,))
    client.retry(job_id)
    (again,) = claim(conn, "w1", ["default"], 1, 30)  # the same owner claims attempt 2
    assert complete(conn, "w1", [Completion(stale[0], stale[1], '"stale"')]) == set()
    assert client.get(job_id) == again

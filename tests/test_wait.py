"""Waiting for a job to finish: the finish notification, its polling fallback, Client.wait."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import errands.client
from errands import Client, JobNotFound, JobState
from errands.harness.waiting import wait_for
from errands.queue.finished import FinishWatcher
from errands.queue.lease import Completion, Held, claim, complete, fail
from errands.queue.queries import query
from tests.clients import either_client as client

__all__ = ["client"]  # each test runs with both clients: tests/clients.py

Conn = psycopg.Connection[Any]
# Far longer than any test: a callback that comes is a notification, never a poll.
NEVER = 3600.0


def run_to_completion(conn: Conn, result: Any = "done") -> None:
    (job,) = claim(conn, "w1", ["default"], limit=1, lease_seconds=30)
    assert complete(conn, "w1", [Completion(job.id, job.attempts, f'"{result}"')]) == {job.id}


def test_the_finish_of_a_watched_job_is_heard_without_polling(
    client: Client, db_url: str, conn: Conn
) -> None:
    job = client.enqueue("t")
    watcher = FinishWatcher(db_url, poll_seconds=NEVER)
    heard = threading.Event()
    watcher.watch(job.id, heard.set)
    # The first poll runs as the watcher connects; after it, only a notification can tell.
    assert not heard.wait(0.5)
    run_to_completion(conn)
    assert heard.wait(30)
    watcher.close()


@pytest.mark.parametrize("finish", ["dead", "cancelled"])
def test_dead_and_cancelled_jobs_are_heard_too(
    client: Client, db_url: str, conn: Conn, finish: str
) -> None:
    job = client.enqueue("t", max_attempts=1)
    watcher = FinishWatcher(db_url, poll_seconds=NEVER)
    heard = threading.Event()
    watcher.watch(job.id, heard.set)
    assert not heard.wait(0.5)
    if finish == "dead":
        (claimed,) = claim(conn, "w1", ["default"], limit=1, lease_seconds=30)
        fail(conn, "w1", Held(claimed.id, claimed.attempts), "boom", None, 0)
    else:
        client.cancel(job.id)
    assert heard.wait(30)
    watcher.close()


def test_a_finish_without_a_notification_is_found_by_polling(
    client: Client, db_url: str, conn: Conn
) -> None:
    job = client.enqueue("t")
    conn.execute("alter table errands_jobs disable trigger errands_jobs_notify_finished")
    watcher = FinishWatcher(db_url, poll_seconds=0.2)
    heard = threading.Event()
    watcher.watch(job.id, heard.set)
    run_to_completion(conn)
    assert heard.wait(30)
    watcher.close()


def test_one_statement_finishing_many_jobs_is_heard_for_each(
    client: Client, db_url: str, conn: Conn
) -> None:
    jobs = client.enqueue_many([{"task": "t"} for _ in range(700)])  # more than one chunk
    watcher = FinishWatcher(db_url, poll_seconds=NEVER)
    heard = {job.id: threading.Event() for job in jobs}
    for job_id, event in heard.items():
        watcher.watch(job_id, event.set)
    claimed = claim(conn, "w1", ["default"], limit=700, lease_seconds=30)
    complete(conn, "w1", [Completion(j.id, j.attempts, "null") for j in claimed])
    assert all(event.wait(30) for event in heard.values())
    watcher.close()


def test_wait_returns_the_job_once_it_completes(client: Client, conn: Conn) -> None:
    job = client.enqueue("t")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.wait, job.id, 30)
        assert not waiting.done()
        run_to_completion(conn, "the result")
        finished = waiting.result()
    assert finished.state is JobState.COMPLETED and finished.result == "the result"


def test_wait_returns_on_the_notification_not_a_poll_later(
    client: Client, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errands.client, "WAIT_POLL_SECONDS", NEVER)
    job = client.enqueue("t")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.wait, job.id, 30)
        # The watcher reads the watched jobs once as it connects; after that, and with
        # no poll for an hour, only the notification can end the wait.
        wait_for(lambda: watcher_polled(conn), what="the watcher's first read")
        assert not waiting.done()
        run_to_completion(conn)
        assert waiting.result().state is JobState.COMPLETED


def watcher_polled(conn: Conn) -> bool:
    row = conn.execute(
        "select count(*) from pg_stat_activity where state = 'idle'"
        " and query like %s and pid <> pg_backend_pid()",
        (f"%{query('finished_among').decode().splitlines()[0]}%",),
    ).fetchone()
    return bool(row and row[0])


def test_wait_on_a_finished_job_returns_it_at_once(client: Client) -> None:
    job = client.enqueue("t")
    client.cancel(job.id)
    assert client.wait(job.id, timeout=0).state is JobState.CANCELLED


def test_wait_times_out_with_timeout_error_and_the_client_still_waits_afterwards(
    client: Client, conn: Conn
) -> None:
    job = client.enqueue("t")
    with pytest.raises(TimeoutError, match="still pending"):
        client.wait(job.id, timeout=0.3)
    run_to_completion(conn)
    assert client.wait(job.id, timeout=30).state is JobState.COMPLETED


def test_wait_for_an_unknown_job_is_job_not_found(client: Client) -> None:
    with pytest.raises(JobNotFound):
        client.wait(123456, timeout=1)

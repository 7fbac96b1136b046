"""Unique jobs (docs/guides/limits.md): at most one job per unique key is pending,
failed or in progress, by a partial unique index; a second enqueue returns that job, or with
on_conflict="replace" debounces a pending one."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

import errands
from errands import Client, InvalidState, JobState
from errands.queue import control
from errands.queue.control import Filter
from errands.queue.lease import Completion, Held, claim, complete, fail
from errands.queue.requests import parse_request
from errands.queue.submit import enqueue
from tests.clients import EnqueueTask
from tests.clients import either_client as client

__all__ = ["client"]  # the tests taking `client` run with both clients: tests/clients.py

Conn = psycopg.Connection[Any]


@errands.task("unique.reindex")
def reindex(user: int) -> None: ...


def live(conn: Conn, key: str) -> list[int]:
    rows = conn.execute(
        "select id from errands_jobs where unique_key = %s"
        " and state in ('pending', 'failed', 'in_progress')",
        (key,),
    ).fetchall()
    return [row[0] for row in rows]


def test_a_second_enqueue_returns_the_live_job(client: Client) -> None:
    first = client.enqueue("reindex", {"user": 1}, unique_key="reindex:1")
    second = client.enqueue("reindex", {"user": 1, "again": True}, unique_key="reindex:1")
    assert second.id == first.id and second.payload == {"user": 1}


def test_task_options_take_a_unique_key_and_replace(
    client: Client, enqueue_task: EnqueueTask
) -> None:
    first = enqueue_task(reindex, client=client, unique_key="u", delay=60)(user=1)
    kept = enqueue_task(reindex, client=client, unique_key="u")(user=2)
    replaced = enqueue_task(reindex, client=client, unique_key="u", on_conflict="replace")(user=3)
    assert first.id == kept.id == replaced.id
    assert (kept.payload, replaced.payload) == ({"user": 1}, {"user": 3})


def test_a_batch_answers_a_taken_key_with_the_live_job(client: Client) -> None:
    held = client.enqueue("reindex", {"user": 1}, unique_key="b")
    batch = client.enqueue_many(
        [
            {"task": "reindex", "unique_key": "b"},
            {"task": "reindex", "unique_key": "c"},
            {"task": "reindex", "unique_key": "c", "payload": {"v": 2}},
        ]
    )
    assert batch[0].id == held.id and batch[1].id == batch[2].id != held.id
    assert batch[2].payload == {}


def test_a_batch_naming_a_key_its_first_job_freed_at_once_stores_both(
    conn: Conn, client: Client
) -> None:
    # An application's trigger that ends jobs as they are stored (as the API contract test
    # does) frees the key before the batch's next request names it: each gets its own job.
    conn.execute(
        "create function end_at_once() returns trigger language plpgsql as $$"
        " begin new.state := 'cancelled'; new.finished_at := now(); return new; end $$;"
        " create trigger end_at_once before insert on errands_jobs"
        " for each row execute function end_at_once()"
    )
    batch = client.enqueue_many([{"task": "reindex", "unique_key": "k"}] * 2 + [{"task": "t"}])
    assert len({job.id for job in batch}) == 3
    assert conn.execute("select count(*) from errands_jobs").fetchone() == (3,)


@pytest.mark.parametrize("ending", ["completed", "dead", "cancelled"])
def test_the_key_is_free_again_once_its_job_has_finished(
    conn: Conn, client: Client, ending: str
) -> None:
    first = client.enqueue("reindex", unique_key="k", max_attempts=1)
    if ending == "cancelled":
        client.cancel(first.id)
    else:
        (job,) = claim(conn, "w1", ("default",), 1, 60)
        if ending == "completed":
            complete(conn, "w1", [Completion(job.id, job.attempts, "null")])
        else:
            fail(conn, "w1", Held(job.id, job.attempts), "boom", None, retry_in=0)
    assert client.enqueue("reindex", unique_key="k").id != first.id


@pytest.mark.parametrize("state", ["in_progress", "failed"])
def test_a_running_or_retrying_job_holds_its_key(conn: Conn, client: Client, state: str) -> None:
    first = client.enqueue("reindex", unique_key="k")
    (job,) = claim(conn, "w1", ("default",), 1, 60)
    if state == "failed":
        fail(conn, "w1", Held(job.id, job.attempts), "boom", None, retry_in=60)
    assert client.enqueue("reindex", unique_key="k").id == first.id
    assert live(conn, "k") == [first.id]


def test_replace_debounces_a_pending_job(client: Client) -> None:
    first = client.enqueue("reindex", {"v": 1}, unique_key="k", delay=5)
    later = datetime.now(UTC) + timedelta(seconds=60)
    second = client.enqueue(
        "reindex", {"v": 2}, unique_key="k", run_at=later, on_conflict="replace"
    )
    assert second.id == first.id
    assert second.payload == {"v": 2} and second.run_at == later


def test_replace_leaves_a_running_job_and_a_job_of_another_task_alone(
    conn: Conn, client: Client
) -> None:
    running = client.enqueue("reindex", {"v": 1}, unique_key="k")
    claim(conn, "w1", ("default",), 1, 60)
    again = client.enqueue("reindex", {"v": 2}, unique_key="k", on_conflict="replace")
    assert (again.id, again.payload, again.state) == (running.id, {"v": 1}, JobState.IN_PROGRESS)
    other = client.enqueue("a", {"v": 1}, unique_key="j")
    assert client.enqueue("b", {"v": 2}, unique_key="j", on_conflict="replace").payload == {"v": 1}
    assert other.payload == {"v": 1}


def test_thirty_two_racing_enqueues_make_exactly_one_live_job(db_url: str, conn: Conn) -> None:
    start = threading.Barrier(32)
    ids: list[int] = []

    def submit(n: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as own:
            request = parse_request({"task": "reindex", "payload": {"n": n}, "unique_key": "race"})
            start.wait()
            ids.append(enqueue(own, request).job.id)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 32 and len(set(ids)) == 1
    assert live(conn, "race") == ids[:1]


def test_a_batch_makes_one_job_per_key_and_replaces_in_order(conn: Conn, client: Client) -> None:
    before = client.enqueue("reindex", {"v": 0}, unique_key="old")
    jobs = client.enqueue_many(
        [
            {"task": "reindex", "payload": {"v": 1}, "unique_key": "new"},
            {"task": "reindex", "payload": {"v": 2}, "unique_key": "new", "on_conflict": "replace"},
            {"task": "reindex", "payload": {"v": 3}, "unique_key": "old"},
            {"task": "reindex", "payload": {"v": 4}, "unique_key": "old", "on_conflict": "replace"},
            {"task": "plain"},
        ]
    )
    assert len({j.id for j in jobs[:2]}) == 1 and jobs[0].payload == jobs[1].payload == {"v": 2}
    assert jobs[2].id == jobs[3].id == before.id and jobs[3].payload == {"v": 4}
    assert live(conn, "new") == [jobs[0].id] and live(conn, "old") == [before.id]


def test_a_batch_with_an_idempotency_key_and_a_taken_unique_key_returns_the_live_job(
    client: Client,
) -> None:
    held = client.enqueue("reindex", unique_key="u")
    (job,) = client.enqueue_many([{"task": "reindex", "unique_key": "u", "idempotency_key": "i"}])
    assert job.id == held.id


def test_retrying_a_dead_job_whose_key_is_live_again_is_refused(conn: Conn, client: Client) -> None:
    first = client.enqueue("reindex", unique_key="k", max_attempts=1)
    (job,) = claim(conn, "w1", ("default",), 1, 60)
    fail(conn, "w1", Held(job.id, job.attempts), "boom", None, retry_in=0)
    second = client.enqueue("reindex", unique_key="k")
    with pytest.raises(InvalidState, match=f"job {second.id}, pending, holds its unique key 'k'"):
        client.retry(first.id)
    assert control.bulk(conn, "retry", Filter(state=JobState.DEAD)) == 0
    client.cancel(second.id)
    assert control.bulk(conn, "retry", Filter(state=JobState.DEAD)) == 1
    assert live(conn, "k") == [first.id]


def test_http_answers_the_live_job_with_unique_replayed(api: httpx.Client) -> None:
    created = api.post("/jobs", json={"task": "reindex", "unique_key": "k"})
    assert created.status_code == 201 and "Unique-Replayed" not in created.headers
    again = api.post("/jobs", json={"task": "reindex", "unique_key": "k", "payload": {"v": 2}})
    assert again.status_code == 200 and again.headers["Unique-Replayed"] == "true"
    assert again.json()["id"] == created.json()["id"] and again.json()["unique_key"] == "k"
    replaced = api.post(
        "/jobs",
        json={"task": "reindex", "unique_key": "k", "payload": {"v": 3}, "on_conflict": "replace"},
    )
    assert replaced.headers["Unique-Replaced"] == "true" and replaced.json()["payload"] == {"v": 3}


def test_http_refuses_replace_without_a_unique_key(api: httpx.Client) -> None:
    answer = api.post("/jobs", json={"task": "t", "on_conflict": "replace"})
    assert answer.status_code == 422
    assert answer.json()["error"]["details"] == [
        {"field": "on_conflict", "message": "replace applies to a job with a unique_key"}
    ]

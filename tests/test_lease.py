"""The lease protocol: claims, heartbeats, fenced finishes and recovery of lost jobs."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from errands import Client, JobState
from errands.queue.jobs import Job
from errands.queue.lease import (
    AsyncSlots,
    Completion,
    Held,
    claim,
    complete,
    fail,
    heartbeat,
    reap,
    release,
    reschedule,
)

Conn = psycopg.Connection[Any]


def held(job: Job) -> Held:
    return Held(job.id, job.attempts)


def expire_lease(conn: Conn, job_id: int) -> None:
    conn.execute(
        "update errands_jobs set lease_expires_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )


def claim_one(conn: Conn, owner: str = "w1", queues: tuple[str, ...] = ("default",)) -> Job:
    (job,) = claim(conn, owner, queues, limit=1, lease_seconds=30)
    return job


def test_claim_takes_higher_priority_then_earlier_run_at_then_lower_id(
    client: Client, conn: Conn
) -> None:
    low = client.enqueue("t", priority=0)
    high = client.enqueue("t", priority=5)
    low_again = client.enqueue("t", priority=0)
    jobs = claim(conn, "w1", ["default"], limit=3, lease_seconds=30)
    assert [job.id for job in jobs] == [high.id, low.id, low_again.id]


def test_claim_marks_the_job_in_progress_with_a_lease(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn)
    assert job.state is JobState.IN_PROGRESS
    assert (job.attempts, job.lease_owner) == (1, "w1")
    assert job.lease_expires_at is not None and job.started_at is not None


def test_claim_skips_jobs_scheduled_later_and_other_queues(client: Client, conn: Conn) -> None:
    client.enqueue("t", delay=60)
    client.enqueue("t", queue="other")
    assert claim(conn, "w1", ["default"], limit=10, lease_seconds=30) == []


def test_claim_honours_its_limit(client: Client, conn: Conn) -> None:
    client.enqueue_many([{"task": "t"}] * 5)
    assert len(claim(conn, "w1", ["default"], limit=2, lease_seconds=30)) == 2


def test_claim_takes_no_more_thread_jobs_than_its_limit_however_many_coroutine_slots_are_free(
    client: Client, conn: Conn
) -> None:
    threads = [client.enqueue("sync").id for _ in range(5)]
    naps = [client.enqueue("nap").id for _ in range(2)]
    jobs = claim(conn, "w1", ["default"], 2, 30, AsyncSlots(tasks=["nap"], free=100))
    assert sorted(job.id for job in jobs) == sorted(threads[:2] + naps)


def test_claim_takes_no_more_coroutine_jobs_than_the_free_coroutine_slots(
    client: Client, conn: Conn
) -> None:
    first_thread = client.enqueue("sync").id
    naps = [client.enqueue("nap").id for _ in range(5)]
    jobs = claim(conn, "w1", ["default"], 1, 30, AsyncSlots(tasks=["nap"], free=3))
    assert sorted(job.id for job in jobs) == sorted([*naps[:3], first_thread])


def test_coroutine_slots_without_async_tasks_claim_nothing_extra(
    client: Client, conn: Conn
) -> None:
    for _ in range(3):
        client.enqueue("sync")
    assert len(claim(conn, "w1", ["default"], 1, 30, AsyncSlots(tasks=[], free=50))) == 1


def test_a_job_claimed_by_one_worker_is_not_claimed_by_another(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    claim_one(conn, "w1")
    assert claim(conn, "w2", ["default"], limit=1, lease_seconds=30) == []


def test_a_claim_skips_rows_locked_by_a_concurrent_claim(client: Client, db_url: str) -> None:
    first, second = client.enqueue("t"), client.enqueue("t")
    with psycopg.connect(db_url) as slow:
        # Another worker's claim holds the first row locked inside its transaction.
        slow.execute("select id from errands_jobs where id = %s for update", (first.id,))
        with psycopg.connect(db_url, autocommit=True) as fast:
            assert [job.id for job in claim(fast, "w2", ["default"], 5, 30)] == [second.id]


def test_complete_stores_the_result(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn)
    assert complete(conn, "w1", [Completion(job.id, job.attempts, '{"ok": true}')]) == {job.id}
    done = client.get(job.id)
    assert done is not None
    assert (done.state, done.result, done.lease_owner) == (JobState.COMPLETED, {"ok": True}, None)
    assert done.finished_at is not None


def test_complete_by_a_stale_owner_changes_nothing(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn, "w1")
    expire_lease(conn, job.id)
    reap(conn)
    reclaimed = claim_one(conn, "w2")
    assert complete(conn, "w1", [Completion(job.id, job.attempts, '"stale"')]) == set()
    assert client.get(job.id) == reclaimed


def test_complete_of_an_earlier_attempt_by_the_same_owner_changes_nothing(
    client: Client, conn: Conn
) -> None:
    client.enqueue("t")
    first = claim_one(conn, "w1")
    release(conn, "w1")
    second = claim_one(conn, "w1")
    assert complete(conn, "w1", [Completion(first.id, first.attempts, '"stale"')]) == set()
    assert client.get(first.id) == second


def test_heartbeat_extends_the_lease_of_held_jobs(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn)
    assert heartbeat(conn, "w1", [held(job)], lease_seconds=300).renewed == {job.id}
    renewed = client.get(job.id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert job.lease_expires_at is not None
    assert renewed.lease_expires_at > job.lease_expires_at


def test_heartbeat_reports_a_lost_lease(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn, "w1")
    release(conn, "w1")
    claim_one(conn, "w2")
    assert heartbeat(conn, "w1", [held(job)], lease_seconds=30).held == set()


def test_fail_schedules_a_retry_while_budget_is_left(client: Client, conn: Conn) -> None:
    client.enqueue("t", max_attempts=2)
    job = claim_one(conn)
    assert fail(conn, "w1", held(job), "boom", "Traceback...", retry_in=60) is JobState.FAILED
    failed = client.get(job.id)
    assert failed is not None
    assert failed.last_error == "boom"
    assert failed.run_at > job.run_at
    assert [(e["attempt"], e["error"], e["traceback"]) for e in failed.errors] == [
        (1, "boom", "Traceback...")
    ]
    assert claim(conn, "w1", ["default"], 1, 30) == []  # not before its backoff


def test_fail_makes_the_job_dead_once_its_budget_is_spent(client: Client, conn: Conn) -> None:
    client.enqueue("t", max_attempts=2)
    for attempt in (1, 2):
        job = claim_one(conn)
        state = fail(conn, "w1", held(job), f"boom {attempt}", None, retry_in=0)
    assert state is JobState.DEAD
    dead = client.get(job.id)
    assert dead is not None and dead.finished_at is not None
    assert [e["error"] for e in dead.errors] == ["boom 1", "boom 2"]


def test_fail_by_a_stale_owner_changes_nothing(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn, "w1")
    release(conn, "w1")
    assert fail(conn, "w1", held(job), "late", None, retry_in=0) is None
    pending = client.get(job.id)
    assert pending is not None and pending.state is JobState.PENDING


def test_release_returns_only_that_owners_jobs_to_pending(client: Client, conn: Conn) -> None:
    client.enqueue_many([{"task": "t"}, {"task": "t"}])
    mine, theirs = claim_one(conn, "w1"), claim_one(conn, "w2")
    recovered = release(conn, "w1")
    assert [(r.id, r.state) for r in recovered] == [(mine.id, JobState.PENDING)]
    still = client.get(theirs.id)
    assert still is not None and still.state is JobState.IN_PROGRESS


def test_release_makes_a_job_with_no_budget_left_dead(client: Client, conn: Conn) -> None:
    client.enqueue("t", max_attempts=1)
    claim_one(conn, "w1")
    (recovered,) = release(conn, "w1")
    assert recovered.state is JobState.DEAD


def test_release_wakes_idle_workers(client: Client, conn: Conn, db_url: str) -> None:
    client.enqueue("t")
    claim_one(conn, "w1")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen errands_jobs")
        release(conn, "w1")
        assert next(listener.notifies(timeout=5)).payload == "default"


def test_reap_recovers_only_expired_leases(client: Client, conn: Conn) -> None:
    client.enqueue_many([{"task": "t"}, {"task": "t"}])
    expired, alive = claim_one(conn, "w1"), claim_one(conn, "w2")
    expire_lease(conn, expired.id)
    recovered = reap(conn)
    assert recovered is not None and [r.id for r in recovered] == [expired.id]
    still = client.get(alive.id)
    assert still is not None and still.state is JobState.IN_PROGRESS


def test_reap_records_the_lost_attempt_in_the_error_history(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn, "w1")
    expire_lease(conn, job.id)
    reap(conn)
    reaped = client.get(job.id)
    assert reaped is not None
    assert reaped.errors[-1]["worker"] == "w1" and "lease expired" in reaped.errors[-1]["error"]


def test_only_one_reaper_runs_at_a_time(client: Client, db_url: str) -> None:
    client.enqueue("t")
    with psycopg.connect(db_url, autocommit=True) as conn:
        expire_lease(conn, claim_one(conn).id)
    entered, leave = threading.Event(), threading.Event()

    def hold_reaper_lock() -> None:
        with psycopg.connect(db_url) as other, other.transaction():
            other.execute("select pg_advisory_xact_lock(%s)", (0x6572_7261_6E64_0002,))
            entered.set()
            leave.wait(10)

    holder = threading.Thread(target=hold_reaper_lock)
    holder.start()
    try:
        entered.wait(10)
        with psycopg.connect(db_url, autocommit=True) as conn:
            assert reap(conn) is None
    finally:
        leave.set()
        holder.join()
    with psycopg.connect(db_url, autocommit=True) as conn:
        recovered = reap(conn)
    assert recovered is not None and len(recovered) == 1


def test_the_database_refuses_a_lease_outside_in_progress(client: Client, conn: Conn) -> None:
    job = client.enqueue("t")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update errands_jobs set lease_owner = 'x' where id = %s", (job.id,))


def test_a_queue_named_twice_is_claimed_from_once(client: Client, conn: Conn) -> None:
    client.enqueue_many([{"task": "t"}, {"task": "t"}])
    assert len(claim(conn, "w1", ["default", "default"], limit=2, lease_seconds=30)) == 2


def test_a_permanent_failure_makes_the_job_dead_with_budget_left(
    client: Client, conn: Conn
) -> None:
    client.enqueue("t", max_attempts=5)
    job = claim_one(conn)
    assert fail(conn, "w1", held(job), "Fail: card declined", None, 0, permanent=True) == (
        JobState.DEAD
    )
    stored = client.get(job.id)
    assert stored is not None and (stored.attempts, stored.max_attempts) == (1, 5)
    assert stored.finished_at is not None and stored.last_error == "Fail: card declined"
    assert stored.errors[-1]["permanent"] is True


def test_reschedule_runs_the_job_later_without_counting_a_failure(
    client: Client, conn: Conn
) -> None:
    client.enqueue("t", max_attempts=2)
    job = claim_one(conn)
    assert reschedule(conn, "w1", held(job), "Retry: rate limited", 60)
    stored = client.get(job.id)
    assert stored is not None and stored.state is JobState.PENDING
    # Attempts never go back (they fence writes): the budget grows by the attempt given back.
    assert (stored.attempts, stored.max_attempts, stored.last_error) == (1, 3, None)
    assert stored.run_at > job.started_at  # type: ignore[operator]
    assert stored.errors[-1]["retry_in"] == 60 and stored.errors[-1]["error"] == (
        "Retry: rate limited"
    )
    assert claim(conn, "w1", ["default"], limit=1, lease_seconds=30) == []  # not due yet


def test_reschedule_by_a_stale_owner_changes_nothing(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    job = claim_one(conn)
    assert not reschedule(conn, "w2", held(job), "Retry", 0)
    assert not reschedule(conn, "w1", Held(job.id, job.attempts - 1), "Retry", 0)
    stored = client.get(job.id)
    assert stored is not None and stored.state is JobState.IN_PROGRESS

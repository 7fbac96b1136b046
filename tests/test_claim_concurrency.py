"""Claims and idempotent submissions under real concurrency.

Claims race from separate OS processes (as workers do), submissions from
threads with their own connections; every contender is lined up on a barrier
so that they really collide instead of running one after another.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from errands import IdempotencyConflict
from errands.queue.lease import Completion, claim, complete, encode_result
from errands.queue.requests import JobRequest, parse_request
from errands.queue.submit import Enqueued, enqueue, enqueue_many

JOBS = 3_000
PROCESSES = 4
THREADS = 16
QUEUE = "crowded"
LEASE_SECONDS = 300.0
BARRIER_TIMEOUT = 120.0  # only guards against a hang; nothing here is timed

# Set in each claiming process by `_join`: a barrier can only reach a pool's
# processes through the pool's initializer.
_START: dict[str, Any] = {}


def _join(barrier: Any) -> None:
    _START["barrier"] = barrier


def _claim_until_empty(db_url: str, owner: str, seed: int) -> list[int]:
    """A worker's loop: claim 1 to 10 jobs, complete them, until the queue is empty."""
    rng = random.Random(seed)
    claimed: list[int] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        _START["barrier"].wait(BARRIER_TIMEOUT)
        while jobs := claim(conn, owner, [QUEUE], rng.randint(1, 10), LEASE_SECONDS):
            claimed += [job.id for job in jobs]
            done = [Completion(job.id, job.attempts, encode_result(owner)) for job in jobs]
            completed = complete(conn, owner, done)
            assert completed == {job.id for job in jobs}, "a lease was lost with no one else"
    return claimed


def test_processes_claim_every_job_exactly_once(conn: psycopg.Connection[Any], db_url: str) -> None:
    """Workers in separate processes racing on one queue never share a job and miss none."""
    requests = [
        parse_request({"task": "crunch", "queue": QUEUE, "payload": {"n": n}}) for n in range(JOBS)
    ]
    enqueued = {answer.job.id for answer in enqueue_many(conn, requests)}
    assert len(enqueued) == JOBS

    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(PROCESSES)
    with spawn.Pool(PROCESSES, initializer=_join, initargs=(barrier,)) as pool:
        per_process = pool.starmap(
            _claim_until_empty,
            [(db_url, f"worker-{i}", i) for i in range(PROCESSES)],
            chunksize=1,
        )

    claims = Counter(job_id for ids in per_process for job_id in ids)
    assert set(claims) == enqueued, "every job was claimed"
    assert set(claims.values()) == {1}, "no job was claimed twice"
    assert conn.execute(
        "select state::text, attempts, count(*) from errands_jobs group by 1, 2"
    ).fetchall() == [("completed", 1, JOBS)]


def _submit_together(
    db_url: str, requests: list[JobRequest]
) -> list[Enqueued | IdempotencyConflict]:
    """Submit each request from its own thread and connection, all released at once."""
    barrier = threading.Barrier(len(requests))

    def submit(request: JobRequest) -> Enqueued | IdempotencyConflict:
        with psycopg.connect(db_url, autocommit=True) as own:
            barrier.wait(BARRIER_TIMEOUT)
            try:
                return enqueue(own, request)
            except IdempotencyConflict as conflict:
                return conflict

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(submit, requests))


def _request(payload: dict[str, Any]) -> JobRequest:
    return parse_request({"task": "charge", "payload": payload, "idempotency_key": "order-42"})


def _stored(conn: psycopg.Connection[Any]) -> list[tuple[int, dict[str, Any]]]:
    return conn.execute("select id, payload from errands_jobs").fetchall()


def test_concurrent_duplicates_create_one_job(conn: psycopg.Connection[Any], db_url: str) -> None:
    """The same request submitted 16 times at once stores one job, and all get it back."""
    answers = _submit_together(db_url, [_request({"amount": 10})] * THREADS)

    ((job_id, _),) = _stored(conn)
    assert all(isinstance(answer, Enqueued) for answer in answers)
    enqueued = [answer for answer in answers if isinstance(answer, Enqueued)]
    assert {answer.job.id for answer in enqueued} == {job_id}
    assert sum(answer.created for answer in enqueued) == 1


def test_concurrent_conflicting_submission_is_refused(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    """Among racing submissions of one key, whichever payload is stored, the other is refused.

    Which request wins the race is up to the database, so the test follows the
    stored row: requests matching it get the job, the others IdempotencyConflict.
    """
    requests = [_request({"amount": 10})] * THREADS
    requests[THREADS // 2] = _request({"amount": 99})
    answers = _submit_together(db_url, requests)

    ((job_id, payload),) = _stored(conn)
    for request, answer in zip(requests, answers, strict=True):
        if request.payload == payload:
            assert isinstance(answer, Enqueued)
            assert answer.job.id == job_id
        else:
            assert isinstance(answer, IdempotencyConflict)
            assert answer.job_id == job_id
    assert sum(isinstance(answer, Enqueued) and answer.created for answer in answers) == 1

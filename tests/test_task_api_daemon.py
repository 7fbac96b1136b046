"""The task API under the real daemon: coroutines, Fail, Retry, enqueue from a task, wait."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx

from errands import Client, Job, JobState
from errands.harness.process import free_port
from errands.harness.waiting import answers
from errands.queue.lease import WORKER_EXITED
from tests.daemon import Daemon, wait_for
from tests.test_daemon import executions, wait_for_executions

StartDaemon = Callable[..., Daemon]
TASKS = {"ERRANDS_TASKS": "daemon_tasks,task_api_tasks"}


def finished(client: Client, job_id: int) -> Job:
    """The job once it is completed, dead or cancelled."""
    return client.wait(job_id, timeout=60)


def test_two_hundred_sleeping_coroutines_run_at_once_in_one_worker_process(
    start_daemon: StartDaemon, client: Client
) -> None:
    jobs = client.enqueue_many([{"task": "nap", "payload": {"seconds": 1}}] * 200)
    start_daemon("--workers", "1", "--async-concurrency", "200", **TASKS)
    results = [finished(client, job.id).result for job in jobs]
    assert len({r["pid"] for r in results}) == 1
    # Every coroutine started before any ended: all 200 slept at the same time.
    assert max(r["started"] for r in results) < min(r["ended"] for r in results)


def test_coroutines_beyond_the_async_concurrency_wait_for_a_slot(
    start_daemon: StartDaemon, client: Client
) -> None:
    jobs = client.enqueue_many([{"task": "nap", "payload": {"seconds": 1}}] * 20)
    start_daemon("--workers", "1", "--async-concurrency", "10", **TASKS)
    results = sorted((finished(client, job.id).result for job in jobs), key=lambda r: r["started"])
    # At most 10 at once: the 11th to start did so after the first had ended.
    assert results[10]["started"] >= min(r["ended"] for r in results[:10])


def test_an_async_task_past_its_timeout_is_cancelled_and_failed_without_a_new_process(
    start_daemon: StartDaemon, client: Client, tmp_path: Path
) -> None:
    daemon = start_daemon("--workers", "1", **TASKS)
    (worker,) = daemon.wait_for_workers(1)
    witness = tmp_path / "witness"
    job = client.enqueue(
        "nap_past_timeout", {"seconds": 60, "witness": str(witness)}, max_attempts=1
    )
    dead = finished(client, job.id)
    assert dead.state is JobState.DEAD
    assert "past its timeout of 0.5s and was cancelled" in (dead.last_error or "")
    assert witness.read_text() == f"cancelled in {worker}"
    # Cancelling needs no replacement: the same process runs the next job.
    after = client.enqueue("record")
    finished(client, after.id)
    ((_, pid, _),) = executions(daemon, after.id)
    assert pid == worker


def test_a_worker_killed_mid_coroutine_has_its_job_run_again_and_fencing_holds(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "2", ERRANDS_LEASE_SECONDS="30", **TASKS)
    daemon.wait_for_workers(2)
    job = client.enqueue("hold_async", {"seconds": 60})
    ((_, victim, _),) = wait_for_executions(daemon, job.id, 1)
    os.kill(victim, signal.SIGKILL)
    completed = finished(client, job.id)
    assert completed.state is JobState.COMPLETED and completed.result["pid"] != victim
    assert [e["error"] for e in completed.errors] == [WORKER_EXITED]
    (first, second) = executions(daemon, job.id)
    assert (first[0], second[0]) == (1, 2) and second[1] != victim


def test_fail_ends_the_job_dead_at_once_with_budget_left(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", **TASKS)
    job = client.enqueue("fail_for_good", {"reason": "card declined"}, max_attempts=5)
    dead = finished(client, job.id)
    assert dead.state is JobState.DEAD
    assert (dead.attempts, dead.max_attempts) == (1, 5)
    assert dead.last_error == "Fail: card declined"
    assert [(e["attempt"], e.get("permanent")) for e in dead.errors] == [(1, True)]
    assert len(executions(daemon, job.id)) == 1


def test_an_error_the_task_does_not_retry_ends_the_job_dead_at_once(
    start_daemon: StartDaemon, client: Client
) -> None:
    start_daemon("--workers", "1", **TASKS)
    job = client.enqueue("missing_key", max_attempts=5)
    dead = finished(client, job.id)
    assert (dead.state, dead.attempts) == (JobState.DEAD, 1)
    assert dead.last_error == "KeyError: 'no such customer'"


def test_retry_runs_the_job_again_after_the_delay_without_counting_a_failure(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", **TASKS)
    job = client.enqueue("rate_limited_once", {"retry_in": 2}, max_attempts=1)
    done = finished(client, job.id)
    # One attempt in the budget, yet it ran twice: the retry gave its attempt back.
    assert (done.state, done.result, done.last_error) == (JobState.COMPLETED, "sent", None)
    assert (done.attempts, done.max_attempts) == (2, 2)
    [retry] = done.errors
    assert (retry["attempt"], retry["retry_in"]) == (1, 2)
    assert retry["error"] == "Retry: partner rate limit"
    (first, second) = executions(daemon, job.id)
    assert (second[2] - first[2]).total_seconds() >= 2


def test_a_task_enqueues_jobs_into_its_workers_database(
    start_daemon: StartDaemon, client: Client
) -> None:
    start_daemon("--workers", "1", **TASKS)
    parent = finished(client, client.enqueue("enqueue_a_follow_up", {"tag": "child"}).id)
    child = finished(client, parent.result)
    assert (child.task, child.state, child.result) == ("record", JobState.COMPLETED, "child")


def test_the_daemons_api_gives_a_job_by_name_its_tasks_queue_and_budget(
    start_daemon: StartDaemon, client: Client
) -> None:
    port = free_port()
    start_daemon("--workers", "1", "--port", str(port), **TASKS)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{base}/health"), what="the HTTP child")
    job = httpx.post(f"{base}/jobs", json={"task": "on_the_mail_queue"}).json()
    assert (job["queue"], job["max_attempts"]) == ("mail", 2)
    polled = httpx.get(f"{base}/jobs/{job['id']}", params={"wait": 30}, timeout=40).json()
    assert (polled["state"], polled["result"]) == ("completed", "sent")


def test_sigterm_lets_running_coroutines_finish_within_the_grace_and_exits_zero(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_GRACE_SECONDS="20", **TASKS)
    jobs = client.enqueue_many([{"task": "hold_async", "payload": {"seconds": 1.5}}] * 3)
    for job in jobs:
        wait_for_executions(daemon, job.id, 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert {client.get(job.id).state for job in jobs} == {JobState.COMPLETED}  # type: ignore[union-attr]


def test_a_coroutine_running_past_the_grace_is_released_not_left_in_progress(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon(
        "--workers", "1", ERRANDS_GRACE_SECONDS="0.5", ERRANDS_LEASE_SECONDS="30", **TASKS
    )
    job = client.enqueue("hold_async", {"seconds": 60})
    wait_for_executions(daemon, job.id, 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    released = client.get(job.id)
    assert released is not None and (released.state, released.attempts) == (JobState.PENDING, 1)

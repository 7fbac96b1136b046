"""`errands run` as a real process: jobs run, crashes are cheap, shutdown is clean.

Each test starts the real CLI with short leases and sends real signals.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from errands import Client, JobState
from errands.harness.process import alive
from errands.queue.lease import WORKER_EXITED
from tests.daemon import Daemon, wait_for

StartDaemon = Callable[..., Daemon]
pytestmark = pytest.mark.slow


def job_state(client: Client, job_id: int) -> JobState:
    job = client.get(job_id)
    assert job is not None
    return job.state


def wait_for_state(client: Client, job_id: int, state: JobState, timeout: float = 20) -> None:
    wait_for(lambda: job_state(client, job_id) is state, timeout, f"job {job_id} to be {state}")


def executions(daemon: Daemon, job_id: int) -> list[tuple[int, int, Any]]:
    """(attempt, pid, start time) of every start of the job, from the tasks' own record."""
    return daemon.query(
        "select attempt, pid, at from test_executions where job_id = %s order by at", (job_id,)
    )


def wait_for_executions(daemon: Daemon, job_id: int, count: int) -> list[tuple[int, int, Any]]:
    return wait_for(
        lambda: (found := executions(daemon, job_id)) and len(found) >= count and found,
        what=f"{count} executions of job {job_id}",
    )


def test_jobs_complete(start_daemon: StartDaemon, client: Client) -> None:
    daemon = start_daemon("--workers", "2")
    jobs = client.enqueue_many([{"task": "record", "payload": {"tag": str(n)}} for n in range(30)])
    for job in jobs:
        wait_for_state(client, job.id, JobState.COMPLETED)
    assert [client.get(job.id).result for job in jobs] == [str(n) for n in range(30)]  # type: ignore[union-attr]
    assert daemon.stop() == 0


def test_a_worker_killed_mid_job_has_its_job_run_again_before_the_lease_could_expire(
    start_daemon: StartDaemon, client: Client
) -> None:
    # A 30 s lease, and the job's history names who recovered it: the supervisor,
    # the moment its worker died, not the reaper after the lease.
    daemon = start_daemon("--workers", "2", ERRANDS_LEASE_SECONDS="30")
    daemon.wait_for_workers(2)
    job = client.enqueue("hold", {"seconds": 60})
    ((_, victim, _),) = wait_for_executions(daemon, job.id, 1)
    os.kill(victim, signal.SIGKILL)
    wait_for_state(client, job.id, JobState.COMPLETED)
    recovered = client.get(job.id)
    assert recovered is not None
    assert [e["error"] for e in recovered.errors] == [WORKER_EXITED]
    (first, second) = executions(daemon, job.id)
    assert (first[0], second[0]) == (1, 2) and second[1] != victim


def test_a_supervisor_started_after_one_killed_on_this_machine_releases_its_job_at_once(
    start_daemon: StartDaemon, client: Client
) -> None:
    # A 30 s lease: the job's history says who recovered it (released as its worker
    # exited, not reaped after the lease), with no timing in the test.
    first = start_daemon("--workers", "1", ERRANDS_LEASE_SECONDS="30")
    (worker,) = first.wait_for_workers(1)
    job = client.enqueue("hold", {"seconds": 60})
    wait_for_executions(first, job.id, 1)
    first.signal(signal.SIGKILL)
    first.wait()

    start_daemon("--workers", "1", ERRANDS_LEASE_SECONDS="30")
    wait_for_state(client, job.id, JobState.COMPLETED)
    recovered = client.get(job.id)
    assert recovered is not None
    assert [e["error"] for e in recovered.errors] == [WORKER_EXITED]
    assert recovered.errors[0]["worker"].split(":")[1] == str(worker)


def test_a_killed_supervisors_job_recorded_from_another_machine_is_left_to_the_reaper(
    start_daemon: StartDaemon, client: Client
) -> None:
    first = start_daemon("--workers", "1")
    (worker,) = first.wait_for_workers(1)
    job = client.enqueue("hold", {"seconds": 60})
    wait_for_executions(first, job.id, 1)
    first.signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: not alive(worker), timeout=5, what="the orphaned worker to exit")
    assert job_state(client, job.id) is JobState.IN_PROGRESS  # nobody released it
    # As a worker of another machine (or container) would be recorded: its pid means
    # nothing here, so only its lease can tell that it is gone.
    first.query("update errands_workers set boot_id = 'another machine' returning id")

    start_daemon("--workers", "1")
    wait_for_state(client, job.id, JobState.COMPLETED)
    recovered = client.get(job.id)
    assert recovered is not None and "lease expired" in recovered.errors[-1]["error"]


def test_sigterm_lets_a_running_job_finish_within_the_grace_and_exits_zero(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_GRACE_SECONDS="20")
    job = client.enqueue("hold", {"seconds": 1.5})
    wait_for_executions(daemon, job.id, 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert job_state(client, job.id) is JobState.COMPLETED


def test_sigterm_stops_claiming_new_jobs(start_daemon: StartDaemon, client: Client) -> None:
    # One slot, taken by the running job: the waiting job could only be claimed after it.
    daemon = start_daemon("--workers", "1", "--concurrency", "1")
    running = client.enqueue("hold", {"seconds": 1})
    wait_for_executions(daemon, running.id, 1)
    waiting = client.enqueue("record")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert job_state(client, waiting.id) is JobState.PENDING


def test_a_job_running_past_the_grace_is_released_not_left_in_progress(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_GRACE_SECONDS="0.5", ERRANDS_LEASE_SECONDS="30")
    job = client.enqueue("hold_every_time", {"seconds": 60})
    wait_for_executions(daemon, job.id, 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    released = client.get(job.id)
    assert released is not None
    assert (released.state, released.attempts) == (JobState.PENDING, 1)
    assert "exited" in (released.last_error or "")


def test_a_second_signal_skips_the_grace(start_daemon: StartDaemon, client: Client) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_GRACE_SECONDS="60")
    job = client.enqueue("hold_every_time", {"seconds": 60})
    wait_for_executions(daemon, job.id, 1)
    daemon.signal(signal.SIGINT)
    time.sleep(0.3)
    daemon.signal(signal.SIGINT)
    assert daemon.wait(timeout=10) == 0
    assert job_state(client, job.id) is JobState.PENDING


def test_a_job_past_its_timeout_fails_with_a_timeout_error(
    start_daemon: StartDaemon, client: Client
) -> None:
    start_daemon("--workers", "1")
    job = client.enqueue("hold_with_timeout", {"seconds": 60}, max_attempts=1)
    wait_for_state(client, job.id, JobState.DEAD)
    dead = client.get(job.id)
    assert dead is not None and "timeout" in (dead.last_error or "").lower()
    # The stuck worker was replaced, and its replacement works.
    after = client.enqueue("record")
    wait_for_state(client, after.id, JobState.COMPLETED)


def test_a_worker_whose_task_module_fails_to_import_is_restarted_with_backoff(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_TASKS="broken_tasks")

    def restarts() -> list[dict[str, Any]] | None:
        found = [e for e in daemon.log_events() if e.get("event") == "child exited; restarting"]
        return found if len(found) >= 3 else None

    found = wait_for(restarts, what="three restarts")
    delays = [event["restart_in_seconds"] for event in found[:3]]
    assert delays == sorted(delays) and delays[0] < delays[2]
    assert "cannot import task module 'broken_tasks'" in found[0]["reason"]
    assert "broken on purpose" in found[0]["reason"]
    assert daemon.stop() == 0


def test_a_broken_task_module_prints_its_traceback_once_per_crash_loop(
    start_daemon: StartDaemon,
) -> None:
    # Two workers and the scheduler fail the same way, restart after restart.
    daemon = start_daemon("--workers", "2", ERRANDS_TASKS="broken_tasks")

    def restarts() -> list[dict[str, Any]] | None:
        found = [e for e in daemon.log_events() if e.get("event") == "child exited; restarting"]
        return found if len(found) >= 6 else None

    found = wait_for(restarts, what="six restarts")
    assert daemon.stop() == 0
    assert [e["child"] for e in found if "traceback" in e] == [found[0]["child"]]
    assert "broken on purpose" in found[0]["traceback"]
    assert all("broken on purpose" in e["reason"] for e in found)  # each says why, in a line

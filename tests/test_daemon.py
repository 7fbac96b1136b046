"""`errands run` as a real process: jobs run, crashes are cheap, shutdown is clean.

Each test starts the real CLI with short leases and sends real signals.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from errands import Client, JobState
from errands.harness.process import alive, free_port
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


def test_several_jobs_run_at_once_in_one_process_with_concurrency(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", "--concurrency", "4")
    jobs = client.enqueue_many([{"task": "hold_every_time", "payload": {"seconds": 3}}] * 4)
    starts = [wait_for_executions(daemon, job.id, 1)[0] for job in jobs]
    assert len({pid for _, pid, _ in starts}) == 1

    def all_four_running_at_once() -> bool:
        rows = daemon.query(
            "select count(*), count(distinct lease_owner) from errands_jobs"
            " where state = 'in_progress'"
        )
        return bool(rows[0] == (4, 1))

    wait_for(all_four_running_at_once, what="four jobs held by one worker at once")
    for job in jobs:
        wait_for_state(client, job.id, JobState.COMPLETED)


def test_work_resumes_after_the_database_restarts(
    start_daemon: StartDaemon, client: Client, restart_database: Callable[[], None]
) -> None:
    daemon = start_daemon("--workers", "2")
    daemon.wait_for_workers(2)
    before = client.enqueue_many([{"task": "record"}] * 10)
    for job in before:
        wait_for_state(client, job.id, JobState.COMPLETED)
    running = client.enqueue("hold", {"seconds": 1})
    wait_for_executions(daemon, running.id, 1)

    restart_database()

    after = client.enqueue_many([{"task": "record"}] * 10)
    for job in [*before, running, *after]:
        wait_for_state(client, job.id, JobState.COMPLETED, timeout=30)
    assert daemon.stop() == 0


def test_the_daemon_waits_for_a_database_that_is_not_up_yet(
    start_daemon: StartDaemon,
    client: Client,
    database_down: Callable[[], AbstractContextManager[None]],
) -> None:
    with database_down():
        daemon = start_daemon("--workers", "1")
        wait_for(
            lambda: any(
                event.get("event") == "database unreachable at start-up; retrying"
                for event in daemon.log_events()
            ),
            what="a retry at start-up",
        )

    daemon.wait_for_workers(1)
    job = client.enqueue("record")
    wait_for_state(client, job.id, JobState.COMPLETED, timeout=30)
    assert daemon.stop() == 0


@pytest.mark.parametrize(("ack", "prefetch"), [("batched", 0), ("immediate", 0), ("batched", 8)])
def test_every_acknowledgement_mode_completes_every_job_once(
    start_daemon: StartDaemon, client: Client, ack: str, prefetch: int
) -> None:
    daemon = start_daemon(
        "--workers", "2", "--concurrency", "2", "--ack", ack, "--prefetch", str(prefetch)
    )
    jobs = client.enqueue_many([{"task": "record"}] * 200)
    for job in jobs:
        wait_for_state(client, job.id, JobState.COMPLETED)
    starts = daemon.query("select job_id, count(*) from test_executions group by job_id")
    assert sorted(starts) == [(job.id, 1) for job in jobs]


def test_a_worker_paused_past_its_lease_cannot_overwrite_the_job_it_lost(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "2")
    daemon.wait_for_workers(2)
    job = client.enqueue("hold", {"seconds": 3})
    ((_, zombie, _),) = wait_for_executions(daemon, job.id, 1)
    os.kill(zombie, signal.SIGSTOP)  # past its 2 s lease: the reaper gives the job away
    try:
        wait_for_state(client, job.id, JobState.COMPLETED)
    finally:
        os.kill(zombie, signal.SIGCONT)
    done = client.get(job.id)
    assert done is not None and done.attempts == 2 and done.result["pid"] != zombie

    def zombie_noticed() -> bool:
        # Its fence stops the attempt on waking, or the database refuses its write.
        return any(
            e.get("event", "").startswith(
                ("lease lost", "lease running out by this worker's clock")
            )
            and e.get("job_id") == job.id
            for e in daemon.log_events()
        )

    wait_for(zombie_noticed, what="the zombie to report its lost lease")
    assert client.get(job.id) == done  # nothing the zombie did changed the job


def test_metrics_from_every_process_move_as_jobs_run(
    start_daemon: StartDaemon, client: Client
) -> None:
    port = free_port()
    daemon = start_daemon("--workers", "2", "--port", str(port))
    (victim, _) = daemon.wait_for_workers(2)
    jobs = client.enqueue_many([{"task": "record"}] * 10)
    for job in jobs:
        wait_for_state(client, job.id, JobState.COMPLETED)
    os.kill(victim, signal.SIGKILL)
    daemon.wait_for_workers(2)

    def scrape() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("errands_")
        }

    def settled() -> dict[str, float] | None:
        # Right after the kill the victim is a zombie still holding its row, so the
        # replacement is waited for here, by its own gauge.
        found = scrape()
        restarted = found.get("errands_worker_restarts_total") == 1
        return found if restarted and found.get("errands_workers_alive") == 2 else None

    metrics = wait_for(settled, what="the restart to be counted and the replacement alive")
    assert metrics['errands_jobs_completed_total{queue="default",task="record"}'] == 10
    assert metrics['errands_queue_jobs{queue="default",state="completed"}'] == 10
    assert metrics['errands_job_duration_seconds_count{queue="default",task="record"}'] == 10
    assert daemon.stop() == 0


def test_every_child_exits_when_the_supervisor_is_killed(start_daemon: StartDaemon) -> None:
    # The HTTP child too: left alive it would hold the port the next supervisor needs.
    daemon = start_daemon("--workers", "2", "--port", str(free_port()))
    daemon.wait_for_workers(2)
    wait_for(  # then two workers and the HTTP child are left
        lambda: any(e["event"].startswith("no periodic schedules") for e in daemon.log_events()),
        what="the scheduler to exit: these tasks declare no schedule",
    )
    children = wait_for(
        lambda: len(daemon.children()) == 3 and daemon.children(), what="3 children"
    )
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=5, what="children to exit")


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

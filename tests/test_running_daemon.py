"""A running job talks to the queue, through the real daemon: complete_in in the
application's transaction, cancels of running jobs (by notification and by polling),
progress. Real processes, real signals; the tasks are tests/running_tasks.py."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from errands import Client, InvalidState, Job, JobState
from errands.harness.process import free_port
from errands.harness.waiting import answers
from tests.daemon import Daemon, wait_for
from tests.test_daemon import executions, wait_for_executions

StartDaemon = Callable[..., Daemon]
TASKS = {"ERRANDS_TASKS": "daemon_tasks,running_tasks"}
pytestmark = pytest.mark.slow
LEDGER = "create table ledger (job_id bigint, attempt int, amount int not null)"


@pytest.fixture
def ledger(start_daemon: StartDaemon, db_url: str) -> Callable[[], list[tuple[int, int]]]:
    """The application's table; (job id, attempt) of every committed charge."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(LEDGER)

    def rows() -> list[tuple[int, int]]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            return conn.execute("select job_id, attempt from ledger order by 1, 2").fetchall()

    return rows


def finished(client: Client, job_id: int) -> Job:
    return client.wait(job_id, timeout=60)


def wait_for_a_renewal(daemon: Daemon, job_id: int) -> None:
    """Until the lease keeper has renewed the job's lease once (it does as it starts, and
    then every lease/3): a cancel sent from then on is heard before the next renewal."""
    wait_for(
        lambda: daemon.query(
            "select 1 from errands_jobs where id = %s"
            " and lease_expires_at > started_at + interval '30 s'",
            (job_id,),
        ),
        what="the lease to be renewed once",
    )


def cancel_heard(daemon: Daemon, job_id: int) -> dict[str, Any] | None:
    return next(
        (
            e
            for e in daemon.log_events()
            if e.get("event") == "cancel requested; stopping the attempt"
            and e.get("job_id") == job_id
        ),
        None,
    )


# -- complete_in ----------------------------------------------------------------------------


def test_the_applications_row_and_the_completion_commit_together(
    start_daemon: StartDaemon, client: Client, ledger: Callable[[], list[tuple[int, int]]]
) -> None:
    daemon = start_daemon("--workers", "1", **TASKS)
    job = client.enqueue("charge", {"amount": 10})
    done = finished(client, job.id)
    assert (done.state, done.result) == (JobState.COMPLETED, {"charged": 10})
    assert ledger() == [(job.id, 1)]
    wait_for(
        lambda: any(
            e.get("event") == "job completed in the application's transaction"
            for e in daemon.log_events()
        ),
        what="the worker to learn that the transaction committed",
    )
    assert daemon.stop() == 0
    assert len(executions(daemon, job.id)) == 1


def test_a_sigkill_after_the_commit_never_runs_the_job_again(
    start_daemon: StartDaemon, client: Client, ledger: Callable[[], list[tuple[int, int]]]
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_LEASE_SECONDS="30", **TASKS)
    job = client.enqueue("charge_then_wait", {"amount": 10, "seconds": 60})
    ((_, victim, _),) = wait_for_executions(daemon, job.id, 1)
    wait_for(lambda: ledger() == [(job.id, 1)], what="the charge to commit")
    os.kill(victim, signal.SIGKILL)
    # Its replacement runs a job: by then the supervisor has released the victim's jobs.
    after = client.enqueue("record")
    finished(client, after.id)
    assert executions(daemon, after.id)[0][1] != victim
    done = client.get(job.id)
    assert done is not None and (done.state, done.attempts) == (JobState.COMPLETED, 1)
    assert len(executions(daemon, job.id)) == 1 and ledger() == [(job.id, 1)]


def test_a_zombie_whose_lease_was_reaped_while_stopped_commits_none_of_its_writes(
    start_daemon: StartDaemon,
    client: Client,
    ledger: Callable[[], list[tuple[int, int]]],
    tmp_path: Path,
) -> None:
    daemon = start_daemon("--workers", "2", **TASKS)  # 2 s leases
    daemon.wait_for_workers(2)
    witness = tmp_path / "witness"
    job = client.enqueue("charge_after", {"seconds": 1, "witness": str(witness)})
    ((_, zombie, _),) = wait_for_executions(daemon, job.id, 1)
    os.kill(zombie, signal.SIGSTOP)  # past its lease: the reaper gives the job away
    try:
        done = finished(client, job.id)
    finally:
        os.kill(zombie, signal.SIGCONT)
    assert (done.state, done.attempts) == (JobState.COMPLETED, 2)
    # On waking, either its complete_in meets the fence (LeaseLost) and rolls its
    # transaction back, or its own fence stops the process first: nothing commits.
    wait_for(
        lambda: (
            witness.exists()
            or any(
                e.get("event", "").startswith("lease running out by this worker's clock")
                for e in daemon.log_events()
            )
        ),
        what="the zombie to meet the fence",
    )
    assert ledger() == [(job.id, 2)]
    assert client.get(job.id) == done


def test_an_attempt_robbed_of_its_lease_gets_lease_lost_and_its_writes_roll_back(
    start_daemon: StartDaemon,
    client: Client,
    ledger: Callable[[], list[tuple[int, int]]],
    tmp_path: Path,
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_LEASE_SECONDS="30", **TASKS)
    go, witness = tmp_path / "go", tmp_path / "witness"
    job = client.enqueue("charge_when_told", {"go": str(go), "witness": str(witness)})
    wait_for_executions(daemon, job.id, 1)

    def reaped_and_run_again() -> bool:
        # Its lease ends now (the renewal at the keeper's start may come after the first
        # try): the reaper takes the job, and attempt 2 runs and completes it.
        daemon.query(
            "update errands_jobs set lease_expires_at = now() - interval '1 s'"
            " where id = %s and attempts = 1 returning id",
            (job.id,),
        )
        return ledger() == [(job.id, 2)]

    wait_for(reaped_and_run_again, interval=0.2, what="attempt 2 to complete the job")
    go.touch()  # attempt 1 goes on, and tries to complete the job
    wait_for(witness.exists, what="attempt 1 to hear LeaseLost")
    assert witness.read_text() == "LeaseLost"
    assert ledger() == [(job.id, 2)]
    done = client.get(job.id)
    assert done is not None and (done.state, done.attempts) == (JobState.COMPLETED, 2)


# -- cancelling running jobs ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "poll-only"])
def test_a_thread_task_that_checks_stops_when_asked_and_ends_cancelled(
    start_daemon: StartDaemon, client: Client, mode: str
) -> None:
    # 30 s leases: renewals every 10 s, so a notification or a poll must bring the request.
    flags = ["--poll-only"] if mode == "poll-only" else []
    daemon = start_daemon("--workers", "1", *flags, ERRANDS_LEASE_SECONDS="30", **TASKS)
    job = client.enqueue("spin", {"seconds": 60}, max_attempts=5)
    wait_for_executions(daemon, job.id, 1)
    wait_for_a_renewal(daemon, job.id)
    asked = client.cancel(job.id)
    assert asked.state is JobState.IN_PROGRESS and asked.cancel_requested_at is not None
    done = finished(client, job.id)
    assert done.state is JobState.CANCELLED and done.result is None
    assert done.errors[-1]["error"].startswith("Cancelled: job")
    heard = cancel_heard(daemon, job.id)
    expected = "poll" if mode == "poll-only" else "notification"
    assert heard is not None and (heard["heard"], heard["how"]) == (expected, "task told")
    assert len(executions(daemon, job.id)) == 1


def test_a_coroutine_is_cancelled_through_pgbouncer_where_only_polling_can_tell_it(
    start_daemon: StartDaemon, client: Client, bouncer_url: str, tmp_path: Path
) -> None:
    daemon = start_daemon(
        "--workers", "1", ERRANDS_DATABASE_URL=bouncer_url, ERRANDS_PGBOUNCER="1",
        ERRANDS_LEASE_SECONDS="30", **TASKS,
    )  # fmt: skip
    witness = tmp_path / "witness"
    job = client.enqueue("nap", {"seconds": 60, "witness": str(witness)})
    wait_for_executions(daemon, job.id, 1)
    wait_for_a_renewal(daemon, job.id)
    client.cancel(job.id)
    assert finished(client, job.id).state is JobState.CANCELLED
    assert witness.read_text() == "CancelledError"
    heard = cancel_heard(daemon, job.id)
    assert heard is not None and (heard["heard"], heard["how"]) == ("poll", "coroutine cancelled")


def test_a_thread_task_that_ignores_the_request_runs_to_its_end_and_is_cancelled_not_retried(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", **TASKS)
    job = client.enqueue("ignore_cancel", {"seconds": 1.5}, max_attempts=5)
    wait_for_executions(daemon, job.id, 1)
    client.cancel(job.id)
    done = finished(client, job.id)
    assert (done.state, done.result) == (JobState.CANCELLED, "ignored: True")
    assert done.attempts == 1 and len(executions(daemon, job.id)) == 1
    with pytest.raises(InvalidState, match="cancelled"):
        client.cancel(job.id)


def test_a_job_whose_worker_is_killed_after_the_request_ends_cancelled_and_never_runs_again(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "2", ERRANDS_LEASE_SECONDS="30", **TASKS)
    daemon.wait_for_workers(2)
    job = client.enqueue("ignore_cancel", {"seconds": 60}, max_attempts=5)
    ((_, victim, _),) = wait_for_executions(daemon, job.id, 1)
    client.cancel(job.id)
    wait_for(lambda: cancel_heard(daemon, job.id), what="the worker to hear the request")
    os.kill(victim, signal.SIGKILL)
    done = finished(client, job.id)
    assert done.state is JobState.CANCELLED and done.attempts == 1
    after = client.enqueue("record")  # the other workers keep working, and never take it
    finished(client, after.id)
    assert len(executions(daemon, job.id)) == 1


def test_http_and_cli_cancel_a_running_job_and_the_metrics_count_it(
    start_daemon: StartDaemon, client: Client, db_url: str
) -> None:
    port = free_port()
    daemon = start_daemon("--workers", "1", "--port", str(port), **TASKS)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), what="the API")
    by_http = client.enqueue("spin", {"seconds": 60})
    by_cli = client.enqueue("spin", {"seconds": 60})
    wait_for_executions(daemon, by_http.id, 1)
    wait_for_executions(daemon, by_cli.id, 1)
    answer = http.post(f"/jobs/{by_http.id}/cancel")
    assert answer.status_code == 200
    assert answer.json()["state"] == "in_progress" and answer.json()["cancel_requested_at"]
    cli = subprocess.run(
        [sys.executable, "-m", "errands", "jobs", "cancel", str(by_cli.id)],
        env={**os.environ, "ERRANDS_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "asked to stop" in cli.stdout
    for job in (by_http, by_cli):
        assert finished(client, job.id).state is JobState.CANCELLED
    again = http.post(f"/jobs/{by_http.id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"

    def counted() -> bool:
        text = http.get("/metrics").text
        return all(
            f'errands_{name}_total{{queue="default",task="spin"}} 2.0' in text
            for name in ("cancels_requested", "cancels_honoured")
        )

    wait_for(counted, what="the cancels to be counted")
    http.close()


def test_a_cancel_racing_the_jobs_return_ends_in_exactly_one_outcome_and_one_run(
    start_daemon: StartDaemon, client: Client
) -> None:
    """Rounds of cancels sent as jobs return: each job ends completed (the cancel
    answered 409) or cancelled (the cancel recorded first), never runs twice."""
    daemon = start_daemon("--workers", "2", "--concurrency", "8", **TASKS)
    daemon.wait_for_workers(2)
    rng = random.Random(24)
    outcomes: set[JobState] = set()
    seconds = 0.2
    # A loaded machine notices starts late, and then every cancel lands after the return;
    # each round that sees one side only doubles the jobs' length, until both are hit.
    for _ in range(5):
        outcomes |= _race_cancels_against_returns(daemon, client, rng, seconds)
        if outcomes == {JobState.COMPLETED, JobState.CANCELLED}:
            break
        seconds *= 2
    assert outcomes == {JobState.COMPLETED, JobState.CANCELLED}, "both sides of the race"


def _race_cancels_against_returns(
    daemon: Daemon, client: Client, rng: random.Random, seconds: float
) -> set[JobState]:
    """Cancels spread over twice a job's length after its start: the outcomes seen."""
    jobs = client.enqueue_many([{"task": "brief", "payload": {"seconds": seconds}}] * 24)
    replies: dict[int, str] = {}

    def cancel_near_the_end(job_id: int, delay: float) -> None:
        wait_for(lambda: executions(daemon, job_id), interval=0.005, what="the job to start")
        time.sleep(delay)
        try:
            replies[job_id] = client.cancel(job_id).state.value
        except InvalidState as exc:
            replies[job_id] = exc.state

    threads = [
        threading.Thread(target=cancel_near_the_end, args=(job.id, rng.uniform(0, 2 * seconds)))
        for job in jobs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ends = {job.id: finished(client, job.id) for job in jobs}
    for job in jobs:
        end, answer = ends[job.id], replies[job.id]
        assert len(executions(daemon, job.id)) == 1, f"job {job.id} ran again"
        expected = JobState.COMPLETED if answer == "completed" else JobState.CANCELLED
        assert end.state is expected, (job.id, answer, end.state)
        assert end.attempts == 1
    return {end.state for end in ends.values()}


# -- progress -------------------------------------------------------------------------------


def test_progress_is_shown_while_running_and_stored_at_most_once_a_second(
    start_daemon: StartDaemon, client: Client, db_url: str
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_LEASE_SECONDS="60", **TASKS)
    job = client.enqueue("report_progress", {"seconds": 3})
    seen = wait_for(
        lambda: (j := client.get(job.id)) is not None and j.progress is not None and j,
        what="progress to show",
    )
    assert seen.state is JobState.IN_PROGRESS
    done = finished(client, job.id)
    assert done.progress == 1.0  # the last report, stored with the completion
    assert daemon.stop() == 0  # its backends flush their statistics as they exit
    with psycopg.connect(db_url, autocommit=True) as conn:
        (updates,) = conn.execute(
            "select n_tup_upd from pg_stat_user_tables where relname = 'errands_jobs'"
        ).fetchone() or (None,)
    assert done.started_at is not None and done.finished_at is not None
    seconds = (done.finished_at - done.started_at).total_seconds()
    # The claim, the completion, a renewal at the start, and a progress write per second.
    assert done.result["calls"] > 1000 and updates is not None
    assert updates <= 3 + int(seconds) + 1, (updates, seconds, done.result)

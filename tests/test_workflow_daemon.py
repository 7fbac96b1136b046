"""Workflows under the real daemon: a chain and a fan-in run in order, each child reading its
parents' results through current_job().parents; a failing parent cancels what waits for it;
workers SIGKILLed mid-workflow lose no job and run none before its parents."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import errands
from errands import Client, JobState
from errands.harness.waiting import wait_for
from tests.daemon import Daemon
from tests.workflow_tasks import fail, number, slow_number, slow_total, total

StartDaemon = Callable[..., Daemon]
TASKS = {"ERRANDS_TASKS": "workflow_tasks"}


def test_a_chain_and_a_fan_in_run_in_order_with_their_parents_results(
    start_daemon: StartDaemon, client: Client
) -> None:
    start_daemon("--workers", "2", **TASKS)
    fan_in = errands.chain(
        errands.group(*(number.s(value=n) for n in range(1, 51))),  # 1 + ... + 50 = 1275
        total.s(plus=1),
        total.s(),
    ).enqueue(client=client)
    assert len(fan_in.jobs) == 52
    done = fan_in.wait(timeout=60)
    assert {job.state for job in done.jobs} == {JobState.COMPLETED}
    merge, last = done.jobs[-2], done.jobs[-1]
    assert merge.result == {"sum": 1276, "parents": 50}
    assert last.result == {"sum": 1276, "parents": 1}
    # Each child started after every one of its parents finished.
    finished = {job.id: job.finished_at for job in done.jobs}
    for job in done.jobs:
        for parent in job.parents or ():
            assert job.started_at is not None and job.started_at >= finished[parent]


def test_a_dead_parent_cancels_the_rest_of_a_chain_under_the_daemon(
    start_daemon: StartDaemon, client: Client
) -> None:
    start_daemon("--workers", "1", **TASKS)
    workflow = errands.chain(
        fail.s(), total.s(), total.s(), total.s().set(on_parent_failure="run")
    ).enqueue(client=client)
    dead, cancelled, cascaded, ran = workflow.wait(timeout=60).jobs
    assert dead.state is JobState.DEAD
    assert cancelled.state is cascaded.state is JobState.CANCELLED
    assert cancelled.last_error == f"parent job {dead.id} ended dead"
    assert cascaded.cancelled_by == cancelled.id
    assert ran.state is JobState.COMPLETED
    assert ran.result == {"sum": 0, "parents": 1}  # the cancelled parent's result: none


def test_workers_killed_mid_fan_in_still_run_every_job_after_its_parents(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "2", **TASKS)
    workflow = errands.chain(
        errands.group(*(slow_number.s(value=n, seconds=1.0) for n in range(1, 5))),
        slow_total.s(seconds=1.0),
        slow_total.s(seconds=0.2),
    ).enqueue(client=client)
    members, fan_in = workflow.jobs[:4], workflow.jobs[4]
    killed = [
        kill_the_worker_running(daemon, [job.id for job in members]),
        kill_the_worker_running(daemon, [fan_in.id]),
    ]

    done = workflow.wait(timeout=90).jobs
    assert {job.state for job in done} == {JobState.COMPLETED}
    assert [job.result for job in done[4:]] == [
        {"sum": 10, "parents": 4},
        {"sum": 10, "parents": 1},
    ]
    by_id = {job.id: job for job in done}
    assert all(by_id[job_id].attempts >= 2 for job_id in killed)  # each ran again
    # Every attempt of every job, the killed ones too, started after its parents completed.
    for job_id, started in daemon.query("select job_id, at from test_executions"):
        for parent in by_id[job_id].parents or ():
            finished = by_id[parent].finished_at
            assert finished is not None and started >= finished, (job_id, parent)


def kill_the_worker_running(daemon: Daemon, job_ids: list[int]) -> int:
    """SIGKILL the worker running one of these jobs, once one has started; the job's id."""

    def running() -> tuple[int, int] | None:
        rows = daemon.query(
            "select id, lease_owner from errands_jobs"
            " where id = any(%s) and state = 'in_progress'"
            " and exists (select from test_executions as e"
            "             where e.job_id = errands_jobs.id and e.attempt = attempts)",
            (job_ids,),
        )
        mine = set(daemon.children())
        for job_id, owner in rows:
            if int(owner.split(":")[1]) in mine:
                return job_id, int(owner.split(":")[1])
        return None

    job_id, pid = wait_for(running, timeout=30, what="a job of the workflow running")
    os.kill(pid, signal.SIGKILL)
    return job_id

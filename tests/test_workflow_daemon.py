"""Workflows under the real daemon: a chain and a fan-in run in order, each child reading its
parents' results through current_job().parents; a failing parent cancels what waits for it."""

from __future__ import annotations

from collections.abc import Callable

import errands
from errands import Client, JobState
from tests.daemon import Daemon
from tests.workflow_tasks import fail, number, total

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

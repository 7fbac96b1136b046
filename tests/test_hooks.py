"""Hooks: on_enqueue on every enqueue path of a process; before_job, after_job around attempts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import errands
from errands import Client, JobState, hooks
from errands.workers.execution import execute, execute_async
from tests.clients import either_client as client
from tests.test_execution import a_job

__all__ = ["client"]  # each client test runs with both clients: tests/clients.py

Calls = list[tuple[Any, ...]]


@pytest.fixture
def calls() -> Iterator[Calls]:
    """What the hooks registered here were called with, in order; unregistered afterwards."""
    seen: Calls = []

    def enqueued(job: errands.Job) -> None:
        seen.append(("on_enqueue", job.id, job.task))

    def starting(job: errands.Job) -> None:
        seen.append(("before_job", job.task, errands.current_job().id))

    def ended(job: errands.Job, outcome: hooks.Outcome) -> None:
        seen.append(("after_job", job.task, outcome.state, outcome.result, outcome.error))

    hooks.on_enqueue(enqueued)
    hooks.before_job(starting)
    hooks.after_job(ended)
    yield seen
    for hook in (enqueued, starting, ended):
        hooks.remove(hook)


@errands.task("hooks.succeeds")
def succeeds(n: int) -> int:
    return n + 1


@errands.task("hooks.raises")
def raises() -> None:
    raise ValueError("bad input")


@errands.task("hooks.fails_for_good")
def fails_for_good() -> None:
    raise errands.Fail("declined")


@errands.task("hooks.asks_to_retry")
def asks_to_retry() -> None:
    raise errands.Retry(in_seconds=5)


@errands.task("hooks.coroutine")
async def coroutine(n: int) -> int:
    await asyncio.sleep(0)
    return n * 2


# -- on_enqueue ------------------------------------------------------------------------------


def test_on_enqueue_sees_each_stored_job_but_no_replay(client: Client, calls: Calls) -> None:
    job = client.enqueue("t", idempotency_key="k")
    client.enqueue("t", idempotency_key="k")  # a replay stores nothing
    batch = client.enqueue_many([{"task": "a"}, {"task": "t", "idempotency_key": "k"}])
    assert calls == [("on_enqueue", job.id, "t"), ("on_enqueue", batch[0].id, "a")]


def test_on_enqueue_of_the_http_api_runs_in_the_api_process(
    api: httpx.Client, calls: Calls
) -> None:
    one = api.post("/jobs", json={"task": "o"}).json()
    batch = api.post("/jobs/batch", json={"jobs": [{"task": "a"}, {"task": "b"}]}).json()
    ids = [one["id"], *(job["id"] for job in batch["jobs"])]
    assert calls == [("on_enqueue", job_id, task) for job_id, task in zip(ids, "oab", strict=True)]


def test_a_raising_on_enqueue_hook_is_logged_and_the_job_stored(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    @hooks.on_enqueue
    def broken(job: errands.Job) -> None:
        raise RuntimeError("hook bug")

    try:
        with caplog.at_level(logging.ERROR, logger="errands.hooks"):
            job = client.enqueue("t")
    finally:
        hooks.remove(broken)
    assert client.get(job.id) is not None
    assert any("hook raised" in r.getMessage() and r.exc_info for r in caplog.records)


def test_no_hook_fires_for_a_refused_job(client: Client, calls: Calls) -> None:
    with pytest.raises(errands.InvalidJob):
        client.enqueue("not a task name")
    assert calls == []


# -- before_job and after_job ------------------------------------------------------------------


def test_hooks_run_around_an_attempt_with_the_current_job_set(calls: Calls) -> None:
    execute(a_job("hooks.succeeds", {"n": 1}))
    assert calls == [
        ("before_job", "hooks.succeeds", 1),
        ("after_job", "hooks.succeeds", JobState.COMPLETED, 2, None),
    ]


@pytest.mark.parametrize(
    ("task", "attempts", "state", "error"),
    [
        ("hooks.raises", 1, JobState.FAILED, ValueError),
        ("hooks.raises", 5, JobState.DEAD, ValueError),  # the last of its 5 attempts
        ("hooks.fails_for_good", 1, JobState.DEAD, errands.Fail),
        ("hooks.asks_to_retry", 1, JobState.PENDING, errands.Retry),
        ("hooks.not_registered", 1, JobState.FAILED, errands.ErrandsError),
    ],
)
def test_after_job_gets_the_state_the_worker_writes_and_the_exception(
    calls: Calls, task: str, attempts: int, state: JobState, error: type[BaseException]
) -> None:
    execute(a_job(task, attempts=attempts))
    (_, _, seen_state, result, seen_error) = calls[-1]
    assert (seen_state, result) == (state, None)
    assert isinstance(seen_error, error)


def test_hooks_run_around_a_coroutine_attempt(calls: Calls) -> None:
    asyncio.run(execute_async(a_job("hooks.coroutine", {"n": 4})))
    assert [call[0] for call in calls] == ["before_job", "after_job"]
    assert calls[-1][2:4] == (JobState.COMPLETED, 8)


def test_raising_job_hooks_are_logged_and_the_attempt_is_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("hook bug")

    hooks.before_job(broken)
    hooks.after_job(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="errands.hooks"):
            outcome = execute(a_job("hooks.succeeds", {"n": 1}))
    finally:
        hooks.remove(broken)
    assert outcome.result_json == "2"  # type: ignore[union-attr]
    assert sum("hook raised" in r.getMessage() for r in caplog.records) == 2


def test_a_removed_hook_is_called_no_more(calls: Calls) -> None:
    def counted(job: errands.Job) -> None:
        calls.append(("counted",))

    hooks.before_job(counted)
    hooks.remove(counted)
    execute(a_job("hooks.succeeds", {"n": 1}))
    assert ("counted",) not in calls

"""What running one job's task produces, and the demo tasks that ship with errands."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import structlog

import errands
from errands import demo
from errands.errors import WITHHELD
from errands.log import configure_logging
from errands.queue.jobs import Job, JobState
from errands.tasks import CurrentJob, running
from errands.workers.execution import Failed, Rescheduled, Succeeded, execute, execute_async


def a_job(task: str, payload: dict[str, Any] | None = None, attempts: int = 1) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=1,
        queue="default",
        task=task,
        payload=payload or {},
        state=JobState.IN_PROGRESS,
        priority=0,
        run_at=now,
        attempts=attempts,
        max_attempts=5,
        idempotency_key=None,
        unique_key=None,
        lease_owner="w",
        lease_expires_at=now,
        last_error=None,
        errors=[],
        result=None,
        created_at=now,
        started_at=now,
        finished_at=None,
        updated_at=now,
    )


@errands.task("execution.echo")
def echo(**kwargs: Any) -> dict[str, Any]:
    return {"kwargs": kwargs, "attempt": errands.current_job().attempt}


@errands.task("execution.raises")
def raises() -> None:
    raise ValueError("bad input")


@errands.task("execution.exits")
def exits() -> None:
    raise SystemExit(3)


@errands.task("execution.returns_a_set")
def returns_a_set() -> set[int]:
    return {1}


def test_success_stores_the_json_result_and_the_task_sees_its_job() -> None:
    outcome = execute(a_job("execution.echo", {"x": 1}, attempts=2))
    assert isinstance(outcome, Succeeded)
    assert json.loads(outcome.result_json) == {"kwargs": {"x": 1}, "attempt": 2}


def test_an_exception_is_a_failure_with_its_traceback() -> None:
    outcome = execute(a_job("execution.raises"))
    assert isinstance(outcome, Failed)
    assert outcome.error == "ValueError: bad input"
    assert outcome.traceback is not None and "raise ValueError" in outcome.traceback


def test_a_failure_knows_the_line_that_raised_it() -> None:
    outcome = execute(a_job("execution.raises"))
    assert isinstance(outcome, Failed)
    source, first = inspect.getsourcelines(raises.func)  # first: the decorator line
    line = first + next(n for n, text in enumerate(source) if "raise ValueError" in text)
    assert outcome.where == f"{__file__}:{line} in raises"


def test_a_task_calling_sys_exit_fails_without_stopping_the_worker() -> None:
    outcome = execute(a_job("execution.exits"))
    assert isinstance(outcome, Failed) and outcome.error == "SystemExit: 3"


def test_a_result_that_is_not_json_is_a_failure() -> None:
    outcome = execute(a_job("execution.returns_a_set"))
    assert isinstance(outcome, Failed) and "not JSON serializable" in outcome.error


def test_wrong_payload_fields_are_a_failure() -> None:
    outcome = execute(a_job("execution.raises", {"surprise": 1}))
    assert isinstance(outcome, Failed) and "surprise" in outcome.error


def test_an_unregistered_task_fails_with_a_clear_error() -> None:
    outcome = execute(a_job("nobody.registered.this"))
    assert isinstance(outcome, Failed)
    assert "'nobody.registered.this' is not registered" in outcome.error


@errands.task("execution.fails_for_good")
def fails_for_good() -> None:
    raise errands.Fail("card declined")


@errands.task("execution.asks_for_a_retry")
def asks_for_a_retry() -> None:
    raise errands.Retry(in_seconds=30, reason="rate limited")


@errands.task("execution.picky", retry_on=(OSError,))
def picky(error: str) -> None:
    raise {"os": OSError, "value": ValueError}[error]("nope")


@errands.task("execution.coroutine", timeout=5)
async def coroutine(seconds: float = 0) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"attempt": errands.current_job().attempt}


@errands.task("execution.coroutine_timeout", timeout=0.05)
async def coroutine_timeout() -> None:
    await asyncio.sleep(60)


@errands.task("execution.coroutine_own_timeout", timeout=5)
async def coroutine_own_timeout() -> None:
    raise TimeoutError("the partner timed out")


def test_fail_is_a_permanent_failure() -> None:
    outcome = execute(a_job("execution.fails_for_good"))
    assert isinstance(outcome, Failed) and outcome.permanent
    assert outcome.error == "Fail: card declined"


def test_retry_is_a_reschedule_not_a_failure() -> None:
    outcome = execute(a_job("execution.asks_for_a_retry"))
    assert isinstance(outcome, Rescheduled)
    assert (outcome.reason, outcome.in_seconds) == ("Retry: rate limited", 30)


def test_an_error_outside_retry_on_is_permanent_and_one_inside_is_not() -> None:
    retried = execute(a_job("execution.picky", {"error": "os"}))
    not_retried = execute(a_job("execution.picky", {"error": "value"}))
    assert isinstance(retried, Failed) and not retried.permanent
    assert isinstance(not_retried, Failed) and not_retried.permanent


def test_an_ordinary_error_is_retried() -> None:
    outcome = execute(a_job("execution.raises"))
    assert isinstance(outcome, Failed) and not outcome.permanent


def test_a_coroutine_task_runs_with_its_job() -> None:
    outcome = asyncio.run(execute_async(a_job("execution.coroutine", attempts=3)))
    assert isinstance(outcome, Succeeded) and json.loads(outcome.result_json) == {"attempt": 3}


def test_a_coroutine_past_its_timeout_is_cancelled_and_failed() -> None:
    outcome = asyncio.run(execute_async(a_job("execution.coroutine_timeout")))
    assert isinstance(outcome, Failed) and not outcome.permanent
    assert outcome.error.endswith("ran past its timeout of 0.05s and was cancelled")


def test_a_timeout_error_raised_by_the_coroutine_itself_is_its_own_failure() -> None:
    outcome = asyncio.run(execute_async(a_job("execution.coroutine_own_timeout")))
    assert isinstance(outcome, Failed) and outcome.error == "TimeoutError: the partner timed out"


@pytest.fixture
def as_job() -> Iterator[None]:
    with running(CurrentJob(7, "demo", "default", 1, 5, {}, datetime.now(UTC))):
        yield


def test_demo_send_email_simulates_delivery(as_job: None) -> None:
    assert demo.send_email("a@example.com", "hi")["delivered"] is True


def test_demo_generate_report_aggregates_rows(as_job: None) -> None:
    assert demo.generate_report(rows=10)["rows"] == 10


def test_demo_fail_always_raises(as_job: None) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        demo.fail()


def test_demo_flaky_fails_at_its_rate(as_job: None) -> None:
    assert demo.flaky(fail_rate=0.0) == {"attempt": 1}
    with pytest.raises(RuntimeError, match="flaky"):
        demo.flaky(fail_rate=1.0)


def test_demo_sleep_returns_what_it_slept(as_job: None) -> None:
    assert demo.sleep(0.01) == {"slept": 0.01}


CARD = "4" + "1" * 15  # the row; written so that no source line in a traceback holds it


@errands.task("violates_a_check")
def violates_a_check(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("create temp table cards (number text check (number not like '4111%'))")
        conn.execute("insert into cards values ('4' || repeat('1', 15))")


def test_a_database_error_in_a_task_is_stored_without_the_row_it_quotes(db_url: str) -> None:
    outcome = execute(a_job("violates_a_check", {"url": db_url}))
    assert isinstance(outcome, Failed) and outcome.traceback is not None
    assert outcome.error.startswith("CheckViolation: new row for relation")
    assert CARD not in outcome.error + outcome.traceback
    assert WITHHELD in outcome.traceback


def test_a_logged_database_error_shows_no_row(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("json", "INFO")
    try:
        with psycopg.connect(db_url) as conn:
            conn.execute("create temp table cards (number text check (number not like '4111%'))")
            try:
                conn.execute("insert into cards values ('4' || repeat('1', 15))")
            except psycopg.Error:
                structlog.get_logger("test").exception("could not store")
    finally:
        structlog.reset_defaults()  # later tests see errands as the library it is here
        root.handlers[:], root.level = handlers, level  # not left writing to the captured stderr
    logged = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "CheckViolation" in logged["exception"] and CARD not in logged["exception"]

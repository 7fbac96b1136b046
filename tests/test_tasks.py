"""Registering tasks, and what a running task can ask about its job."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import errands
from errands.errors import ConfigurationError
from errands.tasks import CurrentJob, registered, running

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_bare_decorator_registers_under_the_function_name() -> None:
    @errands.task
    def bare_task_example() -> str:
        return "ran"

    spec = registered("bare_task_example")
    assert spec is not None and spec.func() == "ran"
    assert bare_task_example() == "ran"  # still callable directly


def test_decorator_with_options_records_them() -> None:
    @errands.task("named.example", queue="mail", max_attempts=3, timeout=2.5)
    def anything() -> None: ...

    spec = registered("named.example")
    assert spec is not None
    assert (spec.queue, spec.max_attempts, spec.timeout) == ("mail", 3, 2.5)


def test_one_name_for_two_functions_is_refused() -> None:
    @errands.task("taken.name")
    def first() -> None: ...

    with pytest.raises(ConfigurationError, match="registered twice"):

        @errands.task("taken.name")
        def second() -> None: ...


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"timeout": 0}, {"queue": "bad queue"}, {"queue": "q\n"}],
)
def test_invalid_options_are_refused_at_registration(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        errands.task("options.example", **options)(lambda: None)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", ["not a name", "trailing_newline\n"])
def test_invalid_task_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError):
        errands.task(name)(lambda: None)


def test_current_job_is_the_job_being_run() -> None:
    job = CurrentJob(
        id=7, task="t", queue="default", attempt=2, max_attempts=5, payload={}, run_at=NOW
    )
    with running(job):
        assert errands.current_job() == job


def test_current_job_outside_a_task_is_an_error() -> None:
    with pytest.raises(errands.ErrandsError, match="inside a running task"):
        errands.current_job()

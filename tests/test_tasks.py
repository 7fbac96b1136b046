"""Registering tasks, and what a running task can ask about its job."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import errands
from errands.errors import ConfigurationError
from errands.registry import registered
from errands.tasks import CurrentJob, running

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


def test_the_name_may_be_given_as_a_keyword() -> None:
    @errands.task(name="keyword.named", queue="mail")
    def anything() -> None: ...

    assert registered("keyword.named") is anything
    assert anything.name == "keyword.named" and anything.queue == "mail"


def test_a_task_is_still_the_function_it_wraps() -> None:
    @errands.task("wraps.example")
    def add(a: int, b: int = 2) -> int:
        """Adds."""
        return a + b

    assert add(1) == 3 and add(a=1, b=5) == 6
    assert isinstance(add, errands.Task)
    assert (add.__name__, add.__doc__, add.func.__name__) == ("add", "Adds.", "add")


def test_a_payload_is_checked_against_the_signature_naming_each_argument() -> None:
    @errands.task("signature.example")
    def send(to: str, subject: str = "", *, urgent: bool = False) -> None: ...

    assert send.payload_errors({"to": "a", "urgent": True}) == []
    errors = send.payload_errors({"subjet": "typo"})
    assert {(e.field, e.message) for e in errors} == {
        ("payload.subjet", "is not an argument of task signature.example"),
        ("payload.to", "is required by task signature.example"),
    }


def test_a_task_taking_keyword_arguments_accepts_any_payload() -> None:
    @errands.task("signature.kwargs")
    def anything(required: int, **rest: object) -> None: ...

    assert anything.payload_errors({"required": 1, "other": 2}) == []
    assert [e.field for e in anything.payload_errors({"other": 2})] == ["payload.required"]


def test_a_required_positional_only_argument_is_refused_at_registration() -> None:
    def positional(a: int, /) -> None: ...

    with pytest.raises(ConfigurationError, match="positional-only"):
        errands.task("signature.positional")(positional)


@pytest.mark.parametrize(
    ("raised", "retried"),
    [(ConnectionError(), True), (TimeoutError(), True), (KeyError(), False), (ValueError(), False)],
)
def test_retry_on_and_no_retry_on_choose_which_errors_are_retried(
    raised: Exception, retried: bool
) -> None:
    @errands.task("retry.choice", retry_on=(OSError, LookupError), no_retry_on=(KeyError,))
    def anything() -> None: ...

    assert anything.retries(raised) is retried


def test_by_default_every_exception_is_retried() -> None:
    @errands.task("retry.default")
    def anything() -> None: ...

    assert anything.retries(ValueError()) and anything.retries(KeyError())


def test_retry_on_must_name_exception_types() -> None:
    with pytest.raises(ConfigurationError, match="retry_on"):
        errands.task("retry.bad", retry_on=("ValueError",))(lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_retry_refuses_a_delay_that_is_not_a_time(seconds: float) -> None:
    with pytest.raises(ValueError, match="in_seconds"):
        errands.Retry(in_seconds=seconds)

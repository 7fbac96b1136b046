"""ErrandsBackend in a Django process: enqueue on Django's connection, results read back."""

from __future__ import annotations

import io
import subprocess
import sys
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from django_tasks import TaskResultStatus, task_backends
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist, TaskResultMismatch
from django_tasks.signals import task_enqueued, task_finished, task_started

import errands
from errands import Client, JobState
from errands.contrib.django import ErrandsBackend
from errands.contrib.django.backend import RUN
from errands.contrib.django.results import NO_TRACEBACK, STATUSES, exception_path
from errands.contrib.django.runner import run as runner
from errands.testing import run
from tests.contrib_django.conftest import use_database
from tests.contrib_django.project.settings import UNSET
from tests.contrib_django.project.shop.tasks import OutOfStock, add, reserve, send_welcome

ADD = "tests.contrib_django.project.shop.tasks.add"


@pytest.fixture
def client(django_db: str) -> Any:
    with Client(django_db) as errands_client:
        yield errands_client


def stored(client: Client, result: Any) -> errands.Job:
    job = client.get(int(result.id))
    assert job is not None, f"no job {result.id}"
    return job


def test_enqueue_stores_a_job_that_runs_the_task_by_its_import_path(client: Client) -> None:
    result = add.enqueue(2, b=3)
    assert (result.status, result.args, result.kwargs) == (TaskResultStatus.READY, [2], {"b": 3})
    job = stored(client, result)  # outside atomic, Django's autocommit has stored it already
    assert (job.task, job.queue, job.state) == (RUN, "default", JobState.PENDING)
    assert job.payload == {"task_path": ADD, "args": [2], "kwargs": {"b": 3}, "backend": "default"}
    assert result.enqueued_at == job.created_at


def test_a_rolled_back_transaction_leaves_no_job(client: Client) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        add.enqueue(1, 2)
        raise RuntimeError("the view failed")
    assert client.list() == []


def test_a_job_enqueued_in_a_transaction_is_stored_when_it_commits(client: Client) -> None:
    with transaction.atomic():
        result = add.enqueue(1, 2)
        assert client.get(int(result.id)) is None  # not committed yet: no worker sees it
    assert stored(client, result).state is JobState.PENDING


def test_a_rolled_back_savepoint_takes_its_job_with_it(client: Client) -> None:
    with transaction.atomic():
        kept = add.enqueue(1, 2)
        with pytest.raises(RuntimeError), transaction.atomic():
            add.enqueue(3, 4)
            raise RuntimeError("the inner block failed")
    assert [job.id for job in client.list()] == [int(kept.id)]


def test_queue_and_priority_become_the_jobs(client: Client) -> None:
    assert (stored(client, send_welcome.enqueue("a@example.com")).queue) == "emails"
    for priority in (-100, 0, 10, 100):
        job = stored(client, add.using(priority=priority).enqueue(1, 2))
        assert job.priority == priority


def test_run_after_becomes_the_jobs_run_at(client: Client) -> None:
    when = timezone.now() + timedelta(hours=1)
    assert stored(client, add.using(run_after=when).enqueue(1, 2)).run_at == when


def test_a_naive_run_after_without_use_tz_is_in_djangos_time_zone(client: Client) -> None:
    naive = datetime(2031, 7, 1, 9, 30)
    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Berlin"):
        result = add.using(run_after=naive).enqueue(1, 2)
    assert stored(client, result).run_at == datetime(2031, 7, 1, 7, 30, tzinfo=UTC)


def test_max_attempts_option_is_the_jobs_budget(client: Client) -> None:
    assert stored(client, reserve.enqueue("sku")).max_attempts == 1
    assert stored(client, add.enqueue(1, 2)).max_attempts == 5  # errands' default


def test_arguments_that_are_not_json_are_refused_and_nothing_stored(client: Client) -> None:
    with pytest.raises(TypeError):
        add.enqueue(object(), 1)
    assert client.list() == []


def test_enqueue_before_errands_migrate_says_to_run_it(empty_db_url: str) -> None:
    use_database(empty_db_url)
    try:
        with pytest.raises(ImproperlyConfigured, match=r"manage\.py errands_migrate"):
            add.enqueue(1, 2)
    finally:
        use_database(UNSET)


def test_errands_migrate_creates_the_tables_in_djangos_database(empty_db_url: str) -> None:
    use_database(empty_db_url)
    try:
        out = io.StringIO()
        call_command("errands_migrate", stdout=out)
        assert "applied 0001_jobs" in out.getvalue()
        assert stored_job_count(empty_db_url) == 0  # the table is there
        call_command("errands_migrate", stdout=out)
        assert out.getvalue().endswith("up to date\n")
        add.enqueue(1, 2)
        assert stored_job_count(empty_db_url) == 1
    finally:
        use_database(UNSET)


def stored_job_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*) from errands_jobs").fetchone()
        assert row is not None
        return int(row[0])


def test_task_enqueued_is_sent_with_the_stored_result(django_db: str) -> None:
    seen: list[Any] = []

    def receiver(sender: type, task_result: Any, **kwargs: Any) -> None:
        seen.append((sender, task_result))

    task_enqueued.connect(receiver)
    try:
        result = add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(ErrandsBackend, result)]


def test_get_result_reads_a_pending_job_as_ready(django_db: str) -> None:
    result = add.enqueue(2, 3)
    read = add.get_result(result.id)
    assert (read.id, read.status, read.args, read.kwargs) == (result.id, "READY", [2, 3], {})
    assert (read.enqueued_at, read.started_at, read.finished_at) == (result.enqueued_at, None, None)
    assert (read.task.func, read.attempts, read.errors) == (add.func, 0, [])
    with pytest.raises(ValueError, match="not finished"):
        read.return_value  # noqa: B018
    with pytest.raises(TaskResultMismatch):
        send_welcome.get_result(result.id)


def test_aenqueue_and_aget_result_work_from_async_code(django_db: str) -> None:
    result = async_to_sync(add.aenqueue)(4, 5)
    assert async_to_sync(add.aget_result)(result.id).args == [4, 5]


@pytest.mark.parametrize("result_id", ["999999", "0", "-1", "abc", "", "٣", "1" * 30])
def test_get_result_of_an_unknown_id_raises_does_not_exist(django_db: str, result_id: str) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(result_id)


def test_jobs_that_are_not_this_backends_tasks_have_no_result(client: Client) -> None:
    plain = client.enqueue("send_email", {"to": "a@example.com"})
    other_backend = reserve.enqueue("sku")
    by_hand = client.enqueue(
        RUN, {"task_path": ADD, "args": {}, "kwargs": [], "backend": "default"}
    )
    for result_id in (str(plain.id), other_backend.id, str(by_hand.id)):
        with pytest.raises(TaskResultDoesNotExist):
            task_backends["default"].get_result(result_id)


def test_a_cancelled_job_reads_as_failed_with_no_error(client: Client) -> None:
    result = add.enqueue(1, 2)
    client.cancel(int(result.id))
    read = add.get_result(result.id)
    assert (read.status, read.errors, read.is_finished) == (TaskResultStatus.FAILED, [], True)


def test_every_job_state_has_a_django_status() -> None:
    assert set(STATUSES) == set(JobState)


def exception_text(exc: BaseException) -> str:
    try:
        raise exc
    except BaseException:
        return traceback.format_exc()


def chained() -> str:
    try:
        try:
            raise KeyError("first")
        except KeyError as exc:
            raise OutOfStock("then\nthis, on two lines") from exc
    except OutOfStock:
        return traceback.format_exc()


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (exception_text(ValueError("plain")), "builtins.ValueError"),
        (exception_text(OutOfStock("x: y")), "tests.contrib_django.project.shop.tasks.OutOfStock"),
        (exception_text(OutOfStock()), "tests.contrib_django.project.shop.tasks.OutOfStock"),
        (chained(), "tests.contrib_django.project.shop.tasks.OutOfStock"),
        ("worker lost", NO_TRACEBACK),
    ],
)
def test_the_exception_class_is_read_from_the_traceback(text: str, path: str) -> None:
    assert exception_path(text) == path


def test_the_runner_calls_the_task_and_sends_its_signals(django_db: str) -> None:
    seen: list[tuple[str, Any]] = []

    def record(signal: Any, sender: type, task_result: Any, **kwargs: Any) -> None:
        name = "started" if signal is task_started else "finished"
        seen.append((name, task_result.status))

    task_started.connect(record)
    task_finished.connect(record)
    try:
        payload = {"task_path": ADD, "args": [2, 3], "kwargs": {}, "backend": "default"}
        assert run(runner, payload, job_id=7) == 5
    finally:
        task_started.disconnect(record)
        task_finished.disconnect(record)
    assert seen == [("started", "RUNNING"), ("finished", "SUCCESSFUL")]


def test_the_runner_gives_the_task_the_queue_and_backend_it_was_enqueued_with(
    django_db: str,
) -> None:
    seen: list[Any] = []

    def record(sender: type, task_result: Any, **kwargs: Any) -> None:
        seen.append((task_result.task.queue_name, task_result.task.backend, task_result.backend))

    task_started.connect(record)
    try:
        payload = {"task_path": ADD, "args": [2, 3], "kwargs": {}, "backend": "anyqueue"}
        run(runner, payload, queue="elsewhere")
    finally:
        task_started.disconnect(record)
    assert seen == [("elsewhere", "anyqueue", "anyqueue")]


@pytest.mark.parametrize(
    ("task_path", "backend"),
    [
        ("os.system", "default"),  # importable, callable, and no Django task
        ("tests.contrib_django.project.shop.tasks.OutOfStock", "default"),
        ("no.such.module", "default"),
        (ADD, "immediate"),  # a backend that is not errands'
        (ADD, "missing"),
        (["a", "list"], "default"),
    ],
)
def test_the_runner_runs_django_tasks_of_errands_backends_only(
    django_db: str, task_path: Any, backend: str
) -> None:
    payload = {"task_path": task_path, "args": ["true"], "kwargs": {}, "backend": backend}
    with pytest.raises(errands.Fail):
        run(runner, payload)


@pytest.mark.parametrize("task_path", ["this.s", "tests.contrib_django.outside.shout"])
def test_the_runner_refuses_a_path_outside_the_project_without_importing_it(
    django_db: str, task_path: str
) -> None:
    module = task_path.rpartition(".")[0]
    payload = {"task_path": task_path, "args": ["hi"], "kwargs": {}, "backend": "default"}
    with pytest.raises(errands.Fail, match="not loaded, nor in an installed app"):
        run(runner, payload)
    assert module not in sys.modules


def test_the_runner_imports_a_task_module_of_the_settings_package_on_first_use(
    django_db: str,
) -> None:
    path = "tests.contrib_django.project.late_tasks.double"
    payload = {"task_path": path, "args": [21], "kwargs": {}, "backend": "default"}
    # As `manage.py errands_worker` runs with DJANGO_SETTINGS_MODULE set (these tests
    # configure settings in code, which names no module).
    with override_settings(SETTINGS_MODULE="tests.contrib_django.project.settings"):
        assert run(runner, payload) == 42


def test_a_database_that_is_not_postgresql_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="sqlite"):
        ErrandsBackend("x", {"OPTIONS": {"DATABASE": "local"}})
    with pytest.raises(ImproperlyConfigured, match="not in DATABASES"):
        ErrandsBackend("x", {"OPTIONS": {"DATABASE": "nowhere"}})


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"OPTIONS": {"MAX_ATTEMPT": 3}}, "MAX_ATTEMPT"),
        ({"OPTIONS": {"MAX_ATTEMPTS": 0}}, "MAX_ATTEMPTS"),
        ({"OPTIONS": {"MAX_ATTEMPTS": "3"}}, "MAX_ATTEMPTS"),
        ({"OPTIONS": {"MAX_ATTEMPTS": True}}, "MAX_ATTEMPTS"),
        ({"OPTIONS": {"DATABASE": 1}}, "DATABASE"),
        ({"QUEUES": ["has space"]}, "has space"),
    ],
)
def test_unusable_settings_are_refused_naming_them(params: dict[str, Any], named: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=named):
        ErrandsBackend("x", params)


def test_a_queue_name_errands_cannot_store_is_an_invalid_task() -> None:
    assert add.using(backend="anyqueue", queue_name="any.name:1").queue_name == "any.name:1"
    with pytest.raises(InvalidTaskError, match="errands queue name"):
        add.using(backend="anyqueue", queue_name="has space")


@pytest.mark.parametrize("missing", ["django", "django_tasks"])
def test_without_django_or_its_task_framework_the_import_says_what_to_install(
    missing: str,
) -> None:
    hide = f"import sys; sys.modules[{missing!r}] = None; import errands.contrib.django"
    done = subprocess.run(
        [sys.executable, "-c", hide], capture_output=True, text=True, timeout=60, check=False
    )
    assert "pip install 'errands[django]'" in done.stderr

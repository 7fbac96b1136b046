"""`manage.py errands_worker` running Django tasks: the real command, workers and database.

One worker daemon serves the whole module (it starts in about a second); each
test enqueues its own tasks from this process, through Django, and reads their
results back the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.utils import timezone
from django_tasks import TaskResultStatus

from errands.contrib.django.backend import ErrandsBackend
from errands.harness.process import DaemonProcess
from errands.harness.waiting import wait_for
from tests.conftest import migrated_database
from tests.contrib_django.conftest import use_database
from tests.contrib_django.project.settings import UNSET
from tests.contrib_django.project.shop.tasks import (
    OutOfStock,
    add,
    count_jobs,
    double,
    flaky,
    reserve,
    wait_for_file,
)
from tests.daemon import FAST

pytestmark = pytest.mark.slow
MANAGE = Path(__file__).parent / "project" / "manage.py"
STARTUP_QUERY = "insert into startup_queries (alias, pid) values (%s, %s)"


class Worker:
    def __init__(self, url: str, daemon: DaemonProcess, signal_log: Path) -> None:
        self.url = url
        self.daemon = daemon
        self.signal_log = signal_log

    def query(self, sql: str) -> list[Any]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def signals(self, result_id: str) -> list[dict[str, Any]]:
        lines = self.signal_log.read_text().splitlines() if self.signal_log.exists() else []
        return [event for event in map(json.loads, lines) if event["id"] == result_id]


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def worker(server_url: str, template_url: str, tmp_path_factory: Any) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("django-worker")
    with migrated_database(server_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table startup_queries (alias text, pid int)")
        env = {
            **os.environ,
            **FAST,
            "ERRANDS_BACKOFF_BASE_SECONDS": "0.05",
            "ERRANDS_BACKOFF_MAX_SECONDS": "0.1",
            "ERRANDS_LOG_FORMAT": "json",
            "DJANGO_DATABASE_URL": url,
            "SHOP_SIGNAL_LOG": str(tmp / "signals.jsonl"),
            "SHOP_STARTUP_QUERY": STARTUP_QUERY,
        }
        env.pop("ERRANDS_DATABASE_URL", None)  # the database is Django's
        args = ["errands_worker", "--workers", "2", "--concurrency", "4", "--no-http"]
        daemon = DaemonProcess(args, env, tmp / "worker.log", program=[sys.executable, str(MANAGE)])
        daemon.start()
        use_database(url)
        try:
            found = Worker(url, daemon, tmp / "signals.jsonl")
            wait_for(
                lambda: len(found.query("select pid from errands_workers")) == 2,
                what="two workers",
            )
            yield found
            assert daemon.stop() == 0, daemon.log_path.read_text()
        finally:
            daemon.kill()
            use_database(UNSET)


def finished(result: Any) -> Any:
    """The result once the job is completed, dead or cancelled."""
    backend = result.task.get_backend()
    assert isinstance(backend, ErrandsBackend)
    backend.client().wait(int(result.id), timeout=30)
    result.refresh()
    return result


def test_a_task_runs_to_success_and_its_return_value_is_read_back(worker: Worker) -> None:
    result = finished(add.enqueue(2, 3))
    assert (result.status, result.return_value, result.attempts) == ("SUCCESSFUL", 5, 1)
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.errors == []


def test_a_failing_task_ends_failed_with_its_exception_and_traceback(worker: Worker) -> None:
    result = finished(reserve.enqueue("widget"))
    assert (result.status, result.attempts) == (TaskResultStatus.FAILED, 1)
    [error] = result.errors
    assert error.exception_class is OutOfStock
    assert "no widget left" in error.traceback
    assert 'raise OutOfStock(f"no {sku} left")' in error.traceback
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018


def test_a_failed_attempt_is_retried_with_its_error_kept(worker: Worker) -> None:
    result = finished(flaky.enqueue("v"))  # takes the context: fails while attempt == 1
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"value": "v", "attempt": 2, "id": result.id}
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"]
    assert result.attempts == 2
    assert result.started_at < result.last_attempted_at


def test_an_async_task_runs(worker: Worker) -> None:
    assert finished(double.enqueue(21)).return_value == 42


def test_a_task_queries_through_djangos_connection_in_the_worker(worker: Worker) -> None:
    assert finished(count_jobs.enqueue()).return_value >= 1


def test_run_after_holds_the_task_back_until_then(worker: Worker) -> None:
    when = timezone.now() + timedelta(seconds=1)
    result = finished(add.using(run_after=when).enqueue(1, 1))
    assert result.started_at >= when


def test_a_running_task_reads_as_running_with_its_worker(worker: Worker, tmp_path: Path) -> None:
    go = tmp_path / "go"
    result = wait_for_file.enqueue(str(go))

    def running() -> Any:
        result.refresh()
        return result.status == TaskResultStatus.RUNNING or None

    wait_for(running, timeout=30, what="the task to start")
    assert result.worker_ids[-1].startswith(os.uname().nodename)  # errands' worker id
    go.touch()
    assert finished(result).status == TaskResultStatus.SUCCESSFUL


def test_task_signals_are_sent_in_the_worker_around_each_attempt(worker: Worker) -> None:
    ok, failed = finished(add.enqueue(1, 2)), finished(reserve.enqueue("gadget"))
    workers = set(worker.daemon.children())
    for result, outcome, errors in ((ok, "SUCCESSFUL", []), (failed, "FAILED", [OUT_OF_STOCK])):
        started, done = worker.signals(result.id)
        assert (started["signal"], started["status"]) == ("started", "RUNNING")
        assert (done["signal"], done["status"], done["errors"]) == ("finished", outcome, errors)
        assert started["pid"] == done["pid"] in workers
        assert started["sender"] == "ErrandsBackend"


OUT_OF_STOCK = f"{OutOfStock.__module__}.OutOfStock"


def test_no_worker_shares_a_connection_django_opened_before_the_fork(worker: Worker) -> None:
    # The command's process queried at start-up (in the shop app's ready()), before forking,
    # on a plain connection and on a pooled one.
    queried = worker.query("select alias, pid from startup_queries order by alias")
    assert queried == [("default", worker.daemon.pid), ("pooled", worker.daemon.pid)]
    # Both were closed before the workers were forked: no session is left whose last query
    # it was, for the workers to write into along with the parent and with each other.
    unclosed = "select count(*) from pg_stat_activity where query like 'insert into startup%'"
    assert wait_for(lambda: worker.query(unclosed) == [(0,)], timeout=10, what="it to close")


def test_an_invalid_errands_option_is_refused_by_errands(worker: Worker) -> None:
    done = manage("errands_worker", "--workers", "0", env={"DJANGO_DATABASE_URL": worker.url})
    assert done.returncode == 2
    assert "--workers" in done.stderr


def test_an_unknown_backend_is_refused(worker: Worker) -> None:
    done = manage("errands_worker", "--backend", "nope", env={"DJANGO_DATABASE_URL": worker.url})
    assert done.returncode == 1
    assert "nope" in done.stderr


def test_a_backend_that_is_not_errands_is_refused(worker: Worker) -> None:
    done = manage(
        "errands_worker", "--backend", "immediate", env={"DJANGO_DATABASE_URL": worker.url}
    )
    assert done.returncode == 1
    assert "ImmediateBackend" in done.stderr


def test_help_lists_the_options_of_errands_run() -> None:
    done = manage("errands_worker", "--help", env={})
    assert done.returncode == 0
    for option in ("--backend", "--workers", "--concurrency", "--queues", "--database-url"):
        assert option in done.stdout

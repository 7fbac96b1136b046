"""`ErrandsBackend`: Django's task framework on errands.

    TASKS = {"default": {"BACKEND": "errands.contrib.django.ErrandsBackend"}}

A Django task is enqueued as a job of the errands task `runner` registers in the
workers, through Django's own connection for the backend's database, inside
whatever transaction the caller has open: a rollback leaves no job, and the
workers hear of the job when it commits. Results are read back from errands'
jobs table.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any

import psycopg
from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from errands import Client, InvalidArgument, Job
from errands.contrib.django import database
from errands.contrib.django.compat import (
    BaseTaskBackend,
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
)
from errands.contrib.django.results import new_result, result_of
from errands.errors import SchemaMismatch
from errands.limits import MAX_ATTEMPTS_LIMIT
from errands.queue.requests import QUEUE_NAME

APP = "errands.contrib.django"
RUN = "django.tasks.run"  # the errands task of every Django task's job (see `runner`)
MAX_JOB_ID = 2**63 - 1
OPTIONS = {
    "DATABASE": "the DATABASES alias whose connection enqueues (default: 'default')",
    "MAX_ATTEMPTS": f"attempts per task, 1 to {MAX_ATTEMPTS_LIMIT} (default: errands' 5)",
}


class ErrandsBackend(BaseTaskBackend):
    supports_defer = True  # run_after becomes the job's run_at
    supports_async_task = True  # run on the worker's job thread, on an event loop of its own
    supports_get_result = True  # from any process: the job is in the database
    supports_priority = True  # -100…100, the job's priority: higher runs first

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = dict(params.get("OPTIONS") or {})
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            known = "; ".join(f"{name}: {meaning}" for name, meaning in OPTIONS.items())
            raise ImproperlyConfigured(
                f"errands: unknown OPTIONS {unknown} for the task backend {alias!r} ({known})"
            )
        self.database: str = options.get("DATABASE", DEFAULT_DB_ALIAS)
        self.max_attempts: int | None = options.get("MAX_ATTEMPTS")
        self._check_options()
        database.check_alias(self.database)

    def _check_options(self) -> None:
        attempts = self.max_attempts
        if attempts is not None and (
            isinstance(attempts, bool)
            or not isinstance(attempts, int)
            or not 1 <= attempts <= MAX_ATTEMPTS_LIMIT
        ):
            raise ImproperlyConfigured(
                f"errands: OPTIONS['MAX_ATTEMPTS'] of the task backend {self.alias!r} must be "
                f"an integer from 1 to {MAX_ATTEMPTS_LIMIT}"
            )
        if not isinstance(self.database, str):
            raise ImproperlyConfigured(
                f"errands: OPTIONS['DATABASE'] of the task backend {self.alias!r} must be "
                "a DATABASES alias"
            )
        bad = sorted(q for q in self.queues if not _valid_queue(q))
        if bad:
            raise ImproperlyConfigured(
                f"errands: QUEUES {bad} of the task backend {self.alias!r} are not errands "
                f"queue names (matching {QUEUE_NAME.pattern})"
            )

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        if not _valid_queue(task.queue_name):  # any name passes when QUEUES is empty
            raise InvalidTask(
                f"Queue '{task.queue_name}' is not an errands queue name "
                f"(matching {QUEUE_NAME.pattern})."
            )

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Store a job running `task`, in the transaction open on Django's connection."""
        self.validate_task(task)
        result = new_result(task, "", TaskResultStatus.READY, args, kwargs)
        payload = {
            "task_path": task.module_path,
            "args": result.args,
            "kwargs": result.kwargs,
            "backend": self.alias,
        }
        try:
            job = self.client().enqueue(
                RUN,
                payload,
                queue=task.queue_name,
                priority=task.priority,
                run_at=_aware(task.run_after),
                max_attempts=self.max_attempts,
                conn=database.connection(self.database),
            )
        except InvalidArgument as exc:
            raise InvalidTask(str(exc)) from exc
        # Checked, or not yet: no table, or no procedure of a later migration (errands_enqueue_job).
        except (
            SchemaMismatch,
            psycopg.errors.UndefinedTable,
            psycopg.errors.UndefinedFunction,
        ) as exc:
            raise ImproperlyConfigured(
                f"errands: the database {self.database!r} is not ready for this errands "
                f"({exc}); with Django, run `manage.py errands_migrate`"
            ) from exc
        object.__setattr__(result, "id", str(job.id))
        object.__setattr__(result, "enqueued_at", job.created_at)
        # Sent when the job is written, as Django's database-backed backends do: inside
        # the caller's transaction, if one is open.
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        """The result of a job as committed (another transaction's job is not seen yet)."""
        job_id = _job_id(result_id)
        job = None if job_id is None else self.client().get(job_id)
        if job is None or not self._enqueued(job):
            raise TaskResultDoesNotExist(result_id)
        return result_of(job)

    def _enqueued(self, job: Job) -> bool:
        """Whether this backend enqueued the job (not another backend, nor an errands client)."""
        payload = job.payload
        return (
            job.task == RUN
            and payload.get("backend") == self.alias
            and isinstance(payload.get("task_path"), str)
            and isinstance(payload.get("args"), list)
            and isinstance(payload.get("kwargs"), dict)
        )

    def client(self) -> Client:
        """The errands client of this backend's database (shared by the process's threads)."""
        return _client(self.database)

    def database_url(self) -> str:
        """The URL of the database Django reaches through this backend's DATABASE alias."""
        return database.url(self.database)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages = list(super().check(**kwargs))
        if not apps.is_installed(APP):
            messages.append(
                checks.Warning(
                    f"{APP!r} is not in INSTALLED_APPS: `manage.py errands_worker` is missing",
                    hint=f"Add {APP!r} to INSTALLED_APPS.",
                    obj=self.alias,
                    id="errands.W001",
                )
            )
        return messages


def backend_named(alias: str) -> ErrandsBackend:
    """The ErrandsBackend of TASKS[alias]; ImproperlyConfigured, saying why, for any other."""
    backend = task_backends()[alias]  # ImproperlyConfigured for an unknown alias
    if not isinstance(backend, ErrandsBackend):
        raise ImproperlyConfigured(
            f"the task backend {alias!r} is {type(backend).__name__}, not "
            "errands.contrib.django.ErrandsBackend"
        )
    return backend


def _valid_queue(name: object) -> bool:
    return isinstance(name, str) and QUEUE_NAME.fullmatch(name) is not None


def _aware(when: datetime | None) -> datetime | None:
    """Django's naive datetimes (USE_TZ = False) are in its current time zone."""
    if when is None or timezone.is_aware(when):
        return when
    aware: datetime = timezone.make_aware(when)
    return aware


def _job_id(result_id: object) -> int | None:
    if isinstance(result_id, str) and result_id.isascii() and result_id.isdigit():
        job_id = int(result_id)
        if 1 <= job_id <= MAX_JOB_ID:
            return job_id
    return None


_clients: dict[tuple[int, str], Client] = {}
_clients_lock = threading.Lock()


def _client(alias: str) -> Client:
    """One Client per database and process: Django makes a backend per thread.

    Its pool opens on the first read (`get_result`); enqueueing uses Django's
    connection and needs none. Keyed by process too: a forked child must not
    use its parent's pooled connections.
    """
    key = (os.getpid(), database.url(alias))
    with _clients_lock:
        if key not in _clients:
            _clients[key] = Client(key[1], max_connections=2)
        return _clients[key]


def close_clients() -> None:
    """Close the connections the backends opened to read results (at shutdown, in tests)."""
    with _clients_lock:
        for key, client in list(_clients.items()):
            if key[0] == os.getpid():
                client.close()
            del _clients[key]

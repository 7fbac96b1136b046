"""Django's task framework, wherever this Django has it.

Django 6.0 and later ship it as `django.tasks`; on Django 5.2 the `django-tasks`
backport (module `django_tasks`) provides the same API. Both are untyped to
mypy here (Django ships no annotations), so what this module hands out is `Any`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def _framework() -> str:
    for root in ("django.tasks", "django_tasks"):
        try:
            importlib.import_module(root)
        except ImportError:
            continue
        return root
    raise ImportError(
        "errands.contrib.django needs Django's task framework: Django 6.0 or later "
        "(django.tasks), or Django 5.2 with the django-tasks backport. "
        "Install them with: pip install 'errands[django]'"
    )


ROOT = _framework()


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{ROOT}.{name}")


_base, _exceptions, _signals = _module("base"), _module("exceptions"), _module("signals")

BaseTaskBackend: Any = _module("backends.base").BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
# Django 6.0 names it InvalidTask; the backport, InvalidTaskError.
InvalidTask: Any = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
task_enqueued: Any = _signals.task_enqueued
task_started: Any = _signals.task_started
task_finished: Any = _signals.task_finished


def task_backends() -> Any:
    """The handler of the TASKS setting (backends by alias), of whichever framework is here."""
    return importlib.import_module(ROOT).task_backends

"""Importing the modules that register tasks, with a clear error when one is broken."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from errands.errors import ConfigurationError
from errands.log import get_logger

DEMO_MODULE = "errands.demo"

_log = get_logger("errands.worker")


class TaskModuleError(ConfigurationError):
    """A task module that cannot be imported; the worker cannot start.

    Its message is one line; the import's own error is its cause, with the traceback.
    """


def load_task_modules(modules: Sequence[str]) -> list[str]:
    """Import `modules`, or the demo tasks when none are configured; returns what was loaded."""
    if not modules:
        _log.warning(
            "no task modules configured (--tasks / ERRANDS_TASKS): loading the demo tasks. "
            "Do not expose them in production: http_call fetches any URL an API client names",
            module=DEMO_MODULE,
        )
        modules = [DEMO_MODULE]
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a module calling sys.exit() is broken too
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            raise TaskModuleError(
                f"cannot import task module {name!r}: {type(exc).__name__}: {first_line}"
            ) from exc
    return list(modules)

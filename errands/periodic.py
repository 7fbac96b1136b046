"""Declaring periodic jobs: `@errands.periodic(...)` stacked on `@errands.task`.

The declaration only records the schedule; the scheduler child of every
`errands run` enqueues its ticks (errands/workers/scheduler.py). A schedule that
cannot work is refused here, when its module is imported, naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from errands.errors import ConfigurationError, InvalidJob
from errands.limits import MAX_DELAY_SECONDS
from errands.queue.requests import TASK_NAME, parse_request
from errands.queue.schedules import Schedule
from errands.queue.ticks import Timing
from errands.registry import registered_tasks

T = TypeVar("T")


_schedules: dict[str, Schedule] = {}


def periodic(
    cron: str | None = None,
    *,
    every: float | timedelta | None = None,
    tz: str = "UTC",
    payload: Mapping[str, Any] | None = None,
    name: str | None = None,
    catch_up: bool = True,
) -> Callable[[T], T]:
    """Enqueue the task below this decorator on a schedule: `cron` in `tz`, or `every` seconds.

    Stack it above `@errands.task`; `name` defaults to the task's name. Ticks
    missed while no scheduler ran collapse into one job (the latest) with
    `catch_up=True`, or none.
    """

    def declare(task: T) -> T:
        task_name = _task_name(task)
        label = name or task_name or str(getattr(task, "__name__", repr(task)))
        try:
            if task_name is None:
                raise ValueError(
                    "it decorates something that is not a registered task: put "
                    "@errands.periodic above @errands.task"
                )
            schedule = Schedule(
                label,
                task_name,
                Timing(cron, _seconds(every), tz),
                _payload(task_name, payload),
                catch_up,
            )
        except ValueError as exc:  # InvalidTiming too
            raise ConfigurationError(f"periodic schedule {label!r}: {exc}") from None
        _register(schedule)
        return task

    return declare


def registered_schedules() -> dict[str, Schedule]:
    return dict(_schedules)


def _task_name(task: object) -> str | None:
    """The registered name of what `@errands.task` returned: a function, or an object with
    `.func`; found in the registry by the function, so a task registered under another name
    than its function's is found too."""
    func = getattr(task, "func", task)
    for spec in registered_tasks().values():
        if spec.func is func:
            return spec.name
    return None


def _seconds(every: float | timedelta | None) -> int | None:
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int | float | timedelta):
        raise ValueError(f"every={every!r}: give seconds (a number) or a timedelta")
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if not math.isfinite(seconds) or abs(seconds) > MAX_DELAY_SECONDS:
        raise ValueError(f"every={every!r}: at most {MAX_DELAY_SECONDS} seconds (ten years)")
    if seconds != int(seconds):
        raise ValueError(f"every={every!r}: the interval must be a whole number of seconds")
    return int(seconds)


def _payload(task_name: str, payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload, checked as any job's is: a JSON object that PostgreSQL can store."""
    try:
        return parse_request({"task": task_name, "payload": payload or {}}).payload
    except InvalidJob as exc:
        raise ValueError("; ".join(f"{e.field} {e.message}" for e in exc.errors)) from None


def _register(schedule: Schedule) -> None:
    if not TASK_NAME.match(schedule.name):
        raise ConfigurationError(
            f"periodic schedule {schedule.name!r}: the name must match {TASK_NAME.pattern}"
        )
    known = _schedules.get(schedule.name)
    if known is not None and known != schedule:
        raise ConfigurationError(
            f"periodic schedule {schedule.name!r} is declared twice ({known.timing.describe()} "
            f"for task {known.task}, and {schedule.timing.describe()} for task {schedule.task}): "
            "give one of them another name="
        )
    _schedules[schedule.name] = schedule

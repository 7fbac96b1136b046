"""The worker process: claim loop, execution on threads, lease heartbeats."""

from errands.workers.loading import TaskModuleError
from errands.workers.worker import (
    DEFAULT_CONCURRENCY,
    EXIT_OK,
    EXIT_REPLACE,
    Worker,
    WorkerOptions,
    run_worker,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "EXIT_OK",
    "EXIT_REPLACE",
    "TaskModuleError",
    "Worker",
    "WorkerOptions",
    "run_worker",
]

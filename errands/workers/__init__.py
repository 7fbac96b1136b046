"""The worker process: claim loop, execution on threads, lease heartbeats."""

from errands.workers.loading import TaskModuleError
from errands.workers.worker import EXIT_OK, EXIT_REPLACE, Worker, WorkerOptions, run_worker

__all__ = [
    "EXIT_OK",
    "EXIT_REPLACE",
    "TaskModuleError",
    "Worker",
    "WorkerOptions",
    "run_worker",
]

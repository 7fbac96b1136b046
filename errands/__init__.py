"""errands: background jobs for Python services, on PostgreSQL alone."""

from errands.backoff import Backoff
from errands.client import Client
from errands.errors import (
    ConfigurationError,
    ErrandsError,
    Fail,
    FieldError,
    IdempotencyConflict,
    InvalidArgument,
    InvalidJob,
    InvalidState,
    JobNotFound,
    Retry,
)
from errands.log import library_mode
from errands.periodic import periodic
from errands.queue import Job, JobState
from errands.tasks import CurrentJob, Task, current_job, task

library_mode()  # a library writes through `logging`, never to a terminal (loggers are lazy)

__all__ = [
    "Backoff",
    "Client",
    "ConfigurationError",
    "CurrentJob",
    "ErrandsError",
    "Fail",
    "FieldError",
    "IdempotencyConflict",
    "InvalidArgument",
    "InvalidJob",
    "InvalidState",
    "Job",
    "JobNotFound",
    "JobState",
    "Retry",
    "Task",
    "current_job",
    "periodic",
    "task",
]

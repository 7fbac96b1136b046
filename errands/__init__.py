"""errands: background jobs for Python services, on PostgreSQL alone."""

from errands.backoff import Backoff
from errands.client import Client
from errands.errors import (
    ConfigurationError,
    ErrandsError,
    Fail,
    FieldError,
    IdempotencyConflict,
    InvalidJob,
    InvalidState,
    JobNotFound,
    Retry,
)
from errands.queue import Job, JobState
from errands.tasks import CurrentJob, Task, current_job, task

__all__ = [
    "Backoff",
    "Client",
    "ConfigurationError",
    "CurrentJob",
    "ErrandsError",
    "Fail",
    "FieldError",
    "IdempotencyConflict",
    "InvalidJob",
    "InvalidState",
    "Job",
    "JobNotFound",
    "JobState",
    "Retry",
    "Task",
    "current_job",
    "task",
]

"""errands: background jobs for Python services, on PostgreSQL alone."""

from errands.backoff import Backoff
from errands.client import Client
from errands.errors import (
    ConfigurationError,
    ErrandsError,
    FieldError,
    IdempotencyConflict,
    InvalidArgument,
    InvalidJob,
    InvalidState,
    JobNotFound,
)
from errands.log import library_mode
from errands.periodic import periodic
from errands.queue import Job, JobState
from errands.tasks import CurrentJob, current_job, task

library_mode()  # a library writes through `logging`, never to a terminal (loggers are lazy)

__all__ = [
    "Backoff",
    "Client",
    "ConfigurationError",
    "CurrentJob",
    "ErrandsError",
    "FieldError",
    "IdempotencyConflict",
    "InvalidArgument",
    "InvalidJob",
    "InvalidState",
    "Job",
    "JobNotFound",
    "JobState",
    "current_job",
    "periodic",
    "task",
]

"""errands: background jobs for Python services, on PostgreSQL alone.

The public surface is `__all__` below and the module `errands.testing` (docs/reference/
python.md); every other module is internal. Importing errands configures nothing:
logging is set up by errands' own commands, never by an import.
"""

from importlib import metadata

from errands.async_client import AsyncClient
from errands.backoff import Backoff
from errands.client import Client
from errands.errors import (
    Cancelled,
    ConfigurationError,
    ErrandsError,
    Fail,
    FieldError,
    IdempotencyConflict,
    InvalidArgument,
    InvalidJob,
    InvalidState,
    JobNotFound,
    LeaseLost,
    Retry,
)
from errands.periodic import periodic
from errands.queue.jobs import Job, JobState
from errands.tasks import CurrentJob, Task, check_cancelled, current_job, task
from errands.workflows import Chain, Group, Signature, Workflow, chain, group

# Read from the installed package's metadata: pyproject.toml is its one source.
__version__ = metadata.version("errands")

__all__ = [
    "AsyncClient",
    "Backoff",
    "Cancelled",
    "Chain",
    "Client",
    "ConfigurationError",
    "CurrentJob",
    "ErrandsError",
    "Fail",
    "FieldError",
    "Group",
    "IdempotencyConflict",
    "InvalidArgument",
    "InvalidJob",
    "InvalidState",
    "Job",
    "JobNotFound",
    "JobState",
    "LeaseLost",
    "Retry",
    "Signature",
    "Task",
    "Workflow",
    "chain",
    "check_cancelled",
    "current_job",
    "group",
    "periodic",
    "task",
]

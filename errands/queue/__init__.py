"""Operations on the jobs table: every state transition of a job, each one statement."""

from errands.queue.admin import (
    QueueCounts,
    Stats,
    cancel,
    get,
    job_counts,
    list_jobs,
    oldest_pending_seconds,
    prune,
    retry,
    stats,
)
from errands.queue.jobs import Job, JobState
from errands.queue.lease import (
    Completion,
    Held,
    Recovered,
    claim,
    complete,
    complete_and_claim,
    encode_result,
    fail,
    heartbeat,
    reap,
    release,
)
from errands.queue.presence import (
    WorkerInfo,
    announce,
    forget,
    host_of,
    live_workers,
    worker_id,
)
from errands.queue.requests import JobRequest, parse_request
from errands.queue.schedules import Schedule, ScheduleStatus, list_schedules
from errands.queue.submit import Enqueued, enqueue, enqueue_many

__all__ = [
    "Completion",
    "Enqueued",
    "Held",
    "Job",
    "JobRequest",
    "JobState",
    "QueueCounts",
    "Recovered",
    "Schedule",
    "ScheduleStatus",
    "Stats",
    "WorkerInfo",
    "announce",
    "cancel",
    "claim",
    "complete",
    "complete_and_claim",
    "encode_result",
    "enqueue",
    "enqueue_many",
    "fail",
    "forget",
    "get",
    "heartbeat",
    "host_of",
    "job_counts",
    "list_jobs",
    "list_schedules",
    "live_workers",
    "oldest_pending_seconds",
    "parse_request",
    "prune",
    "reap",
    "release",
    "retry",
    "stats",
    "worker_id",
]

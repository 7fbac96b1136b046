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
from errands.queue.control import QueueInfo, pause, queues, resume
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
from errands.queue.presence import WorkerInfo, announce, forget, live_workers
from errands.queue.requests import JobRequest, parse_request
from errands.queue.submit import Enqueued, enqueue, enqueue_many

__all__ = [
    "Completion",
    "Enqueued",
    "Held",
    "Job",
    "JobRequest",
    "JobState",
    "QueueCounts",
    "QueueInfo",
    "Recovered",
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
    "job_counts",
    "list_jobs",
    "live_workers",
    "oldest_pending_seconds",
    "parse_request",
    "pause",
    "prune",
    "queues",
    "reap",
    "release",
    "resume",
    "retry",
    "stats",
]

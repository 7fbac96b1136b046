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
from errands.queue.finished import FINISHED, FinishWatcher, is_finished
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
    reschedule,
)
from errands.queue.presence import WorkerInfo, announce, forget, live_workers
from errands.queue.requests import JobRequest, parse_request
from errands.queue.submit import Enqueued, enqueue, enqueue_many

__all__ = [
    "FINISHED",
    "Completion",
    "Enqueued",
    "FinishWatcher",
    "Held",
    "Job",
    "JobRequest",
    "JobState",
    "QueueCounts",
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
    "is_finished",
    "job_counts",
    "list_jobs",
    "live_workers",
    "oldest_pending_seconds",
    "parse_request",
    "prune",
    "reap",
    "release",
    "reschedule",
    "retry",
    "stats",
]

"""What a job is: its states and the immutable snapshot the queue hands out."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    WAITING = "waiting"  # for its parents (workflows)
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Job:
    """A job as stored in `errands_jobs` at the moment it was read."""

    id: int
    queue: str
    task: str
    payload: dict[str, Any]
    state: JobState
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    # At most one job per unique key is pending, failed or in progress (limits and unique jobs).
    unique_key: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    errors: list[dict[str, Any]]
    result: Any
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    # The W3C trace context of the span that enqueued it (errands/tracing.py), or None.
    trace_context: dict[str, str] | None = None
    # Running jobs (issue 24): a cancel asked for while it ran (the attempt then ends
    # `cancelled`), and the progress its task last reported: a number from 0 to 1 or a
    # small JSON object.
    cancel_requested_at: datetime | None = None
    progress: float | dict[str, Any] | None = None
    # Workflows: the ids of the jobs it runs after (None: none), the workflow it was
    # stored with, what a parent ending dead or cancelled does to it ("cancel" or "run"),
    # and the parent whose failure cancelled it.
    parents: list[int] | None = None
    workflow_id: int | None = None
    on_parent_failure: str = "cancel"
    cancelled_by: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: states as strings, timestamps in RFC 3339 with their offset."""
        # Shallow: asdict() would deep-copy the payload and result for nothing.
        data = {name: getattr(self, name) for name in JOB_COLUMNS}
        data["state"] = self.state.value
        for name, value in data.items():
            if isinstance(value, datetime):
                data[name] = value.isoformat()
        return data

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        values = {name: row[name] for name in JOB_COLUMNS}
        values["state"] = JobState(values["state"])
        return cls.from_fields(values)

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Job:
        """A Job from every one of its fields, at a third of the cost of calling the class.

        A frozen dataclass's __init__ stores each of the 23 fields through
        object.__setattr__; filling the instance's dict at once does the same (there
        is no __post_init__), and claims and batch submissions build thousands a second.
        """
        # `values` in the class's order, as __init__ would store them: orjson writes a job's
        # fields in the order of its __dict__ (errands/api/answers.py).
        assert len(values) == len(JOB_COLUMNS), "every field, no other"
        job = object.__new__(cls)
        job.__dict__.update(values)
        return job


JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Job))


def progress_text(progress: float | dict[str, Any] | None) -> str | None:
    """Progress for people: a number as a percentage, an object as its JSON, none as None."""
    if isinstance(progress, dict):
        return json.dumps(progress, ensure_ascii=False)
    return None if progress is None else f"{progress:.0%}"

"""Validation of job requests, shared by the Python client and the HTTP API.

Everything is checked here, before the database sees it, and every problem is
reported at once with the field it concerns.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from errands.errors import FieldError, InvalidJob

TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
MAX_IDEMPOTENCY_KEY = 255
MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600
INT32 = (-(2**31), 2**31 - 1)
MAX_ATTEMPTS_LIMIT = 1000
# \u0000 preceded by an even number of backslashes: an escaped NUL, not the text "\u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5

# One encoder for every payload: json.dumps given options builds a new one per call.
_PAYLOAD_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))

REQUEST_FIELDS = frozenset(
    {"task", "payload", "queue", "priority", "run_at", "delay", "max_attempts", "idempotency_key"}
)


@dataclass(frozen=True)
class JobRequest:
    """A validated request to enqueue one job. `run_at` None means now."""

    task: str
    payload: dict[str, Any]
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    run_at: datetime | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idempotency_key: str | None = None

    @property
    def payload_json(self) -> str:
        return _PAYLOAD_ENCODER.encode(self.payload)

    def same_request_as(self, other: JobRequest) -> bool:
        """Whether `other` replays this request: the same task, queue and payload."""
        return (self.task, self.queue, self.payload) == (other.task, other.queue, other.payload)


def parse_request(fields: Mapping[str, Any], *, prefix: str = "") -> JobRequest:
    """Validate the fields of one job request (the HTTP body's names) or raise InvalidJob."""
    errors: list[FieldError] = []

    def check(name: str, problem: str | None) -> None:
        if problem:
            errors.append(FieldError(prefix + name, problem))

    for unknown in sorted(set(fields) - REQUEST_FIELDS):
        check(unknown, "unknown field")

    task = fields.get("task")
    check("task", _name_problem(task, TASK_NAME, "a task name", required=True))
    queue = fields.get("queue", DEFAULT_QUEUE)
    check("queue", _name_problem(queue, QUEUE_NAME, "a queue name", required=True))
    payload, problem = _payload(fields.get("payload"))
    check("payload", problem)
    priority, problem = _integer(fields.get("priority", 0), *INT32)
    check("priority", problem)
    max_attempts, problem = _integer(
        fields.get("max_attempts", DEFAULT_MAX_ATTEMPTS), 1, MAX_ATTEMPTS_LIMIT
    )
    check("max_attempts", problem)
    key = fields.get("idempotency_key")
    check("idempotency_key", _key_problem(key))
    run_at, problem = _run_at(fields.get("run_at"), fields.get("delay"))
    check("run_at" if "run_at" in fields else "delay", problem)

    if errors:
        raise InvalidJob(errors)
    assert isinstance(task, str)  # checked above; tells the type checker
    return JobRequest(
        task=task,
        payload=payload,
        queue=queue,
        priority=priority,
        run_at=run_at,
        max_attempts=max_attempts,
        idempotency_key=key,
    )


def _name_problem(value: Any, pattern: re.Pattern[str], what: str, required: bool) -> str | None:
    if value is None:
        return "is required" if required else None
    if not isinstance(value, str):
        return f"must be a string, {what}"
    if not pattern.match(value):
        return f"must match {pattern.pattern}"
    return None


def _integer(value: Any, low: int, high: int) -> tuple[int, str | None]:
    # JSON has one number type: 3.0 is the integer 3, as JSON Schema also says.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0, "must be an integer"
    if not low <= value <= high:
        return 0, f"must be between {low} and {high}"
    return value, None


def _key_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY:
        return f"must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters"
    if "\x00" in value or not _is_unicode(value):
        return "must be valid Unicode without NUL characters"
    return None


def _is_unicode(text: str) -> bool:
    """JSON may carry lone surrogates ("\\ud800"); UTF-8, and so PostgreSQL, cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _payload(value: Any) -> tuple[dict[str, Any], str | None]:
    """The payload as it will read back from the database, or the reason it can't be stored."""
    if value is None:
        return {}, None
    if not isinstance(value, Mapping):
        return {}, "must be a JSON object (the task's keyword arguments)"
    try:
        # The round trip normalises tuples and rejects NaN, infinities and non-JSON values,
        # so that a replayed request compares equal to what the database holds.
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return {}, f"must be JSON-serialisable without NaN or infinity ({exc})"
    if _ESCAPED_NUL.search(text):
        return {}, "must not contain NUL characters (PostgreSQL cannot store them)"
    if not _is_unicode(json.dumps(value, ensure_ascii=False)):
        return {}, "must be valid Unicode (a lone surrogate is not)"
    return json.loads(text), None


def _run_at(run_at: Any, delay: Any) -> tuple[datetime | None, str | None]:
    if run_at is not None and delay is not None:
        return None, "give run_at or delay, not both"
    if delay is not None:
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
        ):
            return None, "must be a number of seconds"
        if not 0 <= delay <= MAX_DELAY_SECONDS:
            return None, f"must be between 0 and {MAX_DELAY_SECONDS} seconds"
        return datetime.now(UTC) + timedelta(seconds=delay), None
    if run_at is None:
        return None, None
    if isinstance(run_at, str):
        try:
            run_at = datetime.fromisoformat(run_at)
        except ValueError:
            return None, "must be an RFC 3339 timestamp with an offset"
    if not isinstance(run_at, datetime):
        return None, "must be a timestamp"
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        return None, "must carry a time zone offset (a naive time is ambiguous)"
    try:
        # In UTC: PostgreSQL refuses offsets beyond ±15:59 that Python accepts.
        return run_at.astimezone(UTC), None
    except OverflowError:
        return None, "is out of range"

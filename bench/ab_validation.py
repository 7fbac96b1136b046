"""pydantic v2 against msgspec on the job request: speed, and how bad fields are reported.

What chose the validation library of errands/queue/requests.py (README: Validation;
bench/RESULTS.md). msgspec is not a dependency of errands: `pip install msgspec` first.

    .venv/bin/python bench/ab_validation.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from errands.errors import InvalidJob
from errands.queue.requests import QUEUE_NAME, TASK_NAME, parse_batch, parse_request
from errands.queue.requests import _payload as payload_rules  # the same content rules

# The same constraints as errands' JobRequest, as far as msgspec can say them.
Name = Annotated[str, msgspec.Meta(pattern=TASK_NAME.pattern)]
Queue = Annotated[str, msgspec.Meta(pattern=QUEUE_NAME.pattern)]


class Job(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    task: Name
    payload: dict[str, Any] | None = None
    queue: Queue | None = None
    priority: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | None = None
    run_at: str | None = None
    delay: Annotated[float, msgspec.Meta(ge=0, le=315_360_000)] | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    jobs: Annotated[list[Job], msgspec.Meta(min_length=1, max_length=1000)]


def payload_checked(job: Job) -> Job:
    """What msgspec cannot say, checked as errands checks it: a payload's content (JSON
    without NaN, NUL or lone surrogates, 64 levels at most), read back as stored."""
    if job.payload is not None:
        payload_rules(job.payload)
    return job


JOB = {
    "task": "send_email",
    "payload": {"to": "a@example.com", "subject": "Welcome", "n": 3},
    "queue": "mail",
    "priority": 5,
    "idempotency_key": "welcome-42",
}
BATCH = {"jobs": [{**JOB, "idempotency_key": f"k{n}"} for n in range(1000)]}
BAD = {
    "jobs": [
        JOB,
        JOB,
        JOB,
        {"task": "bad name", "priority": "high", "max_attempts": 0, "typo": 1},
    ]
}


def best(work: Callable[[], object], times: int) -> tuple[float, float]:
    runs = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(times):
            work()
        runs.append((time.perf_counter() - started) / times)
    return min(runs), statistics.median(runs)


def main() -> None:
    batch_decoder = msgspec.json.Decoder(Batch)
    one_decoder = msgspec.json.Decoder(Job)
    job_bytes, batch_bytes = json.dumps(JOB).encode(), json.dumps(BATCH).encode()
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "pydantic (errands' models), from dicts": (
            lambda: parse_request(JOB),
            lambda: parse_batch(BATCH),
        ),
        "pydantic, json.loads of the body first": (
            lambda: parse_request(json.loads(job_bytes)),
            lambda: parse_batch(json.loads(batch_bytes)),
        ),
        "msgspec, from dicts (convert)": (
            lambda: payload_checked(msgspec.convert(JOB, Job)),
            lambda: [payload_checked(j) for j in msgspec.convert(BATCH, Batch).jobs],
        ),
        "msgspec, decoding the body": (
            lambda: payload_checked(one_decoder.decode(job_bytes)),
            lambda: [payload_checked(j) for j in batch_decoder.decode(batch_bytes).jobs],
        ),
    }
    for name, (one, many) in cases.items():
        (one_best, one_median), (many_best, many_median) = best(one, 2000), best(many, 10)
        print(
            f"{name:42s} one job {one_best * 1e6:6.1f} µs (median {one_median * 1e6:6.1f}); "
            f"1000 jobs {many_best * 1e3:6.2f} ms (median {many_median * 1e3:6.2f})"
        )
    print("\nfields named for", json.dumps(BAD["jobs"][3]), "as the fourth job of a batch:")
    try:
        parse_batch(BAD)
    except InvalidJob as exc:
        print("  pydantic:", "; ".join(f"{e.field}: {e.message}" for e in exc.errors))
    try:
        msgspec.convert(BAD, Batch)
    except msgspec.ValidationError as exc:
        print("  msgspec: ", exc)


if __name__ == "__main__":
    main()

"""Every error errands raises on purpose derives from `ErrandsError`."""

from __future__ import annotations

from dataclasses import dataclass

from errands.limits import MAX_DELAY_SECONDS


class ErrandsError(Exception):
    """Base class of the errors errands raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a job request, named the way the HTTP body names it."""

    field: str
    message: str


class InvalidArgument(ErrandsError, ValueError):
    """Arguments refused before anything was done, each problem with the argument it concerns."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class InvalidJob(InvalidArgument):
    """A job request with invalid fields; nothing was stored."""


class IdempotencyConflict(ErrandsError):
    """The idempotency key is taken by a job with a different task, queue or payload.

    `job_id` is the stored job that holds the key; None when the key was taken inside
    the same batch, whose jobs were never stored.
    """

    def __init__(self, key: str, job_id: int | None, message: str | None = None) -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(
            message
            or f"idempotency key {key!r} already belongs to job {job_id}, submitted with a "
            "different task, queue or payload"
        )


class JobNotFound(ErrandsError, LookupError):
    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} does not exist")


class InvalidState(ErrandsError):
    """A retry or cancel that the job's current state forbids."""

    def __init__(self, job_id: int, action: str, state: str, reason: str | None = None) -> None:
        self.job_id = job_id
        self.action = action
        self.state = state
        super().__init__(f"cannot {action} job {job_id}: {reason or f'it is {state}'}")


class LeaseLost(ErrandsError):
    """complete_in() found that the attempt no longer holds its job: the lease was taken
    (the worker paused or was cut off past it, and the job was handed to another), or
    the job is no longer running. Raised so that the application's transaction rolls
    back: nothing it wrote may commit as this attempt's effect."""

    def __init__(self, job_id: int, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        super().__init__(
            f"attempt {attempt} of job {job_id} no longer holds the job (its lease was lost, "
            "or it was completed already): roll the transaction back"
        )


class Cancelled(ErrandsError):
    """Raised in a task by errands.check_cancelled() (or complete_in()) once a cancel of
    its job was requested: let it propagate. The job is recorded `cancelled` whatever
    the attempt does next; raising this only ends it sooner."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was asked to cancel while it ran")


class ConfigurationError(ErrandsError):
    """Settings that cannot work, reported before anything starts."""


class SchemaMismatch(ConfigurationError):
    """The database's schema is not one this code may run against (docs/guides/deploys.md)."""


WITHHELD = "(withheld: it may hold row contents)"


def scrub(text: str, exc: BaseException) -> str:
    """`text` (an error's message or traceback) without the details PostgreSQL put in `exc`.

    A constraint violation's DETAIL quotes the failing row, payload included, and a
    unique violation's the key: neither belongs in a log or an error message. `exc`'s
    causes and contexts are scrubbed too.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        detail = getattr(getattr(current, "diag", None), "message_detail", None)
        if detail:
            text = text.replace(detail, WITHHELD)
        current = current.__cause__ or current.__context__
    return text


MAX_RETRY_SECONDS = MAX_DELAY_SECONDS  # as far ahead as a job may be delayed


class Fail(Exception):
    """Raised by a task: the job can never succeed, so it ends `dead` now, budget or not.

    For a permanent error, such as a payment partner answering 4xx or a record
    that no longer exists: retrying would only repeat it.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Retry(Exception):
    """Raised by a task: run the job again in `in_seconds`, and count no failure.

    For a partner's rate limit or a resource not ready yet. The attempt is given
    back (the budget grows by one) and the job's error history records it.
    """

    def __init__(self, in_seconds: float, reason: str = "") -> None:
        if not 0 <= in_seconds <= MAX_RETRY_SECONDS:
            raise ValueError(f"in_seconds must be between 0 and {MAX_RETRY_SECONDS}")
        self.in_seconds = float(in_seconds)
        self.reason = reason
        super().__init__(reason or f"retry in {in_seconds:g}s")

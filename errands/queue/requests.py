"""Validation of job requests, shared by the Python client and the HTTP API.

Everything is checked here, before the database sees it, and every problem is
reported at once with the field it concerns. Each field's rule gives both the
check and its JSON Schema, so the OpenAPI document (errands/api/openapi.py) is
generated from the very rules that run and cannot drift from them.

`null` means "absent" for every optional field; a required field given as
`null` is missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from errands.errors import FieldError, InvalidJob

# Patterns are written once, for Python (always used with fullmatch) and for JSON Schema
# (ECMA-262, where `$` is the end of input): both then mean what PostgreSQL's checks mean,
# so "name\n" is refused here, never by a CheckViolation.
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
NO_NUL = re.compile(r"^[^\u0000]*$")
# RFC 3339 (upper- or lower-case T and Z, the extended format only), years 0002 to 9998:
# whatever its offset, and whatever a session's time zone, such a time stays inside what
# Python's datetime and psycopg can hold (years 1 to 9999).
RFC3339 = re.compile(
    r"^(?!000[01]|9999)[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
MAX_IDEMPOTENCY_KEY = 255
MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600
INT32 = (-(2**31), 2**31 - 1)
INT64_MAX = 2**63 - 1
MAX_ATTEMPTS_LIMIT = 1000
MAX_PAYLOAD_DEPTH = 64
RUN_AT_YEARS = (2, 9998)
# \u0000 preceded by an even number of backslashes: an escaped NUL, not the text "\u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# Digits of an integer given as text (a query string): ASCII only, and few enough that
# int() never meets Python's 4,300-digit limit.
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,30}")
_DECIMAL_TEXT = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5

# One encoder for every payload: json.dumps given options builds a new one per call.
_PAYLOAD_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


class Invalid(Exception):
    """Raised by a rule: the value's problem, in words that follow the field's name."""


# -- rules: a check and the JSON Schema it enforces ---------------------------------------


class Rule:
    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, value: Any) -> Any:
        """The value to use, or Invalid."""
        raise NotImplementedError

    def parse_text(self, text: str) -> Any:
        """The same from a query string or a path, where every value is text."""
        return self.parse(text)


@dataclass(frozen=True)
class Text(Rule):
    pattern: re.Pattern[str]
    what: str
    min_length: int | None = None
    max_length: int | None = None

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "pattern": self.pattern.pattern}
        if self.min_length is not None:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        return schema

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, {self.what}")
        if not (self.min_length or 0) <= len(value) <= (self.max_length or len(value)):
            raise Invalid(f"must be {self.min_length} to {self.max_length} characters long")
        if not self.pattern.fullmatch(value):
            raise Invalid(f"must match {self.pattern.pattern}")
        if not _is_unicode(value):
            raise Invalid("must be valid Unicode (a lone surrogate is not)")
        return value


@dataclass(frozen=True)
class Choice(Rule):
    values: tuple[str, ...]

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}

    def parse(self, value: Any) -> str:
        if value not in self.values:
            raise Invalid(f"must be one of {', '.join(self.values)}")
        return str(value)


@dataclass(frozen=True)
class Integer(Rule):
    low: int
    high: int

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}

    def parse(self, value: Any) -> int:
        # JSON has one number type: 3.0 is the integer 3, as JSON Schema also says.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid("must be an integer")
        if not self.low <= value <= self.high:
            raise Invalid(f"must be an integer between {self.low} and {self.high}")
        return value

    def parse_text(self, text: str) -> int:
        """From a query string or a path: ASCII digits only (int() would take "٣" and "²")."""
        if not _INTEGER_TEXT.fullmatch(text):
            raise Invalid(f"must be an integer between {self.low} and {self.high}")
        return self.parse(int(text))


@dataclass(frozen=True)
class Seconds(Rule):
    low: float
    high: float

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.low, "maximum": self.high}

    def parse(self, value: Any) -> float:
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid("must be a number of seconds")
        # Compared before any conversion (float(10**400) would overflow); NaN compares false.
        if not self.low <= value <= self.high:
            raise Invalid(f"must be between {self.low:g} and {self.high:g} seconds")
        return float(value)

    def parse_text(self, text: str) -> float:
        """From a query string: ASCII decimals only (float() takes other digits, and "nan")."""
        if not _DECIMAL_TEXT.fullmatch(text):
            raise Invalid(f"must be between {self.low:g} and {self.high:g} seconds")
        return self.parse(float(text))


@dataclass(frozen=True)
class Timestamp(Rule):
    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time", "pattern": RFC3339.pattern}

    def parse(self, value: Any) -> datetime:
        if isinstance(value, str):
            if not RFC3339.fullmatch(value):
                raise Invalid(
                    "must be an RFC 3339 timestamp with an offset, "
                    f"years {RUN_AT_YEARS[0]:04} to {RUN_AT_YEARS[1]}"
                )
            try:
                value = datetime.fromisoformat(value.upper())
            except ValueError:  # a day the month lacks
                raise Invalid("is not a date of the calendar") from None
        if not isinstance(value, datetime):
            raise Invalid("must be a timestamp")
        if value.tzinfo is None or value.utcoffset() is None:
            raise Invalid("must carry a time zone offset (a naive time is ambiguous)")
        if not RUN_AT_YEARS[0] <= value.year <= RUN_AT_YEARS[1]:
            raise Invalid(f"must be in the years {RUN_AT_YEARS[0]:04} to {RUN_AT_YEARS[1]}")
        # In UTC: PostgreSQL refuses offsets beyond ±15:59 that RFC 3339 allows.
        return value.astimezone(UTC)


# Any JSON value PostgreSQL's jsonb can store: no NUL character in a string or a name.
JSON_VALUE_REF = "#/components/schemas/JsonValue"
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        {"type": "string", "pattern": NO_NUL.pattern},
        {"type": "array", "items": {"$ref": JSON_VALUE_REF}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL.pattern},
            "additionalProperties": {"$ref": JSON_VALUE_REF},
        },
    ]
}


@dataclass(frozen=True)
class Payload(Rule):
    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL.pattern},
            "additionalProperties": {"$ref": JSON_VALUE_REF},
            "description": "the task's keyword arguments: JSON without NUL characters, "
            f"nested at most {MAX_PAYLOAD_DEPTH} levels",
        }

    def parse(self, value: Any) -> dict[str, Any]:
        """The payload as it will read back from the database."""
        if not isinstance(value, Mapping):
            raise Invalid("must be a JSON object (the task's keyword arguments)")
        if _depth_exceeds(value, MAX_PAYLOAD_DEPTH):
            raise Invalid(f"must not be nested more than {MAX_PAYLOAD_DEPTH} levels deep")
        try:
            # The round trip normalises tuples and rejects NaN, infinities and non-JSON values,
            # so that a replayed request compares equal to what the database holds. Unescaped
            # text keeps a lone surrogate visible; NUL is escaped (\u0000) either way.
            text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise Invalid(f"must be JSON-serialisable without NaN or infinity ({exc})") from None
        if _ESCAPED_NUL.search(text):
            raise Invalid("must not contain NUL characters (PostgreSQL cannot store them)")
        if not _is_unicode(text):
            raise Invalid("must be valid Unicode (a lone surrogate is not)")
        parsed: dict[str, Any] = json.loads(text)
        return parsed


@dataclass(frozen=True)
class Field:
    rule: Rule
    required: bool = False
    default: Any = None
    description: str | None = None

    def schema(self) -> dict[str, Any]:
        schema = self.rule.schema()
        if self.description:
            schema["description"] = self.description
        if self.required:
            return schema
        if self.default is not None:
            schema["default"] = self.default
        return {"anyOf": [schema, {"type": "null"}]}


# The fields of a job request: the HTTP body's, and enqueue()'s keyword arguments.
JOB_FIELDS: dict[str, Field] = {
    "task": Field(Text(TASK_NAME, "a task name"), required=True),
    "payload": Field(Payload()),
    "queue": Field(Text(QUEUE_NAME, "a queue name"), default=DEFAULT_QUEUE),
    "priority": Field(Integer(*INT32), default=0, description="higher runs first"),
    "run_at": Field(Timestamp(), description="not before this time; not with delay"),
    "delay": Field(Seconds(0, MAX_DELAY_SECONDS), description="seconds; not with run_at"),
    "max_attempts": Field(Integer(1, MAX_ATTEMPTS_LIMIT), default=DEFAULT_MAX_ATTEMPTS),
    "idempotency_key": Field(
        Text(NO_NUL, "a key without NUL characters", 1, MAX_IDEMPOTENCY_KEY),
        description="one job per key, for as long as the job is stored",
    ),
}
REQUEST_FIELDS = frozenset(JOB_FIELDS)


def parse_fields(
    rules: Mapping[str, Field],
    given: Mapping[str, Any],
    prefix: str = "",
    text: bool = False,
    unknown: str = "unknown field",
) -> tuple[dict[str, Any], list[FieldError]]:
    """Each field of `rules` parsed from `given` (defaults filled in), and every problem.

    `text`: the values are strings from a query string (integers as ASCII digits).
    """
    values: dict[str, Any] = {}
    errors = [FieldError(prefix + name, unknown) for name in sorted(set(given) - set(rules))]
    for name, rule in rules.items():
        value = given.get(name)
        if value is None:
            if rule.required:
                errors.append(FieldError(prefix + name, "is required"))
            values[name] = rule.default
            continue
        try:
            values[name] = rule.rule.parse_text(value) if text else rule.rule.parse(value)
        except Invalid as problem:
            errors.append(FieldError(prefix + name, str(problem)))
    return values, errors


@dataclass(frozen=True)
class JobRequest:
    """A validated request to enqueue one job: due at `run_at`, or `delay` seconds after the
    database's now (never a host's clock, which may be off), or at once."""

    task: str
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    run_at: datetime | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idempotency_key: str | None = None
    delay: float | None = None

    def due(self, now: datetime) -> datetime:
        """When the job may run, given the database's `now`."""
        if self.run_at is not None:
            return self.run_at.astimezone(now.tzinfo)
        return now + timedelta(seconds=self.delay or 0)

    @property
    def payload_json(self) -> str:
        return _PAYLOAD_ENCODER.encode(self.payload)

    def same_request_as(self, other: JobRequest) -> bool:
        """Whether `other` replays this request: the same task, queue and payload."""
        return (self.task, self.queue, self.payload) == (other.task, other.queue, other.payload)


def parse_request(fields: Mapping[str, Any], *, prefix: str = "") -> JobRequest:
    """Validate the fields of one job request (the HTTP body's names) or raise InvalidJob."""
    values, errors = parse_fields(JOB_FIELDS, fields, prefix)
    run_at, delay = values.pop("run_at", None), values.pop("delay", None)
    if run_at is not None and delay is not None:
        errors.append(FieldError(prefix + "delay", "give run_at or delay, not both"))
    if errors:
        raise InvalidJob(errors)
    payload = values.pop("payload") or {}
    return JobRequest(**values, payload=payload, run_at=run_at, delay=delay)


def _is_unicode(text: str) -> bool:
    """JSON may carry lone surrogates ("\\ud800"); UTF-8, and so PostgreSQL, cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit`; iterative, so no depth can crash it."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            item = item.values()
        elif not isinstance(item, list | tuple):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False

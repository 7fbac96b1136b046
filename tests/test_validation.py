"""Bad input through the Python API is refused with the field named, and nothing is stored."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from errands import Client, InvalidJob
from errands.queue.requests import parse_request

DEEP: list[Any] = []
for _ in range(5_000):
    DEEP = [DEEP]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task": ""}, "task"),
        ({"task": "has space"}, "task"),
        ({"task": "9starts_with_digit"}, "task"),
        ({"task": "x" * 201}, "task"),
        ({"task": "t", "payload": [1, 2]}, "payload"),
        ({"task": "t", "payload": {"x": math.nan}}, "payload"),
        ({"task": "t", "payload": {"x": math.inf}}, "payload"),
        ({"task": "t", "payload": {"x": object()}}, "payload"),
        ({"task": "t", "payload": {"x": "nul\x00"}}, "payload"),
        ({"task": "t", "max_attempts": 0}, "max_attempts"),
        ({"task": "t", "priority": 2**31}, "priority"),
        ({"task": "t", "run_at": datetime(2030, 1, 1)}, "run_at"),
        ({"task": "t", "delay": -1}, "delay"),
        ({"task": "t", "queue": "has space"}, "queue"),
        ({"task": "t", "idempotency_key": ""}, "idempotency_key"),
        # Values that once escaped validation as raw errors:
        ({"task": "t\n"}, "task"),  # `$` matched before a trailing newline; PostgreSQL's not
        ({"task": "t", "queue": "q\n"}, "queue"),
        ({"task": "t", "delay": 10**400}, "delay"),  # OverflowError converting to a float
        ({"task": "t", "delay": math.inf}, "delay"),
        ({"task": "t", "run_at": datetime(1, 1, 1, tzinfo=UTC)}, "run_at"),
        ({"task": "t", "run_at": datetime(9999, 12, 31, tzinfo=UTC)}, "run_at"),
        ({"task": "t", "payload": {"x": DEEP}}, "payload"),  # RecursionError in json.dumps
    ],
)
def test_invalid_field_is_named_and_nothing_is_stored(
    client: Client, conn: Any, kwargs: dict[str, Any], field: str
) -> None:
    task = kwargs.pop("task")
    with pytest.raises(InvalidJob) as raised:
        client.enqueue(task, **kwargs)
    assert field in [e.field for e in raised.value.errors]
    assert isinstance(raised.value, ValueError)
    assert conn.execute("select count(*) from errands_jobs").fetchone() == (0,)


def test_every_invalid_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_request({"task": "", "priority": "high", "surprise": 1})
    assert sorted(e.field for e in raised.value.errors) == ["priority", "surprise", "task"]


def test_run_at_and_delay_together_are_refused() -> None:
    with pytest.raises(InvalidJob, match="not both"):
        parse_request({"task": "t", "run_at": "2030-01-01T00:00:00Z", "delay": 5})


def test_a_boolean_is_not_an_integer() -> None:
    with pytest.raises(InvalidJob, match="max_attempts"):
        parse_request({"task": "t", "max_attempts": True})


# PostgreSQL cannot hold NUL characters nor lone surrogates; everything else JSON says is fine.
json_text = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=10
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(json_text, json_values, max_size=5))
def test_any_json_object_is_a_valid_payload(payload: dict[str, Any]) -> None:
    assert parse_request({"task": "t", "payload": payload}).payload == payload


@given(st.one_of(st.integers(), st.text(), st.lists(st.integers()), st.booleans()))
def test_any_non_object_payload_is_refused(payload: Any) -> None:
    with pytest.raises(InvalidJob, match="payload"):
        parse_request({"task": "t", "payload": payload})


def test_an_integral_float_is_an_integer_as_json_schema_says() -> None:
    request = parse_request({"task": "t", "priority": 3.0, "max_attempts": 2.0})
    assert (request.priority, request.max_attempts) == (3, 2)
    assert isinstance(request.priority, int)


def test_a_lone_surrogate_is_refused_before_the_database_sees_it() -> None:
    with pytest.raises(InvalidJob, match="payload"):
        parse_request({"task": "t", "payload": {"k": "\ud800"}})
    with pytest.raises(InvalidJob, match="idempotency_key"):
        parse_request({"task": "t", "idempotency_key": "\ud800"})


def test_run_at_is_kept_in_utc_whatever_its_offset() -> None:
    request = parse_request({"task": "t", "run_at": "2030-01-01T00:00:00-18:30"})
    assert request.run_at is not None and request.run_at.isoformat() == "2030-01-01T18:30:00+00:00"
    with pytest.raises(InvalidJob, match="run_at"):
        parse_request({"task": "t", "run_at": "9999-12-31T23:59:59-05:00"})

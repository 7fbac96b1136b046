"""The database's own checks on names accept exactly what request validation accepts."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from errands.queue.requests import QUEUE_NAME, TASK_NAME

# Near the edges of both patterns: allowed and refused characters, and lengths around 200.
NAME_CHARS = st.sampled_from([*"aZ_9.:-", " ", "/", "é", "\n", "$"])
NAMES = st.one_of(
    st.text(NAME_CHARS, max_size=12),
    st.builds(lambda c, n: c * n, NAME_CHARS, st.integers(195, 205)),
    st.builds(lambda n: "a" + "9" * n, st.integers(195, 205)),
)


def stored(conn: psycopg.Connection[Any], task: str, queue: str) -> bool:
    try:
        with conn.transaction():
            conn.execute("insert into errands_jobs (task, queue) values (%s, %s)", (task, queue))
            raise psycopg.Rollback
    except psycopg.errors.CheckViolation:
        return False
    return True


@given(name=NAMES)
def test_task_names_are_refused_by_the_database_exactly_when_invalid(
    conn: psycopg.Connection[Any], name: str
) -> None:
    assert stored(conn, name, "default") == bool(re.fullmatch(TASK_NAME.pattern[1:-1], name))


@given(name=NAMES)
def test_queue_names_are_refused_by_the_database_exactly_when_invalid(
    conn: psycopg.Connection[Any], name: str
) -> None:
    assert stored(conn, "t", name) == bool(re.fullmatch(QUEUE_NAME.pattern[1:-1], name))

"""Steps (errands/queue/steps.py): a COPY's `meanwhile` work, on either kind of connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from errands.queue.steps import Copy, Execute, Operation, run, run_async

COPY = b"copy copied (n) from stdin"


def copy_then_count(meanwhile: Callable[[], Any]) -> Operation[tuple[Any, int]]:
    yield Execute(b"create temp table if not exists copied (n int)")
    answer = yield Copy(COPY, ["int4"], ((n,) for n in range(2000)), meanwhile)
    rows = yield Execute(b"select count(*) from copied")
    return answer, rows[0][0]


def fail() -> None:
    raise ValueError("the operation's own work failed")


def on_either(conn_url: str, operation: Callable[[], Operation[Any]], use_async: bool) -> Any:
    if not use_async:
        with psycopg.connect(conn_url, autocommit=True) as conn:
            return run(conn, operation()), conn.execute("select 1").fetchone()

    async def both() -> Any:
        async with await psycopg.AsyncConnection.connect(conn_url, autocommit=True) as conn:
            answer = await run_async(conn, operation())
            return answer, await (await conn.execute("select 1")).fetchone()

    return asyncio.run(both())


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_copy_answers_with_its_meanwhile_work_once_every_row_is_stored(
    db_url: str, use_async: bool
) -> None:
    answer, _ = on_either(db_url, lambda: copy_then_count(lambda: "built"), use_async)
    assert answer == ("built", 2000)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_meanwhile_work_failing_cancels_the_copy_and_leaves_the_connection_usable(
    db_url: str, use_async: bool
) -> None:
    def operation() -> Operation[Any]:
        try:
            yield from copy_then_count(fail)
        except ValueError as exc:
            rows = yield Execute(b"select count(*) from copied")
            return str(exc), rows[0][0]
        raise AssertionError("the failure reaches the operation")

    answer, still_usable = on_either(db_url, operation, use_async)
    assert answer == ("the operation's own work failed", 0)
    assert still_usable == (1,)

"""Queue operations written once, run on a synchronous or an asynchronous connection.

An operation is a generator: it yields each statement it needs run (`Execute`,
`Copy`, or a group of steps in one transaction, `Atomic`), receives the rows
back, and returns its answer. It builds the parameters and reads the rows but
never touches a connection; `run` performs its steps on a psycopg Connection
(the Client, the HTTP API, the daemon) and `run_async` on an AsyncConnection
(the AsyncClient). So there is one copy of each statement and each rule (a
replay, a race on a key, a refusal), whichever I/O style runs it: psycopg is
built the same way, generators driven by one waiting function per style.

An error a step meets is thrown into the operation at its `yield`, so the
operation handles it where it asked for the step, as if it had run it itself.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.rows import dict_row, tuple_row

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Execute:
    """One statement (or a script of several, without parameters); answers with the rows of
    its last result, as dicts (`dicts`) or tuples, or [] when it returns none."""

    statement: bytes
    params: Mapping[str, Any] | None = None
    dicts: bool = False
    prepare: bool | None = None  # False: planned afresh at every execution (submit.py says why)


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY ... FROM STDIN of `rows`, sent as `types`; answers []."""

    statement: bytes
    types: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Atomic:
    """The steps of `body` in one transaction (a savepoint inside the caller's): its answer,
    or its error once the transaction is rolled back."""

    body: Operation[Any]


Step = Execute | Copy | Atomic
Operation = Generator[Step, Any, T]


def run(conn: psycopg.Connection[Any], operation: Operation[T]) -> T:
    """Perform `operation`'s steps on `conn`; its answer."""
    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            step = operation.send(answer) if error is None else operation.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        try:
            answer, error = _perform(conn, step), None
        except Exception as exc:
            answer, error = None, exc


async def run_async(conn: psycopg.AsyncConnection[Any], operation: Operation[T]) -> T:
    """`run` on an AsyncConnection."""
    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            step = operation.send(answer) if error is None else operation.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        try:
            answer, error = await _perform_async(conn, step), None
        except Exception as exc:
            answer, error = None, exc


def _perform(conn: psycopg.Connection[Any], step: Step) -> Any:
    if isinstance(step, Execute):
        with conn.cursor(row_factory=dict_row if step.dicts else tuple_row) as cur:
            cur.execute(step.statement, step.params, prepare=step.prepare)
            while cur.nextset():  # to a script's last statement
                pass
            return cur.fetchall() if _has_rows(cur) else []
    if isinstance(step, Copy):
        with conn.cursor() as cur, cur.copy(step.statement) as copy:
            copy.set_types(step.types)
            for row in step.rows:
                copy.write_row(row)
        return []
    with conn.transaction():
        return run(conn, step.body)


def _has_rows(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    """Whether the statement returned rows (none or some); cheaper than `description`,
    which builds a Column for every column of the result (20 us for a job's row)."""
    return cur.pgresult is not None and cur.pgresult.status == pq.ExecStatus.TUPLES_OK


async def _perform_async(conn: psycopg.AsyncConnection[Any], step: Step) -> Any:
    if isinstance(step, Execute):
        async with conn.cursor(row_factory=dict_row if step.dicts else tuple_row) as cur:
            await cur.execute(step.statement, step.params, prepare=step.prepare)
            while cur.nextset():
                pass
            return await cur.fetchall() if _has_rows(cur) else []
    if isinstance(step, Copy):
        async with conn.cursor() as cur, cur.copy(step.statement) as copy:
            copy.set_types(step.types)
            for row in step.rows:
                await copy.write_row(row)
        return []
    async with conn.transaction():
        return await run_async(conn, step.body)

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

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.abc import Buffer
from psycopg.copy import AsyncLibpqWriter, AsyncWriter, LibpqWriter, Writer
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
    """COPY ... FROM STDIN of `rows`, sent as `types`; answers what `meanwhile` returns
    (None without it).

    `meanwhile` is work of the operation's own that does not depend on the COPY's
    outcome, done once every row is sent and before waiting for the server to have
    stored them: the client works while the server stores, rather than each waiting
    for the other. `rows` may be a generator: each row is built as the one before
    travels.
    """

    statement: bytes
    types: Sequence[str]
    rows: Iterable[Sequence[Any]]
    meanwhile: Callable[[], Any] | None = None


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
        with conn.cursor() as cur:
            writer = _Meanwhile(cur, step.meanwhile)
            with cur.copy(step.statement, writer=writer) as copy:
                copy.set_types(step.types)
                for row in step.rows:
                    copy.write_row(row)
            return writer.answer
    with conn.transaction():
        return run(conn, step.body)


class _Meanwhile(Writer):
    """psycopg's writer, doing `work` between the last row sent and the end of the COPY,
    whose answer waits for the server to have stored every row.

    The rows libpq still holds are flushed first: PostgreSQL stores a COPY's rows in
    groups of up to 1,000 rows or 64 kB, so it stores nearly all of a batch while the
    work runs (a batch of 1,000 jobs: 937 rows of them), instead of after it.
    """

    def __init__(self, cur: psycopg.Cursor[Any], work: Callable[[], Any] | None) -> None:
        self._writer = LibpqWriter(cur)
        self._pgconn = cur.connection.pgconn
        self._work = work
        self.answer: Any = None

    def write(self, data: Buffer) -> None:
        self._writer.write(data)

    def finish(self, exc: BaseException | None = None) -> None:
        if exc is None and self._work is not None:
            self._pgconn.flush()  # the rows libpq still holds, without waiting
            try:
                self.answer = self._work()
            except BaseException as error:
                self._writer.finish(error)  # the COPY is cancelled, the connection usable
                raise
        self._writer.finish(exc)


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
        async with conn.cursor() as cur:
            writer = _AsyncMeanwhile(cur, step.meanwhile)
            async with cur.copy(step.statement, writer=writer) as copy:
                copy.set_types(step.types)
                for row in step.rows:
                    await copy.write_row(row)
            return writer.answer
    async with conn.transaction():
        return await run_async(conn, step.body)


class _AsyncMeanwhile(AsyncWriter):
    """`_Meanwhile` for an AsyncConnection."""

    def __init__(self, cur: psycopg.AsyncCursor[Any], work: Callable[[], Any] | None) -> None:
        self._writer = AsyncLibpqWriter(cur)
        self._pgconn = cur.connection.pgconn
        self._work = work
        self.answer: Any = None

    async def write(self, data: Buffer) -> None:
        await self._writer.write(data)

    async def finish(self, exc: BaseException | None = None) -> None:
        if exc is None and self._work is not None:
            self._pgconn.flush()
            try:
                self.answer = self._work()
            except BaseException as error:
                await self._writer.finish(error)
                raise
        await self._writer.finish(exc)

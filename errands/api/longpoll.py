"""`GET /jobs/{id}?wait=SECONDS`: wait for a job to finish on the event loop, holding no thread.

One FinishWatcher per API process (a thread with one listening connection)
hears every finish; a waiting request is a future it resolves. The request
threads and their pooled connections only read the job, before and after. A
poll is admitted once, for its first read: refused at once when the API is
overloaded, and answered after its wait however many polls wake together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

from starlette.responses import Response
from starlette.types import Receive

from errands.api.backend import Backend
from errands.api.endpoints import Call, job_id, job_response, read_job
from errands.queue.finished import FinishWatcher, is_finished


class FinishWaits:
    def __init__(self, database_url: str, connect_options: Mapping[str, Any]) -> None:
        # Its thread starts with the first wait.
        self._watcher = FinishWatcher(database_url, connect_options=connect_options)

    def close(self) -> None:
        self._watcher.close()

    @contextlib.asynccontextmanager
    async def watching(self, job_id: int) -> AsyncIterator[asyncio.Future[None]]:
        """A future resolved once the job has finished; watch before reading the job."""
        loop = asyncio.get_running_loop()
        heard: asyncio.Future[None] = loop.create_future()

        def on_finish() -> None:  # on the watcher's thread
            loop.call_soon_threadsafe(_settle, heard)

        unwatch = self._watcher.watch(job_id, on_finish)
        try:
            yield heard
        finally:
            unwatch()


async def long_poll(
    backend: Backend, waits: FinishWaits, call: Call, seconds: float, receive: Receive
) -> Response:
    """The job once it has finished, or when the time is up, as it is then."""
    async with waits.watching(job_id(call)) as heard:
        job = await backend.with_connection(partial(read_job, call=call))
        if not is_finished(job):
            await _until_heard(heard, seconds, receive)
            job = await backend.with_connection(partial(read_job, call=call), admitted=True)
    return job_response(call, job)


async def _until_heard(heard: asyncio.Future[None], seconds: float, receive: Receive) -> None:
    """Return when `heard` resolves, after `seconds`, or when the client goes away."""
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({heard, gone}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()


def _settle(heard: asyncio.Future[None]) -> None:
    if not heard.done():
        heard.set_result(None)


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass

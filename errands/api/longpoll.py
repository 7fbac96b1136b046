"""`GET /jobs/{id}?wait=SECONDS`: wait for a job to finish on the event loop, holding no thread.

One FinishWatcher per API process (a thread with one listening connection)
hears every finish; a waiting request is a future it resolves. The request
threads and their pooled connections only read the job, before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from errands.queue import FinishWatcher

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


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


async def until_heard(heard: asyncio.Future[None], seconds: float, receive: Receive) -> None:
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

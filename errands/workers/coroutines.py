"""The worker's event loop: `async def` tasks run here as coroutines, beside the job threads.

One loop per worker process, on a thread of its own, runs up to
`--async-concurrency` coroutines at once; I/O-bound work then costs a coroutine
rather than a thread or a process. The claim loop, the lease keeper, fencing
and batched acknowledgements treat a coroutine's attempt exactly as a
thread's: it reports its outcome through the same queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

import uvloop


class EventLoopThread:
    """An event loop running on its own daemon thread, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def submit(self, coroutine: Coroutine[Any, Any, None]) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def stop(self) -> None:
        """Stop the loop; a coroutine still running is abandoned with the process, never joined."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = uvloop.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="errands-event-loop", daemon=True
            )
            self._thread.start()
        return self._loop

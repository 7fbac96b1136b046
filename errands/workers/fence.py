"""The lease fence: a worker stops an attempt as its lease runs out by its own clock.

Past the lease's end the reaper may hand the job to another worker, so the attempt
must have stopped by then: it is stopped a tenth of the lease early (stopping a
process takes a moment). A coroutine is cancelled, and a process running a thread job,
which Python cannot stop, is replaced. The fence is a thread of its own that
waits on nothing but the clock: the lease keeper's renewal may be the very
statement that hangs (a partition that closes nothing, a PostgreSQL that stopped
answering), and the decision must not wait for it to return.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from errands.workers.running import Entry, RunningJobs

# How long the fence sleeps at most: it wakes sooner, at the earliest lease end.
IDLE_SECONDS = 0.25


class LeaseFence(threading.Thread):
    """Calls `on_expired` with the attempts whose lease ends within `early` seconds: stopping
    takes a moment (a process to exit), and must be done by the time the lease ends."""

    def __init__(
        self,
        running: RunningJobs,
        on_expired: Callable[[list[Entry]], None],
        early: float = 0.0,
    ) -> None:
        super().__init__(name="errands-lease-fence", daemon=True)
        self._running = running
        self._on_expired = on_expired
        self._early = early
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.is_set():
            now = time.monotonic() + self._early
            if expired := self._running.take_expired(now):
                self._on_expired(expired)
            # A new claim or a renewal only ever ends later than the earliest end held.
            wait = min(IDLE_SECONDS, self._running.next_expiry() - now)
            self._stopped.wait(max(0.0, wait))

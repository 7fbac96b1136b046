"""Which worker slots hold a running worker, in memory the supervisor shares with its children."""

from __future__ import annotations

import mmap

NO_WORKER = "no worker process is running; the supervisor's log says why"


class WorkerBoard:
    """One flag per worker slot in an anonymous shared mapping, made before any fork.

    A worker raises its flag once its tasks are loaded and it claims jobs; the
    supervisor lowers it when the worker exits; the HTTP child reads the board to
    answer /ready. Only the owner of a slot writes it, so no lock is needed.
    """

    def __init__(self, slots: int) -> None:
        self._flags = mmap.mmap(-1, max(1, slots))

    def set(self, number: int, running: bool) -> None:
        self._flags[number - 1] = int(running)

    def running(self) -> int:
        return sum(self._flags[:])

    def not_ready(self) -> str | None:
        """For /ready: why the service is not ready, or None when a worker runs."""
        return None if self.running() else NO_WORKER

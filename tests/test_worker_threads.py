"""The worker's job threads exist before its first claim."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from errands.workers.worker import _start_every_thread


def test_every_job_thread_is_started_before_any_job_is_handed_over() -> None:
    pool = ThreadPoolExecutor(8, "threads-test")
    try:
        _start_every_thread(pool, 8)
        started = [t for t in threading.enumerate() if t.name.startswith("threads-test")]
        assert len(started) == 8
    finally:
        pool.shutdown(wait=True)

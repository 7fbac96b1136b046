"""Demo tasks, loaded when no task module is configured, so a fresh install does real work."""

from __future__ import annotations

import hashlib
import random
import time
import urllib.request
from typing import Any

import structlog

from errands.tasks import current_job, task

_log = structlog.get_logger("errands.demo")


@task
def sleep(seconds: float = 1.0) -> dict[str, float]:
    """Wait, standing in for slow work."""
    time.sleep(seconds)
    return {"slept": seconds}


@task
def send_email(to: str, subject: str = "", body: str = "") -> dict[str, Any]:
    """Pretend to deliver an email: a short wait and a log line, no network."""
    time.sleep(0.05)
    message_id = hashlib.sha256(f"{current_job().id}:{to}:{subject}".encode()).hexdigest()[:16]
    _log.info("email delivered (simulated)", to=to, subject=subject, chars=len(body))
    return {"delivered": True, "to": to, "message_id": message_id}


@task
def generate_report(rows: int = 1000) -> dict[str, Any]:
    """Real CPU work: aggregate `rows` generated rows."""
    values = [random.random() for _ in range(rows)]
    return {"rows": rows, "total": sum(values), "max": max(values, default=None)}


@task
def flaky(fail_rate: float = 0.5) -> dict[str, Any]:
    """Fail at random, to watch retries and backoff at work."""
    if random.random() < fail_rate:
        raise RuntimeError(f"flaky failure (fail_rate={fail_rate})")
    return {"attempt": current_job().attempt}


@task
def fail(message: str = "boom") -> None:
    """Always raise, to watch a job spend its budget and end dead."""
    raise RuntimeError(message)


@task
def http_call(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET a URL: this lets any API client make the server fetch URLs, so demo use only."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    return {"status": response.status, "bytes": len(body)}

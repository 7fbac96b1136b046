"""A small application using errands the way a service would, for tests of errands.testing.

Signing up stores nothing here; it enqueues a welcome email, which in turn
enqueues a follow-up. The payment task raises errands.Fail on a declined card
and errands.Retry when the partner rate-limits.
"""

from __future__ import annotations

import asyncio
from typing import Any

import errands

DECLINED = "4000-0000-0000-0002"
RATE_LIMITED = "4000-0000-0000-9995"


@errands.task(queue="mail", max_attempts=3)
def send_welcome(to: str, name: str = "there") -> dict[str, Any]:
    job = errands.current_job()
    send_follow_up.options(delay=24 * 3600).enqueue(to=to)
    return {"to": to, "body": f"Welcome, {name}!", "attempt": job.attempt}


@errands.task(queue="mail")
async def send_follow_up(to: str) -> str:
    await asyncio.sleep(0)
    return f"follow-up to {to}"


@errands.task(no_retry_on=(ValueError,))
def charge(card: str, cents: int) -> str:
    if cents <= 0:
        raise ValueError("nothing to charge")
    if card == DECLINED:
        raise errands.Fail("card declined")
    if card == RATE_LIMITED:
        raise errands.Retry(in_seconds=30, reason="partner rate limit")
    return f"charged {cents}"


def sign_up(email: str, name: str) -> int:
    """The application's own code: returns the id of the welcome email's job."""
    return send_welcome.enqueue(to=email, name=name).id

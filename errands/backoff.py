"""How long a failed job waits before its next attempt."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with a cap and jitter.

    Attempt n waits `base * 2**(n-1)` seconds, capped at `cap`, then shortened by
    a random fraction of up to `jitter`, so that jobs failing together (a
    database blip, a partner's outage) do not come back together.
    """

    base: float = 2.0
    cap: float = 600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= 0):
            raise ValueError("backoff base and cap must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def ceiling(self, attempt: int) -> float:
        """The delay after `attempt` (1-based) before jitter."""
        # Clamp the exponent: 2.0**1100 overflows a float, and the cap is reached long before.
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 1) - 1, 1000))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `attempt` failed; within [(1 - jitter) * ceiling, ceiling]."""
        return self.ceiling(attempt) * (1.0 - self.jitter * rand())

"""Throttling wrong guesses at the API tokens, per client address, in each API process.

After `LIMIT` refused tokens within `WINDOW_SECONDS`, a further wrong token from
that address is answered 429 (with Retry-After) until its oldest refusal leaves
the window, whether it came through the API's bearer header or the dashboard's
login form. A right token is always accepted: many clients may share one
address (a NAT, a reverse proxy whose X-Forwarded-For is not trusted), and one
of them guessing must not lock the others out. What keeps guessing hopeless is
therefore the token's length (errands warns at start-up about a short one);
the throttle keeps refusals cheap and visible. Requests without a token are
never counted.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

LIMIT = 20
WINDOW_SECONDS = 60.0
# Addresses remembered at most: a flood from many addresses cannot grow memory without
# bound; the address that failed longest ago is forgotten first.
MAX_ADDRESSES = 10_000


class Guesses:
    """Refused tokens by client address (the API's event loop and the dashboard's request
    threads both count them)."""

    def __init__(
        self,
        limit: int = LIMIT,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._max_addresses = max_addresses
        self._refused: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, address: str) -> int:
        """Whole seconds until a wrong token from `address` is answered 401 again rather
        than 429; 0 if it is now."""
        with self._lock:
            times = self._refused.get(address)
            if times is None:
                return 0
            now = self._clock()
            while times and times[0] <= now - self._window:
                times.popleft()
            if not times:
                del self._refused[address]
                return 0
            if len(times) < self._limit:
                return 0
            return max(1, math.ceil(times[0] + self._window - now))

    def refuse(self, address: str) -> int:
        """Count a wrong token from `address`; the seconds it is held, 0 if it is not (then
        the answer is 401; else 429)."""
        wait = self.wait_seconds(address)
        self.refused(address)
        return wait

    def refused(self, address: str) -> None:
        """Count one refused token from `address`."""
        with self._lock:
            times = self._refused.setdefault(address, deque(maxlen=self._limit))
            times.append(self._clock())
            self._refused.move_to_end(address)
            while len(self._refused) > self._max_addresses:
                self._refused.popitem(last=False)

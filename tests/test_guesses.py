"""Throttling of refused tokens, in process with a clock the test moves."""

from __future__ import annotations

from errands.api.guesses import Guesses


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guesses(clock: Clock, limit: int = 3, max_addresses: int = 100) -> Guesses:
    return Guesses(limit=limit, window_seconds=60, clock=clock, max_addresses=max_addresses)


def test_an_address_may_keep_trying_until_its_limit_of_refusals() -> None:
    clock = Clock()
    tries = guesses(clock)
    for _ in range(2):
        tries.refused("10.0.0.1")
    assert tries.wait_seconds("10.0.0.1") == 0
    tries.refused("10.0.0.1")
    assert tries.wait_seconds("10.0.0.1") == 60


def test_the_hold_ends_when_the_oldest_refusal_leaves_the_window() -> None:
    clock = Clock()
    tries = guesses(clock)
    for _ in range(3):
        tries.refused("10.0.0.1")
        clock.now += 10
    assert tries.wait_seconds("10.0.0.1") == 30  # the first, 30 s ago, counts for 30 s more
    clock.now += 30
    assert tries.wait_seconds("10.0.0.1") == 0


def test_another_address_is_not_held() -> None:
    tries = guesses(Clock())
    for _ in range(3):
        tries.refused("10.0.0.1")
    assert tries.wait_seconds("10.0.0.2") == 0


def test_a_flood_of_addresses_forgets_the_oldest_and_keeps_the_rest() -> None:
    tries = guesses(Clock(), limit=1, max_addresses=2)
    for address in ("a", "b", "c"):
        tries.refused(address)
    assert [tries.wait_seconds(a) for a in ("a", "b", "c")] == [0, 60, 60]

"""Properties of the retry backoff: bounded, capped, jittered within its range."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from errands import Backoff

backoffs = st.builds(
    Backoff,
    base=st.floats(min_value=0, max_value=1e4),
    cap=st.floats(min_value=0, max_value=1e6),
    jitter=st.floats(min_value=0, max_value=1),
)
attempts = st.integers(min_value=1, max_value=10_000)
unit = st.floats(min_value=0, max_value=1, exclude_max=True)


@given(backoffs, attempts, unit)
def test_delay_never_exceeds_the_cap(backoff: Backoff, attempt: int, r: float) -> None:
    assert 0 <= backoff.delay(attempt, lambda: r) <= backoff.cap


@given(backoffs, attempts, unit)
def test_jitter_shortens_the_delay_by_at_most_its_fraction(
    backoff: Backoff, attempt: int, r: float
) -> None:
    ceiling = backoff.ceiling(attempt)
    delay = backoff.delay(attempt, lambda: r)
    assert ceiling * (1 - backoff.jitter) - 1e-9 <= delay <= ceiling


@given(backoffs, attempts)
def test_ceiling_grows_with_each_attempt_until_the_cap(backoff: Backoff, attempt: int) -> None:
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)


@given(st.floats(min_value=0.001, max_value=100), st.integers(min_value=1, max_value=20))
def test_ceiling_doubles_per_attempt_below_the_cap(base: float, attempt: int) -> None:
    backoff = Backoff(base=base, cap=1e12)
    assert backoff.ceiling(attempt) == base * 2 ** (attempt - 1)


def test_without_jitter_the_delay_is_exact() -> None:
    assert Backoff(base=2, cap=60, jitter=0).delay(3) == 8

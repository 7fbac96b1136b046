"""When schedules tick: a year of ticks in UTC, Berlin and New York, across both DST changes.

The clock is a parameter: nothing here sleeps. In 2026 Berlin springs forward on
29 March (02:00 CET → 03:00 CEST) and falls back on 25 October (03:00 CEST →
02:00 CET); New York on 8 March (02:00 EST → 03:00 EDT) and 1 November (02:00
EDT → 01:00 EST).
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from errands.queue.ticks import InvalidTiming, Timing, tick_key, tick_of

YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)
YEAR_END = datetime(2027, 1, 1, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@cache
def year_of_ticks(timing: Timing) -> tuple[datetime, ...]:
    """Every tick of 2026 (UTC), found by asking for the next one again and again."""
    ticks, tick = [], timing.next_after(YEAR_START - timedelta(microseconds=1))
    while tick < YEAR_END:
        ticks.append(tick)
        tick = timing.next_after(tick)
    return tuple(ticks)


def local(ticks: tuple[datetime, ...], zone: ZoneInfo) -> list[datetime]:
    return [tick.astimezone(zone) for tick in ticks]


def gaps(ticks: tuple[datetime, ...]) -> set[timedelta]:
    return {b - a for a, b in itertools.pairwise(ticks)}


def test_a_fixed_time_in_berlin_runs_once_every_day_of_the_year() -> None:
    ticks = local(year_of_ticks(Timing("30 2 * * *", tz="Europe/Berlin")), BERLIN)
    assert len(ticks) == 365
    assert len({t.date() for t in ticks}) == 365
    ordinary = [t for t in ticks if t.date() != date(2026, 3, 29)]
    assert {t.time() for t in ordinary} == {time(2, 30)}


def test_a_time_skipped_by_spring_forward_runs_at_the_first_instant_after_the_gap() -> None:
    berlin = year_of_ticks(Timing("30 2 * * *", tz="Europe/Berlin"))
    assert datetime(2026, 3, 29, 1, 0, tzinfo=UTC) in berlin  # 03:00 CEST
    new_york = year_of_ticks(Timing("30 2 * * *", tz="America/New_York"))
    assert datetime(2026, 3, 8, 7, 0, tzinfo=UTC) in new_york  # 03:00 EDT
    assert [t for t in local(new_york, NEW_YORK) if t.date() == date(2026, 3, 8)] == [
        datetime(2026, 3, 8, 3, 0, tzinfo=NEW_YORK)
    ]


def test_a_time_repeated_by_fall_back_runs_once_at_its_first_occurrence() -> None:
    berlin = year_of_ticks(Timing("30 2 * * *", tz="Europe/Berlin"))
    on_the_day = [t for t in berlin if t.astimezone(BERLIN).date() == date(2026, 10, 25)]
    assert on_the_day == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]  # 02:30 CEST, not CET
    new_york = year_of_ticks(Timing("30 1 * * *", tz="America/New_York"))
    on_the_day = [t for t in new_york if t.astimezone(NEW_YORK).date() == date(2026, 11, 1)]
    assert on_the_day == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]  # 01:30 EDT, not EST
    assert len(new_york) == 365


def test_an_hourly_expression_runs_every_elapsed_hour_through_both_changes() -> None:
    # A wildcard hour follows elapsed time (as cron does): no hour skipped in the
    # 23-hour day, none run twice in the 25-hour one.
    for tz in ("Europe/Berlin", "America/New_York"):
        ticks = year_of_ticks(Timing("0 * * * *", tz=tz))
        assert len(ticks) == 365 * 24
        assert gaps(ticks) == {timedelta(hours=1)}


def test_weekday_mornings_in_new_york_follow_the_local_clock() -> None:
    ticks = year_of_ticks(Timing("0 9 * * 1-5", tz="America/New_York"))
    assert len(ticks) == 261  # 2026 has 52 weeks and a Thursday
    assert {t.astimezone(NEW_YORK).time() for t in ticks} == {time(9, 0)}
    assert {t.astimezone(NEW_YORK).weekday() for t in ticks} == {0, 1, 2, 3, 4}
    assert Counter(t.hour for t in ticks).keys() == {13, 14}  # EDT and EST, in UTC


def test_nicknames_are_the_expressions_they_stand_for() -> None:
    daily = year_of_ticks(Timing("@daily", tz="Europe/Berlin"))
    assert len(daily) == 365
    assert {t.astimezone(BERLIN).time() for t in daily} == {time(0, 0)}
    assert len(year_of_ticks(Timing("@hourly"))) == 365 * 24
    assert len(year_of_ticks(Timing("@weekly"))) == 52  # Sundays; 2026 starts on a Thursday
    assert year_of_ticks(Timing("@monthly")) == tuple(
        datetime(2026, month, 1, tzinfo=UTC) for month in range(1, 13)
    )
    assert year_of_ticks(Timing("@yearly")) == (YEAR_START,)


def test_utc_expressions_tick_at_even_gaps_all_year() -> None:
    ticks = year_of_ticks(Timing("0 */6 * * *"))
    assert len(ticks) == 365 * 4
    assert gaps(ticks) == {timedelta(hours=6)}


@pytest.mark.parametrize("seconds", [1, 7, 3600, 86400])
def test_intervals_are_aligned_to_the_unix_epoch(seconds: int) -> None:
    timing = Timing(every=seconds)
    moment = datetime(2026, 3, 29, 1, 0, 0, 500_000, tzinfo=UTC)
    after = timing.next_after(moment)
    latest = timing.latest_at_or_before(moment)
    assert latest is not None
    for tick in (after, latest):
        assert int(tick.timestamp()) % seconds == 0
    assert latest <= moment < after
    assert after - latest == timedelta(seconds=seconds)


def test_the_next_tick_is_strictly_after_a_moment_on_a_tick() -> None:
    tick = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert Timing(every=60).next_after(tick) == tick + timedelta(minutes=1)
    assert Timing("0 12 * * *").next_after(tick) == tick + timedelta(days=1)
    assert Timing(every=60).latest_at_or_before(tick) == tick
    assert Timing("0 12 * * *").latest_at_or_before(tick) == tick


TIMINGS = [
    Timing("30 2 * * *", tz="Europe/Berlin"),
    Timing("30 1 * * *", tz="America/New_York"),
    Timing("0 * * * *", tz="America/New_York"),
    Timing("0 9 * * 1-5", tz="America/New_York"),
    Timing("0 */6 * * *"),
]


@given(
    timing=st.sampled_from(TIMINGS),
    moment=st.datetimes(
        min_value=datetime(2026, 1, 2), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
)
def test_the_latest_tick_at_a_moment_is_the_last_forward_tick_before_it(
    timing: Timing, moment: datetime
) -> None:
    ticks = year_of_ticks(timing)
    expected = ticks[bisect.bisect_right(ticks, moment) - 1]
    assert timing.latest_at_or_before(moment) == expected


@pytest.mark.parametrize(
    ("cron", "every", "tz", "message"),
    [
        ("61 * * * *", None, "UTC", "Bad minute"),
        ("* * * *", None, "UTC", "five fields"),
        ("0 * * * * *", None, "UTC", "five fields"),
        ("@fortnightly", None, "UTC", "five fields"),
        ("0 0 30 2 *", None, "UTC", "day-of-month"),
        ("0 3 * * *", None, "Europe/Atlantis", "unknown time zone 'Europe/Atlantis'"),
        (None, 0, "UTC", "at least 1 second"),
        (None, 60, "Europe/Berlin", "aligned to the Unix epoch"),
        ("0 3 * * *", 60, "UTC", "not both"),
        (None, None, "UTC", "not both or neither"),
        (5, None, "UTC", "are strings"),
        ("@daily", None, None, "are strings"),
    ],
)
def test_an_impossible_timing_is_refused_saying_why(
    cron: Any, every: int | None, tz: Any, message: str
) -> None:
    with pytest.raises(InvalidTiming, match=message):
        Timing(cron, every, tz)


def test_a_tick_key_names_the_schedule_and_the_tick_in_utc_and_gives_it_back() -> None:
    tick = datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    key = tick_key("reports:nightly", tick)
    assert key == "periodic:reports:nightly:2026-03-29T01:00:00Z"
    assert tick_of(key) == tick
    assert tick_of("invoice-42") is None
    assert tick_of(None) is None

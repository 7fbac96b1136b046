"""When a periodic schedule ticks: a cron expression in a time zone, or an interval.

Pure computation, no database: every supervisor computes the same ticks, and
`errands schedules` computes the next one without the task modules.

Cron expressions are evaluated by cronsim, which follows Debian's cron (as
cronie does) across DST changes: an expression with a fixed minute and hour
runs once when that wall-clock time occurs twice, and at the first instant
after the gap when the clock skips it; an expression with a wildcard minute or
hour runs by elapsed time. Intervals are aligned to the Unix epoch, so
`every=60` ticks at each whole UTC minute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Longer than any clock change, so a search that starts this far back sees every
# tick a DST change could move.
_DST_MARGIN = timedelta(hours=3)
_TICK_KEY = re.compile(r"^periodic:.+:(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z$")


class InvalidTiming(ValueError):
    """A cron expression, interval or time zone that cannot make a schedule."""


@dataclass(frozen=True)
class Timing:
    """A schedule's clock: `cron` (five fields or a nickname) in `tz`, or `every` seconds."""

    cron: str | None = None
    every: int | None = None  # seconds
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise InvalidTiming("give either a cron expression or every=, not both or neither")
        if not all(isinstance(text, str) for text in (self.tz, self.cron or "")):
            raise InvalidTiming("cron and tz are strings, such as '0 3 * * *' and 'Europe/Berlin'")
        zone = _zone(self.tz)
        if self.every is not None:
            if self.every < 1:
                raise InvalidTiming(f"every={self.every}: the interval must be at least 1 second")
            if self.tz != "UTC":
                raise InvalidTiming(
                    f"tz={self.tz!r} with every=: intervals are aligned to the Unix epoch and "
                    "ignore time zones; use a cron expression for wall-clock times"
                )
            return
        assert self.cron is not None
        expression = NICKNAMES.get(self.cron.strip().lower(), self.cron)
        if len(expression.split()) != 5:
            raise InvalidTiming(
                f"cron {self.cron!r}: expected five fields (minute hour day month weekday) "
                f"or one of {', '.join(NICKNAMES)}"
            )
        try:
            next(CronSim(expression, datetime(2000, 1, 1, tzinfo=zone)))
        except CronSimError as exc:
            raise InvalidTiming(f"cron {self.cron!r}: {exc}") from None
        except StopIteration:
            raise InvalidTiming(f"cron {self.cron!r} never fires") from None

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.tz)

    @property
    def expression(self) -> str:
        """The five-field form of `cron`."""
        assert self.cron is not None
        return NICKNAMES.get(self.cron.strip().lower(), self.cron)

    def describe(self) -> str:
        return f"cron {self.cron} ({self.tz})" if self.cron else f"every {self.every}s"

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment` (aware), in UTC."""
        if self.every is not None:
            periods = _epoch_seconds(moment) // self.every + 1
            return EPOCH + timedelta(seconds=periods * self.every)
        ticks = CronSim(self.expression, moment.astimezone(self.zone))
        while True:
            # Evaluated on the wall clock, a tick inside a repeated hour can fall
            # before `moment`: it already ran in the first pass of that hour.
            tick = next(ticks).astimezone(UTC)
            if tick > moment:
                return tick

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last tick at or before `moment`, in UTC (None if the clock never ticked)."""
        if self.every is not None:
            return EPOCH + timedelta(seconds=_epoch_seconds(moment) // self.every * self.every)
        # cronsim can walk backwards, but its DST rules are those of the forward
        # walk only approximately; walk forward from a little before instead.
        try:
            before = next(CronSim(self.expression, moment.astimezone(self.zone), reverse=True))
        except StopIteration:
            return None
        latest = None
        tick = self.next_after(before.astimezone(UTC) - _DST_MARGIN)
        while tick <= moment:
            latest, tick = tick, self.next_after(tick)
        return latest


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of a schedule's tick: one job per tick, whoever enqueues it."""
    return f"periodic:{name}:{rfc3339(tick)}"


def tick_of(key: str | None) -> datetime | None:
    """The tick a periodic job's idempotency key names (None for any other key).

    A periodic job's run_at is its tick until a failed attempt reschedules it;
    the key keeps the tick for the retries.
    """
    match = _TICK_KEY.match(key or "")
    return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC) if match else None


def rfc3339(moment: datetime) -> str:
    """Whole seconds in UTC, as ticks are: 2026-03-29T01:00:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch_seconds(moment: datetime) -> int:
    """Whole seconds since the epoch, rounded down (a tick at .5 s past is not yet due)."""
    return (moment - EPOCH) // timedelta(seconds=1)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTiming(f"unknown time zone {name!r}") from None

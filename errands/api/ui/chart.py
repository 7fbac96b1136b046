"""The throughput chart: an hour of per-minute counts drawn as SVG on the server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

WIDTH, HEIGHT, MINUTES = 600, 120, 60


@dataclass(frozen=True)
class Series:
    name: str
    points: str  # SVG polyline points
    total: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    peak: int
    series: list[Series]


def throughput_chart(rows: list[tuple[datetime, str, int]], now: datetime) -> Chart:
    """Completed and failed (a failed attempt, retried or dead) jobs per minute, last hour."""
    last = now.replace(second=0, microsecond=0)
    minutes = [last - timedelta(minutes=MINUTES - 1 - n) for n in range(MINUTES)]
    per_state: dict[str, dict[datetime, int]] = {"completed": {}, "failed": {}}
    for minute, state, jobs in rows:
        name = "completed" if state == "completed" else "failed"
        per_state[name][minute] = per_state[name].get(minute, 0) + jobs
    peak = max([1, *(n for counts in per_state.values() for n in counts.values())])
    step = WIDTH / (MINUTES - 1)
    series = [
        Series(
            name,
            " ".join(
                f"{i * step:.1f},{HEIGHT - counts.get(minute, 0) * HEIGHT / peak:.1f}"
                for i, minute in enumerate(minutes)
            ),
            sum(counts.get(minute, 0) for minute in minutes),
        )
        for name, counts in per_state.items()
    ]
    return Chart(WIDTH, HEIGHT, peak, series)

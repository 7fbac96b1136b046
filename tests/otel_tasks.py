"""Tasks of the OpenTelemetry tests: one that runs, one that fails, one that ticks."""

from __future__ import annotations

import errands


@errands.task("otel.traced", queue="traced")
def traced(n: int = 0) -> int:
    return n


@errands.task("otel.fails", queue="traced", max_attempts=1)
def fails() -> None:
    raise ValueError("boom")


@errands.periodic(every=1)
@errands.task("otel.ticking", queue="ticks")
def ticking() -> None:
    pass

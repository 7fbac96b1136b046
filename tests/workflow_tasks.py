"""Tasks for the workflow daemon tests: each child adds up what its parents returned."""

from __future__ import annotations

import errands


@errands.task(name="wf_number")
def number(value: int) -> int:
    return value


@errands.task(name="wf_total")
def total(plus: int = 0) -> dict[str, int]:
    """The sum of the parents' results (a number, or a dict's "sum"), and how many there were."""
    parents = errands.current_job().parents
    values = [r["sum"] if isinstance(r, dict) else r or 0 for r in parents.values()]
    return {"sum": sum(values) + plus, "parents": len(parents)}


@errands.task(name="wf_fail")
def fail() -> None:
    raise errands.Fail("on purpose")

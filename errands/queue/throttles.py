"""Limits on starting jobs: at most N at once (concurrency) or N starts per period (rate), for a
task (optionally per value of one of its payload arguments) or a queue.

Limits live in the database, so that every host obeys the same numbers
(docs/guides/limits.md). Code declares a task's limits
(`@errands.task(concurrency=..., rate=...)`): each worker writes those of its
registered tasks when it connects. Operators set a queue's limits (`errands
queues set`, `PATCH /queues/{name}`, the dashboard); no worker touches them. The
claim obeys them in SQL (complete_and_claim and the migration that adds limits).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from errands.limits import MAX_LIMIT
from errands.queue.queries import query

Kind = Literal["concurrency", "rate"]

PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# 1 to 1,000,000 starts (MAX_LIMIT) per second, minute or hour; JSON Schema says the same.
RATE = re.compile(r"^([1-9][0-9]{0,5}|1000000)/([smh])$")


@dataclass(frozen=True)
class Rate:
    """At most `amount` starts in any window of `per_seconds` (a sliding window, not a
    calendar slot)."""

    amount: int
    per_seconds: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`N/s`, `N/m` or `N/h`; ValueError saying what is wrong otherwise."""
        match = RATE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"must be N/s, N/m or N/h with N from 1 to {MAX_LIMIT}, e.g. 30/m")
        return cls(int(match.group(1)), PERIODS[match.group(2)])

    def __str__(self) -> str:
        unit = next((u for u, s in PERIODS.items() if s == self.per_seconds), None)
        return f"{self.amount}/{unit}" if unit else f"{self.amount}/{self.per_seconds:g}s"


@dataclass(frozen=True)
class TaskLimits:
    """What `@errands.task` declares: `concurrency` jobs at once and `rate` starts per period,
    across every host; with a key, separately for each value of that payload argument."""

    concurrency: int | None = None
    concurrency_key: str | None = None
    rate: Rate | None = None
    rate_key: str | None = None

    def rows(self) -> list[tuple[Kind, int, float | None, str | None]]:
        """(kind, amount, per_seconds, key) of each limit declared."""
        rows: list[tuple[Kind, int, float | None, str | None]] = []
        if self.concurrency is not None:
            rows.append(("concurrency", self.concurrency, None, self.concurrency_key))
        if self.rate is not None:
            rows.append(("rate", self.rate.amount, self.rate.per_seconds, self.rate_key))
        return rows


def declare_task_limits(
    conn: psycopg.Connection[Any], declared: Mapping[str, TaskLimits]
) -> list[str]:
    """Write the limits code declares for these tasks (a task declaring none loses the ones code
    declared before); returns the tasks whose limits changed, whose waiting jobs are filed anew.

    Limits an operator set are kept. Many workers may declare at once: the first one
    to commit changes the rows, the others find them as they want them.
    """
    names, kinds, amounts, periods, keys = [], [], [], [], []
    for name, limits in declared.items():
        for kind, amount, per_seconds, key in limits.rows():
            names.append(name)
            kinds.append(kind)
            amounts.append(amount)
            periods.append(per_seconds)
            keys.append(key)
    params = {
        "tasks": list(declared),
        "names": names,
        "kinds": kinds,
        "amounts": amounts,
        "periods": periods,
        "keys": keys,
    }
    with conn.transaction():
        changed = sorted({row[0] for row in conn.execute(query("declare_task_limits"), params)})
        if changed:
            conn.execute(query("refile_tasks"), {"tasks": changed})
    return changed


def set_queue_limits(
    conn: psycopg.Connection[Any], name: str, changes: Mapping[Kind, int | Rate | None]
) -> None:
    """Set (a value) or remove (None) the queue's concurrency and rate limits named in `changes`;
    the queue's waiting jobs are filed anew, and idle workers woken (a raised limit frees slots)."""
    with conn.transaction():
        for kind, value in changes.items():
            if value is None:
                conn.execute(query("drop_queue_limit"), {"name": name, "kind": kind})
                continue
            amount, per_seconds = (
                (value.amount, value.per_seconds) if isinstance(value, Rate) else (value, None)
            )
            conn.execute(
                query("set_queue_limit"),
                {"name": name, "kind": kind, "amount": amount, "per_seconds": per_seconds},
            )
        conn.execute(query("refile_queue"), {"name": name})


@dataclass(frozen=True)
class Limit:
    """A limit as stored, with what it has in use now (summed over its keys)."""

    scope: Literal["task", "queue"]
    name: str
    kind: Kind
    amount: int
    per_seconds: float | None
    key: str | None
    set_by: Literal["code", "operator"]
    in_use: int  # concurrency: slots held now; rate: starts within the last period
    keys: int  # key values with a slot held or a start within the period

    @property
    def value(self) -> int | str:
        """As it is written: 5 (at once), or "20/s"."""
        if self.per_seconds is None:
            return self.amount
        return str(Rate(self.amount, self.per_seconds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "name": self.name,
            "kind": self.kind,
            "limit": self.value,
            "key": self.key,
            "set_by": self.set_by,
            "in_use": self.in_use,
            "keys": self.keys,
        }


def limits(conn: psycopg.Connection[Any]) -> list[Limit]:
    """Every limit, task limits first, with its use now."""
    with conn.cursor(row_factory=dict_row) as cur:
        return [Limit(**row) for row in cur.execute(query("limits"))]


def limits_of_job(conn: psycopg.Connection[Any], job_id: int) -> list[str]:
    """The limits job `job_id` comes under now, described for people: "concurrency 2 per
    account (account=42), a slot held"."""
    described = []
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(query("limits_of_job"), {"id": job_id}):
            amount = row["amount"]
            value = amount if row["per_seconds"] is None else Rate(amount, row["per_seconds"])
            text = f"{row['kind']} {value} of {row['scope']} {row['name']}"
            if row["key"] is not None:
                text += f" per {row['key']} ({row['key']}={row['value']})"
            described.append(text + (", a slot held" if row["holds"] else ""))
    return described


def throttled(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Per queue, the due jobs a full limit holds back now."""
    return {queue: int(jobs) for queue, jobs in conn.execute(query("throttled"))}


def forget_idle_counters(conn: psycopg.Connection[Any], idle_seconds: float) -> int:
    """Delete the counters of key values unused for `idle_seconds` (nothing held, no start
    within the period); returns how many. A claim makes a counter again when it needs one."""
    cur = conn.execute(query("forget_idle_counters"), {"idle_seconds": idle_seconds})
    return cur.rowcount


def by_queue(found: Iterable[Limit]) -> dict[str, dict[Kind, Limit]]:
    """Queue limits by queue name and kind."""
    queues: dict[str, dict[Kind, Limit]] = {}
    for limit in found:
        if limit.scope == "queue":
            queues.setdefault(limit.name, {})[limit.kind] = limit
    return queues

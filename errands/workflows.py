"""The workflow canvas: signatures, chains and groups of tasks, stored in one transaction.

`task.s(**payload)` is a signature (a task and its payload); `chain(a, b, c)`
runs each after the one before; `group(a, b)` runs its members side by side;
a group followed by a task in a chain is a fan-in (the task runs after every
member). `.enqueue()` flattens the canvas into jobs with `after` edges and
stores them with Client.enqueue_workflow, so the database does the rest: each
child becomes pending in the commit that completes its last parent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Union

import psycopg

from errands.client import Client, default_client
from errands.errors import FieldError, InvalidArgument
from errands.queue.finished import is_finished
from errands.queue.jobs import Job

if TYPE_CHECKING:
    from errands.tasks import Task

Node = Union["Signature", "Chain", "Group"]


@dataclass(frozen=True)
class Workflow:
    """A stored workflow: its id and its jobs, parents before children, as they were when
    stored (or last waited for)."""

    id: int
    jobs: list[Job]
    client: Client = field(repr=False, compare=False)

    def wait(self, timeout: float | None = None) -> Workflow:
        """The workflow once every job of it is completed, dead or cancelled (a failed job
        cancels those waiting for it, so it always ends); TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in self.jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.client.wait(job.id, left)
        return self.refresh()

    def refresh(self) -> Workflow:
        """The workflow as it is now."""
        return replace(self, jobs=self.client.workflow(self.id) or self.jobs)

    @property
    def finished(self) -> bool:
        return all(is_finished(job) for job in self.jobs)


class _Canvas:
    def enqueue(
        self, client: Client | None = None, conn: psycopg.Connection[Any] | None = None
    ) -> Workflow:
        """Store every job of it in one transaction (inside the caller's, with `conn`)."""
        specs: list[dict[str, Any]] = []
        _flatten(self, [], specs)  # type: ignore[arg-type]
        client = client or default_client()
        if not isinstance(client, Client):
            raise InvalidArgument([FieldError("client", "must be an errands.Client or None")])
        jobs = client.enqueue_workflow(specs, conn=conn)
        workflow_id = jobs[0].workflow_id
        assert workflow_id is not None, "every job of a workflow carries its id"
        return Workflow(workflow_id, jobs, client)


@dataclass(frozen=True)
class Signature(_Canvas):
    """A task with its payload and options, not yet enqueued: `task.s(**payload)`."""

    task: Task[Any, Any]
    payload: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)

    def set(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        on_parent_failure: Literal["cancel", "run"] | None = None,
    ) -> Signature:
        """This signature with other options for its job."""
        given = {
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
            "on_parent_failure": on_parent_failure,
        }
        chosen = {name: value for name, value in given.items() if value is not None}
        return replace(self, options={**self.options, **chosen})


@dataclass(frozen=True)
class Chain(_Canvas):
    """Steps run one after another: each waits for the whole step before it."""

    steps: tuple[Node, ...]


@dataclass(frozen=True)
class Group(_Canvas):
    """Members run side by side; what follows a group in a chain waits for all of them."""

    members: tuple[Node, ...]


def chain(*steps: Node) -> Chain:
    """`chain(a.s(), b.s(), c.s())`: b after a, c after b; `chain(group(...), d.s())`: d
    after every member of the group (a fan-in)."""
    return Chain(_nodes(steps, "steps"))


def group(*members: Node) -> Group:
    """`group(a.s(), b.s())`: run side by side."""
    return Group(_nodes(members, "members"))


def _nodes(nodes: Sequence[object], name: str) -> tuple[Node, ...]:
    if not nodes:
        raise InvalidArgument([FieldError(name, "must hold at least one signature")])
    for n, node in enumerate(nodes):
        if not isinstance(node, Signature | Chain | Group):
            raise InvalidArgument(
                [FieldError(f"{name}[{n}]", "must be a signature (task.s(...)), chain or group")]
            )
    return tuple(nodes)  # type: ignore[arg-type]


def _flatten(node: Node, parents: list[str], specs: list[dict[str, Any]]) -> list[str]:
    """Append the jobs of `node`, each after `parents`; the refs of the jobs that end it."""
    if isinstance(node, Signature):
        ref = str(len(specs))
        specs.append(
            {
                "ref": ref,
                "task": node.task.name,
                "payload": node.payload,
                "queue": node.options.get("queue", node.task.queue),
                "max_attempts": node.options.get("max_attempts", node.task.max_attempts),
                "priority": node.options.get("priority", 0),
                "on_parent_failure": node.options.get("on_parent_failure", "cancel"),
                "after": parents or None,
            }
        )
        return [ref]
    if isinstance(node, Chain):
        for step in node.steps:
            parents = _flatten(step, parents, specs)
        return parents
    return [ref for member in node.members for ref in _flatten(member, parents, specs)]

"""The dashboard's pages and actions, server-rendered with Jinja2 (autoescaped).

Every page reads through the queue functions the API and the CLI use, with
bounded statements only: counts of finished jobs come from the trigger-kept
counters, throughput from the per-minute rollup, job lists from cursor pages.
Filters are validated by the same model as GET /jobs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from pydantic import ValidationError
from starlette.responses import Response

from errands.api.ui.chart import throughput_chart
from errands.api.ui.dashboard import Call, Dashboard, Page, redirect
from errands.api.ui.graph import workflow_graph
from errands.errors import InvalidJob, InvalidState, JobNotFound
from errands.queue import admin, control
from errands.queue.admin import ACTION_STATES
from errands.queue.control import BulkAction, Filter
from errands.queue.jobs import Job, JobState, progress_text
from errands.queue.presence import live_workers
from errands.queue.requests import (
    INTEGER_TEXT,
    TEXT,
    JobFilter,
    QueueLimits,
    field_errors,
    job_id_of_text,
)
from errands.queue.schedules import list_schedules
from errands.queue.steps import run
from errands.queue.throttles import limits, limits_of_job

Conn = psycopg.Connection[Any]

PAGE_SIZE = 50
BULK_COUNT_CAP = 100_000
ACTIONS: tuple[BulkAction, ...] = ("retry", "cancel")
DONE_MESSAGES = {
    "retry": "Job {n} is pending again.",
    "cancel": "Job {n} is cancelled.",
    "cancel-requested": "Job {n} is asked to stop: it is recorded cancelled when its attempt ends.",
    "bulk-retry": "{n} job(s) retried.",
    "bulk-cancel": "{n} job(s) cancelled, or asked to stop if running.",
    "pause": "Queue paused: its jobs stay pending until it is resumed.",
    "resume": "Queue resumed.",
    "limits": "Queue limits set: every host obeys them from its next claim.",
}


class Pages:
    def __init__(self, dashboard: Dashboard, lease_seconds: float) -> None:
        self.dashboard = dashboard
        self.lease_seconds = lease_seconds
        dashboard.templates.filters["age"] = _age
        dashboard.templates.filters["when"] = _when
        dashboard.templates.filters["moment"] = _moment
        dashboard.templates.filters["every"] = _every
        dashboard.templates.filters["fraction"] = progress_fraction
        dashboard.templates.filters["progress"] = _progress_text

    def table(self) -> list[tuple[str, str, Page]]:
        """Each page's method, path and function."""
        return [
            ("GET", "/ui", self.overview),
            ("GET", "/ui/live", self.live),
            ("GET", "/ui/jobs", self.jobs),
            ("GET", "/ui/find", self.find),
            ("GET", "/ui/jobs/{id}", self.job),
            ("POST", "/ui/jobs/{id}/retry", lambda call: self.act_on_job(call, "retry")),
            ("POST", "/ui/jobs/{id}/cancel", lambda call: self.act_on_job(call, "cancel")),
            ("POST", "/ui/bulk", self.bulk),
            ("POST", "/ui/queues/pause", lambda call: self.queue_action(call, "pause")),
            ("POST", "/ui/queues/resume", lambda call: self.queue_action(call, "resume")),
            ("POST", "/ui/queues/limits", self.queue_limits),
            ("GET", "/ui/schedules", self.schedules),
            ("GET", "/ui/workflows/{id}", self.workflow),
            ("POST", "/ui/logout", self.dashboard.log_out),
        ]

    def render(self, call: Call, template: str, status: int = 200, **context: Any) -> Response:
        done = call.query.get("done")
        if done in DONE_MESSAGES:
            digits = call.query.get("n", "")
            shown = digits if INTEGER_TEXT.fullmatch(digits) else ""
            context["notice"] = DONE_MESSAGES[done].format(n=shown)
        return self.dashboard.render(call, template, status, **context)

    def not_found(self, call: Call, text: str = "No such page.") -> Response:
        return self.render(call, "message.html", 404, title="Not found", text=text)

    # -- pages -------------------------------------------------------------------------------

    def overview(self, call: Call) -> Response:
        with call.connect() as conn:
            return self.render(call, "overview.html", **self._overview(conn))

    def live(self, call: Call) -> Response:
        with call.connect() as conn:
            return self.render(call, "_live.html", **self._overview(conn))

    def _overview(self, conn: Conn) -> dict[str, Any]:
        now = datetime.now(UTC)
        held = control.held_by_worker(conn)
        workers = live_workers(conn, self.lease_seconds)
        return {
            "now": now,
            "states": list(JobState),
            "queues": control.queues(conn),
            "task_limits": [limit for limit in limits(conn) if limit.scope == "task"],
            "oldest": admin.oldest_pending_seconds(conn),
            "chart": throughput_chart(control.throughput(conn, now - timedelta(hours=1)), now),
            "workers": [(worker, held.get(worker.id, 0)) for worker in workers],
        }

    def jobs(self, call: Call) -> Response:
        where, errors = _filter(call.query, with_page=True)
        with call.connect() as conn:
            found = admin.list_jobs(conn, **where.model_dump())
        filters = {
            "state": where.state.value if where.state else "",
            "queue": where.queue,
            "task": where.task,
        }
        next_page = None
        if len(found) == PAGE_SIZE:
            shown = {k: v for k, v in filters.items() if v}
            next_page = urlencode({**shown, "after": found[-1].id})
        chosen = Filter(where.state, where.queue, where.task)
        running = Filter(where.state, where.queue, where.task, running=True)
        return self.render(
            call,
            "jobs.html",
            422 if errors else 200,
            jobs=found,
            filters=filters,
            errors=errors,
            states=list(JobState),
            next_page=next_page,
            actions={action: chosen.states(action) for action in ACTIONS},
            cancels_running=JobState.IN_PROGRESS in running.states("cancel"),
        )

    def find(self, call: Call) -> Response:
        wanted = call.query.get("q", "").strip().replace("\x00", "")
        with call.connect() as conn:
            job = (admin.get(conn, job_id) if (job_id := job_id_of_text(wanted)) else None) or (
                control.find_by_key(conn, wanted) if wanted else None
            )
        if job is not None:
            return redirect(f"/ui/jobs/{job.id}")
        return self.not_found(call, f"No job has the id or idempotency key {wanted!r}.")

    def job(self, call: Call, error: str | None = None, status: int = 200) -> Response:
        job_id = job_id_of_text(call.params["id"])
        with call.connect() as conn:
            job = admin.get(conn, job_id) if job_id else None
            limits_of = limits_of_job(conn, job.id) if job else []
        if job is None:
            return self.not_found(call, f"Job {call.params['id']} does not exist.")
        return self.render(
            call,
            "job.html",
            status,
            job=job,
            error=error,
            payload=json.dumps(job.payload, indent=2, ensure_ascii=False),
            result=json.dumps(job.result, indent=2, ensure_ascii=False),
            timeline=_timeline(job),
            limits=limits_of,
            can_retry=job.state in ACTION_STATES["retry"],
            # A running job once, until a cancel is requested.
            can_cancel=job.state in ACTION_STATES["cancel"] and job.cancel_requested_at is None,
        )

    def workflow(self, call: Call) -> Response:
        workflow_id = job_id_of_text(call.params["id"])
        with call.connect() as conn:
            jobs = run(conn, admin.workflow_steps(workflow_id)) if workflow_id else []
        if not jobs:
            return self.not_found(call, f"Workflow {call.params['id']} does not exist.")
        counts = Counter(job.state for job in jobs)
        return self.render(
            call,
            "workflow.html",
            workflow_id=workflow_id,
            jobs=jobs,
            graph=workflow_graph(jobs),
            counts=[(state.value, counts[state]) for state in JobState if counts[state]],
        )

    def act_on_job(self, call: Call, action: BulkAction) -> Response:
        job_id = job_id_of_text(call.params["id"])
        if job_id is None:
            return self.not_found(call, f"Job {call.params['id']} does not exist.")
        try:
            with call.connect() as conn:
                job = (admin.retry if action == "retry" else admin.cancel)(conn, job_id)
        except (InvalidState, JobNotFound) as exc:
            return self.job(call, error=str(exc), status=409)
        done = "cancel-requested" if job.state is JobState.IN_PROGRESS else action
        return redirect(f"/ui/jobs/{job_id}?" + urlencode({"done": done, "n": job_id}))

    def bulk(self, call: Call) -> Response:
        form = call.form
        action = form.get("action")
        where, errors = _filter(form)
        if action not in ACTIONS or errors:
            text = "; ".join(errors) or "Unknown bulk action."
            return self.render(call, "message.html", 422, title="Invalid request", text=text)
        chosen: BulkAction = "retry" if action == "retry" else "cancel"
        matching = Filter(where.state, where.queue, where.task, form.get("running") == "yes")
        with call.connect() as conn:
            if form.get("confirm") != "yes":
                count = control.count_matching(conn, chosen, matching, BULK_COUNT_CAP)
                return self.render(
                    call,
                    "confirm.html",
                    action=chosen,
                    where=matching,
                    count=count,
                    capped=count >= BULK_COUNT_CAP,
                    states=matching.states(chosen),
                )
            done = control.bulk(conn, chosen, matching)
        filters = {"state": form.get("state", ""), "queue": where.queue, "task": where.task}
        shown = {k: v for k, v in filters.items() if v}
        # Running jobs asked to stop count among those done (README: Dashboard).
        return redirect("/ui/jobs?" + urlencode({**shown, "done": f"bulk-{chosen}", "n": done}))

    def queue_action(self, call: Call, action: str) -> Response:
        """Pause or resume the queue the form names. The name travels in the body, not in
        the path: a browser resolves a queue named `..` out of `/ui/queues/../pause`, and
        `%2E%2E` too (the URL standard counts it as a dot segment)."""
        name = call.form.get("queue", "")
        try:
            with call.connect() as conn:
                (control.pause if action == "pause" else control.resume)(conn, name)
        except InvalidJob as exc:
            text = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
            return self.render(call, "message.html", 422, title="Invalid queue", text=text)
        return redirect("/ui?" + urlencode({"done": action}))

    def queue_limits(self, call: Call) -> Response:
        """Set the limits of the queue the form names (in the body, as for pause): an empty
        field removes that limit."""
        form = call.form
        body = {kind: form.get(kind, "").strip() or None for kind in ("concurrency", "rate")}
        try:
            changes = QueueLimits.model_validate(body, context=TEXT)
            with call.connect() as conn:
                control.set_limits(conn, form.get("queue", ""), changes)
        except ValidationError as exc:
            text = "; ".join(f"{e.field}: {e.message}" for e in field_errors(exc))
            return self.render(call, "message.html", 422, title="Invalid limits", text=text)
        except InvalidJob as exc:
            text = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
            return self.render(call, "message.html", 422, title="Invalid queue", text=text)
        return redirect("/ui?" + urlencode({"done": "limits"}))

    def schedules(self, call: Call) -> Response:
        # The same listing as `errands schedules` and GET /schedules: the next tick from
        # the database's clock, the last job's state read with it.
        with call.connect() as conn:
            found = list_schedules(conn)
        return self.render(call, "schedules.html", schedules=found)


# -- helpers ---------------------------------------------------------------------------------


def _filter(fields: Mapping[str, str], with_page: bool = False) -> tuple[JobFilter, list[str]]:
    """The jobs a form or a query names (a blank field means any), and what is wrong with it;
    an invalid field is left out of the filter."""
    names = ("state", "queue", "task", *(("after",) if with_page else ()))
    given = {name: fields[name] for name in names if fields.get(name)}
    page = {"limit": str(PAGE_SIZE)} if with_page else {}
    try:
        return JobFilter.model_validate({**given, **page}, context=TEXT), []
    except ValidationError as exc:
        problems = field_errors(exc)
    kept = {name: value for name, value in given.items() if name not in {p.field for p in problems}}
    where = JobFilter.model_validate({**kept, **page}, context=TEXT)
    return where, [f"{p.field}: {p.message}" for p in problems]


def _timeline(job: Job) -> list[tuple[datetime, str]]:
    """Created, each attempt's start and failure, the finish: oldest first."""
    events: list[tuple[datetime, str]] = [(job.created_at, "created")]
    if job.run_at > job.created_at and not job.errors:
        events.append((job.run_at, "due"))
    starts: dict[int, datetime] = {}
    for error in job.errors:
        attempt = error.get("attempt")
        started, failed = (_moment(error.get(name)) for name in ("started_at", "at"))
        if isinstance(attempt, int) and started is not None:
            starts[attempt] = started
        if failed is not None:
            lost = " (worker lost)" if "worker" in error else ""
            events.append((failed, f"attempt {attempt} failed{lost}"))
    if job.started_at is not None:
        starts.setdefault(job.attempts, job.started_at)
    events += [(at, f"attempt {attempt} started") for attempt, at in starts.items()]
    if job.cancel_requested_at is not None:
        events.append((job.cancel_requested_at, "cancel requested while it ran"))
    if job.finished_at is not None:
        events.append((job.finished_at, job.state.value))
    return sorted(events, key=lambda event: event[0])


def _moment(value: Any) -> datetime | None:
    """A timestamp stored in the error history (RFC 3339 text), if it is one."""
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def progress_fraction(progress: float | dict[str, Any] | None) -> float | None:
    """How full a progress bar is: a number as it is, an object by its numeric `done` and
    `total` (the convention the README gives), else no bar."""
    if isinstance(progress, dict):
        done, total = _number(progress.get("done")), _number(progress.get("total"))
        if done is None or total is None or total <= 0:
            return None
        return min(1.0, max(0.0, done / total))
    return progress


def _number(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: no bar
        return None


def _progress_text(progress: float | dict[str, Any] | None) -> str:
    return progress_text(progress) or "—"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _every(seconds: int) -> str:
    """An interval in the largest unit that divides it: every 90 s, every 5 min, every 2 h."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"every {seconds // size:,} {unit}"
    return f"every {seconds:,} s"


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"

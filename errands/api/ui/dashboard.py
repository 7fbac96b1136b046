"""The dashboard's pages and actions, server-rendered with Jinja2 (autoescaped).

Every page reads through the queue functions the API and the CLI use, with
bounded statements only: counts of finished jobs come from the trigger-kept
counters, throughput from the per-minute rollup, job lists from cursor pages.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
import psycopg
from psycopg.rows import dict_row

from errands import queue
from errands.api.guesses import Guesses
from errands.api.http import Request, Response
from errands.api.ui.chart import throughput_chart
from errands.api.ui.session import (
    Session,
    Sessions,
    cookie_header,
    log_out,
    logged_out,
    read_cookie,
    same_text,
)
from errands.errors import InvalidJob, InvalidState, JobNotFound
from errands.queue import JobState
from errands.queue.control import BULK_STATES, BulkAction, Filter

Conn = psycopg.Connection[Any]
Connect = Callable[[], AbstractContextManager[Conn]]
Page = Callable[["Dashboard", "Call"], Response]

PAGE_SIZE = 50
BULK_COUNT_CAP = 100_000
ACTIONS: tuple[BulkAction, ...] = ("retry", "cancel")
SECURITY_HEADERS = [
    # No inline script or style, nothing from another origin: a payload that
    # slipped through escaping still could not run.
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
DONE_MESSAGES = {
    "retry": "Job {n} is pending again.",
    "cancel": "Job {n} is cancelled.",
    "bulk-retry": "{n} job(s) retried.",
    "bulk-cancel": "{n} job(s) cancelled.",
    "pause": "Queue paused: its jobs stay pending until it is resumed.",
    "resume": "Queue resumed.",
}


@dataclass(frozen=True)
class Visit:
    """What the dashboard reads of a request, as text, whatever the API's Request holds."""

    method: str
    path: str
    query: dict[str, str]  # a repeated parameter keeps its last value
    cookie: str
    https: bool  # per X-Forwarded-Proto, from a TLS-terminating proxy
    body: bytes
    client: str  # the peer's address

    @classmethod
    def of(cls, request: Request) -> Visit:
        def header(name: str) -> str:
            value: str | bytes = request.headers.get(name) or ""
            return value if isinstance(value, str) else value.decode("latin-1")

        return cls(
            request.method,
            request.path,
            dict(request.query),
            header("cookie"),
            header("x-forwarded-proto").lower() == "https",
            request.body,
            request.client,
        )


class Call:
    """One request to the dashboard, with its session and a way to reach the database."""

    def __init__(self, request: Visit, session: Session, connect: Connect) -> None:
        self.request = request
        self.session = session
        self.connect = connect
        self.match: dict[str, str] = {}

    @property
    def form(self) -> dict[str, str]:
        return _form(self.request)


class Dashboard:
    """Answers `/` and `/ui/...`; everything else belongs to the API."""

    def __init__(self, tokens: tuple[str, ...], lease_seconds: float, guesses: Guesses) -> None:
        self.sessions = Sessions(tokens)
        self.guesses = guesses  # shared with the API's bearer tokens
        self.lease_seconds = lease_seconds
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("errands.api.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters["age"] = _age
        self._templates.filters["when"] = _when

    @staticmethod
    def serves(path: str) -> bool:
        return path in ("/", "/ui") or path.startswith("/ui/")

    def handle(self, api_request: Request, connect: Connect) -> Response:
        request = Visit.of(api_request)
        if request.path == "/":
            return _redirect("/ui")
        if request.path.startswith("/ui/static/"):
            return _static(request.path.removeprefix("/ui/static/"))
        if request.path == "/ui/login":
            return self._login(request)
        session = self._session(request, connect)
        new_cookie = None
        if session is None:
            if self.sessions.login_required and request.method == "GET":
                return _redirect("/ui/login?" + urlencode({"next": request.path}))
            if self.sessions.login_required:
                return self._bare("login.html", 401, error="Log in first.", next="/ui")
            if request.method != "GET":
                return self._refused(None)
            # Open dashboard: a visitor gets a session at once, to carry the CSRF token.
            session, new_cookie = self.sessions.new()
        call = Call(request, session, connect)
        page = self._route(call)
        if page is None:
            answer = self._page(call, "message.html", 404, title="Not found", text="No such page.")
        elif request.method == "POST" and not _csrf_ok(call):
            answer = self._refused(call)
        else:
            answer = page(self, call)
        if new_cookie is not None:
            answer.headers.append(("Set-Cookie", cookie_header(new_cookie, request.https)))
        return answer

    def _refused(self, call: Call | None) -> Response:
        text = "This form expired or came from another site. Reload the page and try again."
        context = {"title": "Refused", "text": text}
        if call is None:
            return self._bare("message.html", 403, **self._chrome(None, None), **context)
        return self._page(call, "message.html", 403, **context)

    # -- sessions ----------------------------------------------------------------------------

    def _session(self, request: Visit, connect: Connect) -> Session | None:
        """The request's session, unless its cookie is forged, expired or logged out."""
        session = self.sessions.read(read_cookie(request.cookie))
        if session is None or not self.sessions.login_required:
            return session  # an open dashboard hands a session to anyone who asks
        with connect() as conn:
            return None if logged_out(conn, session) else session

    def _login(self, request: Visit) -> Response:
        form = _form(request)
        target = _safe_next(request.query.get("next") or form.get("next"))
        if not self.sessions.login_required:
            return _redirect(target)
        if request.method == "GET":
            return self._bare("login.html", 200, error=None, next=target)
        wait = self.guesses.wait_seconds(request.client)
        if wait:
            error = f"Too many refused tokens from your address. Try again in {wait} s."
            answer = self._bare("login.html", 429, error=error, next=target)
            answer.headers.append(("Retry-After", str(wait)))
            return answer
        if not self.sessions.token_matches(form.get("token", "").strip()):
            self.guesses.refused(request.client)
            return self._bare("login.html", 401, error="That token is not accepted.", next=target)
        _, cookie = self.sessions.new()
        answer = _redirect(target)
        answer.headers.append(("Set-Cookie", cookie_header(cookie, request.https)))
        return answer

    # -- routing -----------------------------------------------------------------------------

    def _route(self, call: Call) -> Page | None:
        for method, pattern, page in _ROUTES:
            match = pattern.match(call.request.path)
            if match and method == call.request.method:
                call.match = match.groupdict()
                return page
        return None

    # -- rendering ---------------------------------------------------------------------------

    def _page(self, call: Call, template: str, status: int = 200, **context: Any) -> Response:
        done = call.request.query.get("done")
        notice = (
            DONE_MESSAGES[done].format(n=_digits(call.request.query.get("n", "")))
            if done in DONE_MESSAGES
            else None
        )
        return self._bare(template, status, **self._chrome(call, notice), **context)

    def _chrome(self, call: Call | None, notice: str | None) -> dict[str, Any]:
        """What the page layout shows around every page."""
        return {
            "csrf": call.session.csrf if call else "",
            "open_access": not self.sessions.login_required,
            "path": call.request.path if call else "",
            "notice": notice,
        }

    def _bare(self, template: str, status: int, **context: Any) -> Response:
        body = self._templates.get_template(template).render(**context)
        return Response(
            status, body.encode(), "text/html; charset=utf-8", headers=list(SECURITY_HEADERS)
        )

    # -- pages -------------------------------------------------------------------------------

    def overview(self, call: Call) -> Response:
        with call.connect() as conn:
            context = self._overview(conn)
        return self._page(call, "overview.html", **context)

    def live(self, call: Call) -> Response:
        with call.connect() as conn:
            context = self._overview(conn)
        return self._page(call, "_live.html", **context)

    def _overview(self, conn: Conn) -> dict[str, Any]:
        now = datetime.now(UTC)
        held = queue.control.held_by_worker(conn)
        workers = queue.live_workers(conn, self.lease_seconds)
        return {
            "now": now,
            "states": list(JobState),
            "queues": queue.queues(conn),
            "oldest": queue.oldest_pending_seconds(conn),
            "chart": throughput_chart(
                queue.control.throughput(conn, now - timedelta(hours=1)), now
            ),
            "workers": [(worker, held.get(worker.id, 0)) for worker in workers],
        }

    def jobs(self, call: Call) -> Response:
        query = call.request.query
        errors: list[str] = []
        where = _filter(query, errors)
        after = query.get("after", "")
        with call.connect() as conn:
            found = queue.list_jobs(
                conn,
                state=where.state,
                queue=where.queue,
                task=where.task,
                limit=PAGE_SIZE,
                after=_job_id(after),
            )
        filters = {"state": query.get("state", ""), "queue": where.queue, "task": where.task}
        next_page = None
        if len(found) == PAGE_SIZE:
            next_page = urlencode(
                {**{k: v for k, v in filters.items() if v}, "after": found[-1].id}
            )
        return self._page(
            call,
            "jobs.html",
            422 if errors else 200,
            jobs=found,
            filters=filters,
            errors=errors,
            states=list(JobState),
            next_page=next_page,
            actions={action: where.states(action) for action in ACTIONS},
        )

    def find(self, call: Call) -> Response:
        wanted = call.request.query.get("q", "").strip().replace("\x00", "")
        with call.connect() as conn:
            job = (queue.get(conn, job_id) if (job_id := _job_id(wanted)) else None) or (
                queue.control.find_by_key(conn, wanted) if wanted else None
            )
        if job is not None:
            return _redirect(f"/ui/jobs/{job.id}")
        return self._page(
            call,
            "message.html",
            404,
            title="Not found",
            text=f"No job has the id or idempotency key {wanted!r}.",
        )

    def job(self, call: Call, error: str | None = None, status: int = 200) -> Response:
        job_id = int(call.match["id"])
        with call.connect() as conn:
            job = queue.get(conn, job_id) if job_id < 2**63 else None
        if job is None:
            return self._page(
                call, "message.html", 404, title="Not found", text=f"Job {job_id} does not exist."
            )
        return self._page(
            call,
            "job.html",
            status,
            job=job,
            error=error,
            payload=json.dumps(job.payload, indent=2, ensure_ascii=False),
            result=json.dumps(job.result, indent=2, ensure_ascii=False),
            timeline=_timeline(job),
            can_retry=job.state in BULK_STATES["retry"],
            can_cancel=job.state in BULK_STATES["cancel"],
        )

    def act_on_job(self, call: Call) -> Response:
        action = call.match["action"]
        job_id = int(call.match["id"])
        try:
            with call.connect() as conn:
                (queue.retry if action == "retry" else queue.cancel)(conn, job_id)
        except (InvalidState, JobNotFound) as exc:
            return self.job(call, error=str(exc), status=409)
        return _redirect(f"/ui/jobs/{job_id}?" + urlencode({"done": action, "n": job_id}))

    def bulk(self, call: Call) -> Response:
        form = call.form
        action = form.get("action")
        errors: list[str] = []
        where = _filter(form, errors)
        if action not in ACTIONS or errors:
            return self._page(
                call,
                "message.html",
                422,
                title="Invalid request",
                text="; ".join(errors) or "Unknown bulk action.",
            )
        chosen: BulkAction = "retry" if action == "retry" else "cancel"
        with call.connect() as conn:
            if form.get("confirm") != "yes":
                count = queue.control.count_matching(conn, chosen, where, BULK_COUNT_CAP)
                return self._page(
                    call,
                    "confirm.html",
                    action=chosen,
                    where=where,
                    count=count,
                    capped=count >= BULK_COUNT_CAP,
                    states=where.states(chosen),
                )
            done = queue.control.bulk(conn, chosen, where)
        filters = {"state": form.get("state", ""), "queue": where.queue, "task": where.task}
        shown = {k: v for k, v in filters.items() if v}
        return _redirect("/ui/jobs?" + urlencode({**shown, "done": f"bulk-{chosen}", "n": done}))

    def queue_action(self, call: Call) -> Response:
        try:
            with call.connect() as conn:
                if call.match["action"] == "pause":
                    queue.pause(conn, call.match["name"])
                else:
                    queue.resume(conn, call.match["name"])
        except InvalidJob as exc:
            text = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
            return self._page(call, "message.html", 422, title="Invalid queue", text=text)
        return _redirect("/ui?" + urlencode({"done": call.match["action"]}))

    def schedules(self, call: Call) -> Response:
        # The table arrives with periodic jobs; read it whole (one row per schedule)
        # and without naming columns, so this page works with any version of it.
        with call.connect() as conn:
            present = conn.execute("select to_regclass('errands_schedules') is not null").fetchone()
            rows: list[dict[str, Any]] = []
            last_states: dict[int, str] = {}
            if present and present[0]:
                with conn.cursor(row_factory=dict_row) as cur:
                    rows = cur.execute("select * from errands_schedules order by 1").fetchall()
                last_ids = [row["last_job_id"] for row in rows if row.get("last_job_id")]
                last_states = dict(
                    conn.execute(
                        "select id, state::text from errands_jobs where id = any(%s)", (last_ids,)
                    ).fetchall()
                )
        return self._page(
            call,
            "schedules.html",
            present=bool(present and present[0]),
            columns=list(rows[0]) if rows else [],
            rows=rows,
            last_states=last_states,
        )

    def logout(self, call: Call) -> Response:
        if self.sessions.login_required:
            with call.connect() as conn:
                log_out(conn, call.session)
        answer = _redirect("/ui/login" if self.sessions.login_required else "/ui")
        answer.headers.append(("Set-Cookie", cookie_header("", call.request.https, 0)))
        return answer


_ROUTES: list[tuple[str, re.Pattern[str], Page]] = [
    (method, re.compile(f"^{path}$"), page)
    for method, path, page in [
        ("GET", "/ui", Dashboard.overview),
        ("GET", "/ui/live", Dashboard.live),
        ("GET", "/ui/jobs", Dashboard.jobs),
        ("GET", "/ui/find", Dashboard.find),
        ("GET", r"/ui/jobs/(?P<id>[0-9]{1,18})", Dashboard.job),
        ("POST", r"/ui/jobs/(?P<id>[0-9]{1,18})/(?P<action>retry|cancel)", Dashboard.act_on_job),
        ("POST", "/ui/bulk", Dashboard.bulk),
        (
            "POST",
            r"/ui/queues/(?P<name>[^/]{1,200})/(?P<action>pause|resume)",
            Dashboard.queue_action,
        ),
        ("GET", "/ui/schedules", Dashboard.schedules),
        ("POST", "/ui/logout", Dashboard.logout),
    ]
]


# -- helpers ---------------------------------------------------------------------------------


def _form(request: Visit) -> dict[str, str]:
    """The fields of a urlencoded form body; undecodable bytes become U+FFFD, never an error."""
    return dict(parse_qsl(request.body.decode("utf-8", "replace")))


def _csrf_ok(call: Call) -> bool:
    return same_text(call.form.get("csrf", ""), call.session.csrf)


def _filter(fields: dict[str, str], errors: list[str]) -> Filter:
    state = fields.get("state") or None
    if state is not None and state not in {s.value for s in JobState}:
        errors.append(f"state must be one of {', '.join(s.value for s in JobState)}")
        state = None
    queue_name, task = (fields.get(name) or None for name in ("queue", "task"))
    if any("\x00" in (value or "") for value in (queue_name, task)):
        errors.append("queue and task must not contain NUL characters")
        queue_name = task = None
    return Filter(JobState(state) if state else None, queue_name, task)


def _timeline(job: queue.Job) -> list[tuple[datetime, str]]:
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
    if job.finished_at is not None:
        events.append((job.finished_at, job.state.value))
    return sorted(events, key=lambda event: event[0])


def _moment(value: Any) -> datetime | None:
    """A timestamp stored in the error history (RFC 3339 text), if it is one."""
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _redirect(location: str) -> Response:
    return Response(303, b"", "text/plain", headers=[("Location", location)])


def _safe_next(target: str | None) -> str:
    """Only a dashboard path: a login must never send the browser to another site."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


# ASCII digits only, and within a bigint: str.isdigit() and int() also take "²" and "٣".
_JOB_ID = re.compile(r"[0-9]{1,18}")


def _digits(text: str) -> str:
    return text if _JOB_ID.fullmatch(text) else ""


def _job_id(text: str) -> int | None:
    return int(text) if _JOB_ID.fullmatch(text) else None


@cache
def _asset(name: str) -> bytes | None:
    folder = resources.files("errands.api.ui").joinpath("static")
    names = {entry.name for entry in folder.iterdir()}
    return folder.joinpath(name).read_bytes() if name in names else None


def _static(name: str) -> Response:
    body = _asset(name)
    if body is None:
        return Response(404, b"not found", "text/plain")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(
        200, body, kind + "; charset=utf-8", headers=[("Cache-Control", "max-age=3600")]
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"

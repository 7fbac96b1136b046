"""The `errands` command: readable output for people, `--json` for machines."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import TypeAdapter, ValidationError

from errands import embedded
from errands.api.sockets import listen, url_of
from errands.client import Client
from errands.config import Settings
from errands.database import (
    connect,
    open_connection,
    pooling_options,
    resolve_url,
    with_dead_peer_detection,
)
from errands.errors import ConfigurationError, ErrandsError, scrub
from errands.log import configure_logging, get_logger
from errands.queue import control as queue_control
from errands.queue.admin import prune as prune_jobs
from errands.queue.control import QueueInfo
from errands.queue.jobs import Job, JobState, progress_text
from errands.queue.requests import (
    DECIMAL_TEXT,
    INTEGER_TEXT,
    TEXT,
    Delay,
    JobId,
    ListLimit,
    MaxAttempts,
    Priority,
    QueueLimits,
    field_errors,
    parse_request,
)
from errands.queue.schedules import ScheduleStatus, list_schedules
from errands.queue.submit import enqueue as submit_job
from errands.queue.ticks import rfc3339
from errands.registry import task_defaults
from errands.schema.migrator import migrate as apply_migrations
from errands.supervisor.supervisor import Supervisor, SupervisorOptions
from errands.workers.loading import TaskModuleError, load_task_modules
from errands.workers.wakeups import listen_works
from errands.workers.worker import DEFAULT_CONCURRENCY, WorkerOptions

if TYPE_CHECKING:
    from errands.api.app import Readiness

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

DAY = 24 * 3600.0
# How long `errands run` waits for a database it cannot reach when it starts.
STARTUP_WAIT_SECONDS = 60.0


class Integer(click.IntRange):
    """An integer in a range, in ASCII digits (the requests' text grammar): int() alone
    takes "٣" or "1_000"."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not INTEGER_TEXT.fullmatch(value):
            self.fail(f"{value!r} is not an integer in ASCII digits", param, ctx)
        return super().convert(value, param, ctx)


class Seconds(click.FloatRange):
    """A number in a range, in ASCII digits (the requests' text grammar): FloatRange alone
    lets inf and nan through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not DECIMAL_TEXT.fullmatch(value):
            self.fail(f"{value!r} is not a number in ASCII digits", param, ctx)
        return super().convert(value, param, ctx)


class Field(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.3
    """A value of a job request, validated from its text by the requests' own type."""

    def __init__(self, name: str, kind: Any) -> None:
        self.name = name
        self._adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._adapter.validate_python(value, context=TEXT)
        except ValidationError as exc:
            self.fail("; ".join(e.message for e in field_errors(exc, self.name)), param, ctx)


JOB_ID = Field("job id", JobId)
_log = get_logger("errands.cli")
DATABASE_URL = "errands.database_url"  # in click's context meta, shared by the whole command


@dataclasses.dataclass
class Context:
    settings: Settings

    def database_url(
        self, lease_seconds: float | None = None, *, start_embedded: bool = False
    ) -> str:
        """The database URL, with the dead-peer settings of the lease where it sets none."""
        url = resolve_url(self.settings, start_embedded=start_embedded)
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            # libpq's message may quote the password: say only where the URL came from.
            raise ConfigurationError(
                "the database URL (--database-url, ERRANDS_DATABASE_URL or DATABASE_URL) is not "
                "a PostgreSQL URL such as postgresql://user:password@host:5432/dbname"
            ) from None
        return with_dead_peer_detection(url, lease_seconds or self.settings.lease_seconds)

    def client(self) -> Client:
        return Client(self.database_url())


pass_context = click.make_pass_decorator(Context)


def _use_database_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Before the command name, the group's callback applies it; after, it applies at once."""
    if value:
        ctx.meta[DATABASE_URL] = value
        if (context := ctx.find_object(Context)) is not None:
            context.settings = dataclasses.replace(context.settings, database_url=value)


def database_url_option() -> click.Option:
    return click.Option(
        ["--database-url"],
        metavar="URL",
        expose_value=False,
        callback=_use_database_url,
        help="PostgreSQL URL [env: ERRANDS_DATABASE_URL, DATABASE_URL; default: embedded database]",
    )


class ErrandsGroup(click.Group):
    """Global options are accepted after a command's name too: `errands stats --database-url …`."""

    group_class = type  # subgroups (`errands jobs …`) are ErrandsGroups as well

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(database_url_option())
        super().add_command(cmd, name)


@click.group(cls=ErrandsGroup, params=[database_url_option()])
@click.version_option(package_name="errands", prog_name="errands")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """errands: background jobs on PostgreSQL."""
    settings = Settings.from_env()
    if DATABASE_URL in ctx.meta:
        settings = dataclasses.replace(settings, database_url=ctx.meta[DATABASE_URL])
    configure_logging(settings.log_format, settings.log_level)
    ctx.obj = Context(settings)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(func)


def emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


# -- the daemon ------------------------------------------------------------------------------


def http_options(func: F) -> F:
    func = click.option(
        "--no-ui", is_flag=True, help="Do not serve the dashboard at /ui [env: ERRANDS_UI=0]"
    )(func)
    func = click.option(
        "--port", type=Integer(1, 65535), help="HTTP port [env: ERRANDS_HTTP_ADDR]"
    )(func)
    return click.option("--host", help="HTTP address to bind [env: ERRANDS_HTTP_ADDR]")(func)


@cli.command()
@click.option("--workers", type=Integer(1, 1024), help="Worker processes [env: ERRANDS_WORKERS]")
@click.option(
    "--concurrency",
    type=Integer(1, 10_000),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Jobs each worker process runs at once, on threads (1 for CPU-bound tasks).",
)
@click.option(
    "--async-concurrency",
    type=Integer(1, 100_000),
    default=100,
    show_default=True,
    help="Coroutines of async def tasks each worker process runs at once, on its event loop.",
)
@click.option(
    "--prefetch",
    type=Integer(0, 10_000),
    default=0,
    show_default=True,
    help="Jobs each worker claims beyond its free slots, held under lease until one frees.",
)
@click.option(
    "--queues",
    help="Comma-separated queues to work [default: 'default' and the registered tasks' queues]",
)
@click.option("--tasks", help="Comma-separated modules that register tasks [env: ERRANDS_TASKS]")
@click.option("--lease", type=Seconds(0.1, DAY), help="Lease seconds [env: ERRANDS_LEASE_SECONDS]")
@click.option("--poll", type=Seconds(0.01, DAY), help="Poll seconds [env: ERRANDS_POLL_SECONDS]")
@click.option(
    "--reaper",
    type=Seconds(0.01, DAY),
    help="Reaper interval seconds [env: ERRANDS_REAPER_SECONDS]",
)
@click.option(
    "--grace",
    type=Seconds(0, DAY),
    help="Shutdown grace seconds [env: ERRANDS_GRACE_SECONDS]",
)
@click.option(
    "--ack",
    type=click.Choice(["batched", "immediate"]),
    default="batched",
    show_default=True,
    help="batched: acknowledgements ride with the next claim; immediate: one statement each.",
)
@click.option(
    "--poll-only",
    is_flag=True,
    help="Behind a transaction-pooling PgBouncer: poll, no LISTEN, no prepared statements "
    "[env: ERRANDS_PGBOUNCER=1; detected when LISTEN gets no NOTIFY back]",
)
@click.option("--no-http", is_flag=True, help="Do not start the HTTP API child.")
@http_options
@pass_context
def run(
    ctx: Context,
    workers: int | None,
    concurrency: int,
    async_concurrency: int,
    prefetch: int,
    queues: str | None,
    tasks: str | None,
    lease: float | None,
    poll: float | None,
    reaper: float | None,
    grace: float | None,
    ack: str,
    poll_only: bool,
    no_http: bool,
    host: str | None,
    port: int | None,
    no_ui: bool,
) -> None:
    """Run the supervisor: worker processes (and the HTTP API), until SIGTERM/SIGINT."""
    _import_tasks_from_here()
    s = ctx.settings
    lease_seconds = lease or s.lease_seconds
    url = ctx.database_url(lease_seconds, start_embedded=True)  # the one command that may start it
    # Only the embedded development database is migrated here (docs/guides/deploys.md).
    _once_reachable(
        partial(
            _ready_schema, url, migrate=s.database_url is None, pgbouncer=s.pgbouncer or poll_only
        )
    )
    pgbouncer = _once_reachable(partial(_behind_transaction_pooler, s, url, poll_only))
    worker = WorkerOptions(
        url=url,
        worker_id="",
        task_modules=_split(tasks) if tasks is not None else s.tasks,
        queues=_split(queues) if queues else (),
        concurrency=concurrency,
        async_concurrency=async_concurrency,
        prefetch=prefetch,
        lease_seconds=lease_seconds,
        poll_seconds=poll or s.poll_seconds,
        backoff=s.backoff,
        ack="immediate" if ack == "immediate" else "batched",
        listen=not pgbouncer,
    )
    grace_seconds = s.grace_seconds if grace is None else grace
    sock = None if no_http else _listen(ctx, host, port)
    http_main = (
        None
        if sock is None
        else partial(
            _serve_api,
            ctx,
            url,
            sock,
            grace_seconds,
            task_modules=worker.task_modules,
            ui=not no_ui,
            pgbouncer=pgbouncer,
        )
    )
    options = SupervisorOptions(
        worker=worker,
        workers=workers or s.workers,
        grace_seconds=grace_seconds,
        reaper_seconds=reaper or s.reaper_seconds,
        http_main=http_main,
        http_socket=sock,
        hostname=s.hostname,
    )
    sys.exit(Supervisor(options).run())


@cli.command()
@click.option(
    "--tasks",
    help="Comma-separated task modules, for their queues and budgets [env: ERRANDS_TASKS]",
)
@http_options
@pass_context
def api(ctx: Context, tasks: str | None, host: str | None, port: int | None, no_ui: bool) -> None:
    """Serve the HTTP API alone (no workers)."""
    _import_tasks_from_here()
    modules = _split(tasks) if tasks is not None else ctx.settings.tasks
    s, url = ctx.settings, ctx.database_url()
    _ready_schema(url, migrate=False, pgbouncer=s.pgbouncer)
    pgbouncer = _behind_transaction_pooler(s, url, poll_only=False)
    sock = _listen(ctx, host, port)
    sys.exit(
        _serve_api(
            ctx,
            url,
            sock,
            s.grace_seconds,
            task_modules=modules,
            ui=not no_ui,
            pgbouncer=pgbouncer,
        )
    )


def _once_reachable(check: Callable[[], T]) -> T:
    """`check`, retried while the database cannot be reached, for up to STARTUP_WAIT_SECONDS.

    A daemon often starts beside its database (a compose stack, a host booting) or while
    it restarts: it waits, as its workers do for an outage later on. A login refused, a
    database that does not exist or a schema it may not run against stop it at once.
    """
    deadline = time.monotonic() + STARTUP_WAIT_SECONDS
    delay = 0.25
    while True:
        try:
            return check()
        except psycopg.OperationalError as exc:
            if not _unreachable(exc) or time.monotonic() + delay > deadline:
                raise
            _log.warning(
                "database unreachable at start-up; retrying",
                error=_database_error(exc),
                retry_in=delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _unreachable(exc: psycopg.OperationalError) -> bool:
    """No server answered (no SQLSTATE), the connection broke (class 08), or the server is
    starting up or shutting down (57P01-57P03): all of which pass."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _ready_schema(url: str, *, migrate: bool, pgbouncer: bool) -> None:
    """Migrate when told to, then refuse to start on a schema this code may not run against."""
    options = pooling_options(pgbouncer)
    if migrate:
        with open_connection(url, autocommit=True, **options) as conn:
            for migration in apply_migrations(conn):
                _log.info("migration applied", migration=migration.label)
    with connect(url, **options):
        pass


def _import_tasks_from_here() -> None:
    """Task modules beside the caller import as they do under `python -m`, Celery or uvicorn."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _behind_transaction_pooler(settings: Settings, url: str, poll_only: bool) -> bool:
    """Told so (ERRANDS_PGBOUNCER, --poll-only), or found so: NOTIFY does not come back."""
    return settings.pgbouncer or poll_only or not listen_works(url)


def _listen(ctx: Context, host: str | None, port: int | None) -> socket.socket:
    default_host, default_port = ctx.settings.http_host_port
    sock = listen(
        host or default_host,
        port or default_port,
        host_from="--host" if host else "ERRANDS_HTTP_ADDR",
        port_from="--port" if port else "ERRANDS_HTTP_ADDR",
    )
    _log.info(f"HTTP API on {url_of(sock)}")
    return sock


def _serve_api(
    ctx: Context,
    url: str,
    sock: socket.socket,
    grace_seconds: float,
    readiness: Readiness | None = None,
    *,
    task_modules: Sequence[str] = (),
    ui: bool,
    pgbouncer: bool = False,
) -> int:
    # A job submitted by task name gets the queue and budget its task declares, when known
    # here (task_defaults). A broken task module must not take the API down with the
    # workers: it only costs by-name submissions their task's defaults.
    if task_modules:
        try:
            load_task_modules(task_modules)
        except TaskModuleError as exc:
            _log.warning(
                "task modules cannot be imported; jobs submitted by name get the default "
                "queue and budget",
                error=str(exc).splitlines()[0],
            )
    # uvicorn and the application load here, in the HTTP process only: a supervisor
    # that skips them starts, and releases a crashed predecessor's jobs, sooner.
    from errands.api.server import serve  # noqa: PLC0415

    s = ctx.settings
    return serve(
        sock,
        grace_seconds,
        forwarded_allow_ips=s.forwarded_allow_ips,
        database_url=url,
        tokens=s.api_tokens,
        lease_seconds=s.lease_seconds,
        readiness=readiness,
        ui=s.ui and ui,
        pgbouncer=pgbouncer,
        defaults=task_defaults,
        secret_key=s.secret_key,
    )


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# -- jobs ------------------------------------------------------------------------------------


@cli.command()
@click.argument("task")
@click.argument("payload", required=False, default="{}")
@click.option("--queue", help="Queue [default: the task's when it is loaded, else 'default']")
@click.option(
    "--priority",
    type=Field("priority", Priority),
    default=0,
    show_default=True,
    help="Higher runs first.",
)
@click.option("--delay", type=Field("delay", Delay), help="Seconds before the job may run.")
@click.option("--idempotency-key", help="Submissions with the same key create one job.")
@click.option(
    "--after",
    type=JOB_ID,
    multiple=True,
    help="A job it waits for (repeat for several): it runs once every one completed.",
)
@click.option(
    "--on-parent-failure",
    type=click.Choice(["cancel", "run"]),
    default="cancel",
    show_default=True,
    help="When a job it waits for ends dead or cancelled: cancel it, or run it anyway.",
)
@click.option(
    "--unique-key",
    help="At most one job with the key pending, failed or running: while one is, it is shown.",
)
@click.option(
    "--on-conflict",
    type=click.Choice(["keep", "replace"]),
    default="keep",
    show_default=True,
    help="With --unique-key, when a job holds it: keep it, or replace a pending one's payload "
    "and run_at (a debounce).",
)
@click.option(
    "--max-attempts",
    type=Field("max_attempts", MaxAttempts),
    help="Attempt budget [default: the task's when it is loaded, else 5]",
)
@click.option(
    "--tasks",
    help="Comma-separated task modules, for their queues and budgets [env: ERRANDS_TASKS]",
)
@json_option
@pass_context
def enqueue(
    ctx: Context,
    task: str,
    payload: str,
    queue: str | None,
    priority: int,
    delay: float | None,
    idempotency_key: str | None,
    after: tuple[int, ...],
    on_parent_failure: str,
    unique_key: str | None,
    on_conflict: str,
    max_attempts: int | None,
    tasks: str | None,
    as_json: bool,
) -> None:
    """Submit a job: TASK with PAYLOAD, a JSON object of keyword arguments."""
    try:
        arguments = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # also: too many digits, nested too deeply
        raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOAD") from None
    modules = _split(tasks) if tasks is not None else ctx.settings.tasks
    if modules:  # for the task's own queue and budget; no demo tasks in their stead
        _import_tasks_from_here()
        load_task_modules(modules)
    fields = {
        "task": task,
        "payload": arguments,
        "queue": queue,
        "priority": priority,
        "delay": delay,
        "max_attempts": max_attempts,
        "idempotency_key": idempotency_key,
        "after": list(after) or None,
        "on_parent_failure": on_parent_failure,
        "unique_key": unique_key,
        "on_conflict": on_conflict,
    }
    request = parse_request(fields, defaults=task_defaults)
    with connect(ctx.database_url()) as conn:
        answer = submit_job(conn, request)
    job = answer.job
    text = f"job {job.id} {job.state.value}: {job.task} on {job.queue}"
    replay = None
    if answer.replaced:
        replay = f"unique key {unique_key!r}: this pending job took the new payload and run_at"
    elif answer.unique:
        replay = f"unique key {unique_key!r} is held by this {job.state.value} job; nothing new"
    elif not answer.created:
        replay = f"replayed: idempotency key {idempotency_key!r} is stored already; nothing new"
    if replay is not None:
        text = f"{text} ({replay})"
        if as_json:
            click.echo(f"job {job.id} {replay}", err=True)
    emit(as_json, job.to_dict(), text)


@cli.group()
def jobs() -> None:
    """List, show, retry and cancel jobs."""


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in JobState]))
@click.option("--queue")
@click.option("--task")
@click.option("--limit", type=Field("limit", ListLimit), default=20, show_default=True)
@click.option("--after", type=JOB_ID, help="Show jobs older than this id (the last id of a page).")
@json_option
@pass_context
def list_jobs(
    ctx: Context,
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    after: int | None,
    as_json: bool,
) -> None:
    """Jobs, newest first."""
    with ctx.client() as client:
        found = client.list(state=state, queue=queue, task=task, limit=limit, after=after)
    lines = [f"{'ID':>8}  {'STATE':<11}  {'ATTEMPTS':>8}  {'QUEUE':<12}  {'TASK':<20}  CREATED"]
    lines += [
        f"{j.id:>8}  {j.state.value:<11}  {f'{j.attempts}/{j.max_attempts}':>8}  "
        f"{j.queue:<12}  {j.task:<20}  {j.created_at:%Y-%m-%d %H:%M:%S}"
        for j in found
    ]
    emit(as_json, [j.to_dict() for j in found], "\n".join(lines))


@jobs.command("show")
@click.argument("job_id", type=JOB_ID)
@json_option
@pass_context
def show_job(ctx: Context, job_id: int, as_json: bool) -> None:
    """One job, every field."""
    with ctx.client() as client:
        job = client.get(job_id)
    if job is None:
        raise click.ClickException(f"job {job_id} does not exist")
    emit(as_json, job.to_dict(), _describe(job))


@jobs.command("retry")
@click.argument("job_id", type=JOB_ID)
@json_option
@pass_context
def retry_job(ctx: Context, job_id: int, as_json: bool) -> None:
    """Run a dead or cancelled job again, with a fresh attempt budget."""
    with ctx.client() as client:
        job = client.retry(job_id)
    emit(as_json, job.to_dict(), f"job {job.id} is {job.state.value} again")


@jobs.command("cancel")
@click.argument("job_id", type=JOB_ID)
@json_option
@pass_context
def cancel_job(ctx: Context, job_id: int, as_json: bool) -> None:
    """Cancel a job that has not started, or ask a running one to stop."""
    with ctx.client() as client:
        job = client.cancel(job_id)
    text = f"job {job.id} {job.state.value}"
    if job.state is JobState.IN_PROGRESS:
        text += ": asked to stop; it is recorded cancelled when its attempt ends"
    emit(as_json, job.to_dict(), text)


# Stored as JSON, and printed as JSON even when a value is text or null.
_JSON_FIELDS = frozenset({"payload", "result"})


def _describe(job: Job) -> str:
    fields = job.to_dict()
    errors = fields.pop("errors")
    fields["progress"] = progress_text(job.progress)
    width = max(map(len, fields))
    lines = [
        f"{name:>{width}}: {_json_text(value) if name in _JSON_FIELDS else _value_text(value)}"
        for name, value in fields.items()
    ]
    for error in errors:
        attempt, at, text = error.get("attempt"), error.get("at"), error.get("error")
        lines.append(f"{'error':>{width}}: attempt {attempt} at {at}: {text}")
    if errors and (traceback := errors[-1].get("traceback")):
        lines.append(f"\ntraceback of attempt {errors[-1].get('attempt')}:\n{traceback.rstrip()}")
    return "\n".join(lines)


def _value_text(value: Any) -> str:
    """Text as it is, nothing as "-", and any other value as its JSON (never a Python repr)."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else _json_text(value)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@cli.command()
@json_option
@pass_context
def stats(ctx: Context, as_json: bool) -> None:
    """Jobs per queue and state, and live workers."""
    with ctx.client() as client:
        result = client.stats()
    data = result.to_dict()
    queues = data["queues"]
    states = [s.value for s in JobState]
    lines = [f"{'QUEUE':<16}" + "".join(f"{s:>13}" for s in states)]
    for queue, counts in queues.items():
        lines.append(f"{queue:<16}" + "".join(f"{counts[s]:>13}" for s in states))
    if result.paused:
        lines.append(f"\npaused (not claimed until resumed): {', '.join(result.paused)}")
    hosts = sorted({w.host for w in result.workers})
    lines.append(f"\n{len(result.workers)} live worker(s) on {len(hosts)} host(s)")
    for host in hosts:
        mine = [w for w in result.workers if w.host == host]
        lines.append(f"  {host}: {len(mine)} worker(s)")
        lines += [
            f"    {w.id}  queues={','.join(w.queues)}  concurrency={w.concurrency}" for w in mine
        ]
    emit(as_json, data, "\n".join(lines))


@cli.command()
@json_option
@pass_context
def schedules(ctx: Context, as_json: bool) -> None:
    """Periodic schedules: clock, next tick, last enqueued job and its state."""
    with connect(ctx.database_url()) as conn:
        found = list_schedules(conn)
    header = ("NAME", "SCHEDULE", "TZ", "NEXT TICK", "LAST TICK")
    lines = ["  ".join(f"{h:<{w}}" for h, w in zip(header, _WIDTHS, strict=True)) + "  LAST JOB"]
    lines += [_schedule_line(s) for s in found]
    emit(as_json, [s.to_dict() for s in found], "\n".join(lines))


_WIDTHS = (24, 20, 16, 20, 20)


def _schedule_line(schedule: ScheduleStatus) -> str:
    clock = schedule.cron if schedule.cron is not None else f"every {schedule.every}s"

    def when(moment: datetime | None) -> str:
        return rfc3339(moment) if moment is not None else "-"

    last_job = "-"
    if schedule.last_job_id is not None:
        state = schedule.last_job_state.value if schedule.last_job_state else "pruned"
        last_job = f"{schedule.last_job_id} {state}"
    inactive = "" if schedule.active else "  (no running scheduler declares it)"
    cells = (schedule.name, clock, schedule.tz, when(schedule.next_tick), when(schedule.last_tick))
    return "  ".join(f"{c:<{w}}" for c, w in zip(cells, _WIDTHS, strict=True)) + (
        f"  {last_job}{inactive}"
    )


@cli.group("queues")
def queues_group() -> None:
    """List queues; pause one (its jobs stay pending, unclaimed) or resume it; set its limits."""


@queues_group.command("list")
@json_option
@pass_context
def list_queues(ctx: Context, as_json: bool) -> None:
    """Every queue with jobs, ever paused or limited: whether paused, jobs by state, limits."""
    with connect(ctx.database_url()) as conn:
        found = queue_control.queues(conn)
    states = [s.value for s in JobState]
    lines = [
        f"{'QUEUE':<16}{'PAUSED':>8}"
        + "".join(f"{s:>13}" for s in states)
        + f"  {'THROTTLED':>9}  LIMITS (IN USE)"
    ]
    lines += [
        f"{q.name:<16}{'yes' if q.paused else 'no':>8}"
        + "".join(f"{q.counts[JobState(s)]:>13}" for s in states)
        + f"  {q.throttled:>9}  {_limits_of(q)}"
        for q in found
    ]
    emit(as_json, [q.to_dict() for q in found], "\n".join(lines))


def _limits_of(queue: QueueInfo) -> str:
    shown = []
    if queue.concurrency is not None:
        shown.append(f"{queue.concurrency} at once ({queue.concurrency_in_use})")
    if queue.rate is not None:
        shown.append(f"{queue.rate} ({queue.rate_in_use})")
    return ", ".join(shown) or "-"


@queues_group.command("set")
@click.argument("name")
@click.option(
    "--concurrency",
    metavar="N|none",
    help="At most N of the queue's jobs in progress at once, across every host; none removes it.",
)
@click.option(
    "--rate",
    metavar="N/s|N/m|N/h|none",
    help="At most N starts in any second, minute or hour, across every host; none removes it.",
)
@json_option
@pass_context
def set_queue(
    ctx: Context, name: str, concurrency: str | None, rate: str | None, as_json: bool
) -> None:
    """Set or remove queue NAME's limits (held in the database: every host obeys them)."""
    given = {k: v for k, v in (("concurrency", concurrency), ("rate", rate)) if v is not None}
    if not given:
        raise click.UsageError("give --concurrency and/or --rate (a value, or none)")
    body = {k: None if v.lower() == "none" else v for k, v in given.items()}
    try:
        changes = QueueLimits.model_validate(body, context=TEXT)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise click.BadParameter(first.message, param_hint=f"--{first.field}") from None
    with connect(ctx.database_url()) as conn:
        found = queue_control.set_limits(conn, name, changes)
    emit(as_json, found.to_dict(), f"queue {found.name}: limits {_limits_of(found)}")


@queues_group.command("pause")
@click.argument("name")
@json_option
@pass_context
def pause_queue(ctx: Context, name: str, as_json: bool) -> None:
    """Stop workers claiming from queue NAME; running jobs finish."""
    _queue_action(ctx, queue_control.pause, name, as_json)


@queues_group.command("resume")
@click.argument("name")
@json_option
@pass_context
def resume_queue(ctx: Context, name: str, as_json: bool) -> None:
    """Let workers claim from queue NAME again."""
    _queue_action(ctx, queue_control.resume, name, as_json)


def _queue_action(
    ctx: Context,
    action: Callable[[psycopg.Connection[Any], str], QueueInfo],
    name: str,
    as_json: bool,
) -> None:
    with connect(ctx.database_url()) as conn:
        found = action(conn, name)
    state = "paused" if found.paused else "running"
    emit(as_json, found.to_dict(), f"queue {found.name} is {state}")


# -- maintenance -----------------------------------------------------------------------------


@cli.command()
@json_option
@pass_context
def migrate(ctx: Context, as_json: bool) -> None:
    """Create or update the errands tables (safe to run any number of times, from any host)."""
    options = pooling_options(ctx.settings.pgbouncer)
    with open_connection(ctx.database_url(), autocommit=True, **options) as conn:
        applied = apply_migrations(conn)
    names = [m.label for m in applied]
    emit(as_json, {"applied": names}, "\n".join(f"applied {n}" for n in names) or "up to date")


@cli.command()
@click.option(
    "--older-than",
    type=Seconds(0, 100 * 365 * 24),  # hours, up to a century
    default=7 * 24,
    show_default=True,
    help="Retention in hours: finished jobs older than this are deleted.",
)
@json_option
@pass_context
def prune(ctx: Context, older_than: float, as_json: bool) -> None:
    """Delete finished jobs past their retention, in bounded batches."""
    with connect(ctx.database_url(), **pooling_options(ctx.settings.pgbouncer)) as conn:
        deleted = prune_jobs(conn, retention_seconds=older_than * 3600)
    emit(as_json, {"deleted": deleted}, f"deleted {deleted} finished jobs")


@cli.command()
@click.option("--quick", is_flag=True, help="A smaller run, about a minute.")
@click.option(
    "--only",
    help="Comma-separated workloads (the table's names) [default: all but scale, "
    "which runs only when named]",
)
@click.option("--drain-jobs", type=Integer(1, 10_000_000), help="Jobs the drain workloads run.")
@click.option(
    "--rounds",
    type=Integer(1, 100),
    help="Times the drain and the drains given as ratios to it run, one after the other; "
    "each figure is the median of its rounds [default: 3, 1 with --quick]",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures here."
)
@pass_context
def bench(
    ctx: Context,
    quick: bool,
    only: str | None,
    drain_jobs: int | None,
    rounds: int | None,
    json_path: str | None,
) -> None:
    """Measure errands against pgbench on the same PostgreSQL, in a fresh database."""
    with _harness("bench"):
        from errands.harness.bench import Bench, as_json, table  # noqa: PLC0415
    url = ctx.database_url()
    rounds = rounds or (1 if quick else 3)
    runner = Bench(url, quick, lambda line: click.echo(line, err=True), drain_jobs, rounds)
    figures = runner.run(set(_split(only)) if only else None)
    click.echo(table(figures))
    if json_path:
        Path(json_path).write_text(json.dumps(as_json(figures, runner.server), indent=2) + "\n")


@cli.command()
@click.option(
    "--profile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A chaos profile (TOML), such as chaos/ci.toml or chaos/soak.toml.",
)
@click.option("--duration", type=Seconds(1, 7 * DAY), help="Seconds of faults and load.")
@click.option(
    "--seed", type=Integer(0, 2**64 - 1), help="Seed of the fault schedule and the workload."
)
@click.option("--workers", type=Integer(1, 1024), help="Worker processes of the daemon.")
@click.option(
    "--pg-restart-cmd",
    help="Shell command that restarts PostgreSQL (a database errands did not start itself).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report here.")
@pass_context
def chaos(
    ctx: Context,
    profile: Path | None,
    duration: float | None,
    seed: int | None,
    workers: int | None,
    pg_restart_cmd: str | None,
    json_path: str | None,
) -> None:
    """SIGKILL workers under load, and prove at-least-once, fencing and idempotency."""
    with _harness("chaos"):
        from errands.harness.chaos import Chaos, Profile, shell_restart  # noqa: PLC0415
    settings = Profile.load(profile) if profile else Profile()
    if duration is not None:
        settings = dataclasses.replace(settings, duration=duration)
    if workers is not None:
        settings = dataclasses.replace(settings, workers=workers)
    url = ctx.database_url()
    restart: Callable[[], None] | None = None
    pgdata: Path | None = None
    if pg_restart_cmd:
        restart = shell_restart(pg_restart_cmd)
    elif not ctx.settings.database_url:  # the embedded database: errands manages it
        pgdata = Path(ctx.settings.data_dir or embedded.default_data_dir())
        restart = partial(embedded.restart, pgdata)
    chosen_seed = seed if seed is not None else random.randrange(2**32)
    report = Chaos(
        url, settings, chosen_seed, restart, lambda line: click.echo(line, err=True), pgdata
    ).run()
    click.echo(report.text())
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    sys.exit(0 if report.passed else 1)


@contextmanager
def _harness(command: str) -> Iterator[None]:
    """Around the import of errands.harness, which only `bench` and `chaos` need.

    Never at start-up: `errands run` must not register the harness's tasks, nor
    need its dependencies (httpx, the `harness` extra).
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("errands"):
            raise
        raise ConfigurationError(
            f"errands {command} needs {exc.name}: pip install 'errands[harness]'"
        ) from None


def main(args: Sequence[str] | None = None) -> None:
    """The entry point: every refusal and every database error is one line, never a traceback.

    Usage errors (a bad option or value) exit 2, as do unusable settings; errors of
    the work itself (a refused job, an unreachable database, a wrong password) exit 1.
    `args` None reads the command line (`manage.py errands_worker` passes its own).
    """
    try:
        code = cli.main(args=args, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # `errands` alone: the help, to stderr
        click.echo(exc.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        hint = f"\nTry '{exc.ctx.command_path} --help' for help." if exc.ctx else ""
        sys.exit(_say(exc.format_message() + hint, 2))
    except click.ClickException as exc:
        sys.exit(_say(exc.format_message(), exc.exit_code))
    except click.Abort:
        sys.exit(_say("aborted", 1))
    except ConfigurationError as exc:
        sys.exit(_say(str(exc), 2))
    except ErrandsError as exc:
        sys.exit(_say(str(exc), 1))
    except psycopg.Error as exc:
        sys.exit(_say(_database_error(exc), 1))
    sys.exit(code if isinstance(code, int) else 0)


def _say(message: str, code: int) -> int:
    click.echo(f"errands: {message}", err=True)
    return code


def _database_error(exc: psycopg.Error) -> str:
    """What went wrong with the database, without the row contents it may quote."""
    text = scrub(str(exc).strip(), exc)
    kind = "unavailable" if isinstance(exc, psycopg.OperationalError) else "error"
    return f"database {kind}: {text}"

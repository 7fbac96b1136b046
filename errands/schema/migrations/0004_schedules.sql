-- Periodic schedules as the scheduler children last declared them, and the last
-- tick each one enqueued: `errands schedules`, GET /schedules and the metrics
-- read this table, so they never import the task modules that declare them.
-- The jobs themselves are ordinary rows of errands_jobs, one per tick, made
-- unique by their idempotency key; this table decides nothing about them.
create table errands_schedules (
    name             text primary key,
    task             text not null,
    cron             text,
    every_seconds    bigint,
    tz               text not null default 'UTC',
    payload          jsonb not null default '{}',
    catch_up         boolean not null default true,
    -- Ticks before this are not caught up: a new schedule starts from its declaration.
    declared_at      timestamptz not null default now(),
    -- Refreshed by every running scheduler that declares it.
    seen_at          timestamptz not null default now(),
    last_tick        timestamptz,
    last_job_id      bigint,  -- no foreign key: finished jobs are pruned
    last_enqueued_at timestamptz,

    constraint errands_schedules_name check (name ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$'),
    constraint errands_schedules_one_clock check ((cron is null) <> (every_seconds is null)),
    constraint errands_schedules_every check (every_seconds is null or every_seconds >= 1),
    constraint errands_schedules_payload_object check (jsonb_typeof(payload) = 'object')
);

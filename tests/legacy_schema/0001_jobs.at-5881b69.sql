-- The jobs table, the queue's only source of truth.
-- Constraints make illegal states unrepresentable; indexes serve the claim,
-- the reaper and listing without scanning finished rows.

create type errands_job_state as enum
    ('pending', 'in_progress', 'completed', 'failed', 'dead', 'cancelled');

create table errands_jobs (
    id               bigint generated always as identity primary key,
    queue            text not null default 'default',
    task             text not null,
    payload          jsonb not null default '{}',
    state            errands_job_state not null default 'pending',
    priority         integer not null default 0,
    run_at           timestamptz not null default now(),
    attempts         integer not null default 0,
    max_attempts     integer not null default 5,
    idempotency_key  text unique,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    errors           jsonb not null default '[]',
    result           jsonb,
    created_at       timestamptz not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz not null default now(),

    constraint errands_jobs_task_name check (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$'),
    constraint errands_jobs_queue_name check (queue ~ '^[A-Za-z0-9_.:-]{1,200}$'),
    constraint errands_jobs_payload_object check (jsonb_typeof(payload) = 'object'),
    constraint errands_jobs_errors_array check (jsonb_typeof(errors) = 'array'),
    constraint errands_jobs_budget check (max_attempts >= 1 and attempts between 0 and max_attempts),
    constraint errands_jobs_idempotency_key_length check (length(idempotency_key) between 1 and 255),
    -- A lease exists exactly while the job runs.
    constraint errands_jobs_lease_iff_in_progress check (
        (state = 'in_progress') = (lease_owner is not null)
        and (lease_owner is null) = (lease_expires_at is null)
    )
);

-- The claim reads only claimable rows, in claim order.
create index errands_jobs_claimable
    on errands_jobs (queue, priority desc, run_at, id)
    where state in ('pending', 'failed');

-- The reaper and release-by-owner read only running rows.
create index errands_jobs_leases
    on errands_jobs (lease_expires_at, lease_owner)
    where state = 'in_progress';

-- Listing by state, and pruning finished jobs oldest first.
create index errands_jobs_state_id on errands_jobs (state, id);
create index errands_jobs_finished on errands_jobs (finished_at)
    where state in ('completed', 'dead', 'cancelled');

-- Counts of finished jobs, kept by trigger so that stats and metrics never
-- count millions of finished rows. Rows are sharded by backend so that
-- concurrent workers never wait on each other's counter row.
create table errands_finished_counts (
    queue text not null,
    state errands_job_state not null,
    shard smallint not null,
    jobs  bigint not null,
    primary key (queue, state, shard)
);

-- Adds the finished rows a statement produced and subtracts those it changed
-- or deleted; rows untouched in state cancel out.
create function errands_count_finished() returns trigger language plpgsql as $$
begin
    if tg_op = 'UPDATE' then
        insert into errands_finished_counts as c (queue, state, shard, jobs)
        select queue, state, pg_backend_pid() % 16, sum(delta)
        from (
            select queue, state, 1 as delta from new_rows
            where state in ('completed', 'dead', 'cancelled')
            union all
            select queue, state, -1 from old_rows
            where state in ('completed', 'dead', 'cancelled')
        ) changes
        group by queue, state
        having sum(delta) <> 0
        on conflict (queue, state, shard) do update set jobs = c.jobs + excluded.jobs;
    else
        insert into errands_finished_counts as c (queue, state, shard, jobs)
        select queue, state, pg_backend_pid() % 16, -count(*)
        from old_rows
        where state in ('completed', 'dead', 'cancelled')
        group by queue, state
        on conflict (queue, state, shard) do update set jobs = c.jobs + excluded.jobs;
    end if;
    return null;
end
$$;

create trigger errands_jobs_count_finished_update
    after update on errands_jobs
    referencing old table as old_rows new table as new_rows
    for each statement execute function errands_count_finished();

create trigger errands_jobs_count_finished_delete
    after delete on errands_jobs
    referencing old table as old_rows
    for each statement execute function errands_count_finished();

-- Wake idle workers when jobs arrive: one notification per statement and queue,
-- delivered at commit, so a rolled-back enqueue wakes nobody.
create function errands_notify_enqueued() returns trigger language plpgsql as $$
begin
    perform pg_notify('errands_jobs', queue) from (select distinct queue from new_rows) queues;
    return null;
end
$$;

create trigger errands_jobs_notify_enqueued
    after insert on errands_jobs
    referencing new table as new_rows
    for each statement execute function errands_notify_enqueued();

-- Worker processes alive now, for stats and the HTTP API. Each worker upserts
-- its row with every heartbeat; its supervisor deletes it when it exits, and
-- rows silent for longer than a lease belong to lost hosts.
create table errands_workers (
    id           text primary key,
    host         text not null,
    pid          integer not null,
    queues       text[] not null,
    concurrency  integer not null,
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);

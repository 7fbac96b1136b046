-- older code: stops (its claim would start jobs past the limits stored here)
-- Limits on starting jobs, held in the database so that every host obeys the same
-- numbers, and unique jobs (README: Limits and unique jobs).

-- Each limit: at most `amount` jobs in progress at once (concurrency), or at most
-- `amount` starts in any window of `per_seconds` (rate), for the jobs of one task or
-- one queue; with `key`, separately for each value of that payload argument.
-- Task limits are declared by code (each worker writes its tasks' limits when it
-- connects); queue limits are set by operators (CLI, API, dashboard) and never
-- touched by a worker.
create table errands_limits (
    scope       text not null,
    name        text not null,
    kind        text not null,
    amount      integer not null,
    per_seconds double precision,
    key         text,
    set_by      text not null,
    changed_at  timestamptz not null default now(),
    primary key (scope, name, kind),

    constraint errands_limits_scope check (scope in ('task', 'queue')),
    constraint errands_limits_kind check (kind in ('concurrency', 'rate')),
    constraint errands_limits_amount check (amount between 1 and 1000000),
    constraint errands_limits_period check (
        (kind = 'rate') = (per_seconds is not null) and (per_seconds is null or per_seconds > 0)
    ),
    constraint errands_limits_key check (key is null or (scope = 'task' and length(key) <= 200)),
    constraint errands_limits_set_by check (set_by in ('code', 'operator'))
);

-- What each limit has in use, per key value ('' for a limit without a key): the
-- slots held by attempts in progress, and the starts within the rate's period
-- (started_at[i] is when a claim started started[i] jobs, oldest first). A claim
-- locks the counters its jobs come under, in id order, re-reads them and takes
-- what is free in the same statement; every statement that ends an attempt gives
-- its slots back through errands_release_slots below. Rows appear when a claim
-- first meets a key value.
create table errands_limit_counters (
    id         bigint generated always as identity primary key,
    scope      text not null,
    name       text not null,
    kind       text not null,
    value      text not null,
    running    integer not null default 0,
    started_at timestamptz[] not null default '{}',
    started    integer[] not null default '{}',
    -- The last claim that started a job under it: claims serve the least recently served first.
    served_at  timestamptz,
    unique (scope, name, kind, value)
);

alter table errands_jobs
    -- '' when no limit applies. Otherwise the group of jobs that share their limits
    -- (the task, and the values of its limits' key arguments), set when the job is
    -- stored; the claim reads each group's jobs by index, so the backlog of one key
    -- never stands in front of another's.
    add column limit_group text not null default '',
    -- The concurrency counters whose slots the job's latest attempt took.
    add column slots bigint[],
    -- At most one job per key that is pending, failed or in progress.
    add column unique_key text,
    add constraint errands_jobs_unique_key_length check (length(unique_key) between 1 and 255);

-- The claim reads claimable rows by queue, then by group: '' (no limit) in claim
-- order, each limited group in claim order.
drop index errands_jobs_claimable;
create index errands_jobs_claimable
    on errands_jobs (queue, limit_group, priority desc, run_at, id)
    where state in ('pending', 'failed');

create unique index errands_jobs_unique_key on errands_jobs (unique_key)
    where state in ('pending', 'failed', 'in_progress');

-- The value of payload argument `key` as a limit counts it: its text (42 and "42" are
-- one key; a missing argument is ''), long values by digest so that they fit an index.
create function errands_limit_value(payload jsonb, key text) returns text
language sql immutable parallel safe as $$
    select case when key is null then ''
                when length(coalesce(payload ->> key, '')) <= 200 then coalesce(payload ->> key, '')
                else left(payload ->> key, 160) || ' md5:' || md5(payload ->> key) end
$$;

-- The limits a job of `job_task` on `job_queue` with `job_payload` comes under, each
-- with the key value that picks its counter.
create function errands_limits_of(job_queue text, job_task text, job_payload jsonb)
returns table (scope text, name text, kind text, amount integer, per_seconds double precision,
               value text)
language sql stable parallel safe as $$
    select scope, name, kind, amount, per_seconds, errands_limit_value(job_payload, key)
    from errands_limits
    where (scope = 'task' and name = job_task) or (scope = 'queue' and name = job_queue)
$$;

-- Starts a rate counter's log holds after `since`.
create function errands_starts_since(started_at timestamptz[], started integer[], since timestamptz)
returns integer language sql immutable parallel safe as $$
    select coalesce(sum(n), 0)::integer from unnest(started_at, started) as log(at, n) where at > since
$$;

-- The limit group of a job: '' when no limit applies to its task or queue; its task,
-- followed by the values of its task limits' key arguments, otherwise.
create function errands_limit_group(job_queue text, job_task text, job_payload jsonb)
returns text language sql stable parallel safe as $$
    select case
        when exists (select from errands_limits where scope = 'task' and name = job_task)
            then job_task || coalesce((
                select string_agg(' ' || key || '=' || errands_limit_value(job_payload, key), ''
                                  order by key)
                from (select distinct key from errands_limits
                      where scope = 'task' and name = job_task and key is not null) as keys), '')
        when exists (select from errands_limits where scope = 'queue' and name = job_queue)
            then job_task
        else ''
    end
$$;

-- The limited half of a claim (complete_and_claim in errands/queue/sql/queries.sql
-- tells the whole story). `unlimited`: the jobs the claim read as no limit's; any a
-- limit applies to after all (stored while the limit was being declared) is filed
-- under its group now and comes back with `refiled`, for the claim to leave. Then,
-- when limited jobs wait in `queues`: up to `wanted` of them, each locked (skip
-- locked) and admitted by the counters it comes under, which stay locked until the
-- claim's transaction ends. No job changes state and no counter is taken here (the
-- claim keeps what fits its slots and errands_take_limited counts exactly those);
-- only counters for key values met for the first time are made. `freed`: the slots
-- the claim's completions give back, free already. Every row carries `at`, the time
-- of the claim's starts (read once every counter is locked), and `recheck`, when a
-- claim may find more (0: at once; a rate's next free start); a row with a null id
-- carries them when no job is admitted.
--
-- In PL/pgSQL, its statements are planned once per server session (generic plans):
-- written into the claim statement they cost 8 ms of planning a claim (the claim's
-- own is 0.3 to 0.5 ms), and behind a transaction pooler nothing is prepared.
create function errands_admit_limited(queues text[], wanted integer, async_tasks text[],
                                      freed bigint[], unlimited bigint[])
returns table (id bigint, on_loop boolean, priority integer, turn bigint,
               served_at timestamptz, run_at timestamptz, slots bigint[], rates bigint[],
               at timestamptz, recheck double precision, refiled boolean)
language plpgsql volatile rows 10
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    if not exists (select from errands_limits) then
        return;
    end if;
    return query
    update errands_jobs as job
    set limit_group = errands_limit_group(job.queue, job.task, job.payload)
    where job.id = any(unlimited) and job.limit_group = ''
      and exists (
          select from errands_limits as l
          where (l.scope = 'task' and l.name = job.task) or (l.scope = 'queue' and l.name = job.queue))
    returning job.id, null::boolean, null::integer, null::bigint, null::timestamptz,
              null::timestamptz, null::bigint[], null::bigint[], null::timestamptz,
              0.0::double precision, true;
    if wanted <= 0 or not exists (
        select from unnest(queues) as waiting(queue) cross join lateral (
            select job.limit_group from errands_jobs as job
            where job.queue = waiting.queue and job.limit_group > ''
              and job.state in ('pending', 'failed')
            order by job.limit_group limit 1) as first) then
        return;
    end if;
    return query
    with recursive
    -- Limited groups with jobs waiting, per queue, in key order: one index descent each.
    grouped (queue, limit_group, depth) as (
        select wanted_queue,
               (select limit_group from errands_jobs
                where queue = wanted_queue and limit_group > '' and state in ('pending', 'failed')
                order by limit_group limit 1),
               1
        from unnest(queues) as wanted_queue
        union all
        select grouped.queue,
               (select job.limit_group from errands_jobs as job
                where job.queue = grouped.queue and job.limit_group > grouped.limit_group
                  and job.state in ('pending', 'failed')
                order by job.limit_group limit 1),
               grouped.depth + 1
        from grouped
        where grouped.limit_group is not null and grouped.depth < 10000
    ),
    -- Each group's best due job, read without a lock: the limits of its group.
    head as (
        select grouped.queue, grouped.limit_group, first.id, first.task, first.payload,
               first.priority, first.run_at
        from grouped
        cross join lateral (
            select job.id, job.task, job.payload, job.priority, job.run_at from errands_jobs as job
            where job.queue = grouped.queue and job.limit_group = grouped.limit_group
              and job.state in ('pending', 'failed') and job.run_at <= now()
            order by job.priority desc, job.run_at, job.id
            limit 1
        ) as first
        where grouped.limit_group is not null
    ),
    -- Each group's room by its counters as last committed (a guess: they are not locked
    -- yet) and the slots `freed`, when it was last served, and how long until a full rate
    -- frees a start.
    unit as (
        select head.queue, head.limit_group, head.id, head.priority, head.run_at,
               min(case when counter.id is null then limits.amount
                        when limits.kind = 'concurrency'
                        then limits.amount - counter.running
                             + (select count(*) from unnest(freed) as slot where slot = counter.id)
                        else limits.amount - errands_starts_since(counter.started_at,
                            counter.started, now() - make_interval(secs => limits.per_seconds))
                   end) as room,
               min(counter.served_at) as served_at,
               min(case when limits.kind = 'rate' and limits.amount <= errands_starts_since(
                            counter.started_at, counter.started,
                            now() - make_interval(secs => limits.per_seconds))
                        then (select min(log.at) from unnest(counter.started_at) as log(at)
                              where log.at > now() - make_interval(secs => limits.per_seconds))
                             + make_interval(secs => limits.per_seconds) - now()
                   end) as rate_wait
        from head
        left join lateral errands_limits_of(head.queue, head.task, head.payload) as limits on true
        left join errands_limit_counters as counter
            on (counter.scope, counter.name, counter.kind, counter.value)
               = (limits.scope, limits.name, limits.kind, limits.value)
        group by head.queue, head.limit_group, head.id, head.priority, head.run_at
    ),
    -- Least recently served first, each group up to its room, until `wanted` are found.
    chosen as (
        select sized.queue, sized.limit_group, sized.served_at, sized.quota
        from (
            select unit.*, least(coalesce(unit.room, wanted), wanted) as quota,
                   sum(least(coalesce(unit.room, wanted), wanted)) over (
                       order by unit.priority desc, unit.served_at nulls first, unit.run_at,
                                unit.id) as through
            from unit
        ) as sized
        where sized.quota > 0 and sized.through - sized.quota < wanted
    ),
    limited as (
        select job.id, job.queue, job.task, job.payload, job.priority, job.run_at,
               job.task = any(async_tasks) as on_loop, chosen.served_at,
               row_number() over (
                   partition by chosen.queue, chosen.limit_group
                   order by job.priority desc, job.run_at, job.id) as turn
        from chosen
        cross join lateral (
            select job.id, job.queue, job.task, job.payload, job.priority, job.run_at
            from errands_jobs as job
            where job.queue = chosen.queue and job.limit_group = chosen.limit_group
              and job.state in ('pending', 'failed') and job.run_at <= now()
            order by job.priority desc, job.run_at, job.id
            limit chosen.quota
            for update skip locked
        ) as job
    ),
    -- Each job's limits, with its counter for each (null: none yet).
    bound as (
        select limited.id, limits.kind, limits.amount, limits.per_seconds,
               limits.scope, limits.name, limits.value, counter.id as counter
        from limited
        cross join lateral errands_limits_of(limited.queue, limited.task, limited.payload)
            as limits
        left join errands_limit_counters as counter
            on (counter.scope, counter.name, counter.kind, counter.value)
               = (limits.scope, limits.name, limits.kind, limits.value)
    ),
    first_use as (
        insert into errands_limit_counters (scope, name, kind, value)
        select distinct bound.scope, bound.name, bound.kind, bound.value from bound
        where bound.counter is null
        on conflict do nothing
        returning 1
    ),
    -- In id order, as every statement that changes counters locks them.
    locked as (
        select counter.id, counter.running, counter.started_at, counter.started
        from errands_limit_counters as counter
        where counter.id in (select bound.counter from bound union all select unnest(freed))
        order by counter.id
        for update
    ),
    -- Claims that share a counter read it in the order they lock it.
    moment as (
        select clock_timestamp() as at from (select count(*) from locked) as every_lock
    ),
    free as (
        select locked.id as counter, limits.kind, limits.per_seconds, locked.started_at,
               limits.amount - case
                   when limits.kind = 'concurrency' then locked.running - (
                       select count(*) from unnest(freed) as slot where slot = locked.id)
                   else errands_starts_since(locked.started_at, locked.started,
                       moment.at - make_interval(secs => limits.per_seconds))
               end as free
        from locked
        join (select distinct bound.counter, bound.kind, bound.amount, bound.per_seconds
              from bound) as limits on limits.counter = locked.id
        cross join moment
    ),
    -- Jobs none of whose limits is full (a counter made by this claim counts as full).
    eligible as (
        select limited.* from limited
        where not exists (
            select from bound left join free on free.counter = bound.counter
            where bound.id = limited.id and coalesce(free.free, 0) <= 0)
    ),
    -- Round robin: each group's first job before any group's second.
    placed as (
        select eligible.id, free.free,
               row_number() over (
                   partition by bound.counter
                   order by eligible.priority desc, eligible.turn, eligible.served_at nulls first,
                            eligible.run_at, eligible.id) as place
        from eligible
        join bound on bound.id = eligible.id
        join free on free.counter = bound.counter
    ),
    admitted as (
        select eligible.* from eligible
        where not exists (
            select from placed where placed.id = eligible.id and placed.place > placed.free)
    ),
    waits as (
        select unit.rate_wait as wait from unit
        union all
        select (select min(log.at) from unnest(free.started_at) as log(at)
                where log.at > moment.at - make_interval(secs => free.per_seconds))
               + make_interval(secs => free.per_seconds) - moment.at
        from free cross join moment
        where free.kind = 'rate' and free.free <= 0
    ),
    summary as (
        select moment.at,
               -- A counter made now, or deleted since it was read (idle counters are
               -- forgotten): the next claim finds it.
               case when exists (select from first_use)
                      or exists (select from bound where bound.counter is not null
                                 and bound.counter not in (select locked.id from locked))
                    then 0.0
                    else (select greatest(extract(epoch from min(waits.wait)), 0.0) from waits
                          having min(waits.wait) is not null)
               end::double precision as recheck
        from moment
    )
    select admitted.id, admitted.on_loop, admitted.priority, admitted.turn, admitted.served_at,
           admitted.run_at,
           (select array_agg(bound.counter order by bound.counter) from bound
            where bound.id = admitted.id and bound.kind = 'concurrency'),
           (select array_agg(bound.counter order by bound.counter) from bound
            where bound.id = admitted.id and bound.kind = 'rate'),
           summary.at, summary.recheck, false
    from summary left join admitted on true;
end
$$;

-- The counters of the limited jobs a claim kept take them: a slot each (`slots`
-- repeats a counter per job), and a start each in the rate's log at `at` (`rates`),
-- dropping entries older than the period. The claim locked them all already.
create function errands_take_limited(slots bigint[], rates bigint[], at timestamptz)
returns void language plpgsql volatile
set plan_cache_mode = force_generic_plan
as $$
begin
    update errands_limit_counters as counter
    set running = counter.running + taken.n, served_at = at
    from (select slot, count(*) as n from unnest(slots) as slot group by slot) as taken
    where counter.id = taken.slot;
    update errands_limit_counters as counter
    set started_at = array(select log.at from unnest(counter.started_at) as log(at)
                           where log.at > taken.since order by log.at) || at,
        started = array(select log.n from unnest(counter.started_at, counter.started) as log(at, n)
                        where log.at > taken.since order by log.at) || taken.n,
        served_at = at
    from (
        select rate.id, count(*)::integer as n,
               at - make_interval(secs => coalesce(max(l.per_seconds), 0)) as since
        from unnest(rates) as rate(id)
        join errands_limit_counters as c on c.id = rate.id
        left join errands_limits as l on (l.scope, l.name, l.kind) = (c.scope, c.name, c.kind)
        group by rate.id
    ) as taken
    where counter.id = taken.id;
end
$$;

-- Every statement that ends attempts (a completion, a failure, a reschedule, a release
-- or a reap, and any added later) or deletes running jobs gives back the slots those
-- attempts held, in that statement's transaction: a slot lives exactly as long as its
-- lease. (PostgreSQL allows no column list beside transition tables, so it fires for
-- every UPDATE; an update that ends no attempt holding slots leaves at the first query.)
create function errands_release_slots() returns trigger language plpgsql as $$
declare
    released bigint[];
begin
    if tg_op = 'DELETE' then
        select array_agg(slot) into released
        from old_rows cross join unnest(old_rows.slots) as slot
        where old_rows.state = 'in_progress';
    else
        select array_agg(slot) into released
        from old_rows join new_rows on new_rows.id = old_rows.id
        cross join unnest(old_rows.slots) as slot
        where old_rows.state = 'in_progress' and new_rows.state <> 'in_progress';
    end if;
    if released is null then
        return null;
    end if;
    -- Locked in id order, as claims lock them, so that neither waits on the other in a cycle.
    perform from errands_limit_counters where id = any(released) order by id for update;
    update errands_limit_counters as counter
    set running = counter.running - freed.slots
    from (select slot, count(*) as slots from unnest(released) as slot group by slot) as freed
    where counter.id = freed.slot;
    -- A job held back by a limit may start now: wake idle workers.
    perform pg_notify('errands_jobs', queue)
    from (select distinct queue from old_rows where slots is not null) as queues;
    return null;
end
$$;

create trigger errands_jobs_release_slots
    after update on errands_jobs
    referencing old table as old_rows new table as new_rows
    for each statement execute function errands_release_slots();

create trigger errands_jobs_release_slots_on_delete
    after delete on errands_jobs
    referencing old table as old_rows
    for each statement execute function errands_release_slots();

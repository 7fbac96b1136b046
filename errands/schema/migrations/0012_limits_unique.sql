-- older code: stops (its claim would start jobs past the limits stored here)
-- Limits on starting jobs, held in the database so that every host obeys the same
-- numbers, and unique jobs (docs/guides/limits.md).

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
    -- A key is an argument name, as limit groups spell it (errands_limit_group).
    constraint errands_limits_key check (
        key is null or (scope = 'task' and key ~ '^[A-Za-z_][A-Za-z0-9_]{0,199}$')
    ),
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
    -- A claim found it full while jobs waited for it: the next statement that gives back
    -- one of its slots and leaves it free wakes idle workers (and clears it).
    waiting    boolean not null default false,
    unique (scope, name, kind, value)
);

alter table errands_jobs
    -- '' when no limit applies. Otherwise the group of jobs that share their limits
    -- (the task, and the values of its limits' key arguments), set when the job is
    -- stored; the claim reads each group's jobs by index, so the backlog of one key
    -- never stands in front of another's.
    add column limit_group text not null default '',
    -- The counters the job's latest attempt came under (errands_count_slots): the
    -- concurrency ones whose slots it holds while it runs, and the rates it started in.
    add column slots bigint[],
    add column rates bigint[],
    -- At most one job per key that is pending, failed or in progress.
    add column unique_key text,
    add constraint errands_jobs_unique_key_length check (length(unique_key) between 1 and 255);

-- The claim reads claimable rows by queue, then by group: '' (no limit) in claim
-- order, each limited group in claim order.
drop index errands_jobs_claimable;
create index errands_jobs_claimable
    on errands_jobs (queue, limit_group, priority desc, run_at, id)
    where state in ('pending', 'failed');

-- Jobs without a key stay out of it: a claim writes a new version of its job's row, and
-- each would otherwise insert an entry (a null) into this index too.
create unique index errands_jobs_unique_key on errands_jobs (unique_key)
    where unique_key is not null and state in ('pending', 'failed', 'in_progress');

-- The value of payload argument `key` as a limit counts it: its text (42 and "42" are
-- one key; a missing argument is ''); a value too long for an index, or holding the
-- group separator (U+001F), by its digest.
create function errands_limit_value(payload jsonb, key text) returns text
language sql immutable parallel safe as $$
    select case when key is null then ''
                when length(coalesce(payload ->> key, '')) <= 200
                     and strpos(coalesce(payload ->> key, ''), chr(31)) = 0
                    then coalesce(payload ->> key, '')
                else 'md5:' || md5(payload ->> key) end
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

-- The limit group of a job: '' when no limit applies to its task or queue; else its task,
-- then, for each key argument of its task's limits in name order, U+001F, the key's name,
-- '=' and its value. Every job of a group comes under the same counters, which
-- errands_group_value reads back from the group itself.
create function errands_limit_group(job_queue text, job_task text, job_payload jsonb)
returns text language sql stable parallel safe as $$
    select case
        when exists (select from errands_limits where scope = 'task' and name = job_task)
            then job_task || coalesce((
                select string_agg(chr(31) || key || '=' || errands_limit_value(job_payload, key),
                                  '' order by key)
                from (select distinct key from errands_limits
                      where scope = 'task' and name = job_task and key is not null) as keys), '')
        when exists (select from errands_limits where scope = 'queue' and name = job_queue)
            then job_task
        else ''
    end
$$;

-- The value of key argument `key` in a limit group (null: the group names no such key: it
-- was filed under other limits, and must be filed again).
create function errands_group_value(limit_group text, key text) returns text
language sql immutable parallel safe as $$
    select case when strpos(limit_group || chr(31), chr(31) || key || '=') = 0 then null
                else split_part(substr(limit_group || chr(31),
                                       strpos(limit_group || chr(31), chr(31) || key || '=')
                                       + length(key) + 2), chr(31), 1) end
$$;

-- The limited half of a claim (complete_and_claim in errands/queue/sql/queries.sql
-- tells the whole story). It files anew the jobs it finds filed under limits no longer
-- in force, and otherwise changes no job and takes no counter:
--
-- * among `unlimited`, the jobs the claim read as no limit's, those a limit applies to
--   after all (stored while the limit was being declared) are filed under their groups,
--   and come back as rows with `refile` and their id, for the claim to leave;
-- * the jobs of groups filed under other limits (a key argument they do not name) are
--   filed anew, for later claims (such groups are never chosen);
-- * when limited jobs wait in `queues`: up to `wanted` of them, each locked (skip locked)
--   and admitted by the counters it comes under, which stay locked until the claim's
--   transaction ends (the claim keeps what fits its slots, and errands_count_slots counts
--   exactly those when the claim's statement ends). Counters for key values met for the
--   first time are made here; when nothing is admitted, the full counters jobs wait for
--   are marked waiting.
--
-- `freed`: the slots the claim's completions give back, free already. Every row
-- carries `at`, the time of the claim's starts (read once every counter is locked), and
-- `recheck`, when a claim may find more (0: at once; a rate's next free start); a row
-- with a null id carries them when no job is admitted.
--
-- In PL/pgSQL, its statements are planned once per server session (generic plans):
-- written into the claim statement they cost 8 ms of planning a claim (the claim's
-- own is 0.3 to 0.5 ms), and behind a transaction pooler nothing is prepared. Jobs are
-- filed anew by statements of their own only when there are some: every UPDATE of
-- errands_jobs fires its statement triggers, rows or not.
create function errands_admit_limited(queues text[], wanted integer, async_tasks text[],
                                      freed bigint[], unlimited bigint[])
returns table (id bigint, on_loop boolean, priority integer, turn bigint,
               served_at timestamptz, run_at timestamptz, slots bigint[], rates bigint[],
               at timestamptz, recheck double precision, refile boolean)
language plpgsql volatile rows 10
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    misfiled bigint[];
    stale_groups text;
    held_counters text;
begin
    if not exists (select from errands_limits) then
        return;
    end if;
    select array_agg(job.id) into misfiled
    from errands_jobs as job
    where job.id = any(unlimited) and job.limit_group = ''
      and exists (
          select from errands_limits as l
          where (l.scope = 'task' and l.name = job.task) or (l.scope = 'queue' and l.name = job.queue));
    if misfiled is not null then
        update errands_jobs as job
        set limit_group = errands_limit_group(job.queue, job.task, job.payload)
        where job.id = any(misfiled);
        return query
        select misfiled_id, null::boolean, null::integer, null::bigint, null::timestamptz,
               null::timestamptz, null::bigint[], null::bigint[], null::timestamptz,
               0.0::double precision, true
        from unnest(misfiled) as misfiled_id;
    end if;
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
    -- The limited groups with jobs waiting, per queue, in group order, with the best job of
    -- each (by priority, then age; due or not): one index descent per group, no table read.
    grouped (queue, limit_group, priority, run_at, id, depth) as (
        select waiting.queue, first.limit_group, first.priority, first.run_at, first.id, 1
        from unnest(queues) as waiting(queue)
        cross join lateral (
            select job.limit_group, job.priority, job.run_at, job.id from errands_jobs as job
            where job.queue = waiting.queue and job.limit_group > ''
              and job.state in ('pending', 'failed')
            order by job.limit_group, job.priority desc, job.run_at, job.id
            limit 1
        ) as first
        union all
        select grouped.queue, next.limit_group, next.priority, next.run_at, next.id,
               grouped.depth + 1
        from grouped
        cross join lateral (
            select job.limit_group, job.priority, job.run_at, job.id from errands_jobs as job
            where job.queue = grouped.queue and job.limit_group > grouped.limit_group
              and job.state in ('pending', 'failed')
            order by job.limit_group, job.priority desc, job.run_at, job.id
            limit 1
        ) as next
        where grouped.depth < 10000
    ),
    -- Each group's limits, with the key value the group names for each (null: the group was
    -- filed under other limits).
    unit_limit as (
        select grouped.queue, grouped.limit_group, l.scope, l.name, l.kind, l.amount,
               l.per_seconds,
               case when l.key is null then ''
                    else errands_group_value(grouped.limit_group, l.key) end as value
        from grouped
        join errands_limits as l
            on (l.scope = 'task' and l.name = split_part(grouped.limit_group, chr(31), 1))
            or (l.scope = 'queue' and l.name = grouped.queue)
    ),
    stale as (
        select distinct unit_limit.queue, unit_limit.limit_group from unit_limit
        where unit_limit.value is null
    ),
    -- Each group's counters as last committed (not locked yet: a guess of its room).
    unit_counter as (
        select unit_limit.*, counter.id as counter, counter.running, counter.started_at,
               counter.started, counter.served_at
        from unit_limit
        left join errands_limit_counters as counter
            on (counter.scope, counter.name, counter.kind, counter.value)
               = (unit_limit.scope, unit_limit.name, unit_limit.kind, unit_limit.value)
        where unit_limit.value is not null
    ),
    first_use as (
        insert into errands_limit_counters (scope, name, kind, value)
        select distinct unit_counter.scope, unit_counter.name, unit_counter.kind,
               unit_counter.value
        from unit_counter where unit_counter.counter is null
        on conflict do nothing
        returning 1
    ),
    -- Each group's room (counting the slots `freed` as free), when it was last served, and
    -- how long until a full rate frees a start.
    unit as (
        select grouped.queue, grouped.limit_group, grouped.priority, grouped.run_at, grouped.id,
               min(case when u.counter is null then u.amount
                        when u.kind = 'concurrency'
                        then u.amount - u.running
                             + (select count(*) from unnest(freed) as slot where slot = u.counter)
                        else u.amount - errands_starts_since(u.started_at, u.started,
                            now() - make_interval(secs => u.per_seconds))
                   end) as room,
               min(u.served_at) as served_at,
               min(case when u.kind = 'rate' and u.amount <= errands_starts_since(
                            u.started_at, u.started, now() - make_interval(secs => u.per_seconds))
                        then (select min(log.at) from unnest(u.started_at) as log(at)
                              where log.at > now() - make_interval(secs => u.per_seconds))
                             + make_interval(secs => u.per_seconds) - now()
                   end) as rate_wait
        from grouped
        left join unit_counter as u using (queue, limit_group)
        where (grouped.queue, grouped.limit_group) not in (select queue, limit_group from stale)
        group by grouped.queue, grouped.limit_group, grouped.priority, grouped.run_at, grouped.id
    ),
    -- Due groups first, then by priority, least recently served first, each up to its room,
    -- until `wanted` jobs are found.
    chosen as (
        select sized.queue, sized.limit_group, sized.served_at, sized.quota
        from (
            select unit.*, least(coalesce(unit.room, wanted), wanted) as quota,
                   sum(least(coalesce(unit.room, wanted), wanted)) over (
                       order by unit.run_at <= now() desc, unit.priority desc,
                                unit.served_at nulls first, unit.run_at, unit.id) as through
            from unit
        ) as sized
        where sized.quota > 0 and sized.through - sized.quota < wanted
    ),
    limited as (
        select job.id, chosen.queue, chosen.limit_group, job.priority, job.run_at,
               job.task = any(async_tasks) as on_loop, chosen.served_at,
               row_number() over (
                   partition by chosen.queue, chosen.limit_group
                   order by job.priority desc, job.run_at, job.id) as turn
        from chosen
        cross join lateral (
            select job.id, job.task, job.priority, job.run_at from errands_jobs as job
            where job.queue = chosen.queue and job.limit_group = chosen.limit_group
              and job.state in ('pending', 'failed') and job.run_at <= now()
              -- filed by this claim above: a row the claim must not change twice
              and job.id <> all(coalesce(unlimited, '{}'))
            order by job.priority desc, job.run_at, job.id
            limit chosen.quota
            for update skip locked
        ) as job
    ),
    -- Each job comes under its group's counters.
    bound as (
        select limited.id, u.kind, u.amount, u.per_seconds, u.counter
        from limited join unit_counter as u using (queue, limit_group)
    ),
    -- The counters of each group: the slots a job of it holds, the rates it starts under.
    unit_slots as (
        select u.queue, u.limit_group,
               array_agg(u.counter order by u.counter)
                   filter (where u.kind = 'concurrency') as slots,
               array_agg(u.counter order by u.counter) filter (where u.kind = 'rate') as rates
        from unit_counter as u
        where (u.queue, u.limit_group) in (select chosen.queue, chosen.limit_group from chosen)
        group by u.queue, u.limit_group
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
    -- Jobs none of whose counters is full (a counter not there yet, or deleted since it
    -- was read, counts as full).
    eligible as (
        select limited.* from limited
        where not exists (
            select from bound left join free on free.counter = bound.counter
            where bound.id = limited.id and coalesce(free.free, 0) <= 0)
    ),
    -- Round robin: each group's first job before any group's second.
    placed as (
        select eligible.id, bound.counter, free.free,
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
    -- A job passed over, every counter of which has a slot left (the ranks of jobs passed
    -- over for another counter's sake filled one): the next claim takes it.
    passed_over as (
        select from eligible
        where eligible.id not in (select admitted.id from admitted)
          and (select count(*) from admitted) < wanted
          and not exists (
              select from placed
              where placed.id = eligible.id
                and placed.free <= (select count(*) from placed as taken
                                    where taken.counter = placed.counter
                                      and taken.id in (select admitted.id from admitted)))
    ),
    -- Stale groups and held counters, for the statements after this one (transaction-local
    -- settings: a query's results go to the claim, not back to this function).
    noted as (
        select set_config('errands.stale_groups',
                          coalesce(json_agg(json_build_array(stale.queue, stale.limit_group))::text,
                                   ''), true) as stale,
               set_config('errands.held', coalesce((select counters from held)::text, ''), true)
                   as held
        from stale
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
    -- When nothing is admitted (the claim's worker is about to wait for a wake-up), the
    -- full counters due jobs wait for: marked waiting, so that a slot they free wakes it.
    -- (A claim that took jobs marks none: its worker claims again when they end, and
    -- marking would make it wait for the locks of counters it does not use.)
    held as (
        select array_agg(distinct counter) as counters from (
            select u.counter from unit join unit_counter as u using (queue, limit_group)
            where unit.run_at <= now() and unit.room <= 0 and u.counter is not null
            union all
            select free.counter from free where free.free <= 0
        ) as full_counters
        where not exists (select from admitted)
    ),
    summary as (
        select moment.at,
               case when exists (select from first_use) or exists (select from stale)
                      or exists (select from passed_over)
                      or exists (select from bound where bound.counter is not null
                                 and bound.counter not in (select locked.id from locked))
                    then 0.0
                    else (select greatest(extract(epoch from min(waits.wait)), 0.0) from waits
                          having min(waits.wait) is not null)
               end::double precision as recheck
        from moment
    )
    select admitted.id, admitted.on_loop, admitted.priority, admitted.turn, admitted.served_at,
           admitted.run_at, unit_slots.slots, unit_slots.rates, summary.at, summary.recheck,
           false
    from summary
    cross join noted
    left join admitted on true
    left join unit_slots using (queue, limit_group);
    held_counters := current_setting('errands.held', true);
    if held_counters <> '' then  -- nothing admitted: a freed slot of these wakes this claim's worker
        update errands_limit_counters as counter
        set waiting = true
        where counter.id = any(held_counters::bigint[]) and not counter.waiting;
    end if;
    stale_groups := current_setting('errands.stale_groups', true);
    if stale_groups <> '' then
        update errands_jobs as job
        set limit_group = errands_limit_group(job.queue, job.task, job.payload)
        from json_array_elements(stale_groups::json) as stale(pair)
        where job.queue = stale.pair ->> 0 and job.limit_group = stale.pair ->> 1
          and job.state in ('pending', 'failed');
    end if;
end
$$;

-- The counters follow the attempts: every statement that starts attempts under limits
-- (a claim) takes their slots and logs their starts; every statement that ends attempts
-- (a completion, a failure, a reschedule, a release or a reap, and any added later) or
-- deletes running jobs gives their slots back, all in that statement's transaction, so a
-- slot lives exactly as long as its lease. One update per counter and statement.
-- (PostgreSQL allows no column list beside transition tables, so it fires for every
-- UPDATE; one that starts or ends no attempt under a limit leaves at the first query.)
create function errands_count_slots() returns trigger language plpgsql as $$
declare
    woken boolean;
begin
    if tg_op = 'DELETE' then
        -- Running jobs deleted (errands never does; an operator might): their slots back.
        update errands_limit_counters as c
        set running = c.running - freed.n
        from (select slot, count(*) as n from old_rows cross join unnest(old_rows.slots) as slot
              where old_rows.state = 'in_progress' group by slot order by slot) as freed
        where c.id = freed.slot;
        return null;
    end if;
    -- Locked in id order, as claims lock them, so that neither waits on the other in a cycle.
    perform from errands_limit_counters
    where id in (
        select unnest(n.slots || n.rates) from new_rows as n join old_rows as o using (id)
        where n.state = 'in_progress' and o.state <> 'in_progress'
        union all
        select unnest(o.slots) from old_rows as o join new_rows as n using (id)
        where o.state = 'in_progress' and n.state <> 'in_progress')
    order by id for update;
    if not found then
        return null;
    end if;
    with moves (counter, taken, freed, logged, at) as (
        select unnest(n.slots), 1, 0, 0, n.started_at
        from new_rows as n join old_rows as o using (id)
        where n.state = 'in_progress' and o.state <> 'in_progress'
        union all
        select unnest(n.rates), 0, 0, 1, n.started_at
        from new_rows as n join old_rows as o using (id)
        where n.state = 'in_progress' and o.state <> 'in_progress'
        union all
        select unnest(o.slots), 0, 1, 0, null::timestamptz
        from old_rows as o join new_rows as n using (id)
        where o.state = 'in_progress' and n.state <> 'in_progress'
    ),
    moved as (
        select moves.counter, sum(taken) as taken, sum(freed) as freed,
               sum(logged)::integer as logged, max(moves.at) as at, min(l.amount) as amount,
               max(l.per_seconds) as per_seconds, bool_or(c.waiting) as was_waiting
        from moves
        join errands_limit_counters as c on c.id = moves.counter
        left join errands_limits as l on (l.scope, l.name, l.kind) = (c.scope, c.name, c.kind)
        group by moves.counter
    ),
    changed as (
        update errands_limit_counters as c
        set running = c.running + moved.taken - moved.freed,
            started_at = case when moved.logged = 0 then c.started_at
                else array(select log.at from unnest(c.started_at) as log(at)
                           where log.at > moved.at - make_interval(secs => moved.per_seconds)
                           order by log.at) || moved.at end,
            started = case when moved.logged = 0 then c.started
                else array(select log.n from unnest(c.started_at, c.started) as log(at, n)
                           where log.at > moved.at - make_interval(secs => moved.per_seconds)
                           order by log.at) || moved.logged end,
            served_at = case when moved.taken + moved.logged > 0 then moved.at
                             else c.served_at end,
            -- A job a limit held back may start now: wake idle workers once, when a
            -- counter jobs wait for keeps a free slot (a worker's completions and its own
            -- next claim, which took the slots they gave back, wake nobody).
            waiting = c.waiting
                      and c.running + moved.taken - moved.freed >= coalesce(moved.amount, 0)
        from moved
        where c.id = moved.counter
        returning moved.was_waiting and c.running < coalesce(moved.amount, 0) as woken_here
    )
    select coalesce(bool_or(woken_here), false) into woken from changed;
    if woken then
        perform pg_notify('errands_jobs', queue)
        from (select distinct queue from old_rows where slots is not null) as queues;
    end if;
    return null;
end
$$;

create trigger errands_jobs_count_slots
    after update on errands_jobs
    referencing old table as old_rows new table as new_rows
    for each statement execute function errands_count_slots();

create trigger errands_jobs_count_slots_on_delete
    after delete on errands_jobs
    referencing old table as old_rows
    for each statement execute function errands_count_slots();

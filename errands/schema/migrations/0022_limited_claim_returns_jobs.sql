-- older code: runs (the same functions, cheaper for a claim under one full limit)
-- A claim under one full limit, once more (migrations 0012, 0015 and 0021 tell its story).
-- Measured with pg_stat_statements on one connection, two owners alternating claims of 25
-- jobs under a limit of 50 (every counter full: a drain's steady state):
-- * the due jobs were locked by errands_due_jobs, which packed them into four arrays (four
--   sorts), to be unpacked by a second query: 250-270 us a claim together; when every
--   counter is full the room is known before they are read, so they are now returned as
--   they are read, by errands_due_rows (errands_due_jobs now packs that function's rows,
--   for the path that reads them before locking the counters);
-- * the group's counters and their room were read by two queries: now one;
-- * the slot trigger scanned the statement's new rows twice, once for rates: now once.
-- The full limit's path runs seven statements where it ran nine. By pg_stat_statements in
-- that loop, two alternated pairs: the due jobs 255 and 111 us a claim, where
-- errands_due_jobs and the unpacking cost 318 and 224. The backend's CPU per claim, three series of twelve alternated pairs
-- (bench/claim_costs.py), moved by -73, -319 and +40 us: less than the noise there.
-- Everything else is 0021's, restated because a function is replaced whole.


-- The due jobs of one group, locked (skip locked), best first, numbered in that order: the
-- one query that reads them, for the path that returns them as they are and for
-- errands_due_jobs, which keeps them in arrays for the path that reads them before it
-- locks the counters. PL/pgSQL keeps its plan for the session (a SQL function's would be
-- planned anew at every claim).
create function errands_due_rows(job_queue text, job_group text, wanted integer,
                                 unlimited bigint[])
returns table (id bigint, task text, priority integer, run_at timestamptz, turn bigint)
language plpgsql volatile rows 10
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    return query
    select job.id, job.task, job.priority, job.run_at,
           row_number() over (order by job.priority desc, job.run_at, job.id)
    from (
        select job.id, job.task, job.priority, job.run_at from errands_jobs as job
        where job.queue = job_queue and job.limit_group = job_group
          and job.state in ('pending', 'failed') and job.run_at <= now()
          and job.id <> all(coalesce(unlimited, '{}'))
        order by job.priority desc, job.run_at, job.id
        limit wanted
        for update skip locked
    ) as job;
end
$$;

create or replace function errands_due_jobs(job_queue text, job_group text, wanted integer,
                                            unlimited bigint[],
                                            out ids bigint[], out tasks text[],
                                            out priorities integer[], out run_ats timestamptz[])
language plpgsql volatile
set plan_cache_mode = force_generic_plan
as $$
begin
    select array_agg(due.id order by due.turn), array_agg(due.task order by due.turn),
           array_agg(due.priority order by due.turn), array_agg(due.run_at order by due.turn)
    into ids, tasks, priorities, run_ats
    from errands_due_rows(job_queue, job_group, wanted, unlimited) as due;
end
$$;

create or replace function errands_admit_limited(queues text[], wanted integer, async_tasks text[],
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
    groups_waiting integer;
    one_queue text;
    one_group text;
    another_group boolean;
    one_counters bigint[];
    one_keyless boolean;
    one_room bigint;
    one_spare bigint;
    one_full bigint[];
    one_found integer;
    one_served timestamptz;
    one_at timestamptz;
    one_ids bigint[];
    one_tasks text[];
    one_priorities integer[];
    one_run_ats timestamptz[];
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
    if wanted <= 0 then
        return;
    end if;
    -- The last limited group with jobs waiting in each queue, read from the far end of the
    -- claimable index (its worst job), and whether another group comes before it: one
    -- index descent each. Read from the near end, the first group's first entries are the
    -- jobs claimed a moment ago, which no claim can mark dead while another claim's
    -- snapshot may still see them, and every claim visited their rows again (about 90
    -- buffers a claim of 24 jobs under a limit of 50).
    select count(*), min(last.queue), min(last.limit_group),
           coalesce(bool_or(other.limit_group is not null), false)
    into groups_waiting, one_queue, one_group, another_group
    from unnest(queues) as waiting(queue)
    cross join lateral (
        select job.queue, job.limit_group from errands_jobs as job
        where job.queue = waiting.queue and job.limit_group > ''
          and job.state in ('pending', 'failed')
        order by job.limit_group desc, job.priority, job.run_at desc, job.id desc
        limit 1
    ) as last
    left join lateral (
        select job.limit_group from errands_jobs as job
        where job.queue = last.queue and job.limit_group > ''
          and job.limit_group < last.limit_group and job.state in ('pending', 'failed')
        order by job.limit_group desc, job.priority, job.run_at desc, job.id desc
        limit 1
    ) as other on true;
    if groups_waiting = 0 then
        return;
    end if;
    -- One group, without key arguments, alone in its queue: no order among groups to keep,
    -- no key value to read from it. When each of its limits is a concurrency limit without a
    -- key whose counter exists, the claim reads their room, locks that many due jobs, then
    -- the counters (with the ones this statement's completions free, all in id order), and
    -- keeps the jobs that fit: a few small statements instead of the query below, which the
    -- executor sets up anew, some thirty parts of it, at every claim (a drain under one
    -- limit claims after every batch).
    if groups_waiting = 1 and not another_group and strpos(one_group, chr(31)) = 0 then
        -- The group's limits and their counters, with their room as last committed (a guess:
        -- not locked yet) counting the slots this statement's completions free.
        select array_agg(counter.id order by counter.id),
               coalesce(bool_and(l.kind = 'concurrency' and l.key is null
                                 and counter.id is not null), false),
               min(l.amount - counter.running
                   + (select count(*) from unnest(freed) as slot where slot = counter.id)),
               max(l.amount - counter.running), min(counter.served_at)
        into one_counters, one_keyless, one_room, one_spare, one_served
        from errands_limits as l
        left join errands_limit_counters as counter
            on (counter.scope, counter.name, counter.kind, counter.value)
               = (l.scope, l.name, l.kind, '')
        where (l.scope = 'task' and l.name = one_group)
           or (l.scope = 'queue' and l.name = one_queue);
        if one_keyless then
            if one_room > 0 and one_spare <= 0 then
                -- Every counter full: the room is what this statement's completions free of
                -- each counter, whatever commits meanwhile, and the jobs taken back into it
                -- need neither the counters' locks nor their write (the trigger is told).
                -- After the completions' finished_at (now()): the recorded attempts of a
                -- slot taken back never overlap.
                one_at := clock_timestamp();
                return query
                select due.id, due.task = any(async_tasks), due.priority, due.turn, one_served,
                       due.run_at, one_counters, null::bigint[], one_at,
                       null::double precision, false
                from errands_due_rows(
                    one_queue, one_group, least(one_room, wanted)::integer, unlimited) as due;
                if found then
                    perform set_config('errands.unread_counters', one_counters::text, true);
                end if;
                return;
            else
                if one_room > 0 then
                    select * into one_ids, one_tasks, one_priorities, one_run_ats
                    from errands_due_jobs(
                        one_queue, one_group, least(one_room, wanted)::integer, unlimited);
                end if;
                perform from errands_limit_counters as counter
                where counter.id = any(one_counters || coalesce(freed, '{}'))
                order by counter.id
                for update;
                -- Claims that share a counter read it in the order they lock it.
                one_at := clock_timestamp();
                select min(l.amount - counter.running
                           + (select count(*) from unnest(freed) as slot where slot = counter.id)),
                       array_agg(counter.id) filter (
                           where l.amount - counter.running
                                 + (select count(*) from unnest(freed) as slot
                                    where slot = counter.id) <= 0),
                       min(counter.served_at), count(*)
                into one_room, one_full, one_served, one_found
                from errands_limit_counters as counter
                join errands_limits as l
                    on (l.scope, l.name, l.kind) = (counter.scope, counter.name, counter.kind)
                where counter.id = any(one_counters);
                if one_found < cardinality(one_counters) then
                    -- A limit deleted or changed meanwhile: the next claim reads it again.
                    return query
                    select null::bigint, null::boolean, null::integer, null::bigint,
                           null::timestamptz, null::timestamptz, null::bigint[], null::bigint[],
                           one_at, 0.0::double precision, false;
                    return;
                end if;
                if one_room > 0 and one_ids is null then
                    -- It was full when read, and a slot has freed since: the jobs are read now.
                    select * into one_ids, one_tasks, one_priorities, one_run_ats
                    from errands_due_jobs(
                        one_queue, one_group, least(one_room, wanted)::integer, unlimited);
                end if;
            end if;
            if one_room > 0 and one_ids is not null then
                -- Best first (the order they were read in); those past the room stay pending.
                return query
                select picked.id, picked.task = any(async_tasks), picked.priority, picked.turn,
                       one_served, picked.run_at, one_counters, null::bigint[], one_at,
                       null::double precision, false
                from unnest(one_ids, one_tasks, one_priorities,
                            one_run_ats) with ordinality
                    as picked(id, task, priority, run_at, turn)
                where picked.turn <= one_room;
                return;
            end if;
            if one_room <= 0 and (one_ids is not null or exists (
                select from errands_jobs as job
                where job.queue = one_queue and job.limit_group = one_group
                  and job.state in ('pending', 'failed') and job.run_at <= now()
                order by job.priority desc, job.run_at, job.id limit 1))
            then
                -- Full while due jobs wait: a slot these free wakes this claim's worker.
                update errands_limit_counters as counter
                set waiting = true
                where counter.id = any(one_full) and not counter.waiting;
            end if;
            return query
            select null::bigint, null::boolean, null::integer, null::bigint,
                   null::timestamptz, null::timestamptz, null::bigint[], null::bigint[],
                   one_at, null::double precision, false;
            return;
        end if;
    end if;
    -- Several groups, keys or rates: the general admission, as migration 0012 wrote it.
    return query
    select * from errands_admit_groups(queues, wanted, async_tasks, freed, unlimited);
end
$$;

-- The slot trigger, restated with its shortcut's check in one scan of each side.
create or replace function errands_count_slots() returns trigger language plpgsql as $$
declare
    woken boolean;
    moved_counters bigint[];
    moved_taken integer[];
    moved_freed integer[];
    moved_logged integer[];
    moved_at timestamptz[];
    unread bigint[];
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
    -- A claim sets the counters of the attempts it starts; the statements that end attempts
    -- leave them as they were.
    if not exists (select from new_rows where slots is not null or rates is not null)
       and not exists (select from old_rows where slots is not null) then
        return null;
    end if;
    -- The counters a claim of this statement took slots back in without reading them
    -- (errands_admit_limited): where its moves cancel out, the counter is left as it is.
    unread := nullif(current_setting('errands.unread_counters', true), '')::bigint[];
    if unread is not null then
        perform set_config('errands.unread_counters', '', true);
        -- When every counter the statement's attempts name is one of those and takes back
        -- exactly the slots it gave up (a drain under one full limit, nearly every claim),
        -- no counter changes. Told without joining the old rows to the new: the one
        -- statement that sets the setting (the claim) moves rows into in_progress or out
        -- of it, never within it.
        -- (A rate's counter, counted on the taken side only, never nets to zero: an attempt
        -- a rate admits is always logged by the general path below.)
        if not exists (
               select from (
                   select slot, 1 from new_rows
                   cross join unnest(new_rows.slots || new_rows.rates) as slot
                   where new_rows.state = 'in_progress'
                   union all
                   select slot, -1 from old_rows cross join unnest(old_rows.slots) as slot
                   where old_rows.state = 'in_progress'
               ) as move (counter, taken)
               group by move.counter
               having sum(move.taken) <> 0 or not (move.counter = any(unread)))
        then
            return null;
        end if;
    end if;
    select array_agg(move.counter order by move.counter),
           array_agg(move.taken order by move.counter),
           array_agg(move.freed order by move.counter),
           array_agg(move.logged order by move.counter),
           array_agg(move.at order by move.counter)
    into moved_counters, moved_taken, moved_freed, moved_logged, moved_at
    from (
        select each.counter, sum(each.taken)::integer as taken,
               sum(each.freed)::integer as freed, sum(each.logged)::integer as logged,
               max(each.at) as at
        from new_rows as n join old_rows as o using (id)
        cross join lateral (
            select slot, 1, 0, 0, n.started_at from unnest(n.slots) as slot
            where n.state = 'in_progress'
            union all
            select rate, 0, 0, 1, n.started_at from unnest(n.rates) as rate
            where n.state = 'in_progress'
            union all
            select slot, 0, 1, 0, null::timestamptz from unnest(o.slots) as slot
            where o.state = 'in_progress'
        ) as each (counter, taken, freed, logged, at)
        where (n.state = 'in_progress') <> (o.state = 'in_progress')
        group by each.counter
        having not (each.counter = any(coalesce(unread, '{}'))
                    and sum(each.taken) = sum(each.freed) and sum(each.logged) = 0)
    ) as move;
    if moved_counters is null then
        return null;
    end if;
    -- Locked in id order, as claims lock them, so that neither waits on the other in a cycle.
    perform from errands_limit_counters as c where c.id = any(moved_counters) order by c.id for update;
    with moved as (
        select move.counter, move.taken, move.freed, move.logged, move.at, l.amount,
               l.per_seconds, c.waiting as was_waiting
        from unnest(moved_counters, moved_taken, moved_freed, moved_logged, moved_at)
            as move (counter, taken, freed, logged, at)
        join errands_limit_counters as c on c.id = move.counter
        left join errands_limits as l on (l.scope, l.name, l.kind) = (c.scope, c.name, c.kind)
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

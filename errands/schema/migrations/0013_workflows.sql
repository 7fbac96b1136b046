-- older code: stops (a job may now be `waiting`, a state older code cannot read)
-- Workflows: jobs that wait for other jobs (docs/guides/workflows.md; docs/guides/workflows.md).
--
-- Nothing below compares a column with the new state 'waiting' outside a function body:
-- migrations run in one transaction, and PostgreSQL refuses a value ADD VALUE created
-- until that transaction commits (an index predicate or a check naming it would fail on an
-- upgraded database). Function bodies are read when they run.
alter type errands_job_state add value if not exists 'waiting' before 'pending';

alter table errands_jobs
    -- The jobs it runs after (null: none), in the order given. Kept after the hand-over:
    -- current_job().parents reads their results, a retry counts them again.
    add column parents bigint[],
    -- While waiting: how many of its parents have not completed yet. The statement that
    -- completes the last one (or fails one, under on_parent_failure = 'run') makes it
    -- pending; see errands_hand_over below.
    add column waiting_for integer not null default 0,
    -- What a parent ending dead or cancelled does to it: 'cancel' it (and its waiting
    -- descendants), or count as done ('run').
    add column on_parent_failure text not null default 'cancel',
    -- The parent whose failure cancelled it: a retry of that parent re-arms it.
    add column cancelled_by bigint,
    -- The workflow it was stored with (errands_workflow_ids), if any.
    add column workflow_id bigint,
    add constraint errands_jobs_parents_given check (cardinality(parents) >= 1),
    add constraint errands_jobs_waiting_for check (waiting_for >= 0),
    add constraint errands_jobs_on_parent_failure check (on_parent_failure in ('cancel', 'run'));

create sequence errands_workflow_ids as bigint;

-- Unique keys: a waiting job is live (it will run), so it holds its key as a pending one
-- does. Written without naming 'waiting' (see above): every state but the final ones.
drop index errands_jobs_unique_key;
create unique index errands_jobs_unique_key on errands_jobs (unique_key)
    where unique_key is not null and state not in ('completed', 'dead', 'cancelled');

-- The children of a parent, for the hand-over: only jobs with parents are indexed, so a
-- job without costs its insert nothing here. Written through at once (no pending list): the
-- hand-over looks children up in the commit of every completion that has some.
create index errands_jobs_children on errands_jobs using gin (parents) with (fastupdate = off)
    where parents is not null;

create index errands_jobs_workflow on errands_jobs (workflow_id, id) where workflow_id is not null;

create index errands_jobs_cancelled_by on errands_jobs (cancelled_by) where cancelled_by is not null;

-- Whether any of these jobs has children, through the index of children. The planner would
-- rather scan the table, betting that EXISTS stops at an early match: it never does when
-- there is none, which is the common case, so scans are ruled out here.
create function errands_has_children(ids bigint[]) returns boolean
language sql stable set enable_seqscan = off as $$
    select exists (select from errands_jobs where parents && ids)
$$;

-- Which of these jobs other jobs wait for: a claim answers it for the jobs it takes, so a
-- worker sends the completion of one at once rather than in its next batch (a chain then
-- runs a step per round trip). One index probe per claim; PL/pgSQL keeps its plan.
create function errands_awaited(ids bigint[]) returns bigint[]
language plpgsql stable set enable_seqscan = off as $$
begin
    if ids is null then
        return '{}';
    end if;
    return array(
        select distinct parent.id
        from errands_jobs as c cross join lateral unnest(c.parents) as parent(id)
        where c.parents && ids and c.state = 'waiting' and parent.id = any(ids)
    );
end
$$;

-- The hand-over: what the ending of jobs does to the jobs waiting for them, in the statement
-- that ends them (a completion batch, complete_in, a failure, the release of an exited
-- worker's jobs, the reaper, a cancel, and any added later), so nothing polls and a child is
-- claimable in the commit that completes its last parent.
--
-- * A parent completed: each waiting child counts it done; one left with none to wait for is
--   pending (due now at the earliest) and idle workers are woken.
-- * A parent ended dead or cancelled: each waiting child with on_parent_failure = 'run'
--   counts it done; every other one is cancelled, naming the parent, and so on down: each
--   cancelled child fails its own waiting children in turn.
-- * A dead or cancelled job retried (pending again): the jobs its failure cancelled wait
--   again for their parents not completed (still cancelled, naming it, when another parent
--   is dead or cancelled), and so on down; a retried job that has parents waits for those
--   still live (a retry runs it whatever became of the others).
--
-- Safe under READ COMMITTED against a child enqueued at the same moment: an enqueue locks
-- the parents it names FOR SHARE, which the UPDATE ending a parent waits for, and counts
-- the parents not completed as it finds them once they are locked. Either the enqueue
-- locked first, and this function (whose every query takes a fresh snapshot, after the
-- statement's own changes) sees the child once the enqueue committed; or the ending locked
-- first, and the enqueue sees the parent as it ended and never counts it.
--
-- Cheap when no job has parents or children: most statements (claims, heartbeats) end no
-- job and leave at the first query over the rows they changed; completions look their
-- ended jobs up in the index of children once, and leave when none has any. The generations of a cascade are handled here
-- in a loop, not by triggers nesting once per generation (a chain of 10,000 would run out
-- of stack): the updates below fire this trigger again, and it leaves at once.
create function errands_hand_over() returns trigger language plpgsql as $$
declare
    ended bigint[];
    maybe_retried boolean;
    completed bigint[];
    failed bigint[];
    retried bigint[];
begin
    select array_agg(id) filter (where state in ('completed', 'dead', 'cancelled')),
           bool_or(state = 'pending')
    into ended, maybe_retried
    from new_rows;
    if ended is null and not maybe_retried then
        return null;  -- a claim, a heartbeat: nothing ended, nothing retried
    end if;
    if current_setting('errands.handing_over', true) = 'on' then
        return null;  -- an update made by the loop below, which sees to its effects
    end if;
    if not maybe_retried and not errands_has_children(ended) then
        return null;  -- jobs ended that no job waits for: the common case, one index probe
    end if;
    select array_agg(n.id) filter (where n.state = 'completed'),
           array_agg(n.id) filter (where n.state in ('dead', 'cancelled')),
           array_agg(n.id) filter (where n.state = 'pending' and o.state in ('dead', 'cancelled'))
    into completed, failed, retried
    from new_rows as n join old_rows as o using (id)
    where n.state <> o.state;
    if completed is null and failed is null and retried is null then
        return null;
    end if;
    perform set_config('errands.handing_over', 'on', true);
    while completed is not null or failed is not null or retried is not null loop
        select moved.failed_next, moved.retried_next into failed, retried
        from errands_move_children(completed, failed, retried) as moved;
        completed := null;
    end loop;
    perform set_config('errands.handing_over', '', true);
    return null;
end
$$;

-- One generation of the hand-over (errands_hand_over): the jobs it cancelled and those it
-- re-armed, the next generation's failed and retried parents.
-- Children are read through their indexes alone (as errands_has_children says why).
create function errands_move_children(completed bigint[], failed bigint[], retried bigint[],
                                      out failed_next bigint[], out retried_next bigint[])
language plpgsql set enable_seqscan = off as $$
declare
    ended bigint[] := coalesce(completed, '{}') || coalesce(failed, '{}');
begin
    if cardinality(ended) > 0 then
        with child as (
            select c.id,
                   count(*) filter (where p.id = any(completed) or c.on_parent_failure = 'run')
                       as done,
                   min(p.id) filter (where p.id = any(failed) and c.on_parent_failure = 'cancel')
                       as doomed_by
            from errands_jobs as c
            cross join lateral unnest(c.parents) as p(id)
            where c.parents && ended and c.state = 'waiting' and p.id = any(ended)
            group by c.id
        ),
        -- In id order, as every hand-over locks children: two completing statements that
        -- share children never wait for each other in a cycle. A child changed meanwhile
        -- (another parent's completion) is re-read as it is now.
        -- The children locked carry what the update needs: joining the two CTEs instead
        -- compared every child with every other (a fan-out of 10,000 took 15 s).
        locked as (
            select c.id, child.done, child.doomed_by
            from errands_jobs as c join child using (id)
            where c.state = 'waiting'
            order by c.id
            for no key update of c
        ),
        moved as (
            update errands_jobs as c
            set state = (case when child.doomed_by is not null then 'cancelled'
                              when c.waiting_for <= child.done then 'pending'
                              else 'waiting' end)::errands_job_state,
                waiting_for = case when child.doomed_by is not null then c.waiting_for
                                   else greatest(c.waiting_for - child.done, 0) end,
                cancelled_by = child.doomed_by,
                last_error = case when child.doomed_by is null then c.last_error
                    else format('parent job %s ended %s', child.doomed_by,
                                (select p.state from errands_jobs as p
                                 where p.id = child.doomed_by)) end,
                finished_at = case when child.doomed_by is not null then now() end,
                run_at = case when child.doomed_by is null and c.waiting_for <= child.done
                              then greatest(c.run_at, now()) else c.run_at end,
                updated_at = now()
            from locked as child
            where c.id = child.id and c.state = 'waiting'
            returning c.id, c.state, c.queue
        ),
        woken as (
            select pg_notify('errands_jobs', queue)
            from (select distinct queue from moved where state = 'pending') as queues
        )
        select array_agg(moved.id) filter (where moved.state = 'cancelled')
        into failed_next
        from moved cross join (select count(*) from woken) as every_notification;
    end if;
    if retried is not null then
        with victim as (
            -- Cancelled by a retried parent's failure; each waits again for its parents
            -- not completed, or stays cancelled, naming the first still dead or cancelled.
            select c.id,
                   count(*) filter (where p.state <> 'completed') as waiting_for,
                   min(p.id) filter (where p.state in ('dead', 'cancelled')) as doomed_by
            from errands_jobs as c
            cross join lateral unnest(c.parents) as parent(id)
            left join errands_jobs as p on p.id = parent.id
            where c.cancelled_by = any(retried) and c.state = 'cancelled'
              -- One whose unique key another live job took meanwhile stays cancelled.
              and not exists (
                  select from errands_jobs as live
                  where live.unique_key = c.unique_key
                    and live.state not in ('completed', 'dead', 'cancelled'))
            group by c.id
            union all
            -- Retried itself: waits for its parents still live, whatever became of the others.
            select c.id,
                   count(*) filter (where p.state in ('waiting', 'pending', 'failed', 'in_progress')),
                   null
            from errands_jobs as c
            cross join lateral unnest(c.parents) as parent(id)
            left join errands_jobs as p on p.id = parent.id
            where c.id = any(retried) and c.parents is not null
            group by c.id
        ),
        locked as (  -- carrying what the update needs, as in the hand-over above
            select c.id, victim.waiting_for, victim.doomed_by
            from errands_jobs as c join victim using (id)
            order by c.id
            for no key update of c
        ),
        moved as (
            update errands_jobs as c
            set state = (case when victim.doomed_by is not null then 'cancelled'
                              when victim.waiting_for > 0 then 'waiting'
                              else 'pending' end)::errands_job_state,
                waiting_for = victim.waiting_for,
                cancelled_by = case when victim.doomed_by is not null then victim.doomed_by end,
                finished_at = case when victim.doomed_by is not null then c.finished_at end,
                run_at = case when victim.doomed_by is null then greatest(c.run_at, now())
                              else c.run_at end,
                updated_at = now()
            from locked as victim
            where c.id = victim.id
            returning c.id, c.state, c.queue, (c.id = any(retried)) as itself
        ),
        woken as (
            select pg_notify('errands_jobs', queue)
            from (select distinct queue from moved where state = 'pending') as queues
        )
        select array_agg(moved.id) filter (where moved.state <> 'cancelled' and not moved.itself)
        into retried_next
        from moved cross join (select count(*) from woken) as every_notification;
    end if;
end
$$;

create trigger errands_jobs_hand_over
    after update on errands_jobs
    referencing old table as old_rows new table as new_rows
    for each statement execute function errands_hand_over();

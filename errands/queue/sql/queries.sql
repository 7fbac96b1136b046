-- The statements that read and move jobs, one per operation.
-- Every statement that changes a running job's state is fenced: it matches the
-- job's id, its attempt number, the lease owner and state = 'in_progress', so a
-- worker whose lease was taken away changes nothing.

-- name: enqueue
-- Insert one job (errands_enqueue_job, migrations 0014 and 0020 say how and why by a
-- procedure); its id is null when its idempotency key is already stored, or a live job
-- holds its unique key: then enqueue_replay, enqueue_replace or enqueue_unique read the
-- stored job. The nulls at the end stand for the procedure's answer (its out arguments).
-- enqueue_many's COPY could serve one job too, but costs four round trips
-- where this statement needs one.
call errands_enqueue_job(%(task)s, %(queue)s, %(payload)s, %(priority)s::int4, %(run_at)s,
                         %(delay)s::float8, %(max_attempts)s::int4, %(idempotency_key)s,
                         %(trace_context)s, %(unique_key)s, null, null, null, null);

-- name: enqueue_replay
-- The stored job holding a key that enqueue found taken (created = false),
-- with whether it was submitted as the same request. No row: the job was
-- pruned since, and its key is free again.
-- jsonb compares numbers by value: 1e23 in the request equals the stored 100000000000000000000000.
select false as created, (task, queue, payload) = (%(task)s, %(queue)s, %(payload)s::jsonb)
       as same_request, *
from errands_jobs
where idempotency_key = %(idempotency_key)s;

-- name: enqueue_unique
-- The live job holding a unique key that enqueue found taken. No row: it finished
-- since, and the key is free again.
select false as created, true as same_request, * from errands_jobs
where unique_key = %(unique_key)s and state not in ('completed', 'dead', 'cancelled');

-- name: enqueue_replace
-- on_conflict = replace: the still pending job of the same task holding the unique
-- key takes the request's payload and run_at (a debounce), and is filed anew under
-- its limits. Idle workers are woken, as for a new job. No row: none such.
with replaced as (
    update errands_jobs as job
    set payload = %(payload)s,
        run_at = coalesce(%(run_at)s, now() + make_interval(secs => coalesce(%(delay)s::float8, 0))),
        limit_group = case when (select exists (select from errands_limits))
                           then errands_limit_group(job.queue, job.task, %(payload)s::jsonb)
                           else '' end,
        updated_at = now()
    where job.unique_key = %(unique_key)s and job.state = 'pending' and job.task = %(task)s
    returning job.*
)
select false as created, true as same_request, replaced.*,
       pg_notify('errands_jobs', replaced.queue)::text as notified
from replaced;

-- name: stage_jobs
-- enqueue_many's staging table: private to the session, emptied at every commit,
-- and emptied here too for a batch that follows another in the caller's
-- transaction. Created in the transaction that uses it, so it works on any
-- server connection a pooler hands out. A new shape takes a new name: through a
-- pooler, a server connection may keep the table an older errands created.
create temp table if not exists errands_staged_jobs_v3 (
    n                 integer not null,  -- the request's place in its batch
    task              text not null,
    queue             text not null,
    payload           jsonb not null,
    priority          integer not null,
    run_at            timestamptz,
    max_attempts      integer not null,
    idempotency_key   text,
    trace_context     jsonb,
    unique_key        text,
    on_conflict       text not null,
    -- Workflows: the id a workflow's job was given (allocate_workflow), else null; the
    -- ids of its parents; what a failed parent does to it; its workflow.
    id                bigint,
    parents           bigint[],
    on_parent_failure text not null,
    workflow_id       bigint
) on commit delete rows;
delete from errands_staged_jobs_v3;
-- The time every new job of the batch gets as created_at and updated_at (and
-- as run_at when it names none): now() is the transaction's start.
select now();

-- name: copy_staged
copy errands_staged_jobs_v3
    (n, task, queue, payload, priority, run_at, max_attempts, idempotency_key, trace_context,
     unique_key, on_conflict, id, parents, on_parent_failure, workflow_id)
from stdin;

-- name: enqueue_staged
-- Move a staged batch into the jobs table, as enqueue does for one job, in
-- submission order (ids grow with n, and the first request naming a key wins).
-- A new row comes back as its id, its keys and its payload as stored (jsonb may
-- write a number otherwise than the request did); the rest of it is the request
-- and the time stage_jobs returned. An idempotency key already stored comes back
-- as that job's id (created = false), with whether the first request naming it
-- asked for the same job. A unique key a live job holds makes no row: the batch
-- reads it afterwards (staged_unique).
-- The batch's keys are locked first, in one order for every batch: two batches
-- naming the same keys in different orders would otherwise each take one key's
-- lock by inserting it and wait for the other's, a deadlock. Advisory locks of
-- the two-integer kind (a key space apart from the single-bigint locks of the
-- reaper and the migrator), per hash of a key, until the transaction ends; the
-- locks are taken after the sort, since PostgreSQL evaluates a volatile target
-- list after ORDER BY. Unique keys hash with a prefix of their own.
select pg_advisory_xact_lock(1701209, key_hash)
from (select distinct hashtext(idempotency_key) as key_hash
      from errands_staged_jobs_v3 where idempotency_key is not null
      union
      select hashtext('unique:' || unique_key)
      from errands_staged_jobs_v3 where unique_key is not null) as keys
order by key_hash;
with inserted as (
    insert into errands_jobs
        (id, task, queue, payload, priority, run_at, max_attempts, attempt_budget, idempotency_key,
         trace_context, unique_key, limit_group, state, parents, waiting_for, on_parent_failure,
         workflow_id)
    overriding system value
    select coalesce(id, nextval('errands_jobs_id_seq')), task, queue, payload, priority,
           coalesce(run_at, now()), max_attempts, max_attempts, idempotency_key, trace_context,
           unique_key,
           case when (select exists (select from errands_limits))
                then errands_limit_group(queue, task, payload) else '' end,
           -- Workflows: waiting for every parent; settle_children counts again those
           -- with stored parents, which may have ended already.
           (case when parents is null then 'pending' else 'waiting' end)::errands_job_state,
           parents, coalesce(cardinality(parents), 0), on_parent_failure, workflow_id
    from errands_staged_jobs_v3 order by n
    on conflict do nothing
    returning id, idempotency_key, unique_key, payload
)
select true as created, true as same_request, id, idempotency_key, unique_key, payload
from inserted
union all
select false, (job.task, job.queue, job.payload) = (first.task, first.queue, first.payload),
       job.id, job.idempotency_key, null, null
from errands_jobs as job
cross join lateral (
    select task, queue, payload from errands_staged_jobs_v3 as staged
    where staged.idempotency_key = job.idempotency_key
    order by n limit 1
) as first
where job.idempotency_key in (
    select idempotency_key from errands_staged_jobs_v3 where idempotency_key is not null
);

-- name: lock_parents
-- Workflows: the stored jobs a batch's jobs run after, locked until the batch's transaction
-- ends (in id order, as every batch locks them), each as it is once locked. FOR SHARE
-- conflicts with the UPDATE that ends a job, so an ending in flight is waited for and seen,
-- and one that comes later waits for this transaction and then sees its children (the
-- migration's errands_hand_over tells the whole story). Those missing come back as no row.
select id, state::text from errands_jobs
where id = any(%(ids)s::bigint[])
order by id
for share;

-- name: allocate_workflow
-- Workflows: a new workflow's id, and ids for its jobs in the order they are stored (so a
-- job can name the ids of its parents before any is inserted).
select nextval('errands_workflow_ids') as workflow_id,
       array(select nextval('errands_jobs_id_seq') from generate_series(1, %(jobs)s)) as ids;

-- name: settle_children
-- Workflows: the jobs just stored that run after stored jobs count again what they wait
-- for, their parents locked (lock_parents): a completed parent is done; a dead or
-- cancelled one is done for a job with on_parent_failure = 'run', and cancels any other
-- (which the hand-over trigger carries down to its waiting children). One left with
-- nothing to wait for is pending, and idle workers are woken.
with child as (
    select c.id,
           count(*) filter (where p.state <> 'completed'
                            and (c.on_parent_failure = 'cancel'
                                 or p.state not in ('dead', 'cancelled'))) as waiting_for,
           min(p.id) filter (where p.state in ('dead', 'cancelled')
                             and c.on_parent_failure = 'cancel') as doomed_by
    from errands_jobs as c
    cross join lateral unnest(c.parents) as parent(id)
    join errands_jobs as p on p.id = parent.id
    where c.id = any(%(ids)s::bigint[])
    group by c.id
),
settled as (
    update errands_jobs as c
    set state = (case when child.doomed_by is not null then 'cancelled'
                      when child.waiting_for = 0 then 'pending'
                      else 'waiting' end)::errands_job_state,
        waiting_for = child.waiting_for,
        cancelled_by = child.doomed_by,
        last_error = case when child.doomed_by is not null
                          then format('parent job %%s ended %%s', child.doomed_by,
                                      (select p.state from errands_jobs as p
                                       where p.id = child.doomed_by)) end,
        finished_at = case when child.doomed_by is not null then now() end
    from child
    where c.id = child.id and (c.waiting_for <> child.waiting_for or child.doomed_by is not null)
    returning c.id, c.state, c.queue
)
select count(*) from (
    select pg_notify('errands_jobs', queue)
    from (select distinct queue from settled where state = 'pending') as queues
) as woken;

-- name: staged_unique
-- After enqueue_staged: each unique key's last replace request of the batch replaces
-- the still pending job of its task holding the key (as enqueue_replace), then every
-- live job holding one of `keys`.
with replacing as (
    select distinct on (unique_key) unique_key, task, payload, run_at
    from errands_staged_jobs_v3
    where unique_key = any(%(keys)s::text[]) and on_conflict = 'replace'
    order by unique_key, n desc
),
replaced as (
    update errands_jobs as job
    set payload = replacing.payload,
        run_at = coalesce(replacing.run_at, now()),
        limit_group = case when (select exists (select from errands_limits))
                           then errands_limit_group(job.queue, job.task, replacing.payload)
                           else '' end,
        updated_at = now()
    from replacing
    where job.unique_key = replacing.unique_key and job.state = 'pending'
      and job.task = replacing.task
    returning job.*
)
select replaced.*, true as replaced, pg_notify('errands_jobs', replaced.queue)::text as notified
from replaced
union all
select job.*, false, null from errands_jobs as job
where job.unique_key = any(%(keys)s::text[])
  and job.state not in ('completed', 'dead', 'cancelled')
  and job.unique_key not in (select unique_key from replaced);

-- name: jobs_by_id
select * from errands_jobs where id = any(%(ids)s);

-- name: draw_job_ids
-- The ids of a batch COPYied straight into the jobs table (copy_jobs), in
-- ascending order; the transaction's time, which its jobs get as created_at
-- and updated_at (and as run_at when they name none); and whether any limit
-- exists: COPY cannot file jobs under their limit groups, so the batch then goes
-- through the staging table (enqueue_staged) and no id is drawn.
select now(),
       array(select nextval('errands_jobs_id_seq')
             from generate_series(1, case when limited then 0 else %(count)s end)),
       limited
from (select exists (select from errands_limits) as limited) as limits;

-- name: copy_jobs
copy errands_jobs
    (id, task, queue, payload, priority, run_at, max_attempts, attempt_budget, trace_context)
from stdin;

-- name: complete_and_claim
-- Store the results of finished jobs, then take claimable jobs of the given
-- queues, best first: one statement, so one round trip and one commit for both
-- (either part may be empty: no results, or a limit of 0). The two parts touch
-- disjoint rows: completions in_progress ones, the claim pending or failed ones.
--
-- The claim takes up to `limit` jobs for threads and up to `async_limit` for
-- coroutines (tasks in `async_tasks`), so a worker never takes a job no slot of
-- its kind can start at once. Rows other workers are claiming right now are
-- skipped, never waited for or shared. Paused queues are dropped from the wanted
-- list first, one primary-key probe per queue, so their jobs are never even read.
--
-- Jobs come from the two parts of the claimable index (queue, limit_group, ...):
-- * jobs no limit applies to (limit_group ''): one index range scan per queue, in
--   claim order, as before limits existed;
-- * limited jobs (docs/guides/limits.md), only when some wait in these
--   queues: errands_admit_limited (migrations 0012, 0015) finds the groups with jobs waiting,
--   serves them least recently served first, locks their jobs and the counters those
--   come under (in id order: a claim waits here for another claim or an ending
--   statement holding them, and re-reads them as they are now) and admits the jobs
--   that fit. Slots this statement's completions give back count as free already
--   (the release trigger returns them when the statement ends).
-- Each kind's free slots then go in priority order, then round robin (every
-- limited group's first job before any group's second), then age; the counters
-- take exactly the limited jobs claimed.
--
-- The answer is one row per claimed job, the job's fields by name (at least one row: a
-- claim of nothing comes back as nulls). One row, the claimed job of least id (or the
-- row of nulls), also carries what the statement did: the ids actually completed (the
-- others' leases were lost), among them those a cancel request turned cancelled,
-- `recheck_seconds`: when a claim may find jobs held back now (0: at once; a rate's
-- next free start), else null, and the ids of the claimed jobs that other jobs
-- wait for (errands_awaited). The other rows carry nulls there: a worker reads each row
-- it is sent, and a batch of 31 sent the same arrays 31 times. Fields by name, not
-- job.*: the answer keeps its shape when a migration adds a column, which a statement
-- the worker prepared before it could not survive (PostgreSQL refuses to run a cached
-- plan whose result type changed).
-- Each completion's result and progress are read from their arrays at its place in `ids`
-- (`done.place`), not joined as columns of unnest(...): an UPDATE joined to another
-- relation copies that relation's whole row with each row it changes (for the recheck of a
-- row updated concurrently), and copying results and progress took about 4 per cent of
-- PostgreSQL's CPU in a drain (perf).
with completed as (
    update errands_jobs as job
    set state = 'completed',
        result = (%(results)s::jsonb[])[done.place],
        -- Running jobs (issue 24): the last progress reported, when not stored yet.
        progress = coalesce((%(progress)s::jsonb[])[done.place], job.progress),
        finished_at = now(),
        updated_at = now(),
        lease_owner = null,
        lease_expires_at = null
    from unnest(%(ids)s::bigint[], %(attempts)s::int[]) with ordinality
        as done(id, attempts, place)
    where job.id = done.id and job.attempts = done.attempts
      and job.lease_owner = %(owner)s and job.state = 'in_progress'
    -- Running jobs (issue 24): state is `cancelled` when a cancel was requested while the
    -- attempt ran (the trigger errands_jobs_cancel_ended_attempt decides). Either way the
    -- attempt's slots go back (the trigger errands_jobs_count_slots).
    returning job.id, job.state, job.slots
),
running as (
    select wanted.queue
    from (select distinct unnest(%(queues)s::text[])) as wanted(queue)
    cross join lateral (
        select 1 where not exists (
            select from errands_queues where name = wanted.queue and paused)
    ) as unpaused
),
candidate as (
    select candidate.id, candidate.queue, candidate.task, candidate.priority, candidate.run_at,
           candidate.task = any(%(async_tasks)s::text[]) as on_loop
    from running
    cross join lateral (
        select id, queue, task, priority, run_at from errands_jobs
        where queue = running.queue and limit_group = '' and state in ('pending', 'failed')
          and run_at <= now()
        order by priority desc, run_at, id
        limit %(limit)s + %(async_limit)s
        for update skip locked
    ) as candidate
),
-- The limited jobs that fit (errands_admit_limited), and the jobs read above as no
-- limit's that a limit applies to after all (stored while it was being declared), which
-- it filed under their groups (`refile`): this claim leaves them to later ones. Only the
-- jobs read above whose task or queue a limit names are handed over for that check,
-- told from the names read already: the function would read each job's row again to
-- find out (about 150 us a claim of 31 jobs, paid by every claim once any limit exists).
limited as (
    select limited.* from errands_admit_limited(
        (select array_agg(queue) from running),
        (%(limit)s + %(async_limit)s)::integer,
        %(async_tasks)s::text[],
        (select array_agg(slot) from completed cross join unnest(completed.slots) as slot),
        (select array_agg(id) from candidate
         where candidate.task in (select name from errands_limits where scope = 'task')
            or candidate.queue in (select name from errands_limits where scope = 'queue'))
    ) as limited
    where (select exists (select from errands_limits))
),
pool as (
    select id, on_loop, priority, 1::bigint as turn, null::timestamptz as served_at, run_at,
           null::timestamptz as at, null::bigint[] as slots, null::bigint[] as rates
    from candidate
    where id not in (select id from limited where refile)
    union all
    select id, on_loop, priority, turn, served_at, run_at, at, slots, rates from limited
    where id is not null and not refile
),
claimable as (
    select id, at, slots, rates from (
        select pool.*,
               row_number() over (
                   partition by on_loop
                   order by priority desc, turn, served_at nulls first, run_at, id) as place
        from pool
    ) as ranked
    where place <= case when on_loop then %(async_limit)s else %(limit)s end
),
claimed as (
    update errands_jobs as job
    set state = 'in_progress',
        attempts = job.attempts + 1,
        lease_owner = %(owner)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        started_at = coalesce(claimable.at, now()),
        updated_at = now(),
        progress = null,  -- running jobs (issue 24): each attempt reports its own
        -- The counters the attempt comes under: the statement's trigger counts it in them.
        slots = claimable.slots,
        rates = claimable.rates
    -- Driven by unnest(array(...)), which the planner sizes at ten rows whatever it knows
    -- (a plan made for an empty table, or a generic one, would otherwise scan the table).
    from unnest(array(select id from claimable)) as picked(id)
    join claimable on claimable.id = picked.id
    where job.id = picked.id
    returning job.*
),
outcome as (
    select (select coalesce(array_agg(id), '{}') from completed) as completed_ids,
           (select coalesce(array_agg(id), '{}') from completed where state = 'cancelled')
               as cancelled_ids,
           (select errands_awaited(array_agg(id)) from claimed) as awaited_ids,
           (select min(recheck) from limited) as recheck_seconds,
           (select min(id) from claimed) as on_job
)
select case when claimed.id is not distinct from outcome.on_job then outcome.completed_ids end
           as completed_ids,
       case when claimed.id is not distinct from outcome.on_job then outcome.cancelled_ids end
           as cancelled_ids,
       case when claimed.id is not distinct from outcome.on_job then outcome.awaited_ids end
           as awaited_ids,
       case when claimed.id is not distinct from outcome.on_job then outcome.recheck_seconds end
           as recheck_seconds,
       id, queue, task, payload, state, priority, run_at, attempts, max_attempts,
       idempotency_key, unique_key, lease_owner, lease_expires_at, last_error, errors,
       result, created_at, started_at, finished_at, updated_at, trace_context,
       cancel_requested_at, progress, parents, workflow_id, on_parent_failure, cancelled_by
from outcome
left join claimed on true;

-- name: heartbeat
-- Renew every lease the owner believes it holds, storing the progress its tasks
-- reported since (null: nothing new). One row per attempt still held: whether its lease
-- was renewed, and whether a cancel of it was requested; attempts in no row were lost.
-- A row another transaction has locked is skipped, never waited for: it comes back held
-- but not renewed. An application's transaction holding the completion complete_in
-- wrote locks the row until it ends, and the renewal of every other job must not wait
-- for it.
with held as materialized (
    select job.id, held.attempts, held.progress,
           job.cancel_requested_at is not null as cancel_requested
    from unnest(%(ids)s::bigint[], %(attempts)s::int[], %(progress)s::jsonb[])
        as held(id, attempts, progress)
    join errands_jobs as job on job.id = held.id and job.attempts = held.attempts
    where job.lease_owner = %(owner)s and job.state = 'in_progress'
),
unlocked as (
    -- Fenced again on the row as it is now: a lock re-reads a row changed meanwhile.
    select job.id from errands_jobs as job
    join held on held.id = job.id
    where job.attempts = held.attempts and job.lease_owner = %(owner)s
      and job.state = 'in_progress'
    for no key update of job skip locked
),
renewed as (
    update errands_jobs as job
    set lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        progress = coalesce(held.progress, job.progress)
    from unlocked join held on held.id = unlocked.id
    where job.id = unlocked.id
    returning job.id
)
select held.id, held.cancel_requested, renewed.id is not null as renewed
from held left join renewed on renewed.id = held.id;

-- name: fail
-- Record a failed attempt: retried after `retry_in` seconds while budget is
-- left, dead once it is spent, or at once when the failure is `permanent`
-- (errands.Fail, or an exception the task does not retry). Running jobs (issue 24):
-- cancelled instead when a cancel was requested while it ran (the trigger
-- errands_jobs_cancel_ended_attempt), which the returned state says.
update errands_jobs as job
set state = (case when %(permanent)s or job.attempts >= job.max_attempts then 'dead'
                  else 'failed' end)::errands_job_state,
    run_at = case when %(permanent)s or job.attempts >= job.max_attempts then job.run_at
                  else now() + make_interval(secs => %(retry_in)s) end,
    finished_at = case when %(permanent)s or job.attempts >= job.max_attempts then now() end,
    last_error = %(error)s,
    errors = job.errors || (jsonb_build_object(
        'attempt', job.attempts, 'started_at', job.started_at, 'at', now(),
        'error', %(error)s::text, 'traceback', %(traceback)s::text)
        || case when %(permanent)s then '{"permanent": true}'::jsonb else '{}'::jsonb end),
    updated_at = now(),
    lease_owner = null,
    lease_expires_at = null
where job.id = %(id)s and job.attempts = %(attempts)s
  and job.lease_owner = %(owner)s and job.state = 'in_progress'
returning job.state::text;

-- name: reschedule
-- The task asked to run again later (errands.Retry): not a failure, so the
-- attempt is given back. Attempts never go back (they fence writes), so the
-- budget grows by one instead; last_error stays, the history records the retry.
update errands_jobs as job
set state = 'pending',
    run_at = now() + make_interval(secs => %(retry_in)s),
    max_attempts = job.max_attempts + 1,
    errors = job.errors || jsonb_build_object(
        'attempt', job.attempts, 'at', now(), 'error', %(reason)s::text,
        'retry_in', %(retry_in)s::float8),
    updated_at = now(),
    lease_owner = null,
    lease_expires_at = null
where job.id = %(id)s and job.attempts = %(attempts)s
  and job.lease_owner = %(owner)s and job.state = 'in_progress'
-- Running jobs (issue 24): `cancelled` when a cancel was requested while it ran.
returning job.state::text;

-- name: recover
-- Return lost jobs to pending (dead when their budget is spent): those of one
-- owner when `owner` is given (its process exited), else those whose lease has
-- expired. The expiry is checked in this same statement, so a lease renewed a
-- moment ago is never taken. Idle workers are woken for the returned jobs.
-- With `lock`, only when this statement wins that advisory lock (`alone`): the
-- lock ends with the statement, so a reaper whose network dies mid-way cannot
-- hold it, idle in a transaction, while every other host waits. One row per
-- recovered job, or one row of nulls but `alone`.
-- Running jobs (issue 24): a job a cancel was requested for ends cancelled instead (the
-- trigger errands_jobs_cancel_ended_attempt). The reaper skips rows locked elsewhere: an
-- application's transaction holding the completion complete_in wrote keeps its row
-- locked until it ends, and must not stall every host's reaping meanwhile (the next run
-- looks again). A release waits for such a lock instead: the exited worker's connections
-- closed with it, so its transactions are ending, and the job is released at once.
with reaper as materialized (
    select %(lock)s::bigint is null or pg_try_advisory_xact_lock(%(lock)s) as alone
), lost as (
    select id from (
        select job.id from errands_jobs as job
        where %(owner)s::text is not null
          and job.state = 'in_progress' and job.lease_owner = %(owner)s
        for no key update
    ) as released
    union all
    select id from (
        select job.id from errands_jobs as job
        where %(owner)s::text is null and (select alone from reaper)
          and job.state = 'in_progress' and job.lease_expires_at < now()
        for no key update skip locked
    ) as reaped
), recovered as (
    update errands_jobs as job
    set state = (case when job.attempts >= job.max_attempts then 'dead' else 'pending' end)::errands_job_state,
        finished_at = case when job.attempts >= job.max_attempts then now() end,
        last_error = %(reason)s,
        errors = job.errors || jsonb_build_object(
            'attempt', job.attempts, 'started_at', job.started_at, 'at', now(),
            'error', %(reason)s::text, 'worker', job.lease_owner),
        updated_at = now(),
        lease_owner = null,
        lease_expires_at = null
    from lost
    -- Locked above, each row re-read as it is now (a renewal that committed meanwhile
    -- took it out of reach): nothing changes it between that check and this write.
    where job.id = lost.id
    returning job.id, job.queue, job.task, job.state::text, job.attempts
)
select reaper.alone, recovered.*,
       case when recovered.id is not null
            then pg_notify('errands_jobs', recovered.queue)::text end as notified
from reaper left join recovered on true;

-- name: retry
-- A manual retry: a dead or cancelled job runs again with a fresh attempt
-- budget; attempts keep counting (they fence writes) and its error history stays.
-- Not while another job holding its unique key is live (the unique index would
-- refuse it too, should one come live meanwhile).
with retried as (
    update errands_jobs as job
    set state = 'pending', max_attempts = attempts + attempt_budget, run_at = now(),
        finished_at = null, updated_at = now(),
        cancel_requested_at = null,  -- running jobs (issue 24): a fresh start
        -- Workflows: no longer the work of a parent's failure; one with parents still live
        -- waits for them again (the hand-over trigger).
        cancelled_by = null
    where id = %(id)s and state in ('dead', 'cancelled')
      and not exists (
          select from errands_jobs as live
          where live.unique_key = job.unique_key
            and live.state not in ('completed', 'dead', 'cancelled'))
    returning *
)
select retried.*, pg_notify('errands_jobs', retried.queue)::text as notified
from retried;

-- name: cancel
-- A job that has not started is cancelled at once. A running one is asked to stop:
-- the request is recorded (the first one's time is kept) and its worker told on the
-- channel errands_cancel (payload: the lease owner), or by its next heartbeat when it
-- cannot listen; the job stays in_progress until the statement that ends its attempt
-- records it cancelled (the trigger errands_jobs_cancel_ended_attempt). A completion
-- committed first wins: the job is completed, and this statement matches nothing.
with stopped as (
    update errands_jobs
    set state = 'cancelled', finished_at = now(), updated_at = now(), cancelled_by = null
    where id = %(id)s and state in ('pending', 'failed', 'waiting')
    returning *
),
requested as (
    update errands_jobs
    set cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
    where id = %(id)s and state = 'in_progress'
    returning *
)
select stopped.*, null as notified from stopped
union all
select requested.*, pg_notify('errands_cancel', requested.lease_owner)::text from requested;

-- name: get
select * from errands_jobs where id = %(id)s;

-- name: finished_among
-- Which of these jobs have finished (for waiters that may have missed the notification).
select id from errands_jobs
where id = any(%(ids)s::bigint[]) and state in ('completed', 'dead', 'cancelled');

-- name: list
-- Newest first; `after` is the last id of the previous page, so pages neither
-- skip nor repeat while new jobs arrive.
select * from errands_jobs
where (%(state)s::errands_job_state is null or state = %(state)s::errands_job_state)
  and (%(queue)s::text is null or queue = %(queue)s)
  and (%(task)s::text is null or task = %(task)s)
  and (%(after)s::bigint is null or id < %(after)s)
order by id desc
limit %(limit)s;

-- name: stats
-- Live jobs are counted through their partial indexes; finished jobs are read
-- from the counters the trigger keeps, never counted row by row.
select queue, state::text, count(*) as jobs
from errands_jobs where state in ('pending', 'failed') group by queue, state
union all
select queue, state::text, count(*)
from errands_jobs where state = 'in_progress' group by queue, state
union all
select queue, state::text, count(*)
from errands_jobs where state = 'waiting' group by queue, state
union all
select queue, state::text, sum(jobs)::bigint
from errands_finished_counts group by queue, state having sum(jobs) <> 0;

-- name: oldest_pending
-- Age of the oldest job that is due and waiting, per queue.
select queue, extract(epoch from now() - min(run_at))::float8 as seconds
from errands_jobs
where state in ('pending', 'failed') and run_at <= now()
group by queue;

-- name: prune
-- Delete one bounded batch of jobs finished before the retention window. Workflows: a
-- parent stays while a child of it has not finished (its result goes to the child's
-- current_job().parents); an enqueue naming a parent locks it (lock_parents), which the
-- lock here skips.
with expired as (
    select id from errands_jobs as job
    where state in ('completed', 'dead', 'cancelled')
      and finished_at < now() - make_interval(secs => %(retention_seconds)s)
      and not exists (
          select from errands_jobs as child
          where child.parents && array[job.id]
            and child.state in ('waiting', 'pending', 'failed', 'in_progress'))
    order by finished_at
    limit %(batch)s
    for update skip locked
)
delete from errands_jobs as job using expired where job.id = expired.id;

-- name: worker_heartbeat
insert into errands_workers
    (id, host, pid, queues, concurrency, boot_id, pid_namespace, process_started)
values (%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s,
        %(boot_id)s, %(pid_namespace)s, %(process_started)s)
on conflict (id) do update set heartbeat_at = now();

-- name: workers_of_namespace
-- Workers recorded by processes of this kernel (boot) and pid namespace, whose
-- pids therefore name processes this one can look up.
select id, pid, process_started from errands_workers
where boot_id = %(boot_id)s and pid_namespace = %(pid_namespace)s;

-- name: worker_gone
delete from errands_workers where id = %(id)s;

-- name: live_workers
-- Workers heard from within the last lease; older rows are deleted on the way.
with forgotten as (
    delete from errands_workers
    where heartbeat_at < now() - make_interval(secs => %(silence_seconds)s)
)
select id, host, pid, queues, concurrency, started_at, heartbeat_at
from errands_workers
where heartbeat_at >= now() - make_interval(secs => %(silence_seconds)s)
order by started_at, id;

-- name: declare_schedule
-- A scheduler declares a schedule it runs: the definition is the latest
-- declared (a rolling deploy may change it); the record of ticks stays.
insert into errands_schedules as s (name, task, cron, every_seconds, tz, payload, catch_up)
values (%(name)s, %(task)s, %(cron)s, %(every_seconds)s, %(tz)s, %(payload)s, %(catch_up)s)
on conflict (name) do update
set task = excluded.task, cron = excluded.cron, every_seconds = excluded.every_seconds,
    tz = excluded.tz, payload = excluded.payload, catch_up = excluded.catch_up, seen_at = now()
returning s.declared_at, s.last_tick;

-- name: schedules_seen
update errands_schedules set seen_at = now() where name = any(%(names)s::text[]);

-- name: record_tick
-- Only ever moves forward, whichever supervisor records the tick first.
update errands_schedules
set last_tick = %(tick)s, last_job_id = %(job_id)s, last_enqueued_at = %(enqueued_at)s,
    seen_at = now()
where name = %(name)s and (last_tick is null or last_tick < %(tick)s);

-- name: list_schedules
select s.name, s.task, s.cron, s.every_seconds, s.tz, s.payload, s.catch_up, s.declared_at,
       s.seen_at, s.last_tick, s.last_job_id, s.last_enqueued_at,
       job.state::text as last_job_state, now() as now
from errands_schedules as s
left join errands_jobs as job on job.id = s.last_job_id
order by s.name;
-- name: pause_queue
-- Pausing takes effect for claims that start after it commits; jobs already
-- running finish.
insert into errands_queues as q (name, paused) values (%(name)s, true)
on conflict (name) do update set paused = true, changed_at = now()
returning name, paused, changed_at;

-- name: resume_queue
-- Idle workers are woken, as for new jobs, so the queue's waiting jobs start at once.
with resumed as (
    insert into errands_queues as q (name, paused) values (%(name)s, false)
    on conflict (name) do update set paused = false, changed_at = now()
    returning name, paused, changed_at
)
select resumed.*, pg_notify('errands_jobs', resumed.name)::text as notified from resumed;

-- name: queue_settings
select name, paused from errands_queues;

-- name: throughput
-- Jobs per minute that reached completed, failed or dead since `since`, per state.
select minute, state::text, sum(jobs)::bigint as jobs
from errands_throughput
where minute >= date_trunc('minute', %(since)s::timestamptz)
group by minute, state
order by minute;

-- name: prune_throughput
delete from errands_throughput where minute < now() - make_interval(secs => %(retention_seconds)s);

-- name: held_by_worker
-- Jobs each live worker holds now, through the index over running jobs.
select lease_owner, count(*) as jobs
from errands_jobs where state = 'in_progress'
group by lease_owner;

-- name: count_matching
-- Jobs in one state that a bulk action would touch, counted up to `cap` so
-- that a filter matching millions of finished jobs still answers at once.
-- Bulk statements take one state at a time: the (state, id) index then reads
-- that state's rows alone, in id order.
select count(*) from (
    select 1 from errands_jobs
    where state = %(state)s::errands_job_state
      and (%(queue)s::text is null or queue = %(queue)s)
      and (%(task)s::text is null or task = %(task)s)
    limit %(cap)s
) as matching;

-- name: bulk_retry
-- One batch of a bulk retry: the same change as `retry`, for up to `batch`
-- jobs in one state (dead or cancelled) matching the filter; rows locked elsewhere are left
-- for a later batch. Of jobs sharing a unique key, the newest, and none while another
-- job holding it is live. Returns how many were retried.
with chosen as (
    select id, unique_key from errands_jobs as job
    where state = %(state)s::errands_job_state
      and (%(queue)s::text is null or queue = %(queue)s)
      and (%(task)s::text is null or task = %(task)s)
      and not exists (
          select from errands_jobs as live
          where live.unique_key = job.unique_key
            and live.state not in ('completed', 'dead', 'cancelled'))
    order by id
    limit %(batch)s
    for update skip locked
),
retried as (
    update errands_jobs as job
    set state = 'pending', max_attempts = job.attempts + job.attempt_budget, run_at = now(),
        finished_at = null, updated_at = now(),
        cancel_requested_at = null,  -- running jobs (issue 24): a fresh start
        cancelled_by = null  -- workflows: as `retry`
    from (select distinct on (coalesce(unique_key, id::text)) id from chosen
          order by coalesce(unique_key, id::text), id desc) as single
    where job.id = single.id
    returning job.queue
),
notified as (
    select pg_notify('errands_jobs', queue) from (select distinct queue from retried) as queues
)
select (select count(*) from retried) as jobs, (select count(*) from notified) as queues;

-- name: bulk_cancel
-- One batch of a bulk cancel, as `cancel` does for one job.
with chosen as (
    select id from errands_jobs
    where state = %(state)s::errands_job_state
      and (%(queue)s::text is null or queue = %(queue)s)
      and (%(task)s::text is null or task = %(task)s)
    order by id
    limit %(batch)s
    for update skip locked
),
cancelled as (
    update errands_jobs as job
    set state = 'cancelled', finished_at = now(), updated_at = now(), cancelled_by = null
    from chosen
    where job.id = chosen.id
    returning job.id
)
select count(*) as jobs from cancelled;

-- name: bulk_cancel_running
-- One batch of a bulk cancel's running jobs, as `cancel` asks one to stop: the request
-- recorded on up to `batch` of them (those asked already are left as they are), each
-- worker holding some told once.
with chosen as (
    select id from errands_jobs
    where state = 'in_progress' and cancel_requested_at is null
      and (%(queue)s::text is null or queue = %(queue)s)
      and (%(task)s::text is null or task = %(task)s)
    order by id
    limit %(batch)s
    for update skip locked
),
requested as (
    update errands_jobs as job
    set cancel_requested_at = now(), updated_at = now()
    from chosen
    where job.id = chosen.id
    returning job.lease_owner
),
notified as (
    select pg_notify('errands_cancel', owner)
    from (select distinct lease_owner as owner from requested) as owners
)
select (select count(*) from requested) as jobs, (select count(*) from notified) as workers;

-- name: count_running_to_cancel
-- Running jobs a bulk cancel would ask to stop, counted up to `cap`.
select count(*) from (
    select 1 from errands_jobs
    where state = 'in_progress' and cancel_requested_at is null
      and (%(queue)s::text is null or queue = %(queue)s)
      and (%(task)s::text is null or task = %(task)s)
    limit %(cap)s
) as matching;

-- name: complete_in
-- Complete a running job inside the application's own transaction
-- (current_job().complete_in): fenced like every write of an attempt, and refused once
-- a cancel was requested (errands.Cancelled is raised, so that the application's writes
-- roll back with it). The completion holds the job's row lock until that transaction
-- ends. One row: whether the attempt still held the job and had a cancel requested
-- (null: it holds it no more), whether it was completed, and the transaction's id,
-- whose fate (pg_xact_status) the worker reads once the task has ended.
with attempt as (
    select id, cancel_requested_at is not null as cancel_requested
    from errands_jobs
    where id = %(id)s and attempts = %(attempts)s
      and lease_owner = %(owner)s and state = 'in_progress'
    for no key update
),
completed as (
    update errands_jobs as job
    set state = 'completed',
        result = %(result)s::jsonb,
        progress = coalesce(%(progress)s::jsonb, job.progress),
        finished_at = now(),
        updated_at = now(),
        lease_owner = null,
        lease_expires_at = null
    from attempt
    where job.id = attempt.id and not attempt.cancel_requested
    returning job.id
)
select (select cancel_requested from attempt) as cancel_requested,
       exists (select from completed) as completed,
       pg_current_xact_id()::text as xact;

-- name: completion_fates
-- What became of the completions written in applications' transactions (complete_in)
-- by attempts whose tasks have ended: each transaction's fate (committed, aborted,
-- `in progress`; null when too old to tell), and whether the job is still in progress
-- under that attempt, as this statement sees it (a completion rolled back to a
-- savepoint leaves it running in a committed transaction).
select held.id, pg_xact_status(held.xact::xid8)::text as fate, job.id is not null as running
from unnest(%(ids)s::bigint[], %(attempts)s::int[], %(xacts)s::text[]) as held(id, attempts, xact)
left join errands_jobs as job
    on job.id = held.id and job.attempts = held.attempts
   and job.lease_owner = %(owner)s and job.state = 'in_progress';

-- name: cancel_requests
-- Which of the attempts a worker holds have been asked to cancel: on a notification on
-- errands_cancel naming it, and every poll interval when it cannot listen.
select job.id
from unnest(%(ids)s::bigint[], %(attempts)s::int[]) as held(id, attempts)
join errands_jobs as job on job.id = held.id and job.attempts = held.attempts
where job.lease_owner = %(owner)s and job.state = 'in_progress'
  and job.cancel_requested_at is not null;

-- name: find_by_key
select * from errands_jobs where idempotency_key = %(key)s;

-- name: workflow_jobs
-- Workflows: the jobs stored with a workflow, in id order (parents before children).
select * from errands_jobs where workflow_id = %(workflow_id)s order by id;

-- name: parent_results
-- Workflows: the result of each of a job's parents still stored (current_job().parents).
select id, result from errands_jobs where id = any(%(ids)s::bigint[]);

-- Limits and unique jobs ---------------------------------------------------------------------

-- name: declare_task_limits
-- The limits code declares for `tasks` (one row per task and kind in the other
-- arrays): written when they differ from the stored ones, dropped when no longer
-- declared; an operator's rows are left alone. Returns the tasks that changed.
with declared as (
    select * from unnest(%(names)s::text[], %(kinds)s::text[], %(amounts)s::int[],
                         %(periods)s::float8[], %(keys)s::text[])
        as declared(name, kind, amount, per_seconds, key)
),
dropped as (
    delete from errands_limits as l
    where l.scope = 'task' and l.set_by = 'code' and l.name = any(%(tasks)s::text[])
      and not exists (select from declared where (declared.name, declared.kind) = (l.name, l.kind))
    returning l.name
),
written as (
    insert into errands_limits as l (scope, name, kind, amount, per_seconds, key, set_by)
    select 'task', name, kind, amount, per_seconds, key, 'code' from declared
    on conflict (scope, name, kind) do update
    set amount = excluded.amount, per_seconds = excluded.per_seconds, key = excluded.key,
        changed_at = now()
    where l.set_by = 'code'
      and (l.amount, l.per_seconds, l.key)
          is distinct from (excluded.amount, excluded.per_seconds, excluded.key)
    returning l.name
)
select name from dropped union select name from written;

-- name: refile_tasks
-- File the waiting jobs of `tasks` under the groups their limits give them now, and
-- wake idle workers (a raised or removed limit lets jobs start). A job stored while
-- this runs may keep its old group: the claim files it when it meets it.
with refiled as (
    update errands_jobs
    set limit_group = errands_limit_group(queue, task, payload)
    where task = any(%(tasks)s::text[]) and state in ('pending', 'failed')
      and limit_group <> errands_limit_group(queue, task, payload)
    returning queue
)
select pg_notify('errands_jobs', queue) from (select distinct queue from refiled) as queues
union all
select pg_notify('errands_jobs', '');

-- name: set_queue_limit
insert into errands_limits as l (scope, name, kind, amount, per_seconds, set_by)
values ('queue', %(name)s, %(kind)s, %(amount)s, %(per_seconds)s, 'operator')
on conflict (scope, name, kind) do update
set amount = excluded.amount, per_seconds = excluded.per_seconds, set_by = 'operator',
    changed_at = now();

-- name: drop_queue_limit
delete from errands_limits where scope = 'queue' and name = %(name)s and kind = %(kind)s;

-- name: refile_queue
-- As refile_tasks, for the waiting jobs of one queue.
with refiled as (
    update errands_jobs
    set limit_group = errands_limit_group(queue, task, payload)
    where queue = %(name)s and state in ('pending', 'failed')
      and limit_group <> errands_limit_group(queue, task, payload)
    returning 1
)
select pg_notify('errands_jobs', %(name)s), (select count(*) from refiled);

-- name: limits
-- Every limit with its use now: slots held, or starts within the last period, summed
-- over its key values, and how many key values use it.
select l.scope, l.name, l.kind, l.amount, l.per_seconds, l.key, l.set_by,
       coalesce(sum(case when l.kind = 'concurrency' then c.running
                         else errands_starts_since(c.started_at, c.started,
                             now() - make_interval(secs => l.per_seconds)) end), 0)::int
           as in_use,
       count(c.id) filter (where case when l.kind = 'concurrency' then c.running > 0
                                      else errands_starts_since(c.started_at, c.started,
                                          now() - make_interval(secs => l.per_seconds)) > 0
                                 end)::int as keys
from errands_limits as l
left join errands_limit_counters as c on (c.scope, c.name, c.kind) = (l.scope, l.name, l.kind)
group by l.scope, l.name, l.kind
order by l.scope desc, l.name, l.kind;

-- name: throttled
-- Due jobs held back now, per queue: those of limited groups one of whose limits
-- is full (by the counters of the group's first job's keys).
with grouped as (
    select queue, limit_group, count(*) as due, min(id) as first
    from errands_jobs
    where state in ('pending', 'failed') and run_at <= now() and limit_group > ''
    group by queue, limit_group
),
held as (
    select grouped.queue, grouped.due
    from grouped
    join errands_jobs as job on job.id = grouped.first
    where exists (
        select from errands_limits_of(job.queue, job.task, job.payload) as limits
        join errands_limit_counters as c
            on (c.scope, c.name, c.kind, c.value)
               = (limits.scope, limits.name, limits.kind, limits.value)
        where case when limits.kind = 'concurrency' then c.running >= limits.amount
                   else errands_starts_since(c.started_at, c.started,
                       now() - make_interval(secs => limits.per_seconds)) >= limits.amount end)
)
select queue, sum(due)::bigint from held group by queue;

-- name: forget_idle_counters
-- Counters nothing holds and no start within their period uses, last served before
-- the idle window (a counter never served counts from now). A claim that locks
-- one re-reads it first: a row deleted under it is made again at its next claim.
delete from errands_limit_counters as c
where c.running = 0
  and coalesce(c.served_at, now()) < now() - make_interval(secs => %(idle_seconds)s)
  and not exists (
      select from errands_limits as l
      where (l.scope, l.name, l.kind) = (c.scope, c.name, c.kind) and l.kind = 'rate'
        and errands_starts_since(c.started_at, c.started,
            now() - make_interval(secs => l.per_seconds)) > 0);

-- name: limits_of_job
-- The limits a job comes under now, with its key value for each and whether its
-- attempt holds a slot of it.
select limits.scope, limits.name, limits.kind, limits.amount, limits.per_seconds, l.key,
       limits.value, c.id = any(coalesce(job.slots, '{}')) and job.state = 'in_progress' as holds
from errands_jobs as job
cross join lateral errands_limits_of(job.queue, job.task, job.payload) as limits
join errands_limits as l on (l.scope, l.name, l.kind) = (limits.scope, limits.name, limits.kind)
left join errands_limit_counters as c
    on (c.scope, c.name, c.kind, c.value) = (limits.scope, limits.name, limits.kind, limits.value)
where job.id = %(id)s
order by limits.scope desc, limits.kind;

-- name: live_holder
-- The live job holding a unique key, other than `id`.
select id, state::text from errands_jobs
where unique_key = %(key)s and id <> %(id)s and state not in ('completed', 'dead', 'cancelled');

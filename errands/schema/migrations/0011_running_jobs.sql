-- older code: runs (two nullable columns, their checks and a trigger: code from before them never asks a running job to cancel, and reads rows by column name)
-- A running job talks to the queue (README: Running jobs).
--
-- cancel_requested_at: when a cancel of the job was asked for while it ran. The attempt
-- runs on until it ends (a coroutine is cancelled, a thread task is told), and whatever
-- ends it records the job cancelled: see the trigger below. Kept on the cancelled job as
-- the record of the request; a manual retry clears it.
--
-- progress: what the running task last reported with current_job().set_progress(), a
-- number from 0 to 1 or a small JSON object; stored at most once a second by the
-- worker's lease keeper, with the completion, and reset when an attempt starts.
alter table errands_jobs
    add column cancel_requested_at timestamptz,
    add column progress jsonb,
    add constraint errands_jobs_cancel_requested_while_running check (
        cancel_requested_at is null or state in ('in_progress', 'cancelled')
    ),
    -- errands refuses more than 2 KiB of compact JSON before it gets here (errands.limits).
    add constraint errands_jobs_progress_shape check (
        progress is null
        or (jsonb_typeof(progress) = 'number' and progress::numeric between 0 and 1)
        or (jsonb_typeof(progress) = 'object' and pg_column_size(progress) <= 8192)
    );

-- The one place that decides what an attempt ended after a cancel request becomes.
-- Every statement that ends an attempt (the completion batch, complete_in, a failure or
-- a timeout, errands.Retry's reschedule, the release of an exited worker's jobs, the
-- reaper) is fenced and computes its own next state; when a cancel was requested while
-- the attempt ran, this trigger turns that state into `cancelled`, whatever the attempt's
-- outcome: never retried, never run again. A result or an error the attempt reported is
-- kept beside it. BEFORE the row is written, so the AFTER triggers (finished counts,
-- throughput, finish notifications) and RETURNING see `cancelled`.
-- Cheap for every other update: the column list keeps it off statements that set no
-- state (heartbeats, cancel requests), and the WHEN clause is false for a claim or a
-- completion without a request before any function is called.
create function errands_cancel_ended_attempt() returns trigger language plpgsql as $$
begin
    new.state := 'cancelled';
    new.finished_at := now();
    return new;
end
$$;

create trigger errands_jobs_cancel_ended_attempt
    before update of state on errands_jobs
    for each row
    when (old.state = 'in_progress' and new.state <> 'in_progress'
          and old.cancel_requested_at is not null)
    execute function errands_cancel_ended_attempt();

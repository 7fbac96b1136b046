-- older code: runs (a new procedure; errands_enqueue answers as before, by calling it)
-- Enqueue one job by CALL. Clients send the one-job enqueue unprepared (migration 0014
-- says why), and `select * from errands_enqueue(...)` was parsed, analysed and planned
-- at every job: a function in FROM is a query to plan. CALL is a utility statement,
-- which PostgreSQL parses and runs without planning; the INSERT inside keeps the plan
-- PL/pgSQL made for it per server connection, as before. Measured on one connection
-- (2,000 statements a round, six rounds alternated, quiet machine): the select 404-465
-- us unprepared and 385-429 prepared, the CALL 381-443 unprepared.
--
-- The procedure answers one row, always: the new job's id, run_at (when it is due),
-- created_at and payload as stored; all null when the job was not inserted (its
-- idempotency key is stored, or a live job holds its unique key).
create procedure errands_enqueue_job(
    task text,
    queue text,
    payload jsonb,
    priority integer,
    run_at timestamptz,
    delay float8,
    max_attempts integer,
    idempotency_key text,
    trace_context jsonb,
    unique_key text,
    out id bigint,
    out due timestamptz,
    out created_at timestamptz,
    out stored_payload jsonb
)
language plpgsql as $$
begin
    insert into errands_jobs as job
        (task, queue, payload, priority, run_at, max_attempts, attempt_budget, idempotency_key,
         trace_context, unique_key, limit_group)
    values ($1, $2, $3, $4, coalesce($5, now() + make_interval(secs => coalesce($6, 0))),
            $7, $7, $8, $9, $10,
            case when exists (select from errands_limits)
                 then errands_limit_group($2, $1, $3) else '' end)
    on conflict do nothing
    returning job.id, job.run_at, job.created_at, job.payload
    into id, due, created_at, stored_payload;
end
$$;

-- Older code's statement, answered by the procedure: the insert is written once.
create or replace function errands_enqueue(
    task text,
    queue text,
    payload jsonb,
    priority integer,
    run_at timestamptz,
    delay float8,
    max_attempts integer,
    idempotency_key text,
    trace_context jsonb,
    unique_key text
) returns table (id bigint, due timestamptz, created_at timestamptz, stored_payload jsonb)
language plpgsql as $$
begin
    call errands_enqueue_job($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                             id, due, created_at, stored_payload);
    if id is not null then
        return next;
    end if;
end
$$;

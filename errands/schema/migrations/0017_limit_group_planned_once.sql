-- older code: runs (the same function, planned once per session)
-- The limit group of a job (migration 0012 says what it is), asked by every enqueue once
-- any limit exists. As a SQL function whose answer holds sub-selects it could not be
-- inlined, and PostgreSQL planned it at every call: one enqueue of one job cost its server
-- about 0.45 ms of CPU instead of 0.30 (the planning alone, a third of it). In PL/pgSQL,
-- which keeps its plans for the session, the same answer.
create or replace function errands_limit_group(job_queue text, job_task text, job_payload jsonb)
returns text language plpgsql stable parallel safe as $$
begin
    if exists (select from errands_limits where scope = 'task' and name = job_task) then
        return job_task || coalesce((
            select string_agg(chr(31) || key || '=' || errands_limit_value(job_payload, key),
                              '' order by key)
            from (select distinct key from errands_limits
                  where scope = 'task' and name = job_task and key is not null) as keys), '');
    end if;
    if exists (select from errands_limits where scope = 'queue' and name = job_queue) then
        return job_task;
    end if;
    return '';
end
$$;

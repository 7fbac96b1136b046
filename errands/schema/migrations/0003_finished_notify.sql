-- Tell waiters (Client.wait, GET /jobs/{id}?wait=) when jobs finish: one
-- notification per statement on the channel errands_finished, whose payload is
-- the comma-separated ids of the jobs the statement left completed, dead or
-- cancelled, in chunks of 300 ids (a payload must stay under 8000 bytes).
-- Delivered at commit, so a waiter that hears it reads the finished job.
create function errands_notify_finished() returns trigger language plpgsql as $$
begin
    perform pg_notify('errands_finished', string_agg(id::text, ',' order by id))
    from (
        select id, (row_number() over (order by id) - 1) / 300 as chunk
        from new_rows
        where state in ('completed', 'dead', 'cancelled')
    ) finished
    group by chunk;
    return null;
end
$$;

create trigger errands_jobs_notify_finished
    after update on errands_jobs
    referencing new table as new_rows
    for each statement execute function errands_notify_finished();

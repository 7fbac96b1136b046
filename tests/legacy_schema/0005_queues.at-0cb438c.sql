-- Queue control and the dashboard's throughput chart.

-- Queues an operator has paused. A queue needs no row to exist (jobs name
-- their queue freely); a row appears the first time it is paused and stays,
-- with paused = false, once resumed, to record who changed it last and when.
create table errands_queues (
    name       text primary key,
    paused     boolean not null,
    changed_at timestamptz not null default now(),

    constraint errands_queues_name check (name ~ '^[A-Za-z0-9_.:-]{1,200}$')
);

-- Jobs that reached completed, failed or dead, per minute, queue and state,
-- kept by trigger so that the dashboard's chart reads at most an hour of small
-- rows instead of scanning finished jobs. Sharded by backend, like
-- errands_finished_counts, so that concurrent workers never wait on one row.
create table errands_throughput (
    minute timestamptz not null,
    queue  text not null,
    state  errands_job_state not null,
    shard  smallint not null,
    jobs   bigint not null,
    primary key (minute, queue, state, shard)
);

-- Counts the rows a statement moved into completed, failed or dead; a row that
-- was already in that state before the statement is not counted again.
create function errands_count_throughput() returns trigger language plpgsql as $$
begin
    insert into errands_throughput as t (minute, queue, state, shard, jobs)
    select date_trunc('minute', now()), n.queue, n.state, pg_backend_pid() % 16, count(*)
    from new_rows n join old_rows o on o.id = n.id
    where n.state in ('completed', 'failed', 'dead') and o.state is distinct from n.state
    group by n.queue, n.state
    on conflict (minute, queue, state, shard) do update set jobs = t.jobs + excluded.jobs;
    return null;
end
$$;

create trigger errands_jobs_count_throughput
    after update on errands_jobs
    referencing old table as old_rows new table as new_rows
    for each statement execute function errands_count_throughput();

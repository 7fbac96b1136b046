-- The same task and queue name checks as 0001, written so that PostgreSQL can
-- afford them on every insert. A bounded repetition such as {0,199} makes its
-- regular expression engine walk a 200-state automaton per row: measured on a
-- 1,000-row insert, the two checks took 60 % of the statement (80 ms of 120 ms
-- on a loaded 2-core machine; 25 ms with the forms below). An unbounded
-- repetition and a length() bound accept exactly the same names.

alter table errands_jobs
    drop constraint errands_jobs_task_name,
    drop constraint errands_jobs_queue_name,
    add constraint errands_jobs_task_name
        check (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]*$' and length(task) <= 200),
    add constraint errands_jobs_queue_name
        check (queue ~ '^[A-Za-z0-9_.:-]+$' and length(queue) <= 200);

-- Which process a worker is, beyond its host name and pid (both repeat: a
-- container keeps its name across restarts, pids start again at 1): the
-- kernel's boot id, the pid namespace, and the process's start time in clock
-- ticks since boot. A supervisor starting on the same kernel and namespace can
-- then tell for certain that a worker process is gone, and release its jobs
-- at once instead of waiting for their leases. Null where unknown (not Linux).
alter table errands_workers
    add column boot_id text,
    add column pid_namespace text,
    add column process_started bigint;

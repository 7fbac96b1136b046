-- older code: runs (the same rule, kept by an index that leaves jobs without a key out)
-- An idempotency key is unique among the jobs that have one (migration 0001), kept by a
-- unique constraint whose index held every job, keyless ones under a null. A row's update
-- that PostgreSQL cannot do in place (a claim, a completion: their state is in the
-- partial indexes' conditions) inserts the row anew into every index it belongs to, so
-- each claim and completion of a keyless job wrote a null entry here too. A partial
-- unique index holds the keyed jobs only; `on conflict do nothing` still arbitrates by it.
create unique index errands_jobs_idempotency_key on errands_jobs (idempotency_key)
    where idempotency_key is not null;
alter table errands_jobs drop constraint errands_jobs_idempotency_key_key;

-- older code: runs (the same function, planned once per session)
-- Whether any of these jobs has children (migration 0013), asked by the hand-over trigger
-- of every statement that ends jobs. As a SQL function with a setting of its own it could
-- not be inlined, and PostgreSQL planned its query at every call (about 60 µs against 18
-- in PL/pgSQL, which keeps the plan for the session).
create or replace function errands_has_children(ids bigint[]) returns boolean
language plpgsql stable set enable_seqscan = off as $$
begin
    return exists (select from errands_jobs where parents && ids);
end
$$;

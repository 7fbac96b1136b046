-- older code: runs (a new table)
-- The key that signs dashboard sessions when ERRANDS_SECRET_KEY is not set: made
-- at random by the first API process that needs it and read by every other, so
-- that a session works on every process and host of this database. One row.
create table errands_dashboard_secret (
    singleton  boolean primary key default true check (singleton),
    secret     text not null,
    created_at timestamptz not null default now()
);

-- older code: runs (the same trigger, its join planned otherwise)
-- The trigger that counts throughput (migration 0005) joins a statement's old rows with
-- its new rows by id, on every statement that changes jobs. PL/pgSQL keeps its plan for
-- the session, made for the rows of the first call, and a claim of 31 jobs then joined 62
-- rows with 62 by a nested loop: about 180 us a statement, against 37 us hashing them
-- (pg_stat_statements, a drain of 20,000 jobs). Without nested loops it hashes the rows,
-- whatever the first call saw.
alter function errands_count_throughput() set enable_nestloop = off;

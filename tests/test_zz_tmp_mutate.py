import os
import pytest
import test_state_machine as m
from errands.queue import queries

MUTANTS = {
    "complete_no_attempts": ("complete", "job.id = done.id and job.attempts = done.attempts", "job.id = done.id"),
    "heartbeat_no_owner": ("heartbeat", "and job.lease_owner = %(owner)s and job.state", "and job.state"),
    "fail_off_by_one": ("fail", "case when job.attempts >= job.max_attempts then 'dead'", "case when job.attempts > job.max_attempts then 'dead'"),
    "reap_ignores_expiry": ("recover", "job.lease_expires_at < now()", "true"),
    "retry_keeps_attempts": ("retry", "attempts = 0,", ""),
    "fail_no_state_check": ("fail", "and job.lease_owner = %(owner)s and job.state = 'in_progress'", "and job.lease_owner is not distinct from job.lease_owner"),
    "cancel_in_progress": ("cancel", "state in ('pending', 'failed')", "state in ('pending', 'failed', 'in_progress')"),
}

@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant(conn, name):
    key, old, new = MUTANTS[name]
    table = queries._all()
    original = table[key]
    assert old.encode() in original, name
    table[key] = original.replace(old.encode(), new.encode())
    try:
        with pytest.raises(BaseException) as e:
            m.test_queue_operations_match_the_model(conn)
        print(name, "CAUGHT", type(e.value).__name__)
    finally:
        table[key] = original

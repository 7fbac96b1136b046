"""Why errands.Client never prepares statements on the server: through a transaction pooler
that does not track them, one client's prepared name can run another client's statement.

Two psycopg connections through a real PgBouncer in transaction pooling mode (errands'
harness starts it): A prepares a read as `_pg3_0` on one server connection, B an
UPDATE as `_pg3_0` on another; A's next read lands on B's server connection.

    .venv/bin/python bench/pooler_statements.py postgresql://...   (a scratch server: it
    creates and drops the table statements_probe in the URL's database)
"""

from __future__ import annotations

import sys

import psycopg

from errands.harness.pgbouncer import PgBouncer


def main(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop table if exists statements_probe")
        conn.execute("create table statements_probe (id int primary key, v text)")
        conn.execute("insert into statements_probe values (1, 'kept')")
    try:
        with PgBouncer(url, pool_size=3) as bouncer:
            pooled = bouncer.url()
            with (
                psycopg.connect(pooled, autocommit=True) as a,
                psycopg.connect(pooled, autocommit=True) as b,
            ):
                for _ in range(6):  # A's _pg3_0: a read, prepared on the server connection S1
                    a.execute("select v from statements_probe where id = %s", (1,)).fetchone()
                # Hold S1 in a transaction: the next ones run on another server connection.
                with psycopg.connect(pooled, prepare_threshold=None) as holder:
                    holder.execute("select 1")
                    for _ in range(6):  # B's _pg3_0: an UPDATE, prepared on S2
                        b.execute("update statements_probe set v = 'B' where id = %s", (1,))
                    b.execute("update statements_probe set v = 'kept' where id = %s", (1,))
                    try:  # A's read, on S2 now
                        print(
                            "A read:",
                            a.execute(
                                "select v from statements_probe where id = %s", (1,)
                            ).fetchall(),
                        )
                    except psycopg.Error as exc:
                        print(f"A's read failed: {type(exc).__name__}: {exc}")
        with psycopg.connect(url) as conn:
            stored = conn.execute("select v from statements_probe").fetchone()
        print("the row now holds:", stored, "(A only read it)")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("drop table if exists statements_probe")


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""Benchmark batchkit.batch_upsert against the SQL and client-side peers.

Starts a throwaway PostgreSQL 15 cluster (scripts/pg.sh, batchkit preloaded),
creates users(id bigint primary key, name text, email text, created_at
timestamptz default now()) holding rows/2 keys, and upserts `rows` input rows
(ids 1..rows in random order, so half are new) with each method, from the same
table state every time. Prints rows/s per method and each ratio to its baseline,
all measured in this run.

    /usr/bin/python3 bench/upsert/run.py [--rows 1000000] [--reps 1] [--row-by-row 20000]
"""
import argparse
import gc
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

import psycopg2
import psycopg2.extras

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
UPSERT_SET = "name = excluded.name, email = excluded.email"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pg(*args):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "pg.sh"), *map(str, args)], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=1, help="runs per method; the best is kept")
    ap.add_argument("--row-by-row", type=int, default=20_000,
                    help="rows for the row-by-row peer (its rate is measured on a prefix)")
    args = ap.parse_args()
    n = args.rows
    existing = n // 2

    d = tempfile.mkdtemp(prefix="bk-bench-upsert-")
    pg("init", d, free_port())
    pg("start", d)
    try:
        run(d, n, existing, args)
    finally:
        pg("stop", d, "fast")
        subprocess.run(["rm", "-rf", d])


def run(d, n, existing, args):
    conn = psycopg2.connect(host=os.path.join(d, "sock"),
                            port=open(os.path.join(d, "data", "postgresql.conf")).read()
                            .split("\nport = ")[1].split("\n")[0], user="postgres",
                            dbname="postgres")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION batchkit")
    cur.execute("CREATE TABLE users(id bigint PRIMARY KEY, name text, email text,"
                " created_at timestamptz DEFAULT now())")
    cur.execute("CREATE TABLE staging(id bigint, name text, email text)")

    rng = random.Random(20240601)
    ids = list(range(1, n + 1))
    rng.shuffle(ids)
    rows = [(i, f"name {i} v2", f"user{i}@example.com") for i in ids]
    buf = io.StringIO("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    cur.copy_from(buf, "staging", columns=("id", "name", "email"))
    cur.execute("VACUUM ANALYZE staging")
    payload = json.dumps([{"id": a, "name": b, "email": c} for a, b, c in rows])
    print(f"# {n} input rows ({n - existing} new), users holds {existing}; "
          f"JSON payload {len(payload) / 1e6:.1f} MB; PostgreSQL "
          f"{conn.server_version}; reps={args.reps}", flush=True)

    def reset():
        cur.execute("TRUNCATE users")
        cur.execute("INSERT INTO users(id, name, email) SELECT i, 'name ' || i, "
                    "'user' || i || '@example.com' FROM generate_series(1, %s) i", (existing,))
        cur.execute("VACUUM ANALYZE users")
        cur.execute("CHECKPOINT")

    def check(expect_rows):
        cur.execute("SELECT count(*), count(*) FILTER (WHERE name LIKE '%% v2') FROM users")
        total, changed = cur.fetchone()
        assert total == max(n, existing), (total, n)
        assert changed == expect_rows, (changed, expect_rows)

    results = {}

    def measure(name, fn, nrows=n):
        best = None
        for _ in range(args.reps):
            reset()
            # Client methods run with Python's cyclic GC paused, as bulk loaders
            # do: otherwise a GC pass over the million rows this script keeps in
            # memory dominates whichever method allocates containers.
            gc.disable()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            gc.enable()
            if nrows == n:
                check(n)
            best = dt if best is None else min(best, dt)
        results[name] = nrows / best
        print(f"{name:<34} {best:8.2f} s  {nrows / best:12,.0f} rows/s", flush=True)

    def sql(stmt, params=None):
        def f():
            cur.execute(stmt, params)
        return f

    measure("staging INSERT..ON CONFLICT", sql(
        "INSERT INTO users SELECT id, name, email FROM staging "
        f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}"))
    measure("jsonb_to_recordset ON CONFLICT", sql(
        "INSERT INTO users(id, name, email) SELECT id, name, email FROM "
        "jsonb_to_recordset(%s::jsonb) AS r(id bigint, name text, email text) "
        f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}", (payload,)))
    measure("batch_upsert(jsonb)", sql(
        "SELECT * FROM batchkit.batch_upsert('users', %s::jsonb)", (payload,)))
    measure("batch_upsert_from(staging)", sql(
        "SELECT * FROM batchkit.batch_upsert_from('users', 'staging')"))

    def execute_values():
        conn.autocommit = False
        psycopg2.extras.execute_values(
            cur, "INSERT INTO users(id, name, email) VALUES %s "
            f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}", rows, page_size=1000)
        conn.commit()
        conn.autocommit = True
    measure("client execute_values (1000)", execute_values)

    def client_batch_upsert():
        # the client's whole cost: building the JSON from its tuples, then one call
        body = json.dumps([{"id": a, "name": b, "email": c} for a, b, c in rows])
        cur.execute("SELECT * FROM batchkit.batch_upsert('users', %s::jsonb)", (body,))
    measure("client batch_upsert (json.dumps+call)", client_batch_upsert)

    m = min(args.row_by_row, n)

    def row_by_row():
        conn.autocommit = False
        for r in rows[:m]:
            cur.execute("INSERT INTO users(id, name, email) VALUES (%s, %s, %s) "
                        f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}", r)
        conn.commit()
        conn.autocommit = True
    measure(f"client row-by-row ({m} rows)", row_by_row, nrows=m)

    rb = results[f"client row-by-row ({m} rows)"]
    print()
    print(f"{'ratio':<60} {'measured':>9} {'target':>7}")
    for label, a, b, target in [
        ("batch_upsert(jsonb) / staging INSERT..ON CONFLICT", "batch_upsert(jsonb)",
         "staging INSERT..ON CONFLICT", 1.0),
        ("batch_upsert(jsonb) / jsonb_to_recordset ON CONFLICT", "batch_upsert(jsonb)",
         "jsonb_to_recordset ON CONFLICT", 1.2),
        ("batch_upsert_from / staging INSERT..ON CONFLICT", "batch_upsert_from(staging)",
         "staging INSERT..ON CONFLICT", 1.2),
        ("client batch_upsert / execute_values", "client batch_upsert (json.dumps+call)",
         "client execute_values (1000)", 2.0),
    ]:
        r = results[a] / results[b]
        print(f"{label:<60} {r:8.2f}x {target:6.1f}x {'ok' if r >= target else 'BELOW'}")
    r = results["client batch_upsert (json.dumps+call)"] / rb
    print(f"{'client batch_upsert / row-by-row':<60} {r:8.2f}x {20.0:6.1f}x "
          f"{'ok' if r >= 20 else 'BELOW'}")
    conn.close()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark batchkit.batch_upsert against the SQL and client-side peers.

Starts a throwaway PostgreSQL 15 cluster (scripts/pg.sh, batchkit preloaded),
creates users(id bigint primary key, name text, email text, created_at
timestamptz default now()) holding rows/2 keys, and upserts `rows` input rows
(ids 1..rows in random order, so half are new) with each method, from the same
table state every time.

Server-side methods start from input already on the server (a typed staging
table) or sent as one JSON parameter. Client-side methods start from the same
Python list of tuples and are timed to the committed result, all client work
included (encoding, transfer, staging, the call, the commit).

Every method runs --reps times, in rounds (each round runs every method once,
so a burst of load on this shared machine hits all methods alike); the median
is reported, with the CPU seconds of the client process and its backend (a
cross-check that load bursts move much less). After every run the table is checked against the expected final
contents (an md5 over every row, computed in Python from the input), so every
method is verified to produce exactly the same table. The input includes rows
with tabs, newlines, backslashes, quotes, "\\N", empty strings, non-ASCII text
and NULL emails, so every encoding's escaping is exercised.

    /usr/bin/python3 bench/upsert/run.py [--rows 1000000] [--reps 3] [--row-by-row 50000]
                                         [--only name,...] [--out results.json]
"""
import argparse
import gc
import hashlib
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg2
import psycopg2.extras

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import batchkit_upsert  # noqa: E402  (the client helper documented in docs/upsert.md)

UPSERT_SET = "name = excluded.name, email = excluded.email"
COLUMNS = ("id", "name", "email")
CHECKSUM = ("SELECT count(*), md5(string_agg(id || name || coalesce(email, ''), ',' ORDER BY id))"
            " FROM users")
# Values that break naive encoders (every 997th row gets one of them as its name).
TRICKY = ["tab\there", "new\nline", "cr\rlf\r\n", "back\\slash\\", "\\N", "", "quote\"d",
          "it's", "comma, (paren) {brace}", "ünïcødé ☃ 😀", " spaced ", "NULL", "%s %(x)s"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pg(*args):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "pg.sh"), *map(str, args)], check=True)


def make_rows(n):
    rng = random.Random(20240601)
    ids = list(range(1, n + 1))
    rng.shuffle(ids)
    rows = []
    for i in ids:
        name = TRICKY[(i // 997) % len(TRICKY)] if i % 997 == 0 else f"name {i} v2"
        email = None if i % 1009 == 0 else f"user{i}@example.com"
        rows.append((i, name, email))
    return rows


def expected_checksum(rows, existing):
    """count and md5 of the table after upserting `rows` over ids 1..existing."""
    final = {i: (f"name {i}", f"user{i}@example.com") for i in range(1, existing + 1)}
    for i, name, email in rows:
        final[i] = (name, email)
    text = ",".join(f"{i}{final[i][0]}{final[i][1] or ''}" for i in sorted(final))
    return len(final), hashlib.md5(text.encode()).hexdigest()


# Encodings measured for the client-side batch_upsert paths other than COPY.
def esc_composite_in_array(s):
    # a text field of a composite (quoted: \ and " backslash-escaped), itself
    # quoted as an array element (\ and " backslash-escaped again)
    return s.replace("\\", "\\\\\\\\").replace('"', '\\\\\\"')


def composite_block(rows):
    ids, names, emails = zip(*rows)
    fields = [list(map(int.__repr__, ids))]
    for col in (names, emails):
        text = ["" if v is None else v for v in col] if None in col else col
        esc = esc_composite_in_array("\x00".join(text))
        if esc.count("\x00") != len(col) - 1:
            raise ValueError("NUL in text")
        quoted = map('\\"%s\\"'.__mod__, esc.split("\x00"))
        if None in col:
            # unquoted nothing is NULL; a quoted "" is an empty string
            quoted = ["" if v is None else q for v, q in zip(col, quoted)]
        fields.append(quoted)
    return ",".join(map('"(%s,%s,%s)"'.__mod__, zip(*fields)))


def composite_array_literal(rows):
    """rows as the text of an array of (id bigint, name text, email text),
    encoded in blocks like batchkit_upsert.copy_text."""
    blocks = (rows[k:k + 2000] for k in range(0, len(rows), 2000))
    return "{" + ",".join(map(composite_block, blocks)) + "}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3, help="runs per method; the median is kept")
    ap.add_argument("--row-by-row", type=int, default=50_000,
                    help="rows for the row-by-row peer (its rate is measured on a prefix)")
    ap.add_argument("--only", default="", help="comma-separated method keys (see --list)")
    ap.add_argument("--list", action="store_true", help="list the method keys and exit")
    ap.add_argument("--out", help="write every sample as JSON to this file")
    args = ap.parse_args()
    if args.list:
        for key, label, *_ in methods_table():
            print(f"{key:14} {label}")
        return 0
    d = tempfile.mkdtemp(prefix="bk-bench-upsert-")
    # SIGTERM (e.g. from make bench being stopped) stops the cluster too, via finally
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    pg("init", d, free_port())
    pg("start", d)
    try:
        run(d, args)
    finally:
        pg("stop", d, "fast")
        subprocess.run(["rm", "-rf", d])
    return 0


def methods_table():
    """(key, label, side, function name); side: server, peer or client (batchkit)."""
    return [
        ("staging", "staging INSERT..SELECT..ON CONFLICT (baseline)", "server", "m_staging"),
        ("recordset", "INSERT..SELECT FROM jsonb_to_recordset($1) ON CONFLICT", "server",
         "m_recordset"),
        ("jsonb", "batch_upsert('users', $1::jsonb)", "server", "m_jsonb"),
        ("from", "batch_upsert_from('users', 'staging')", "server", "m_from"),
        ("values", "execute_values(page_size=1000) + ON CONFLICT", "peer", "m_values"),
        ("rowbyrow", "row-by-row INSERT..ON CONFLICT, one transaction", "peer", "m_rowbyrow"),
        ("copy", "COPY to temp table + batch_upsert_from (batchkit_upsert.upsert)", "client",
         "m_copy"),
        ("jsonarrays", "json.dumps(tuples) + batch_upsert(ARRAY(... jsonb_array_elements))",
         "client", "m_jsonarrays"),
        ("composite", "array-of-composite literal + batch_upsert($1::users_in[])", "client",
         "m_composite"),
        ("jsondicts", "json.dumps([dict...]) + batch_upsert($1::jsonb)", "client", "m_jsondicts"),
    ]


def backend_cpu(pid):
    """CPU seconds of a backend (the cluster is local); None where /proc is not readable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def run(d, args):
    n = args.rows
    existing = n // 2
    port = open(os.path.join(d, "data", "postgresql.conf")).read() \
        .split("\nport = ")[1].split("\n")[0]
    conn = psycopg2.connect(host=os.path.join(d, "sock"), port=port, user="postgres",
                            dbname="postgres")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    cur.execute("CREATE EXTENSION batchkit")
    cur.execute("CREATE TABLE users(id bigint PRIMARY KEY, name text, email text,"
                " created_at timestamptz DEFAULT now())")
    cur.execute("CREATE TABLE staging(id bigint, name text, email text)")
    # the composite the array path needs: only the input columns (a NULL
    # created_at in users[] would be written as NULL, not take its default)
    cur.execute("CREATE TYPE users_in AS (id bigint, name text, email text)")

    rows = make_rows(n)
    m = min(args.row_by_row, n)
    want_all = expected_checksum(rows, existing)
    want_prefix = expected_checksum(rows[:m], existing)
    cur.copy_expert("COPY staging (id, name, email) FROM STDIN",
                    io.StringIO(batchkit_upsert.copy_text(rows)))
    cur.execute("VACUUM ANALYZE staging")
    payload = json.dumps([{"id": a, "name": b, "email": c} for a, b, c in rows])
    print(f"# {n} input rows ({n - existing} new), users holds {existing}; JSON payload "
          f"{len(payload) / 1e6:.1f} MB; PostgreSQL {conn.server_version}; reps={args.reps}; "
          f"row-by-row on the first {m} rows; {os.cpu_count()} CPUs", flush=True)

    def reset():
        conn.autocommit = True
        cur.execute("TRUNCATE users")
        cur.execute("INSERT INTO users(id, name, email) SELECT i, 'name ' || i, "
                    "'user' || i || '@example.com' FROM generate_series(1, %s) i", (existing,))
        cur.execute("VACUUM ANALYZE users")
        cur.execute("CHECKPOINT")

    def sql(stmt, params=None):
        cur.execute(stmt, params)

    # ---- server side: the input is already on the server (or one parameter)
    def m_staging():
        sql("INSERT INTO users SELECT id, name, email FROM staging "
            f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}")

    def m_recordset():
        sql("INSERT INTO users(id, name, email) SELECT id, name, email FROM "
            "jsonb_to_recordset(%s::jsonb) AS r(id bigint, name text, email text) "
            f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}", (payload,))

    def m_jsonb():
        sql("SELECT * FROM batchkit.batch_upsert('users', %s::jsonb)", (payload,))

    def m_from():
        sql("SELECT * FROM batchkit.batch_upsert_from('users', 'staging')")

    # ---- client side: from the list of tuples to the committed result
    def client(fn):
        def run_in_transaction():
            conn.autocommit = False
            fn()
            conn.commit()
            conn.autocommit = True
        return run_in_transaction

    @client
    def m_values():
        psycopg2.extras.execute_values(
            cur, "INSERT INTO users(id, name, email) VALUES %s "
            f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}", rows, page_size=1000)

    @client
    def m_rowbyrow():
        for r in rows[:m]:
            cur.execute("INSERT INTO users(id, name, email) VALUES (%s, %s, %s) "
                        f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}", r)

    @client
    def m_copy():
        batchkit_upsert.upsert(cur, "users", COLUMNS, rows)

    @client
    def m_jsonarrays():
        # ASCII output (non-ASCII as \u escapes): a str with a single
        # non-Latin-1 character would be 4 bytes per character
        body = json.dumps(rows, separators=(",", ":"))
        sql("SELECT * FROM batchkit.batch_upsert('users', ARRAY("
            "SELECT ROW((e->>0)::bigint, e->>1, e->>2)::users_in "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(e, o) ORDER BY o))",
            (body,))

    @client
    def m_composite():
        sql("SELECT * FROM batchkit.batch_upsert('users', %s::users_in[])",
            (composite_array_literal(rows),))

    @client
    def m_jsondicts():
        body = json.dumps([{"id": a, "name": b, "email": c} for a, b, c in rows])
        sql("SELECT * FROM batchkit.batch_upsert('users', %s::jsonb)", (body,))

    table = methods_table()
    only = [k for k in args.only.split(",") if k]
    unknown = set(only) - {t[0] for t in table}
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; see --list")
    chosen = [t for t in table if not only or t[0] in only]
    fns = locals()
    samples = {key: [] for key, *_ in chosen}

    for rnd in range(args.reps):
        for key, label, side, fname in chosen:
            nrows = m if key == "rowbyrow" else n
            reset()
            load = os.getloadavg()[0]
            # Client methods run with Python's cyclic GC paused, as bulk loaders
            # do: otherwise a GC pass over the million rows this script keeps in
            # memory dominates whichever method allocates containers.
            gc.disable()
            c0, p0, t0 = backend_cpu(pid), time.process_time(), time.perf_counter()
            fns[fname]()
            t1, p1, c1 = time.perf_counter(), time.process_time(), backend_cpu(pid)
            gc.enable()
            cur.execute(CHECKSUM)
            got = tuple(cur.fetchone())
            want = want_prefix if key == "rowbyrow" else want_all
            if got != want:
                raise SystemExit(f"{key}: the table differs from the expected result: "
                                 f"{got} != {want}")
            s = {"wall": t1 - t0, "client_cpu": p1 - p0,
                 "backend_cpu": None if c0 is None else c1 - c0, "load": load,
                 "rows": nrows}
            samples[key].append(s)
            print(f"round {rnd + 1} {key:11} {s['wall']:7.2f} s  {nrows / s['wall']:10,.0f} rows/s"
                  f"  cpu client {s['client_cpu']:5.2f} backend "
                  f"{s['backend_cpu'] if s['backend_cpu'] is not None else float('nan'):5.2f}"
                  f"  load {load:4.1f}  checksum ok", flush=True)

    report(chosen, samples, m)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": n, "row_by_row": m, "reps": args.reps, "samples": samples,
                       "methods": [{"key": k, "label": label, "side": side}
                                   for k, label, side, _ in chosen],
                       "postgres": conn.server_version, "argv": sys.argv[1:]}, f, indent=1)
    conn.close()


def report(chosen, samples, m):
    """Medians per method, then every target ratio on wall time (what the
    targets mean) and, as a cross-check that load bursts on this shared
    machine cannot fake, on CPU time (client process + its backend)."""
    wall_rate, cpu_rate = {}, {}
    print()
    print(f"{'method':<74} {'median s':>9} {'rows/s':>10} {'cpu s':>6} {'rows/cpu s':>10}")
    for key, label, side, _ in chosen:
        ss = samples[key]
        rows = ss[0]["rows"]
        wall = statistics.median(x["wall"] for x in ss)
        cpu = statistics.median(x["client_cpu"] + (x["backend_cpu"] or 0) for x in ss)
        wall_rate[key], cpu_rate[key] = rows / wall, rows / cpu
        print(f"{side:>8} {label:<65} {wall:9.2f} {wall_rate[key]:10,.0f} {cpu:6.2f} "
              f"{cpu_rate[key]:10,.0f}")
    loads = [x["load"] for ss in samples.values() for x in ss]
    print(f"load average (1 min) at the start of each run: min {min(loads):.1f}, "
          f"median {statistics.median(loads):.1f}, max {max(loads):.1f} "
          f"on {os.cpu_count()} CPUs")

    print()
    print(f"{'ratio':<26} {'wall':>8} {'cpu':>8} {'target':>7}")
    pairs = [("jsonb", "staging", 1.0), ("jsonb", "recordset", 1.2), ("from", "staging", 1.2)]
    for c in ("copy", "jsonarrays", "composite", "jsondicts"):
        pairs += [(c, "values", 2.0), (c, "rowbyrow", 20.0)]
    for a, b, target in pairs:
        if a in wall_rate and b in wall_rate:
            rw, rc = wall_rate[a] / wall_rate[b], cpu_rate[a] / cpu_rate[b]
            print(f"{a + ' / ' + b:<26} {rw:7.2f}x {rc:7.2f}x {target:6.1f}x "
                  f"{'ok' if rw >= target else 'BELOW'}")


if __name__ == "__main__":
    sys.exit(main())

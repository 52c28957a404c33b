#!/usr/bin/env python3
"""Does reading the metrics slow delivery down? Drain throughput with and without readers.

Uses the running services (scripts/services.sh; their env file is read from
.run/current) or starts them and stops them at the end. In a fresh database it
creates a Redis sink (xadd to s:{table}) and measures three things:

1. read cost: with `rows` rows queued, the CPU (server backend + this client)
   of one read of `batchkit.sink_stats` and `batchkit.metrics()`, from
   /proc/<pid>/stat — what a reader can take away from the drain at most;
2. A/B drains, the issue's method: per drain a captured table, the sink paused,
   `rows` rows (1,000,000 by default) inserted in one statement, the sink
   resumed and `SELECT batchkit.flush(sink, '300 s')` timed from the resume to
   its return. Each repetition drains once quietly and once while another
   process reads both `hz` times a second, alternating which goes first, so
   drift on the shared machine hits both modes alike; prints every drain, the
   medians of each mode and their ratio;
3. an interleaved drain of `interleaved-rows` rows during which the reader is
   on and off for `slice` seconds in turn, delivery counted from Redis (XLEN)
   per slice: both modes share the same minutes of machine noise.

    BK_PGBIN=... /usr/bin/python3 bench/metrics/run.py [--rows 1000000] [--reps 5] [--hz 10]
        [--interleaved-rows 3000000] [--slice 2] [--out results.json]

--out writes every drain, the medians, the ratios and the slices as JSON (what
bench/report.py reads).
"""
import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
import uuid

import psycopg2
import redis

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def load_env():
    started = False
    if not os.environ.get("BATCHKIT_RUN_DIR"):
        cur = os.path.join(ROOT, ".run", "current")
        if not (os.path.exists(cur) and os.path.isdir(open(cur).read().strip())):
            subprocess.run(["bash", os.path.join(ROOT, "scripts", "services.sh"), "start"], check=True)
            started = True
        run = open(cur).read().strip()
        for line in open(os.path.join(run, "env")):
            k, _, v = line.strip().partition("=")
            os.environ[k] = v
    return started


def connect(dbname):
    c = psycopg2.connect(host=os.environ["PGHOST"], port=os.environ["PGPORT"],
                         user=os.environ.get("PGUSER", "postgres"), dbname=dbname)
    c.autocommit = True
    return c


READS = {
    "both": ["SELECT * FROM batchkit.sink_stats", "SELECT batchkit.metrics()"],
    "stats": ["SELECT * FROM batchkit.sink_stats"],
    "metrics": ["SELECT batchkit.metrics()"],
    "select1": ["SELECT 1"],
}


def reader(dbname, hz, stop, out, what="both", gate=None):
    """Read the views and the Prometheus text hz times a second until stopped
    (only while `gate` is set, when there is one)."""
    conn = connect(dbname)
    cur = conn.cursor()
    period = 1.0 / hz
    n, busy = 0, 0.0
    start = nxt = time.monotonic()
    while not stop.is_set():
        if gate is not None and not gate.is_set():
            gate.wait(0.05)
            nxt = time.monotonic()
            continue
        t0 = time.monotonic()
        for sql in READS[what]:
            cur.execute(sql)
            cur.fetchall()
        busy += time.monotonic() - t0
        n += 1
        nxt += period
        delay = nxt - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            nxt = time.monotonic()
    conn.close()
    out.put((n, busy, time.monotonic() - start))


def drain(conn, r, sink, rows, dbname, hz, with_readers, what="both"):
    cur = conn.cursor()
    table = f"bench_{uuid.uuid4().hex[:8]}"
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL)")
    cur.execute("SELECT batchkit.capture(%s::regclass, %s, ARRAY['insert'])", (table, sink))
    cur.execute("SELECT batchkit.pause_sink(%s)", (sink,))
    cur.execute(f"INSERT INTO {table} SELECT g, md5(g::text), now() FROM generate_series(1, %s) g",
                (rows,))
    cur.execute("SELECT rows_queued FROM batchkit.sink_stats WHERE sink = %s", (sink,))
    assert cur.fetchone()[0] == rows
    cur.execute("CHECKPOINT")
    before = r.xlen(f"s:{table}")

    proc = None
    if with_readers:
        stop, out = mp.Event(), mp.Queue()
        proc = mp.Process(target=reader, args=(dbname, hz, stop, out, what))
        proc.start()
        time.sleep(0.5)                       # the reader is up and reading
    t0 = time.monotonic()
    cur.execute("SELECT batchkit.resume_sink(%s)", (sink,))
    cur.execute("SELECT batchkit.flush(%s, '300 s')", (sink,))
    drained = cur.fetchone()[0]
    elapsed = time.monotonic() - t0
    reads = None
    if proc:
        stop.set()
        reads = out.get(timeout=30)
        proc.join(30)
    assert drained, "flush timed out"
    delivered = r.xlen(f"s:{table}") - before
    assert delivered == rows, f"{delivered} of {rows} rows in Redis"

    cur.execute("SELECT batchkit.uncapture(%s::regclass, %s)", (table, sink))
    cur.execute(f"DROP TABLE {table}")
    r.delete(f"s:{table}")
    cur.execute("SELECT * FROM batchkit.maintain_queue()")
    return elapsed, reads


def proc_cpu_seconds(pid):
    """utime + stime of a process on this host (the server runs here)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_cost(conn, r, sink, rows, dbname, what, n=300):
    """CPU per read (the server backend's and this client's) with `rows` rows queued:
    what the reader takes away from the drain, measured without timing noise."""
    cur = conn.cursor()
    table = f"bench_{uuid.uuid4().hex[:8]}"
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL)")
    cur.execute("SELECT batchkit.capture(%s::regclass, %s, ARRAY['insert'])", (table, sink))
    cur.execute("SELECT batchkit.pause_sink(%s)", (sink,))
    cur.execute(f"INSERT INTO {table} SELECT g, md5(g::text), now() FROM generate_series(1, %s) g",
                (rows,))
    rc = connect(dbname)
    rcur = rc.cursor()
    rcur.execute("SELECT pg_backend_pid()")
    pid = rcur.fetchone()[0]
    for sql in READS[what]:
        rcur.execute(sql)
        rcur.fetchall()
    b0, c0 = proc_cpu_seconds(pid), time.process_time()
    for _ in range(n):
        for sql in READS[what]:
            rcur.execute(sql)
            rcur.fetchall()
    backend = (proc_cpu_seconds(pid) - b0) / n
    client = (time.process_time() - c0) / n
    rc.close()
    cur.execute("SELECT batchkit.resume_sink(%s)", (sink,))
    cur.execute("SELECT batchkit.flush(%s, '300 s')", (sink,))
    assert cur.fetchone()[0]
    cur.execute("SELECT batchkit.uncapture(%s::regclass, %s)", (table, sink))
    cur.execute(f"DROP TABLE {table}")
    r.delete(f"s:{table}")
    return backend, client


def interleaved(conn, r, sink, rows, dbname, hz, what, slice_s):
    """One drain; the reader alternates slice_s seconds on and off. Delivery is
    measured from Redis (XLEN), so measuring touches no PostgreSQL process.
    Returns [(reading, rows/s)] per whole slice."""
    cur = conn.cursor()
    table = f"bench_{uuid.uuid4().hex[:8]}"
    key = f"s:{table}"
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL)")
    cur.execute("SELECT batchkit.capture(%s::regclass, %s, ARRAY['insert'])", (table, sink))
    cur.execute("SELECT batchkit.pause_sink(%s)", (sink,))
    cur.execute(f"INSERT INTO {table} SELECT g, md5(g::text), now() FROM generate_series(1, %s) g",
                (rows,))
    cur.execute("CHECKPOINT")
    stop, gate, out = mp.Event(), mp.Event(), mp.Queue()
    proc = mp.Process(target=reader, args=(dbname, hz, stop, out, what, gate))
    proc.start()
    time.sleep(0.5)
    cur.execute("SELECT batchkit.resume_sink(%s)", (sink,))
    slices = []
    reading = False
    t_prev, n_prev = time.monotonic(), r.xlen(key)
    while n_prev < rows:
        time.sleep(slice_s)
        t, n = time.monotonic(), r.xlen(key)
        slices.append((reading, (n - n_prev) / (t - t_prev), n >= rows))
        reading = not reading
        (gate.set if reading else gate.clear)()
        t_prev, n_prev = t, n
    stop.set()
    gate.set()
    out.get(timeout=30)
    proc.join(30)
    cur.execute("SELECT batchkit.flush(%s, '300 s')", (sink,))
    assert cur.fetchone()[0] and r.xlen(key) == rows
    cur.execute("SELECT batchkit.uncapture(%s::regclass, %s)", (table, sink))
    cur.execute(f"DROP TABLE {table}")
    r.delete(key)
    cur.execute("SELECT * FROM batchkit.maintain_queue()")
    # the first slice ramps up, the last one is partial
    return [(on, rate) for on, rate, last in slices[1:] if not last]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--interleaved-rows", type=int, default=3_000_000,
                    help="rows of the interleaved drain (0: skip it)")
    ap.add_argument("--slice", type=float, default=2.0,
                    help="seconds per on/off slice of the interleaved drain")
    ap.add_argument("--read", choices=sorted(READS), default="both",
                    help="what the reader runs (diagnostics; the target is about 'both')")
    ap.add_argument("--out", help="write every measurement as JSON to this file")
    args = ap.parse_args()
    t_all = time.monotonic()
    out = {"benchmark": "metrics", "argv": sys.argv[1:], "rows": args.rows, "reps": args.reps,
           "hz": args.hz, "read": args.read, "interleaved_rows": args.interleaved_rows,
           "slice_s": args.slice, "loadavg_start": list(os.getloadavg())}
    started = load_env()
    dbname = f"bk_bench_metrics_{uuid.uuid4().hex[:6]}"
    admin = connect("postgres")
    admin.cursor().execute(f'CREATE DATABASE "{dbname}"')
    try:
        conn = connect(dbname)
        cur = conn.cursor()
        cur.execute("CREATE EXTENSION batchkit")
        sink = "bench"
        cur.execute("SET client_min_messages = warning")
        cur.execute("SELECT batchkit.create_sink(%s, 'redis', %s)", (sink, json.dumps({
            "url": f"redis://127.0.0.1:{os.environ['REDIS_PORT']}/0",
            "command": "xadd", "key": "s:{table}"})))
        r = redis.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]))
        # warm-up: the worker, its sink client and the caches
        drain(conn, r, sink, min(args.rows, 50_000), dbname, args.hz, False)

        backend, client = read_cost(conn, r, sink, args.rows, dbname, args.read)
        out["read_cost"] = {"backend_cpu_s": backend, "client_cpu_s": client,
                            "core_share_at_hz": args.hz * (backend + client)}
        print(f"read cost with {args.rows:,} rows queued: {1000 * backend:.2f} ms backend CPU + "
              f"{1000 * client:.2f} ms client CPU per read of {args.read} = "
              f"{100 * args.hz * (backend + client):.2f}% of one core at {args.hz:g}/s", flush=True)
        print()

        results = {"quiet": [], "readers": []}
        pairs = []
        for rep in range(args.reps):
            order = [False, True] if rep % 2 == 0 else [True, False]
            pair = {}
            for with_readers in order:
                elapsed, reads = drain(conn, r, sink, args.rows, dbname, args.hz, with_readers,
                                       args.read)
                mode = "readers" if with_readers else "quiet"
                rate = args.rows / elapsed
                results[mode].append(rate)
                out.setdefault("drains", []).append(
                    {"rep": rep, "mode": mode, "seconds": elapsed, "rows_per_s": rate,
                     "reads": None if not reads else {"n": reads[0], "busy_s": reads[1],
                                                      "wall_s": reads[2]},
                     "loadavg1": os.getloadavg()[0]})
                pair[mode] = rate
                extra = ""
                if reads:
                    n, busy, wall = reads
                    extra = (f"  ({n} reads = {n / wall:.1f}/s, "
                             f"{1000 * busy / max(n, 1):.1f} ms per read of {args.read})")
                print(f"rep {rep + 1} {mode:8s} {elapsed:7.2f} s  {rate:10,.0f} rows/s{extra}",
                      flush=True)
            pairs.append(pair["readers"] / pair["quiet"])

        if pairs:
            q = statistics.median(results["quiet"])
            w = statistics.median(results["readers"])
            print()
            out.update(median_quiet=q, median_readers=w, ratio_of_medians=w / q,
                       pair_ratios=pairs, median_pair_ratio=statistics.median(pairs))
            print(f"median quiet        {q:10,.0f} rows/s")
            print(f"median with readers {w:10,.0f} rows/s")
            print(f"ratio of medians (readers / quiet): {w / q:.4f}  ({100 * (w / q - 1):+.2f}%)")
            print(f"median of per-rep ratios:           {statistics.median(pairs):.4f}  "
                  f"({100 * (statistics.median(pairs) - 1):+.2f}%)  per rep: "
                  + ", ".join(f"{p:.4f}" for p in pairs))
        if args.interleaved_rows:
            print()
            sl = interleaved(conn, r, sink, args.interleaved_rows, dbname, args.hz, args.read,
                             args.slice)
            on = [rate for reading, rate in sl if reading]
            off = [rate for reading, rate in sl if not reading]
            # each reading slice against the mean of the quiet slices around it
            paired = [sl[i][1] / ((sl[i - 1][1] + sl[i + 1][1]) / 2)
                      for i in range(1, len(sl) - 1)
                      if sl[i][0] and not sl[i - 1][0] and not sl[i + 1][0]]
            out["interleaved"] = {
                "slices": [{"reading": reading, "rows_per_s": rate} for reading, rate in sl],
                "median_quiet": statistics.median(off) if off else None,
                "median_reading": statistics.median(on) if on else None,
                "paired_ratios": paired,
                "median_paired_ratio": statistics.median(paired) if paired else None}
            print(f"interleaved drain of {args.interleaved_rows:,} rows, reader {args.slice:g} s on / "
                  f"{args.slice:g} s off: {len(on)} reading and {len(off)} quiet slices")
            print(f"  median quiet slice   {statistics.median(off):10,.0f} rows/s")
            print(f"  median reading slice {statistics.median(on):10,.0f} rows/s")
            print(f"  ratio of medians:               {statistics.median(on) / statistics.median(off):.4f}"
                  f"  ({100 * (statistics.median(on) / statistics.median(off) - 1):+.2f}%)")
            print(f"  median of paired ratios ({len(paired)}):     {statistics.median(paired):.4f}"
                  f"  ({100 * (statistics.median(paired) - 1):+.2f}%)")
            print("  slices (R = reading): " + " ".join(
                f"{'R' if reading else 'q'}{rate / 1000:.0f}k" for reading, rate in sl))
        conn.close()
        if args.out:
            out["seconds"] = time.monotonic() - t_all
            out["loadavg_end"] = list(os.getloadavg())
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
        if started:
            subprocess.run(["bash", os.path.join(ROOT, "scripts", "services.sh"), "stop"])


if __name__ == "__main__":
    sys.exit(main())

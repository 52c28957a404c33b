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
3. interleaved drains (the judged figure): `interleaved-drains` drains of
   `interleaved-rows` rows, cut into blocks of `slice`-second slices, one per
   reader rate — two quiet slices, then each rate of --dose-hz (10 and 100
   reads/s) — in a random order per block, so nothing periodic on the machine
   lines up with one mode. Rows are counted from Redis (XLEN). Per block,
   ln(throughput of a slice / the block's quiet slices) is fitted against the
   reads per second actually done, a line through the origin: the 100 Hz
   slices make the cost large enough to measure, the slope scales it down to
   `hz`. 95% intervals from a bootstrap over blocks. Also printed: the direct
   comparison of the `hz` slices (wide: 1 s slices vary by ~10% here) and an
   A/A comparison of the two quiet slices (the method's own bias).

    BK_PGBIN=... /usr/bin/python3 bench/metrics/run.py [--rows 1000000] [--reps 5] [--hz 10]
        [--interleaved-rows 6000000] [--interleaved-drains 2] [--dose-hz 10,100] [--slice 1]
        [--out results.json]

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


def _read_env(run):
    env = {}
    for line in open(os.path.join(run, "env")):
        k, _, v = line.strip().partition("=")
        env[k] = v
    return env


def _alive(env):
    """The services of an env file still answer (a run directory outlives a
    server that crashed or was killed)."""
    try:
        psycopg2.connect(host=env["PGHOST"], port=env["PGPORT"], user=env.get("PGUSER", "postgres"),
                         dbname="postgres", connect_timeout=3).close()
        return True
    except (KeyError, psycopg2.OperationalError):
        return False


def load_env():
    started = False
    if not os.environ.get("BATCHKIT_RUN_DIR"):
        cur = os.path.join(ROOT, ".run", "current")
        run = open(cur).read().strip() if os.path.exists(cur) else ""
        if not (run and os.path.isfile(os.path.join(run, "env")) and _alive(_read_env(run))):
            # none, or dead: services.sh stops what is left of them and starts afresh
            subprocess.run(["bash", os.path.join(ROOT, "scripts", "services.sh"), "start"], check=True)
            started = True
            run = open(cur).read().strip()
        os.environ.update(_read_env(run))
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
    "none": [],          # an A/A control: the reader wakes hz times a second, runs nothing
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
        nxt = wait_for_next(nxt, period, stop)
    conn.close()
    out.put((n, busy, time.monotonic() - start))


def wait_for_next(nxt, period, stop):
    """Sleep until the next read is due (at once when behind); returns its time."""
    nxt += period
    delay = nxt - time.monotonic()
    if delay > 0:
        stop.wait(delay)
        return nxt
    return time.monotonic()


def drain(conn, r, sink, rows, dbname, hz, with_readers, what="both"):
    cur = conn.cursor()
    table = load_backlog(cur, sink, rows)
    cur.execute("SELECT rows_queued FROM batchkit.sink_stats WHERE sink = %s", (sink,))
    assert cur.fetchone()[0] == rows
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
    table = load_backlog(cur, sink, rows)
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


def dose_reader(dbname, hz, reads, stop, what):
    """Read at the rate in the shared value `hz` (0: idle, waking every 20 ms);
    counts the reads done in `reads`."""
    conn = connect(dbname)
    cur = conn.cursor()
    nxt = time.monotonic()
    while not stop.is_set():
        rate = hz.value
        if rate <= 0:
            stop.wait(0.02)
            nxt = time.monotonic()
            continue
        for sql in READS[what]:
            cur.execute(sql)
            cur.fetchall()
        with reads.get_lock():
            reads.value += 1
        nxt = wait_for_next(nxt, 1.0 / rate, stop)
    conn.close()


def load_backlog(cur, sink, rows):
    table = f"bench_{uuid.uuid4().hex[:8]}"
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL)")
    cur.execute("SELECT batchkit.capture(%s::regclass, %s, ARRAY['insert'])", (table, sink))
    cur.execute("SELECT batchkit.pause_sink(%s)", (sink,))
    cur.execute(f"INSERT INTO {table} SELECT g, md5(g::text), now() FROM generate_series(1, %s) g",
                (rows,))
    cur.execute("CHECKPOINT")
    return table


def drop_backlog(cur, r, sink, table, rows):
    key = f"s:{table}"
    cur.execute("SELECT batchkit.flush(%s, '300 s')", (sink,))
    assert cur.fetchone()[0] and r.xlen(key) == rows, f"{r.xlen(key)} of {rows} rows in Redis"
    cur.execute("SELECT batchkit.uncapture(%s::regclass, %s)", (table, sink))
    cur.execute(f"DROP TABLE {table}")
    r.delete(key)
    cur.execute("SELECT * FROM batchkit.maintain_queue()")


def interleaved(conn, r, sink, rows, dbname, rates, what, slice_s, rng):
    """One drain cut into blocks of slices, one slice per mode in `rates` (reads
    per second, 0 = no reader) in a random order per block, so that nothing
    periodic on the machine lines up with one mode. Delivery is counted from
    Redis (XLEN): measuring touches no PostgreSQL process.
    Returns the complete blocks: [[(hz asked, reads/s done, rows/s), ...], ...]."""
    cur = conn.cursor()
    table = load_backlog(cur, sink, rows)
    key = f"s:{table}"
    stop = mp.Event()
    hz, reads = mp.Value("d", 0.0), mp.Value("q", 0)
    proc = mp.Process(target=dose_reader, args=(dbname, hz, reads, stop, what))
    proc.start()
    time.sleep(0.5)
    cur.execute("SELECT batchkit.resume_sink(%s)", (sink,))
    time.sleep(slice_s)                       # ramp-up, not measured
    blocks, block, order = [], [], []
    t_prev, n_prev, k_prev = time.monotonic(), r.xlen(key), reads.value
    while n_prev < rows:
        if not order:
            if len(block) == len(rates):
                blocks.append(block)
            block, order = [], rng.sample(list(rates), len(rates))
        mode = order.pop()
        hz.value = mode
        time.sleep(slice_s)
        t, n, k = time.monotonic(), r.xlen(key), reads.value
        if n >= rows:
            break                             # the drain ended inside this slice
        block.append((mode, (k - k_prev) / (t - t_prev), (n - n_prev) / (t - t_prev)))
        t_prev, n_prev, k_prev = t, n, k
    if len(block) == len(rates) and n < rows:
        blocks.append(block)
    stop.set()
    proc.join(30)
    drop_backlog(cur, r, sink, table, rows)
    return blocks


def bootstrap(blocks, stat, rng, n=2000):
    vals = sorted(stat([blocks[rng.randrange(len(blocks))] for _ in blocks]) for _ in range(n))
    return vals[int(0.025 * n)], vals[int(0.975 * n) - 1]


def analyse(blocks, hz, rng):
    """Per block, ln(rows/s of a mode / rows/s of the quiet slices), quiet being
    the mean of the block's quiet slices' logs. The effect at `hz` is read two
    ways: directly from the hz slices (noisy: slice-to-slice noise is ~10% here)
    and from the slope through the origin of ln(ratio) against the reads per
    second actually done, fitted over every reading slice — the high-rate slices
    make the cost large enough to measure, and the slope scales it down to hz.
    95% intervals from a bootstrap over blocks. An A/A figure compares the two
    quiet slices of each block (when there are two): the method's own bias."""
    import math

    def logs(b):
        q = [math.log(rate) for h, _, rate in b if h == 0]
        base = sum(q) / len(q)
        return [(h, done, math.log(rate) - base) for h, done, rate in b if h > 0], q

    def direct(bs):
        ys = [y for blk in bs for h, _, y in logs(blk)[0] if h == hz]
        return math.exp(sum(ys) / len(ys)) - 1 if ys else float("nan")

    def slope(bs):
        pts = [(done, y) for blk in bs for _, done, y in logs(blk)[0]]
        sxx = sum(d * d for d, _ in pts)
        return sum(d * y for d, y in pts) / sxx if sxx else float("nan")

    def at_hz(bs):
        return math.exp(hz * slope(bs)) - 1

    def aa(bs):
        ys = [q[1] - q[0] for q in (logs(blk)[1] for blk in bs) if len(q) >= 2]
        return math.exp(sum(ys) / len(ys)) - 1 if ys else float("nan")

    res = {"blocks": len(blocks), "direct": direct(blocks), "direct_ci": bootstrap(blocks, direct, rng),
           "slope_per_hz": slope(blocks), "at_hz": at_hz(blocks),
           "at_hz_ci": bootstrap(blocks, at_hz, rng)}
    if any(sum(1 for h, _, _ in b if h == 0) >= 2 for b in blocks):
        res.update(aa=aa(blocks), aa_ci=bootstrap(blocks, aa, rng))
    by = {}
    for b in blocks:
        for h, done, rate in b:
            by.setdefault(h, []).append((done, rate))
    res["modes"] = {str(h): {"slices": len(v), "reads_per_s": statistics.mean(d for d, _ in v),
                             "median_rows_per_s": statistics.median(r for _, r in v)}
                    for h, v in sorted(by.items())}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--interleaved-rows", type=int, default=6_000_000,
                    help="rows of each interleaved drain (0: skip them)")
    ap.add_argument("--slice", type=float, default=1.0,
                    help="seconds per slice of the interleaved drains")
    ap.add_argument("--interleaved-drains", type=int, default=2,
                    help="interleaved drains (their blocks are pooled)")
    ap.add_argument("--dose-hz", default="10,100",
                    help="reader rates of the interleaved drains' reading slices, besides two "
                         "quiet slices per block")
    ap.add_argument("--seed", type=int, default=20261128, help="slice order of the blocks")
    ap.add_argument("--read", choices=sorted(READS), default="both",
                    help="what the reader runs (diagnostics; the target is about 'both')")
    ap.add_argument("--out", help="write every measurement as JSON to this file")
    args = ap.parse_args()
    t_all = time.monotonic()
    out = {"benchmark": "metrics", "argv": sys.argv[1:], "rows": args.rows, "reps": args.reps,
           "hz": args.hz, "read": args.read, "interleaved_rows": args.interleaved_rows,
           "interleaved_drains": args.interleaved_drains, "dose_hz": args.dose_hz,
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
            import random
            rng = random.Random(args.seed)
            rates = [0.0, 0.0] + [float(x) for x in args.dose_hz.split(",")]
            blocks = []
            for i in range(args.interleaved_drains):
                got = interleaved(conn, r, sink, args.interleaved_rows, dbname, rates, args.read,
                                  args.slice, rng)
                blocks.extend(got)
                print(f"interleaved drain {i + 1} of {args.interleaved_rows:,} rows: {len(got)} "
                      "blocks of " + "/".join(f"{h:g}" for h in rates) + " Hz slices of "
                      f"{args.slice:g} s; rows/s (hz asked:reads done:rows/s): " + "  ".join(
                          " ".join(f"{h:g}:{d:.0f}:{x / 1000:.0f}k" for h, d, x in b)
                          for b in got), flush=True)
            res = analyse(blocks, args.hz, rng)
            res.update(rows_per_drain=args.interleaved_rows, drains=args.interleaved_drains,
                       rates=rates, slice_s=args.slice, seed=args.seed,
                       data=[[list(x) for x in b] for b in blocks])
            out["interleaved"] = res
            print()
            for h, m in res["modes"].items():
                print(f"  {float(h):5g} Hz asked: {m['slices']:3d} slices, {m['reads_per_s']:6.1f} "
                      f"reads/s done, median {m['median_rows_per_s']:10,.0f} rows/s")
            print(f"  change at {args.hz:g} Hz, directly ({res['blocks']} blocks):   "
                  f"{res['direct']:+.2%}  (95% CI {res['direct_ci'][0]:+.2%} .. "
                  f"{res['direct_ci'][1]:+.2%})")
            print(f"  change at {args.hz:g} Hz, from the slope over all rates: {res['at_hz']:+.2%}"
                  f"  (95% CI {res['at_hz_ci'][0]:+.2%} .. {res['at_hz_ci'][1]:+.2%}); "
                  f"{100 * res['slope_per_hz']:+.4f}% per read/s")
            if "aa" in res:
                print(f"  A/A (quiet vs quiet, the method's bias):       {res['aa']:+.2%}  "
                      f"(95% CI {res['aa_ci'][0]:+.2%} .. {res['aa_ci'][1]:+.2%})")
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

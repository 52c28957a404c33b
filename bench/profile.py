#!/usr/bin/env python3
"""Profile batchkit with perf: the writer (capture) or the flush worker (drain).

  profile.py capture [--rows 1000000]        perf record -g on the backend running one
                                             INSERT..SELECT of N rows into a captured
                                             table (paused sink), and on the baseline
                                             (no capture) for comparison
  profile.py drain --sink redis|kafka [--rows 1000000]
                                             load N rows with the sink paused, then
                                             perf record -g on the flush worker from
                                             resume_sink() to flush() returning

Writes perf.data files and `perf report --no-children` text summaries to
bench/out/profile-<what>-*.txt (perf must be installed; run as root).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.dirname(__file__)))
import benchlib  # noqa: E402
from benchlib import log, src_select  # noqa: E402


def perf_start(pid, out):
    # DWARF call graphs: Debian's postgres has no frame pointers
    p = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,32768", "-p",
                          str(pid), "-o", out],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attaches
    return p


def perf_stop(p, out, txt):
    p.send_signal(signal.SIGINT)
    p.wait(60)
    with open(txt, "w") as f:
        for args in (["--no-children", "--sort", "dso,sym", "-g", "none", "--percent-limit",
                      "0.4"],
                     ["--children", "--sort", "sym", "-g", "none", "--percent-limit", "1.5"]):
            f.write(f"### perf report {' '.join(args)}\n")
            f.flush()
            subprocess.run(["perf", "report", "-i", out, "--stdio"] + args, stdout=f,
                           stderr=subprocess.DEVNULL)
    log(f"  wrote {os.path.relpath(txt, benchlib.ROOT)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["capture", "drain"])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sink", choices=["redis", "kafka"], default="redis")
    ap.add_argument("--bk-options", default=None)
    ap.add_argument("--partitions", type=int, default=128, help="partitions of the Kafka topic")
    args = ap.parse_args()
    os.makedirs(benchlib.OUT_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    svc = benchlib.Services("profile", redis=True)
    conn = svc.connect()
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION batchkit")
    cur.execute("CREATE TABLE users(id bigint PRIMARY KEY, name text, email text,"
                " created_at timestamptz DEFAULT now())")
    cur.execute(f"CREATE TABLE src AS {src_select(1, args.rows)}")
    cur.execute("VACUUM ANALYZE src")
    broker = None
    if args.sink == "kafka":
        broker = svc.kafka_broker([("prof", args.partitions)])
        opts = {"bootstrap.servers": broker.bootstrap, "topic": "prof"}
    else:
        opts = {"url": f"redis://127.0.0.1:{svc.redis_port}/0", "command": "xadd",
                "key": "prof:{table}"}
    if args.bk_options:
        opts.update(json.loads(args.bk_options))
    cur.execute("SELECT batchkit.create_sink('s', %s, %s::jsonb)", (args.sink, json.dumps(opts)))
    cur.execute("SELECT batchkit.pause_sink('s')")
    cur.execute("SELECT pg_backend_pid()")
    backend = cur.fetchone()[0]
    ins = "INSERT INTO users(id, name, email) SELECT id, name, email FROM src"
    if args.what == "capture":
        for label, captured in (("none", False), ("batchkit", True)):
            cur.execute("TRUNCATE users")
            if captured:
                cur.execute("SELECT batchkit.capture('users', 's')")
            cur.execute("CHECKPOINT")
            out = os.path.join(benchlib.OUT_DIR, f"profile-capture-{label}-{stamp}.data")
            p = perf_start(backend, out)
            t0 = time.perf_counter()
            cur.execute(ins)
            dt = time.perf_counter() - t0
            perf_stop(p, out, out[:-5] + ".txt")
            log(f"  {label}: {dt:.2f} s")
            if captured:
                cur.execute("SELECT batchkit.uncapture('users', 's')")
    else:
        cur.execute("SELECT batchkit.capture('users', 's')")
        cur.execute(ins)
        cur.execute("CHECKPOINT")
        cur.execute("SELECT max(pid) FROM batchkit.workers WHERE kind = 'flush'")
        wpid = cur.fetchone()[0]
        out = os.path.join(benchlib.OUT_DIR, f"profile-drain-{args.sink}-{stamp}.data")
        procs = {"worker": wpid, "redis": svc.redis_pid}
        if broker:
            procs["broker"] = broker.pid
        c0 = {k: benchlib.proc_cpu_seconds(v) for k, v in procs.items()}
        th0 = benchlib.thread_cpu_seconds(wpid)
        p = perf_start(wpid, out)
        t0 = time.perf_counter()
        cur.execute("SELECT batchkit.resume_sink('s')")
        cur.execute("SELECT batchkit.flush('s', '900 s')")
        dt = time.perf_counter() - t0
        c1 = {k: benchlib.proc_cpu_seconds(v) for k, v in procs.items()}
        th1 = benchlib.thread_cpu_seconds(wpid)
        perf_stop(p, out, out[:-5] + ".txt")
        log(f"  drain {args.rows:,} -> {args.sink}: {dt:.2f} s ({args.rows / dt:,.0f} rows/s); "
            f"CPU s: " + ", ".join(f"{k} {c1[k] - c0[k]:.2f}" for k in procs))
        # the worker's own thread against librdkafka's (rdk:*) threads
        log("  worker threads, CPU s: " + ", ".join(
            f"{name} {th1[name] - th0.get(name, 0.0):.2f}" for name in sorted(th1)
            if th1[name] - th0.get(name, 0.0) >= 0.005))
    conn.close()
    svc.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`make bench`: every benchmark of issues 3-6 in one bounded run, then bench/report.py.

Runs, one after the other (never in parallel: the machine has 2 cores), each with
its own throwaway services:

  upsert   bench/upsert/run.py    batch_upsert against SQL and client-side peers
  capture  bench/capture/run.py   writer overhead against the trigger outboxes and PgQ
  oltp     bench/oltp/run.py      pgbench TPC-B with the 4 tables captured (issue 18)
  flush    bench/flush/run.py     drain, end to end, steady-state latency, worker
                                  memory and the batch_size sweep, against the relays
  metrics  bench/metrics/run.py   drain with and without a 10 Hz metrics reader

Profiles (the parameters of every command are printed and recorded):
  report   (default) the issues' sizes (1M rows), one repetition (two A/B pairs for
           metrics): ~28 min on the project's 2-core VM at a load average of 3-4; writes bench/report-data/ (the JSON inputs and each
           benchmark's log), bench/REPORT.md and bench/plots/*.png
  --quick  smoke run, ~5 min: small sizes, one repetition; writes everything under
           bench/out/quick/ so the committed report is left alone

While the benchmarks run, a thread samples /proc/loadavg every 5 s: the report
shows how busy the machine was. A benchmark that fails is recorded as failed
(its log is kept) and the others still run; the exit status is then 1.

    BK_PGBIN=/usr/lib/postgresql/15/bin /usr/bin/python3 bench/run_all.py [--quick]
        [--only upsert,capture,oltp,flush,metrics] [--out-dir DIR] [--no-report]
"""
import argparse
import glob
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.abspath(os.path.dirname(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# name -> (script, report-profile args, quick-profile args, how its JSON is obtained,
#          minutes the report profile took on the project's 2-core VM at load 3-4; the
#          peers' Python relays into Kafka take most of flush's)
# "out" benchmarks take --out FILE; "latest" ones write bench/out/<name>-latest.json.
BENCHES = [
    ("upsert", "bench/upsert/run.py",
     ["--rows", "1000000", "--reps", "1", "--row-by-row", "50000"],
     ["--rows", "50000", "--reps", "1", "--row-by-row", "5000"], "out", 3),
    ("capture", "bench/capture/run.py",
     ["--reps", "3", "--sizes", "100000,1000000", "--pgbench-tx", "10000",
      "--storage-rows", "1000000"],
     ["--quick"], "latest", 5),
    ("oltp", "bench/oltp/run.py", ["--reps", "3", "--seconds", "20"], ["--quick"], "latest", 9),
    ("flush", "bench/flush/run.py",
     ["--rows", "1000000", "--reps", "1", "--drain-reps", "3",
      "--phases", "drain,e2e,steady,memory,sweep",
      "--seconds", "10", "--backlog", "5000000", "--sweep-rows", "300000",
      "--sweep-sizes", "100,500,1000,2000,5000,10000,20000"],
     ["--quick", "--phases", "drain,e2e,steady,memory,sweep", "--sweep-rows", "20000"],
     "latest", 21),
    ("metrics", "bench/metrics/run.py",
     ["--rows", "1000000", "--reps", "2", "--interleaved-rows", "6000000",
      "--interleaved-drains", "3", "--slice", "1"],
     ["--rows", "100000", "--reps", "1", "--interleaved-rows", "0"], "out", 6.5),
]
QUICK_MINUTES = {"upsert": 0.5, "capture": 1, "oltp": 1, "flush": 2.5, "metrics": 1}


class LoadSampler(threading.Thread):
    def __init__(self, period=5.0):
        super().__init__(daemon=True)
        self.period = period
        self.samples = []
        self.t0 = time.time()
        self._halt = threading.Event()
        self.current = None

    def run(self):
        while not self._halt.is_set():
            with open("/proc/loadavg") as f:
                la = [float(x) for x in f.read().split()[:3]]
            self.samples.append({"t": round(time.time() - self.t0, 1), "load1": la[0],
                                 "load5": la[1], "load15": la[2], "bench": self.current})
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join()


def machine():
    """CPU model, cores, RAM and kernel of this machine, and the code's commit."""
    info = {"cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["ram_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    info["kernel"] = os.uname().release
    try:
        with open("/etc/debian_version") as f:
            info["debian"] = f.read().strip()
    except OSError:
        pass

    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True,
                              text=True).stdout.strip()
    info["git_commit"] = git("rev-parse", "HEAD")
    info["git_branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
    # the last commit that changed the extension itself (bench-only commits do not)
    info["git_code_commit"] = git("log", "-1", "--format=%H", "--", "src", "include", "sql",
                                  "CMakeLists.txt")
    # uncommitted changes to the code being measured (the report's own outputs excluded)
    dirty = [l for l in git("status", "--porcelain", "--", "src", "include", "sql",
                            "bench", ":!bench/REPORT.md", ":!bench/plots",
                            ":!bench/report-data").splitlines() if l]
    info["git_dirty"] = dirty
    return info


def write_run(data_dir, run, sampler):
    run["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run["loadavg_samples"] = list(sampler.samples)
    with open(os.path.join(data_dir, "run.json"), "w") as f:
        json.dump(run, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~5 min smoke run into bench/out/quick")
    ap.add_argument("--only", default="", help="comma list of benchmarks (upsert,capture,oltp,flush,metrics)")
    ap.add_argument("--out-dir", default=None,
                    help="where REPORT.md, plots/ and report-data/ go (default: bench/, "
                         "--quick: bench/out/quick/)")
    ap.add_argument("--no-report", action="store_true", help="run the benchmarks only")
    args = ap.parse_args()

    pgbin = os.environ.get("BK_PGBIN")
    if not pgbin:
        raise SystemExit("set BK_PGBIN to the bin/ directory of the PostgreSQL 15 that has "
                         "batchkit installed (make bench does it from PG_CONFIG)")
    out_dir = os.path.abspath(args.out_dir or (os.path.join(HERE, "out", "quick") if args.quick
                                               else HERE))
    data_dir = os.path.join(out_dir, "report-data")
    os.makedirs(data_dir, exist_ok=True)
    only = [x for x in args.only.split(",") if x]
    chosen = [b for b in BENCHES if not only or b[0] in only]
    if only and len(chosen) != len(only):
        raise SystemExit(f"unknown benchmark in --only {only}")
    profile = "quick" if args.quick else "report"
    minutes = sum(QUICK_MINUTES[b[0]] if args.quick else b[5] for b in chosen)
    print(f"# make bench, profile '{profile}': {', '.join(b[0] for b in chosen)}; expected "
          f"duration ~{minutes:.0f} min on a 2-core machine at load 3-4; "
          f"results in {os.path.relpath(out_dir, ROOT)}/", flush=True)

    run = {"profile": profile, "argv": sys.argv[1:], "bk_pgbin": pgbin, "machine": machine(),
           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "benchmarks": {}}
    # the PostgreSQL the benchmarks use
    try:
        run["machine"]["postgres"] = subprocess.run(
            [os.path.join(pgbin, "postgres"), "--version"], capture_output=True,
            text=True).stdout.strip()
    except OSError:
        pass
    sampler = LoadSampler()
    sampler.start()
    failed = []
    env = dict(os.environ, BK_PGBIN=pgbin, PYTHONUNBUFFERED="1")
    # metrics/run.py uses the services of .run/current when there are any: make it
    # start (and stop) its own, like every other benchmark
    env.pop("BATCHKIT_RUN_DIR", None)
    for name, script, rep_args, quick_args, how, _ in chosen:
        bargs = list(quick_args if args.quick else rep_args)
        json_path = os.path.join(data_dir, f"{name}.json")
        # the command as a reader would type it to reproduce the numbers
        shown = " ".join(["BK_PGBIN=$BK_PGBIN", "/usr/bin/python3", script, *bargs])
        if how == "out":
            bargs += ["--out", json_path]
            shown += f" --out {name}.json"
        cmd = [PY, script, *bargs]
        log_path = os.path.join(data_dir, f"{name}.log")
        print(f"## {name}: {shown}", flush=True)
        sampler.current = name
        for stale in glob.glob(os.path.join(HERE, "out", f"{name}-latest.json")):
            os.remove(stale)
        if os.path.exists(json_path):
            os.remove(json_path)
        t0 = time.time()
        with open(log_path, "w") as logf:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            # stopped by SIGTERM: pass it on, so that the benchmark stops its services
            signal.signal(signal.SIGTERM, lambda signum, frame, p=p: (
                p.terminate(), p.wait(60), sys.exit(128 + signum)))
            for line in p.stdout:
                sys.stdout.write("   " + line)
                sys.stdout.flush()
                logf.write(line)
            rc = p.wait()
        dt = time.time() - t0
        if how == "latest":
            latest = os.path.join(HERE, "out", f"{name}-latest.json")
            if rc == 0 and os.path.exists(latest):
                shutil.copyfile(latest, json_path)
        # the steady phase keeps every latency sample: store big inputs compressed
        # (bench/report.py reads both forms)
        gz = json_path + ".gz"
        if os.path.exists(gz):
            os.remove(gz)
        if os.path.exists(json_path) and os.path.getsize(json_path) > 1_000_000:
            with open(json_path, "rb") as src, gzip.open(gz, "wb", compresslevel=9) as dst:
                shutil.copyfileobj(src, dst)
            os.remove(json_path)
            json_path = gz
        ok = rc == 0 and os.path.exists(json_path)
        if not ok:
            failed.append(name)
        run["benchmarks"][name] = {"command": shown, "exit": rc, "ok": ok, "seconds": dt,
                                   "json": os.path.basename(json_path) if ok else None, "log": f"{name}.log"}
        print(f"## {name}: {'done' if ok else 'FAILED (exit %d)' % rc} in {dt / 60:.1f} min",
              flush=True)
        # after every benchmark, so that an interrupted run still describes what it did
        write_run(data_dir, run, sampler)
    sampler.current = None
    sampler.stop()
    write_run(data_dir, run, sampler)
    rc = 1 if failed else 0
    if not args.no_report:
        r = subprocess.run([PY, os.path.join(HERE, "report.py"), "--dir", out_dir])
        rc = rc or r.returncode
    if failed:
        print(f"# FAILED: {', '.join(failed)} (logs in {os.path.relpath(data_dir, ROOT)}/)",
              flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())

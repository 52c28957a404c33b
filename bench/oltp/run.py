#!/usr/bin/env python3
"""Capture on a busy OLTP database: pgbench TPC-B with every table captured (issue 18).

Starts its own throwaway PostgreSQL 15 (batchkit preloaded, pgq available) and
redis-server, then measures, all in the same run, `pgbench -n -c 8 -j 2 -T 20`
(the built-in TPC-B script) at scale 10 on the four pgbench tables with

  plain          no capture (the baseline)
  pgq            pgq.logutriga('q') AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW on
                 the 4 tables (no consumer: capture cost only)
  outbox         PL/pgSQL statement triggers with transition tables (one per table and
                 event) -> INSERT INTO outbox(payload) SELECT to_jsonb(n) FROM new_table n
                 (no relay)
  bk_paused      batchkit: pgbench_accounts -> sink `acct` (Redis hset, key acct:{aid}),
                 tellers, branches and history -> sink `rest` (Redis xadd into
                 cdc:{table}, maxlen 100000); history has no primary key:
                 key_columns tid, aid, mtime. Both sinks PAUSED: the capture cost alone
  bk_delivering  the same with both sinks delivering while pgbench runs; after the run
                 flush() both and check every touched account's hash against the table

Every run starts from a fresh `pgbench -i -s 10` (tables dropped and re-created,
every queue emptied) and a CHECKPOINT; the repetitions (--reps, default 3)
alternate the order of the methods. Reported: median tps and its ratio to the
median of `plain` (and of `pgq`), the spread (min-max), the CPU per transaction
of the whole cluster + pgbench + redis-server (the postmaster's children, running
or reaped: a measure that other load on the machine changes little; its ratio
is the tps ratio a dedicated CPU-bound machine would show), the WAL per transaction,
the load average before each run and the CPU seconds of the flush worker and
redis-server. Every run checks that the method captured exactly the rows the
transactions changed (4 per transaction).

    /usr/bin/python3 bench/oltp/run.py [--quick] [--reps 3] [--seconds 20]
        [--methods plain,pgq,outbox,bk_paused,bk_delivering]

Prints the table and writes the raw numbers to bench/out/oltp-<time>.json (and
oltp-latest.json).
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
import benchlib  # noqa: E402
from benchlib import Table, log, median  # noqa: E402

METHODS = ["plain", "pgq", "outbox", "bk_paused", "bk_delivering"]
LABEL = {
    "plain": "no capture",
    "pgq": "PgQ pgq.logutriga (no consumer)",
    "outbox": "PL/pgSQL statement trigger -> jsonb outbox (no relay)",
    "bk_paused": "batchkit, sinks paused (capture only)",
    "bk_delivering": "batchkit, sinks delivering to Redis",
}
TABLES = ["pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history"]
EVENTS = [("insert", "NEW TABLE AS new_table", "new_table"),
          ("update", "NEW TABLE AS new_table", "new_table"),
          ("delete", "OLD TABLE AS old_table", "old_table")]


def _stat(pid):
    """(ppid, utime + stime, cutime + cstime) of a process in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            x = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(x[1]), (int(x[11]) + int(x[12])) / tick, (int(x[13]) + int(x[14])) / tick


class ClusterCpu:
    """CPU seconds the whole cluster used: the postmaster's children still running
    (backends, worker, walwriter, ...) plus those that exited meanwhile (the postmaster
    reaps them: their time is in its cutime/cstime). On a shared machine this is the
    measure other load does not change much: CPU per transaction."""

    def __init__(self, pm):
        self.pm = pm

    def snap(self):
        kids = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = _stat(int(d))
                if st and st[0] == self.pm:
                    kids[int(d)] = st[1]
        pm = _stat(self.pm)
        return pm[1] + pm[2], kids

    @staticmethod
    def used(a, b):
        return (b[0] - a[0]) + sum(v - a[1].get(pid, 0.0) for pid, v in b[1].items())


class Bench:
    def __init__(self, svc, args):
        self.svc = svc
        self.args = args
        self.conn = svc.connect()
        self.cur = self.conn.cursor()
        self.pgbench = os.path.join(benchlib.PGBIN, "pgbench")
        self.run_no = 0
        with open(os.path.join(svc.pgdir, "data", "postmaster.pid")) as f:
            self.cluster = ClusterCpu(int(f.readline()))

    def q(self, sql, params=None):
        self.cur.execute(sql, params)
        try:
            return self.cur.fetchall()
        except Exception:
            return None

    def q1(self, sql, params=None):
        self.cur.execute(sql, params)
        return self.cur.fetchone()[0]

    def setup(self):
        self.q("CREATE EXTENSION batchkit")
        self.q("CREATE EXTENSION pgq")
        self.q("CREATE TABLE outbox(id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL,"
               " payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        for ev, _, tt in EVENTS:
            self.q(f"""CREATE FUNCTION outbox_{ev}() RETURNS trigger LANGUAGE plpgsql AS $$
                      BEGIN
                          INSERT INTO outbox(tbl, op, payload)
                               SELECT TG_TABLE_NAME, TG_OP, to_jsonb(t) FROM {tt} t;
                          RETURN NULL;
                      END $$""")

    def init_pgbench(self):
        p = subprocess.run([self.pgbench, "-i", "-q", "-s", str(self.args.scale)],
                           env=self.svc.pg_env(), capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {p.stderr}")

    # ---- per-method capture ------------------------------------------------------------
    def attach(self, m):
        """Fresh pgbench tables, empty queues, the method's capture, CHECKPOINT."""
        self.run_no += 1
        self.q("TRUNCATE outbox RESTART IDENTITY")
        self.init_pgbench()
        if m == "pgq":
            self.q("SELECT pgq.create_queue('q')")
            for t in TABLES:
                self.q(f"CREATE TRIGGER pgq_cap AFTER INSERT OR UPDATE OR DELETE ON {t} "
                       "FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('q')")
        elif m == "outbox":
            for t in TABLES:
                for ev, ref, _ in EVENTS:
                    self.q(f"CREATE TRIGGER outbox_{ev} AFTER {ev.upper()} ON {t} "
                           f"REFERENCING {ref} FOR EACH STATEMENT EXECUTE FUNCTION outbox_{ev}()")
        elif m.startswith("bk_"):
            r = self.svc.redis_port
            self.sinks = (f"acct{self.run_no}", f"rest{self.run_no}")
            self.q("SELECT batchkit.create_sink(%s, 'redis', %s::jsonb)",
                   (self.sinks[0], '{"url": "redis://127.0.0.1:%d/0", "command": "hset", '
                    '"key": "acct%d:{aid}"}' % (r, self.run_no)))
            self.q("SELECT batchkit.create_sink(%s, 'redis', %s::jsonb)",
                   (self.sinks[1], '{"url": "redis://127.0.0.1:%d/0", "command": "xadd", '
                    '"key": "cdc%d:{table}", "maxlen": 100000}' % (r, self.run_no)))
            if m == "bk_paused":
                for s in self.sinks:
                    self.q("SELECT batchkit.pause_sink(%s)", (s,))
            self.q("SELECT batchkit.capture('pgbench_accounts', %s)", (self.sinks[0],))
            self.q("SELECT batchkit.capture('pgbench_tellers', %s)", (self.sinks[1],))
            self.q("SELECT batchkit.capture('pgbench_branches', %s)", (self.sinks[1],))
            self.q("SELECT batchkit.capture('pgbench_history', %s, "
                   "options => '{\"key_columns\": [\"tid\", \"aid\", \"mtime\"]}')",
                   (self.sinks[1],))
        self.q("VACUUM ANALYZE")
        self.q("CHECKPOINT")

    def detach(self, m):
        if m == "pgq":
            self.q("SELECT pgq.drop_queue('q', true)")
            for t in TABLES:
                self.q(f"DROP TRIGGER pgq_cap ON {t}")
        elif m == "outbox":
            for t in TABLES:
                for ev, _, _ in EVENTS:
                    self.q(f"DROP TRIGGER outbox_{ev} ON {t}")
        elif m.startswith("bk_"):
            for s in self.sinks:
                self.q("SELECT batchkit.drop_sink(%s, true)", (s,))
            for _ in range(3):
                self.q("SELECT * FROM batchkit.maintain_queue('0 s')")
            import redis
            rr = redis.Redis(port=self.svc.redis_port)
            rr.flushall()

    def check(self, m, tx, out):
        """The method captured the 4 changed rows of every transaction."""
        hist = self.q1("SELECT count(*) FROM pgbench_history")
        if hist != tx:
            raise AssertionError(f"{m}: {hist} history rows, pgbench reported {tx} transactions")
        if m == "plain":
            return
        if m == "pgq":
            parent = self.q1("SELECT queue_data_pfx FROM pgq.queue WHERE queue_name = 'q'")
            got = self.q1(f"SELECT count(*) FROM {parent}")
            want = 4 * tx
        elif m == "outbox":
            got, want = self.q1("SELECT count(*) FROM outbox"), 4 * tx
        elif m == "bk_paused":
            got = (self.q1("SELECT batchkit.queue_depth(%s)", (self.sinks[0],)),
                   self.q1("SELECT batchkit.queue_depth(%s)", (self.sinks[1],)))
            want = (tx, 3 * tx)
        else:
            out["backlog_at_end"] = [self.q1("SELECT batchkit.queue_depth(%s)", (s,))
                                     for s in self.sinks]
            t0 = time.perf_counter()
            for s in self.sinks:
                if not self.q1("SELECT batchkit.flush(%s, '600 s')", (s,)):
                    raise AssertionError(f"flush({s}) timed out")
            out["drain_after_s"] = time.perf_counter() - t0
            got = tuple(self.q1("SELECT acked_records FROM batchkit.sink_progress p JOIN "
                                "batchkit.sink s USING (sink_id) WHERE s.name = %s", (s,))
                        for s in self.sinks)
            want = (tx, 3 * tx)
            self.verify_redis()
        if got != want:
            raise AssertionError(f"{m}: captured {got} rows, expected {want}")

    def verify_redis(self):
        """Every touched account's hash in Redis equals its row (final state per key)."""
        import redis
        rr = redis.Redis(port=self.svc.redis_port)
        rows = self.q("SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid IN "
                      "(SELECT DISTINCT aid FROM pgbench_history)")
        pipe = rr.pipeline(transaction=False)
        for aid, _, _ in rows:
            pipe.hmget(f"acct{self.run_no}:{aid}", "bid", "abalance")
        bad = [(r, v) for r, v in zip(rows, pipe.execute())
               if v != [str(r[1]).encode(), str(r[2]).encode()]]
        if bad:
            raise AssertionError(f"{len(bad)} of {len(rows)} accounts differ in Redis, e.g. "
                                 f"{bad[:3]}")
        streams = sum(rr.xlen(f"cdc{self.run_no}:{t}") for t in
                      ("pgbench_tellers", "pgbench_branches", "pgbench_history"))
        if streams == 0:
            raise AssertionError("nothing delivered to the cdc streams")
        self.verified_accounts = len(rows)

    # ---- one pgbench run ----------------------------------------------------------------
    def run(self, m):
        self.attach(m)
        wpid = self.q1("SELECT max(pid) FROM batchkit.workers WHERE kind = 'flush'") \
            if m == "bk_delivering" else None
        if m == "bk_delivering":
            # the worker starts when the sinks exist: give it a moment, outside the timing
            for _ in range(50):
                wpid = self.q1("SELECT max(pid) FROM batchkit.workers WHERE kind = 'flush'")
                if wpid:
                    break
                time.sleep(0.1)
        lsn0 = self.q1("SELECT pg_current_wal_insert_lsn()")
        la0 = benchlib.loadavg()
        c0 = benchlib.cpu_times()
        w0 = benchlib.proc_cpu_seconds(wpid) if wpid else None
        r0 = benchlib.proc_cpu_seconds(self.svc.redis_pid)
        k0 = self.cluster.snap()
        u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run([self.pgbench, "-n", "-c", str(self.args.clients), "-j",
                            str(self.args.threads), "-T", str(self.args.seconds)],
                           env=self.svc.pg_env(), capture_output=True, text=True)
        c1 = benchlib.cpu_times()
        u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the postmaster reaps pgbench's backends right after it disconnects
        for _ in range(50):
            if self.q1("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client "
                       "backend' AND pid <> pg_backend_pid()") == 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        k1 = self.cluster.snap()
        w1 = benchlib.proc_cpu_seconds(wpid) if wpid else None
        r1 = benchlib.proc_cpu_seconds(self.svc.redis_pid)
        la1 = benchlib.loadavg()
        if p.returncode != 0:
            raise RuntimeError(f"pgbench failed: {p.stderr}")
        tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)",
                              p.stdout).group(1))
        tx = int(re.search(r"number of transactions actually processed: (\d+)",
                           p.stdout).group(1))
        lat = float(re.search(r"latency average = ([0-9.]+) ms", p.stdout).group(1))
        wal = int(self.q1("SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (lsn0,)))
        pg_cpu = self.cluster.used(k0, k1)
        client_cpu = (u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)
        redis_cpu = (r1 - r0) if r0 is not None and r1 is not None else 0.0
        out = {"cpu_s": pg_cpu + client_cpu + redis_cpu, "postgres_cpu_s": pg_cpu,
               "pgbench_cpu_s": client_cpu,
               "cpu_us_per_tx": (pg_cpu + client_cpu + redis_cpu) * 1e6 / max(1, tx),
               "tps": tps, "tx": tx, "latency_ms": lat, "wal_bytes": wal,
               "wal_per_tx": wal / max(1, tx), "loadavg_before": la0, "loadavg_after": la1,
               "machine_busy": (c1[0] - c0[0]) / max(1, c1[1] - c0[1]),
               "flush_worker_cpu_s": (w1 - w0) if w0 is not None and w1 is not None else None,
               "redis_cpu_s": (r1 - r0) if r0 is not None and r1 is not None else None}
        self.check(m, tx, out)
        if m == "bk_delivering":
            out["verified_accounts"] = self.verified_accounts
            if out["flush_worker_cpu_s"] is not None:
                out["flush_worker_cpu_us_per_row"] = out["flush_worker_cpu_s"] * 1e6 / (4 * tx)
        self.detach(m)
        log(f"  {m:<14} {tps:8.0f} tps  {tx:7d} tx  CPU/tx {out['cpu_us_per_tx']:5.0f} us  "
            f"WAL/tx {wal / max(1, tx):6.0f} B  "
            f"load {la0[0]:.2f}  busy {out['machine_busy']:.0%}"
            + (f"  worker CPU {out['flush_worker_cpu_s']:.2f} s" if wpid else "")
            + (f"  backlog at end {out['backlog_at_end']}, drained in "
               f"{out['drain_after_s']:.1f} s" if "backlog_at_end" in out else ""))
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: -T 4, 1 rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--seconds", type=int, default=None, help="pgbench -T (default 20)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma list (default: all; 'plain' is always measured)")
    ap.add_argument("--pg-conf", default="",
                    help="extra postgresql.conf settings, e.g. 'shared_buffers=1GB'")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    args.seconds = args.seconds or (4 if args.quick else 20)
    methods = ["plain"] + [m for m in args.methods.split(",") if m in METHODS and m != "plain"]

    t_all = time.perf_counter()
    svc = benchlib.Services("oltp", redis=True, pg_conf=args.pg_conf)
    try:
        b = Bench(svc, args)
        info = benchlib.machine_info(b.conn)
        log(f"# {info['postgres'].split(' on ')[0]}; loadavg {info['loadavg_start']}; "
            f"pgbench TPC-B scale {args.scale}, -c {args.clients} -j {args.threads} "
            f"-T {args.seconds}, reps {reps}, methods {methods}")
        b.setup()
        res = {m: [] for m in methods}
        for rep in range(reps):
            order = methods if rep % 2 == 0 else list(reversed(methods))
            for m in order:
                res[m].append(b.run(m))
        b.conn.close()
    finally:
        svc.stop()
    result = {"benchmark": "oltp", "machine": info, "params": {
        "scale": args.scale, "clients": args.clients, "threads": args.threads,
        "seconds": args.seconds, "reps": reps, "methods": methods, "quick": args.quick,
        "argv": sys.argv[1:]}, "runs": res}
    table = Table(f"pgbench TPC-B scale {args.scale}, -c {args.clients} -j {args.threads} "
                  f"-T {args.seconds}, 4 tables captured (median of {reps}; ratios to no "
                  "capture and to PgQ, same run)")
    base = median([x["tps"] for x in res["plain"]])
    pgq = median([x["tps"] for x in res["pgq"]]) if "pgq" in res else None
    cbase = median([x["cpu_us_per_tx"] for x in res["plain"]])
    cpgq = median([x["cpu_us_per_tx"] for x in res["pgq"]]) if "pgq" in res else None
    targets = {"bk_paused": ">= 0.92x plain, >= 1.2x PgQ", "bk_delivering": ">= 0.85x plain"}
    summary = {}
    for m in methods:
        xs = [x["tps"] for x in res[m]]
        med = median(xs)
        loads = [x["loadavg_before"][0] for x in res[m]]
        cpu = median([x["cpu_us_per_tx"] for x in res[m]])
        cs = [x["cpu_us_per_tx"] for x in res[m]]
        note = (f"CPU/tx {cpu:,.0f} us ({min(cs):,.0f}-{max(cs):,.0f}) = {cbase / cpu:.2f}x "
                "plain's tx per CPU-s"
                + (f", {cpgq / cpu:.2f}x PgQ's" if m.startswith("bk_") and cpgq else "")
                + f"; spread {min(xs):,.0f}-{max(xs):,.0f}; WAL/tx "
                f"{median([x['wal_per_tx'] for x in res[m]]):,.0f} B; load "
                f"{min(loads):.1f}-{max(loads):.1f}")
        if m.startswith("bk_") and pgq:
            note += f"; {med / pgq:.2f}x PgQ"
        if m == "bk_delivering":
            note += (f"; worker CPU {median([x['flush_worker_cpu_s'] or 0 for x in res[m]]):.2f} s "
                     f"({median([x.get('flush_worker_cpu_us_per_row') or 0 for x in res[m]]):.1f}"
                     f" us/row), redis CPU {median([x['redis_cpu_s'] or 0 for x in res[m]]):.2f} s,"
                     f" backlog at end {median([sum(x['backlog_at_end']) for x in res[m]]):,.0f}")
        table.add(f"{LABEL[m]}", f"{med:,.0f} tps", baseline=f"{base:,.0f} tps",
                  ratio=med / base, target=targets.get(m), note=note)
        summary[m] = {"tps_median": med, "ratio_plain": med / base,
                      "ratio_pgq": (med / pgq) if pgq else None, "cpu_us_per_tx": cpu,
                      "cpu_ratio_plain": cbase / cpu,
                      "cpu_ratio_pgq": (cpgq / cpu) if cpgq else None}
    result["summary"] = summary
    result["table"] = table.as_json()
    result["machine"]["loadavg_end"] = benchlib.loadavg()
    result["seconds"] = time.perf_counter() - t_all
    path = benchlib.write_json("oltp", result)
    print(table.render())
    print(f"# loadavg start {info['loadavg_start']} end {result['machine']['loadavg_end']}; "
          f"{result['seconds']:.0f} s; raw numbers: {os.path.relpath(path, benchlib.ROOT)}")


if __name__ == "__main__":
    main()

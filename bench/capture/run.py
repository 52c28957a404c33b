#!/usr/bin/env python3
"""Writer overhead of batchkit's capture, against no capture and three peers.

Starts its own throwaway PostgreSQL 15 (batchkit preloaded, pgq available) and
redis-server, then measures, all in the same run:

 1. bulk: one `INSERT INTO users(id, name, email) SELECT ... FROM src_N` of N rows
    (100,000 and 1,000,000; realistic names and e-mails, pre-generated so the
    SELECT costs the same for every method) into
    users(id bigint primary key, name text, email text, created_at timestamptz
    default now()), with
      none        no trigger (the baseline)
      batchkit    batchkit.capture('users', sink) with the sink PAUSED
      row_trg     PL/pgSQL AFTER INSERT FOR EACH ROW -> INSERT INTO outbox(payload)
                  VALUES (to_jsonb(NEW))
      stmt_trg    PL/pgSQL AFTER INSERT FOR EACH STATEMENT, transition table ->
                  INSERT INTO outbox(payload) SELECT to_jsonb(n) FROM new_table n
      pgq         pgq.logutriga('q') AFTER INSERT FOR EACH ROW
    Every run starts from an emptied users table (TRUNCATE), an emptied queue
    (outbox TRUNCATE, PgQ queue dropped and created, batchkit sink dropped with
    force and its segments truncated), then CHECKPOINT; reps alternate the order
    of the methods. The time is the client's wall time of the autocommit statement
    (commit included). Reported: median of the reps and its ratio to the median
    of `none` at the same size; also the WAL each run wrote.
 2. oltp: 10,000 single-row autocommit inserts with pgbench (-c 1 -t 10000),
    each method; the median time and its ratio to `none`.
 3. storage: sum(bytes) of batchkit.queue_storage right after CREATE EXTENSION,
    then capture and consume --storage-rows rows (statements of 1M rows; the sink
    paused while a statement loads, resumed and flushed into a Redis stream with
    maxlen), call batchkit.maintain_queue() a few times and compare.

    /usr/bin/python3 bench/capture/run.py [--quick] [--full] [--reps 3]

Prints the table (measurement, value, baseline, ratio) and writes the raw
numbers to bench/out/capture-<time>.json (and capture-latest.json).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
import benchlib  # noqa: E402
from benchlib import Table, log, median, src_select  # noqa: E402

METHODS = ["none", "batchkit", "row_trg", "stmt_trg", "pgq"]
LABEL = {
    "none": "no capture",
    "batchkit": "batchkit capture (paused sink)",
    "row_trg": "PL/pgSQL row trigger -> jsonb outbox",
    "stmt_trg": "PL/pgSQL statement trigger -> jsonb outbox",
    "pgq": "PgQ pgq.logutriga",
}


class Bench:
    def __init__(self, svc, args):
        self.svc = svc
        self.args = args
        self.conn = svc.connect()
        self.cur = self.conn.cursor()
        self.sink_no = 0
        self.cur.execute("SELECT pg_backend_pid()")
        self.backend = self.cur.fetchone()[0]

    def q(self, sql, params=None):
        self.cur.execute(sql, params)
        try:
            return self.cur.fetchall()
        except Exception:
            return None

    def q1(self, sql, params=None):
        self.cur.execute(sql, params)
        return self.cur.fetchone()[0]

    # ---- schema ---------------------------------------------------------------------
    def setup(self, sizes):
        self.q("CREATE EXTENSION batchkit")
        self.empty_queue_bytes = self.q1("SELECT sum(bytes) FROM batchkit.queue_storage")
        if self.args.queue_compression:
            # experiment: compress the queue's chunks instead of storing them plain
            self.q("ALTER TABLE batchkit.queue ALTER COLUMN payload SET STORAGE EXTENDED, "
                   "ALTER COLUMN payload SET COMPRESSION %s" % self.args.queue_compression)
        self.q("CREATE EXTENSION pgq")
        self.q("CREATE TABLE users(id bigint PRIMARY KEY, name text, email text,"
               " created_at timestamptz DEFAULT now())")
        self.q("CREATE TABLE outbox(id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
               " created_at timestamptz NOT NULL DEFAULT now())")
        self.q("""CREATE FUNCTION outbox_row() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                      INSERT INTO outbox(payload) VALUES (to_jsonb(NEW));
                      RETURN NULL;
                  END $$""")
        self.q("""CREATE FUNCTION outbox_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                      INSERT INTO outbox(payload) SELECT to_jsonb(n) FROM new_table n;
                      RETURN NULL;
                  END $$""")
        for n in sizes:
            self.q(f"CREATE TABLE src_{n} AS {src_select(1, n)}")
            self.q(f"VACUUM ANALYZE src_{n}")
        self.q("VACUUM ANALYZE users")
        r = self.q(f"SELECT avg(length(name)), avg(length(email)), "
                   f"(SELECT name || ' <' || email || '>' FROM src_{sizes[0]} WHERE id = 7) "
                   f"FROM src_{sizes[0]}")[0]
        log(f"# source rows: avg name {float(r[0]):.1f} chars, avg email {float(r[1]):.1f} "
            f"chars, e.g. {r[2]}")
        self.sample_row = r[2]

    # ---- per-method triggers ------------------------------------------------------------
    def attach(self, method):
        """Empty users and every queue, attach the method's capture, CHECKPOINT."""
        self.q("TRUNCATE users")
        self.q("TRUNCATE outbox RESTART IDENTITY")
        if method == "batchkit":
            self.sink_no += 1
            self.sink = f"p{self.sink_no}"
            self.q("SELECT batchkit.create_sink(%s, 'redis', %s::jsonb)",
                   (self.sink, '{"url": "redis://127.0.0.1:%d/0", "command": "xadd", '
                    '"key": "cap:{table}"}' % self.svc.redis_port))
            self.q("SELECT batchkit.pause_sink(%s)", (self.sink,))
            self.q("SELECT batchkit.capture('users', %s)", (self.sink,))
        elif method == "row_trg":
            self.q("CREATE TRIGGER outbox_row AFTER INSERT ON users FOR EACH ROW "
                   "EXECUTE FUNCTION outbox_row()")
        elif method == "stmt_trg":
            self.q("CREATE TRIGGER outbox_stmt AFTER INSERT ON users REFERENCING NEW TABLE "
                   "AS new_table FOR EACH STATEMENT EXECUTE FUNCTION outbox_stmt()")
        elif method == "pgq":
            self.q("SELECT pgq.create_queue('q')")
            self.q("CREATE TRIGGER pgq_users AFTER INSERT ON users FOR EACH ROW "
                   "EXECUTE FUNCTION pgq.logutriga('q')")
        self.q("CHECKPOINT")

    def detach(self, method):
        if method == "batchkit":
            # discard the queued rows (drop with force) and give the space back
            self.q("SELECT batchkit.drop_sink(%s, true)", (self.sink,))
            for _ in range(3):
                self.q("SELECT * FROM batchkit.maintain_queue('0 s')")
        elif method == "row_trg":
            self.q("DROP TRIGGER outbox_row ON users")
        elif method == "stmt_trg":
            self.q("DROP TRIGGER outbox_stmt ON users")
        elif method == "pgq":
            self.q("DROP TRIGGER pgq_users ON users")
            self.q("SELECT pgq.drop_queue('q')")

    def check(self, method, n):
        """Each method captured exactly n rows (so nothing is measured that did not work)."""
        got = {
            "none": lambda: n,
            "batchkit": lambda: self.q1("SELECT batchkit.queue_depth(%s)", (self.sink,)),
            "row_trg": lambda: self.q1("SELECT count(*) FROM outbox"),
            "stmt_trg": lambda: self.q1("SELECT count(*) FROM outbox"),
            "pgq": self._pgq_count,
        }[method]()
        if got != n:
            raise AssertionError(f"{method}: captured {got} rows, expected {n}")
        assert self.q1("SELECT count(*) FROM users") == n

    def _pgq_count(self):
        # the queue's event table is the parent of its rotating tables (inheritance)
        parent = self.q1("SELECT queue_data_pfx FROM pgq.queue WHERE queue_name = 'q'")
        return self.q1(f"SELECT count(*) FROM {parent}")

    # ---- 1. bulk INSERT ... SELECT -----------------------------------------------------
    def bulk(self, n, reps):
        res = {m: [] for m in METHODS}
        for rep in range(reps):
            order = METHODS if rep % 2 == 0 else list(reversed(METHODS))
            for m in order:
                self.attach(m)
                lsn0 = self.q1("SELECT pg_current_wal_insert_lsn()")
                la0 = benchlib.loadavg()[0]
                c0 = benchlib.cpu_times()
                b0 = benchlib.proc_cpu_seconds(self.backend)
                t0 = time.perf_counter()
                self.cur.execute(f"INSERT INTO users(id, name, email) SELECT id, name, email "
                                 f"FROM src_{n}")
                dt = time.perf_counter() - t0
                b1 = benchlib.proc_cpu_seconds(self.backend)
                c1 = benchlib.cpu_times()
                wal = int(self.q1("SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", (lsn0,)))
                self.check(m, n)
                self.detach(m)
                res[m].append({"seconds": dt, "wal_bytes": wal, "loadavg1": la0,
                               "backend_cpu_s": b1 - b0,
                               "machine_busy": (c1[0] - c0[0]) / max(1, c1[1] - c0[1])})
                log(f"  bulk {n:>9,} {m:<9} rep {rep}: {dt:7.3f} s  backend CPU {b1 - b0:7.2f} s  "
                    f"WAL {wal / 1e6:7.1f} MB  load {la0:.2f}")
        return res

    # ---- 2. pgbench single-row inserts --------------------------------------------------
    def oltp(self, tx, reps):
        script = os.path.join(self.svc.dir, "insert.sql")
        with open(script, "w") as f:
            f.write("\\set id random(1, 1000000000)\n"
                    "INSERT INTO users(id, name, email) VALUES (:id, 'Name ' || :id, "
                    "'user' || :id || '@example.com') ON CONFLICT DO NOTHING;\n")
        os.chmod(script, 0o644)
        pgbench = os.path.join(benchlib.PGBIN, "pgbench")
        res = {m: [] for m in METHODS}
        for rep in range(reps):
            order = METHODS if rep % 2 == 0 else list(reversed(METHODS))
            for m in order:
                self.attach(m)
                la0 = benchlib.loadavg()[0]
                # the flush worker is woken by every commit that queued rows: count its CPU
                wpid = self.q1("SELECT max(pid) FROM batchkit.workers WHERE kind = 'flush'")
                w0 = benchlib.proc_cpu_seconds(wpid) if wpid else None
                p = subprocess.run([pgbench, "-n", "-f", script, "-t", str(tx), "-c", "1"],
                                   env=self.svc.pg_env(), capture_output=True, text=True)
                w1 = benchlib.proc_cpu_seconds(wpid) if wpid else None
                if p.returncode != 0:
                    raise RuntimeError(f"pgbench failed: {p.stderr}")
                tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)",
                                      p.stdout).group(1))
                lat = float(re.search(r"latency average = ([0-9.]+) ms", p.stdout).group(1))
                rows = self.q1("SELECT count(*) FROM users")
                self.check(m, rows)
                self.detach(m)
                wcpu = (w1 - w0) if w0 is not None and w1 is not None else None
                res[m].append({"seconds": tx / tps, "tps": tps, "latency_ms": lat,
                               "rows": rows, "loadavg1": la0, "flush_worker_cpu_s": wcpu})
                log(f"  pgbench {tx} tx {m:<9} rep {rep}: {tx / tps:7.3f} s  {tps:8.0f} tps  "
                    f"flush worker CPU {wcpu or 0:.2f} s  load {la0:.2f}")
        return res

    # ---- 3. storage after capture + consumption -------------------------------------------
    def storage(self, total, stmt_rows):
        import redis
        r = redis.Redis(port=self.svc.redis_port)
        self.q("CREATE TABLE events(id bigint PRIMARY KEY, name text, email text,"
               " created_at timestamptz DEFAULT now())")
        self.q("SELECT batchkit.create_sink('st', 'redis', %s::jsonb)",
               ('{"url": "redis://127.0.0.1:%d/0", "command": "xadd", "key": "st:{table}", '
                '"maxlen": 10000}' % self.svc.redis_port,))
        self.q("SELECT batchkit.capture('events', 'st', ARRAY['insert'])")
        out = {"empty_bytes": int(self.empty_queue_bytes), "statements": []}
        done = 0
        peak = 0
        t_start = time.perf_counter()
        while done < total:
            n = min(stmt_rows, total - done)
            self.q("SELECT batchkit.pause_sink('st')")
            t0 = time.perf_counter()
            self.q(f"INSERT INTO events(id, name, email) {src_select(done + 1, done + n)}")
            t_ins = time.perf_counter() - t0
            queued = int(self.q1("SELECT sum(bytes) FROM batchkit.queue_storage"))
            self.q("SELECT batchkit.resume_sink('st')")
            t0 = time.perf_counter()
            ok = self.q1("SELECT batchkit.flush('st', '600 s')")
            t_drain = time.perf_counter() - t0
            if not ok:
                raise AssertionError("flush('st') timed out")
            after = int(self.q1("SELECT sum(bytes) FROM batchkit.queue_storage"))
            done += n
            peak = max(peak, queued, after)
            out["statements"].append({"rows": n, "insert_s": t_ins, "drain_s": t_drain,
                                      "bytes_loaded": queued, "bytes_after_flush": after})
            log(f"  storage: {done:>11,} rows  insert {t_ins:6.2f} s  drain {t_drain:6.2f} s  "
                f"queue {queued / 1e6:8.1f} MB loaded, {after / 1e6:8.1f} MB after flush")
        acked = self.q1("SELECT acked_records FROM batchkit.sink_progress p JOIN batchkit.sink s"
                        " USING (sink_id) WHERE s.name = 'st'")
        if acked != total:
            raise AssertionError(f"storage: {acked} rows acknowledged, expected {total}")
        # the last XADD entry is the last row captured (maxlen keeps the stream short)
        last = r.xrevrange("st:events", count=1)
        out["redis_last_entry"] = {k.decode(): v.decode()[:200] for k, v in last[0][1].items()}
        out["bytes_before_maintain"] = int(self.q1("SELECT sum(bytes) FROM batchkit.queue_storage"))
        out["maintain"] = []
        for _ in range(4):
            res = self.q("SELECT * FROM batchkit.maintain_queue()")
            b = int(self.q1("SELECT sum(bytes) FROM batchkit.queue_storage"))
            out["maintain"].append({"result": [list(map(str, x)) for x in res], "bytes": b})
            time.sleep(0.2)
        out["segments_after"] = [list(x) for x in
                                 self.q("SELECT segment, current, bytes FROM batchkit.queue_storage")]
        out["final_bytes"] = out["maintain"][-1]["bytes"]
        out["peak_bytes"] = peak
        out["rows"] = total
        out["seconds"] = time.perf_counter() - t_start
        log(f"  storage: empty {out['empty_bytes']:,} B, peak {peak / 1e6:.1f} MB, "
            f"after flush {out['bytes_before_maintain']:,} B, after maintain_queue "
            f"{out['final_bytes']:,} B")
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (< 60 s): 20k/100k rows, 1 rep, 1000 pgbench tx, 100k storage rows")
    ap.add_argument("--full", action="store_true", help="storage test on 10,000,000 rows")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 3)")
    ap.add_argument("--sizes", default=None, help="comma-separated bulk sizes (default 100000,1000000)")
    ap.add_argument("--pgbench-tx", type=int, default=None, help="default 10000")
    ap.add_argument("--storage-rows", type=int, default=None, help="default 2,000,000 (--full: 10M)")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: bulk,oltp,storage")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma list of methods to measure (default: all; 'none' is always kept)")
    ap.add_argument("--queue-compression", choices=["lz4", "pglz"], default=None,
                    help="experiment: ALTER the queue's payload column to STORAGE EXTENDED with "
                         "this compression after CREATE EXTENSION")
    ap.add_argument("--pg-conf", default="",
                    help="extra postgresql.conf settings, e.g. 'shared_buffers=1GB,work_mem=64MB'")
    args = ap.parse_args()
    if args.quick:
        sizes = [20_000, 100_000]
        reps, tx, srows, stmt = 1, 1000, 100_000, 50_000
    else:
        sizes = [100_000, 1_000_000]
        reps, tx, srows, stmt = 3, 10_000, 2_000_000, 1_000_000
    if args.full:
        srows = 10_000_000
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else sizes
    reps = args.reps or reps
    tx = args.pgbench_tx or tx
    srows = args.storage_rows or srows
    skip = set(filter(None, args.skip.split(",")))
    METHODS[:] = ["none"] + [m for m in args.methods.split(",") if m in METHODS and m != "none"]

    t_all = time.perf_counter()
    svc = benchlib.Services("capture", redis=True, pg_conf=args.pg_conf)
    b = Bench(svc, args)
    info = benchlib.machine_info(b.conn)
    log(f"# {info['postgres'].split(' on ')[0]}; loadavg {info['loadavg_start']}; "
        f"sizes {sizes}, reps {reps}, pgbench {tx} tx, storage {srows:,} rows")
    b.setup(sizes)
    result = {"benchmark": "capture", "machine": info, "params": {
        "sizes": sizes, "reps": reps, "pgbench_tx": tx, "storage_rows": srows,
        "storage_statement_rows": stmt, "quick": args.quick, "full": args.full,
        "argv": sys.argv[1:]}, "sample_row": b.sample_row}
    table = Table("batchkit capture: writer overhead (median of %d reps; ratio to no capture, "
                  "same run)" % reps)
    targets = {"batchkit": "<= 1.5x (aim 1.2x)"}
    if "bulk" not in skip:
        result["bulk"] = {}
        for n in sizes:
            res = b.bulk(n, reps)
            result["bulk"][n] = res
            base = median([x["seconds"] for x in res["none"]])
            cbase = median([x["backend_cpu_s"] for x in res["none"]])
            for m in METHODS:
                med = median([x["seconds"] for x in res[m]])
                wal = median([x["wal_bytes"] for x in res[m]])
                cpu = median([x["backend_cpu_s"] for x in res[m]])
                table.add(f"INSERT..SELECT {n:,} rows: {LABEL[m]}", med, "s", base,
                          med / base, targets.get(m) if m != "none" else None,
                          note=f"backend CPU {cpu:.2f} s = {cpu / cbase:.2f}x; "
                               f"WAL {wal / 1e6:.0f} MB")
    if "oltp" not in skip:
        res = b.oltp(tx, reps)
        result["oltp"] = res
        base = median([x["seconds"] for x in res["none"]])
        for m in METHODS:
            med = median([x["seconds"] for x in res[m]])
            wcpu = median([x["flush_worker_cpu_s"] or 0 for x in res[m]])
            table.add(f"pgbench {tx:,} single-row inserts: {LABEL[m]}", med, "s", base,
                      med / base, "<= 1.1x" if m == "batchkit" else None,
                      note=f"flush worker CPU {wcpu:.2f} s")
    if "storage" not in skip:
        st = b.storage(srows, stmt)
        result["storage"] = st
        table.add(f"queue storage after capturing+consuming {srows:,} rows (after maintain_queue)",
                  st["final_bytes"], "bytes", st["empty_bytes"],
                  st["final_bytes"] / st["empty_bytes"], "<= 2x")
        table.add("queue storage right after the last flush (before maintain_queue)",
                  st["bytes_before_maintain"], "bytes", st["empty_bytes"],
                  st["bytes_before_maintain"] / st["empty_bytes"])
        table.add("queue storage peak (one statement loaded, paused sink)", st["peak_bytes"],
                  "bytes", st["empty_bytes"], st["peak_bytes"] / st["empty_bytes"])
    result["table"] = table.as_json()
    result["machine"]["loadavg_end"] = benchlib.loadavg()
    result["seconds"] = time.perf_counter() - t_all
    b.conn.close()
    svc.stop()
    path = benchlib.write_json("capture", result)
    print(table.render())
    print(f"# loadavg start {info['loadavg_start']} end {result['machine']['loadavg_end']}; "
          f"{result['seconds']:.0f} s; raw numbers: {os.path.relpath(path, benchlib.ROOT)}")


if __name__ == "__main__":
    main()

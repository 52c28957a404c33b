#!/usr/bin/env python3
"""Delivery speed of batchkit's flush worker, against a hand-written outbox relay and PgQ.

Starts its own throwaway PostgreSQL 15 (batchkit preloaded, pgq available) and
redis-server, and a fresh Kafka dev broker for every Kafka measurement (one topic
of --partitions partitions, so the broker's 5 MiB-per-partition cap never trims a
run's messages). Measures, in the same run:

 (i)   drain: N queued rows (default 1,000,000) delivered into Redis (XADD to one
       stream) and into Kafka. batchkit: two sinks capture users, both PAUSED while
       one INSERT..SELECT loads N rows; then, per sink, the time from resume_sink()
       to flush() returning. Peers, each drained by ONE Python relay (relay.py):
         outbox  AFTER STATEMENT trigger (transition table) -> jsonb outbox; the
                 relay DELETEs ... SKIP LOCKED RETURNING 10,000 at a time, pushes
                 them, commits after the sink acknowledged;
         pgq     pgq.logutriga; the relay ticks (pgq.ticker()), next_batch,
                 get_batch_cursor/FETCH 10,000, pushes, finish_batch.
       Every run is verified: XLEN of the stream / messages and distinct keys in the
       topic (read back with kcat) equal N.
 (ii)  end to end: the same N rows from the start of the INSERT to the last
       acknowledgement. batchkit: sink running, INSERT then flush(); peers: the relay
       running (polling) from before the INSERT.
 (iii) steady state: --writers threads commit --rate rows/s in 100-row transactions
       for --seconds; an independent reader (XREAD BLOCK, or kcat -C with
       fetch.wait.max.ms=5 piped into the reader) stamps each message's arrival; latency = arrival time -
       the time the writer's COMMIT returned, per row; p50/p90/p99/max.
 (iv)  worker memory: a --backlog-row backlog (default 5M, loaded by 1M-row
       statements with the sinks paused) drained into Redis (XADD maxlen) and Kafka;
       /proc/<worker>/status sampled every 50 ms: peak VmRSS and RssAnon, and VmHWM.

Every drain also records the CPU seconds the flush worker (and redis-server / the
broker / the relay) used, so rows per CPU-second can be compared on a noisy machine.

    /usr/bin/python3 bench/flush/run.py [--quick] [--rows 1000000] [--reps 1]
        [--phases drain,e2e,steady,memory] [--sinks redis,kafka]

Prints the table (measurement, value, baseline, ratio) and writes the raw numbers
to bench/out/flush-<time>.json (and flush-latest.json).
"""
import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
import benchlib  # noqa: E402
from benchlib import Table, log, median, pctl, src_select  # noqa: E402

RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
SYSTEMS = ["batchkit", "outbox", "pgq"]
LABEL = {"batchkit": "batchkit flush worker",
         "batchkit_noheaders": "batchkit flush worker, \"headers\": false",
         "outbox": "stmt trigger + outbox, Python relay (DELETE..SKIP LOCKED RETURNING)",
         "pgq": "PgQ logutriga, Python consumer"}
TARGET_DRAIN = {"redis": 300_000, "kafka": 400_000}


class Sampler(threading.Thread):
    """Samples /proc/<pid>/status of the flush worker every `period` s while running."""

    def __init__(self, pid, period=0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.period = period
        self.peak = {}
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            st = benchlib.proc_status(self.pid)
            for k, v in st.items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self.samples += 1
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join()
        return self.peak


class Progress(threading.Thread):
    """Samples a sink's rows_sent (batchkit.sink_stats, shared memory: no queue scan) every
    `period` s on its own connection, for the delivery rate without the fixed start-up
    cost of resume_sink() and the end of flush() (the sweep's short drains)."""

    def __init__(self, svc, name, period=0.05):
        super().__init__(daemon=True)
        self.conn = svc.connect()
        self.name = name
        self.period = period
        self.points = []
        self._halt = threading.Event()

    def run(self):
        cur = self.conn.cursor()
        while not self._halt.is_set():
            cur.execute("SELECT rows_sent FROM batchkit.sink_stats WHERE sink = %s", (self.name,))
            row = cur.fetchone()
            self.points.append((time.perf_counter(), row[0] if row else 0))
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join()
        self.conn.close()

    def rate(self, n, lo=0.1, hi=0.9):
        """Rows per second between lo*n and hi*n rows delivered (interpolated)."""
        def when(target):
            prev = None
            for t, v in self.points:
                if v >= target:
                    if prev is None or v == prev[1]:
                        return t
                    return prev[0] + (t - prev[0]) * (target - prev[1]) / (v - prev[1])
                prev = (t, v)
            return None
        t_lo, t_hi = when(lo * n), when(hi * n)
        if t_lo is None or t_hi is None or t_hi <= t_lo:
            return None
        return (hi - lo) * n / (t_hi - t_lo)


class FlushBench:
    def __init__(self, svc, args):
        self.svc = svc
        self.args = args
        self.conn = svc.connect()
        self.cur = self.conn.cursor()
        import redis
        self.redis = redis.Redis(port=svc.redis_port)
        self.n = 0
        self.dsn = f"host={os.path.join(svc.pgdir, 'sock')} port={svc.pgport} user=postgres " \
                   f"dbname=postgres"

    def q(self, sql, params=None):
        self.cur.execute(sql, params)
        try:
            return self.cur.fetchall()
        except Exception:
            return None

    def q1(self, sql, params=None):
        self.cur.execute(sql, params)
        return self.cur.fetchone()[0]

    def uniq(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    # ---- schema --------------------------------------------------------------------
    def setup(self, rows):
        self.q("CREATE EXTENSION batchkit")
        self.q("CREATE EXTENSION pgq")
        self.q("CREATE TABLE users(id bigint PRIMARY KEY, name text, email text,"
               " created_at timestamptz DEFAULT now())")
        self.q("CREATE TABLE outbox(id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
               " created_at timestamptz NOT NULL DEFAULT now())")
        self.q("""CREATE FUNCTION outbox_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                      INSERT INTO outbox(payload) SELECT to_jsonb(n) FROM new_table n;
                      RETURN NULL;
                  END $$""")
        self.q(f"CREATE TABLE src AS {src_select(1, rows)}")
        self.q("VACUUM ANALYZE src")
        self.worker_pid = None

    def flush_worker_pid(self):
        for _ in range(100):
            pid = self.q1("SELECT max(pid) FROM batchkit.workers WHERE kind = 'flush' "
                          "AND database = current_database()")
            if pid:
                return pid
            time.sleep(0.1)
        raise RuntimeError("no flush worker in batchkit.workers")

    def reset_users(self):
        self.q("TRUNCATE users")

    def load(self, n, offset=0):
        t0 = time.perf_counter()
        self.q(f"INSERT INTO users(id, name, email) SELECT id + {offset}, name, email FROM src "
               f"WHERE id <= {n}")
        return time.perf_counter() - t0

    # ---- batchkit sinks ------------------------------------------------------------------
    def bk_sink(self, kind, broker=None, topic=None, paused=False, maxlen=None, extra=None):
        name = self.uniq("bk_" + kind[0])
        if kind == "redis":
            opts = {"url": f"redis://127.0.0.1:{self.svc.redis_port}/0", "command": "xadd",
                    "key": name + ":{table}"}
            if maxlen:
                opts["maxlen"] = maxlen
        else:
            opts = {"bootstrap.servers": broker.bootstrap, "topic": topic}
        opts.update(extra or {})
        if self.args.bk_options:
            opts.update(json.loads(self.args.bk_options))
        self.q("SELECT batchkit.create_sink(%s, %s, %s::jsonb)", (name, kind, json.dumps(opts)))
        if paused:
            self.q("SELECT batchkit.pause_sink(%s)", (name,))
        self.q("SELECT batchkit.capture('users', %s)", (name,))
        return name

    def bk_drop(self, name):
        self.q("SELECT batchkit.drop_sink(%s, true)", (name,))

    def maintain(self):
        for _ in range(3):
            self.q("SELECT * FROM batchkit.maintain_queue('0 s')")

    def bk_flush_timed(self, name, resume, progress=False):
        """Resume (optionally) and flush; the worker's CPU seconds and memory during it
        (and with progress=True the delivery rate between 10% and 90% of the rows)."""
        wpid = self.flush_worker_pid()
        procs = {"worker": wpid, "redis": self.svc.redis_pid}
        if getattr(self, "broker", None):
            procs["broker"] = self.broker.pid
        cpu0 = {k: benchlib.proc_cpu_seconds(p) for k, p in procs.items()}
        m0 = benchlib.cpu_times()
        sampler = Sampler(wpid)
        sampler.start()
        prog = Progress(self.svc, name) if progress else None
        if prog:
            prog.start()
        t0 = time.perf_counter()
        if resume:
            self.q("SELECT batchkit.resume_sink(%s)", (name,))
        ok = self.q1("SELECT batchkit.flush(%s, '900 s')", (name,))
        dt = time.perf_counter() - t0
        peak = sampler.stop()
        if prog:
            prog.stop()
        m1 = benchlib.cpu_times()
        cpu1 = {k: benchlib.proc_cpu_seconds(p) for k, p in procs.items()}
        if not ok:
            raise AssertionError(f"flush({name}) timed out")
        return dt, {"cpu_s": {k: (cpu1[k] - cpu0[k]) if cpu0[k] is not None and cpu1[k] is not None
                              else None for k in procs},
                    "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
                    "worker_peak": peak, "worker_pid": wpid,
                    "worker_status_after": benchlib.proc_status(wpid),
                    "progress": None if not prog else {
                        "samples": len(prog.points),
                        "sent_at_end": prog.points[-1][1] if prog.points else None,
                        "first_sent_s": next((t - t0 for t, v in prog.points if v > 0), None)},
                    "_progress": prog}

    # ---- verification --------------------------------------------------------------------
    def verify_redis(self, key, n):
        got = self.redis.xlen(key)
        if got != n:
            raise AssertionError(f"stream {key}: {got} entries, expected {n}")
        out = {"xlen": got}
        if self.args.verify:
            ids = set()
            last = "-"
            while True:
                part = self.redis.xrange(key, min=last, count=50000)
                if last != "-":
                    part = part[1:]
                if not part:
                    break
                for _id, f in part:
                    m = re.search(rb'"(?:key":\{"id":|id": ?)(\d+)', f[b"data"])
                    ids.add(int(m.group(1)) if m else f[b"data"])
                last = part[-1][0]
            if len(ids) != n:
                raise AssertionError(f"stream {key}: {len(ids)} distinct rows, expected {n}")
            out["distinct"] = len(ids)
        self.redis.delete(key)
        return out

    def verify_kafka(self, broker, topic, n, offsets_only=False):
        appended, readable, parts = broker.topic_counts(topic)
        out = {"appended": appended, "readable": readable, "partitions": parts}
        if offsets_only and readable < appended:
            # --kafka-verify offsets (fewer partitions than a full read-back needs):
            # the broker counted every append, and what it kept is read back and
            # must hold no key twice more often than the appends allow.
            msgs, distinct = broker.distinct_keys(topic)
            out.update(messages_read=msgs, distinct_keys=distinct, verified="offsets")
            if appended < n or msgs != readable or distinct > n:
                raise AssertionError(f"topic {topic}: {appended} appended, {readable} kept, "
                                     f"{msgs} read, {distinct} distinct keys; expected {n} "
                                     "appended")
            return out
        if readable != appended:
            raise AssertionError(f"topic {topic}: the broker trimmed {appended - readable} "
                                 "messages: use more partitions (--partitions)")
        msgs, distinct = broker.distinct_keys(topic)
        out.update(messages_read=msgs, distinct_keys=distinct)
        if distinct != n or msgs < n:
            raise AssertionError(f"topic {topic}: {msgs} messages, {distinct} distinct keys, "
                                 f"expected {n}")
        return out

    # ---- relays ---------------------------------------------------------------------------------
    def start_relay(self, source, sink, n, key=None, broker=None, topic=None, consumer=None):
        cmd = [sys.executable, RELAY, "--source", source, "--sink", sink, "--dsn", self.dsn,
               "--rows", str(n), "--timeout", "900"]
        if sink == "redis":
            cmd += ["--redis-port", str(self.svc.redis_port), "--redis-key", key,
                    "--redis-client", self.args.redis_client]
        else:
            cmd += ["--bootstrap", broker.bootstrap, "--topic", topic,
                    "--kafka-client", self.args.kafka_client]
        if consumer:
            cmd += ["--consumer", consumer]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise RuntimeError(f"relay did not start: {line!r}")
        return p

    def relay_go(self, p):
        m0 = benchlib.cpu_times()
        procs = {"redis": self.svc.redis_pid}
        if getattr(self, "broker", None):
            procs["broker"] = self.broker.pid
        cpu0 = {k: benchlib.proc_cpu_seconds(v) for k, v in procs.items()}
        p.stdin.write("go\n")
        p.stdin.flush()
        return m0, procs, cpu0

    def relay_wait(self, p, ctx):
        m0, procs, cpu0 = ctx
        out = p.stdout.readline()
        p.wait()
        m1 = benchlib.cpu_times()
        res = json.loads(out)
        relay_cpu = res.pop("cpu_s")
        res["cpu_s"] = {k: benchlib.proc_cpu_seconds(v) - cpu0[k] for k, v in procs.items()}
        res["cpu_s"]["relay"] = relay_cpu
        res["machine_busy"] = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
        return res

    def run_relay(self, source, sink, n, **kw):
        p = self.start_relay(source, sink, n, **kw)
        ctx = self.relay_go(p)
        res = self.relay_wait(p, ctx)
        if res["rows"] != n:
            raise AssertionError(f"relay {source}->{sink}: {res['rows']} rows, expected {n}")
        return res

    def pgq_fresh(self, consumers):
        if self.q1("SELECT count(*) FROM pgq.queue WHERE queue_name = 'q'"):
            for (c,) in self.q("SELECT consumer_name FROM pgq.get_consumer_info('q')"):
                self.q("SELECT pgq.unregister_consumer('q', %s)", (c,))
            self.q("SELECT pgq.drop_queue('q')")
        self.q("SELECT pgq.create_queue('q')")
        for c in consumers:
            self.q("SELECT pgq.register_consumer('q', %s)", (c,))
        self.q("SELECT pgq.ticker()")

    def kafka(self, topic, peer=False, parts=None):
        parts = parts or ((self.args.peer_partitions or self.args.partitions) if peer
                          else self.args.partitions)
        self.broker = self.svc.kafka_broker([(topic, parts)])
        return self.broker

    def kafka_done(self):
        if getattr(self, "broker", None):
            self.broker.stop()
            self.broker = None

    # ---- (i) drain ----------------------------------------------------------------------------------
    def drain(self, n, rep, sinks, systems):
        res = {}
        order = systems if rep % 2 == 0 else list(reversed(systems))
        for system in order:
            getattr(self, "drain_" + system)(n, rep, sinks, res)
            if system == "batchkit" and "kafka" in sinks:
                # the same drain without batchkit's three Kafka headers ("headers": false):
                # what they cost, beside the default (informational; the target is the default)
                self.drain_batchkit(n, f"{rep}nh", ["kafka"], res, extra={"headers": False},
                                    label="batchkit_noheaders")
        return res

    def drain_batchkit(self, n, rep, sinks, res, extra=None, progress=False, label="batchkit"):
        self.reset_users()
        names = {}
        for s in sinks:
            if s == "kafka":
                topic = f"drain_bk_{rep}"
                broker = self.kafka(topic)
                names[s] = self.bk_sink("kafka", broker, topic, paused=True, extra=extra)
            else:
                names[s] = self.bk_sink("redis", paused=True, extra=extra)
        self.q("CHECKPOINT")
        t_load = self.load(n)
        for s in sinks:
            depth = self.q1("SELECT batchkit.queue_depth(%s)", (names[s],))
            assert depth == n, (depth, n)
        for s in sinks:
            self.q("CHECKPOINT")
            dt, extra = self.bk_flush_timed(names[s], resume=True, progress=progress)
            prog = extra.pop("_progress")
            if prog:
                extra["progress"]["rows_per_s_10_90"] = prog.rate(n)
            if s == "redis":
                extra["verify"] = self.verify_redis(f"{names[s]}:users", n)
            else:
                extra["verify"] = self.verify_kafka(self.broker, f"drain_bk_{rep}", n,
                                                    self.args.kafka_verify == "offsets")
            extra.update(seconds=dt, rows_per_s=n / dt, load_s=t_load,
                         loadavg1=benchlib.loadavg()[0], sink_stats=self.sink_stats(names[s]))
            res[(label, s)] = extra
            log(f"  drain {label} -> {s:<5} rep {rep}: {dt:7.2f} s  {n / dt:9,.0f} rows/s  "
                f"worker CPU {extra['cpu_s']['worker']:.2f} s  "
                f"(load {t_load:.2f} s; loadavg {extra['loadavg1']:.2f})")
        for s in sinks:
            self.bk_drop(names[s])
        self.kafka_done()
        self.maintain()

    def drain_outbox(self, n, rep, sinks, res):
        self.reset_users()
        self.q("TRUNCATE outbox RESTART IDENTITY")
        self.q("CREATE TRIGGER outbox_stmt AFTER INSERT ON users REFERENCING NEW TABLE "
               "AS new_table FOR EACH STATEMENT EXECUTE FUNCTION outbox_stmt()")
        self.q("CHECKPOINT")
        t_load = self.load(n)
        self.q("DROP TRIGGER outbox_stmt ON users")
        for i, s in enumerate(sinks):
            if i > 0:
                # the same rows again, as the trigger wrote them
                self.q("TRUNCATE outbox RESTART IDENTITY")
                self.q("INSERT INTO outbox(payload) SELECT to_jsonb(u) FROM users u ORDER BY id")
            self.q("VACUUM ANALYZE outbox")
            self.q("CHECKPOINT")
            r = self._relay_drain("outbox", s, n, rep)
            r["load_s"] = t_load
            res[("outbox", s)] = r

    def drain_pgq(self, n, rep, sinks, res):
        self.reset_users()
        self.pgq_fresh([f"c_{s}" for s in sinks])
        self.q("CREATE TRIGGER pgq_users AFTER INSERT ON users FOR EACH ROW "
               "EXECUTE FUNCTION pgq.logutriga('q')")
        self.q("CHECKPOINT")
        t_load = self.load(n)
        self.q("DROP TRIGGER pgq_users ON users")
        for s in sinks:
            self.q("CHECKPOINT")
            r = self._relay_drain("pgq", s, n, rep, consumer=f"c_{s}")
            r["load_s"] = t_load
            res[("pgq", s)] = r

    def _relay_drain(self, source, s, n, rep, consumer=None):
        if s == "redis":
            key = self.uniq(f"{source}_r") + ":users"
            r = self.run_relay(source, s, n, key=key, consumer=consumer)
            r["verify"] = self.verify_redis(key, n)
        else:
            topic = f"drain_{source}_{rep}"
            broker = self.kafka(topic, peer=True)
            r = self.run_relay(source, s, n, broker=broker, topic=topic, consumer=consumer)
            r["verify"] = self.verify_kafka(broker, topic, n)
            self.kafka_done()
        dt = r["t_done"] - r["t_go"]
        r.update(seconds=dt, rows_per_s=n / dt, loadavg1=benchlib.loadavg()[0])
        log(f"  drain {source:<8} -> {s:<5} rep {rep}: {dt:7.2f} s  {n / dt:9,.0f} rows/s  "
            f"relay CPU {r['cpu_s'].get('relay') or 0:.2f} s (loadavg {r['loadavg1']:.2f})")
        return r

    def sink_stats(self, name):
        """The sink's batches and average batch size as batchkit.sink_stats reports them."""
        row = self.q("SELECT batches, rows_sent, avg_batch_size, last_batch_size "
                     "FROM batchkit.sink_stats WHERE sink = %s", (name,))
        if not row:
            return None
        b, sent, avg, last = row[0]
        return {"batches": b, "rows_sent": sent,
                "avg_batch_size": None if avg is None else float(avg),  # numeric in the view
                "last_batch_size": last}

    def effective_defaults(self, keys=("batch_size", "max_batch_bytes", "max_wait_ms")):
        """The defaults of a sink created without these options, as the worker reads them
        (batchkit._sink_config), so the sweep's report marks the real default."""
        name = self.uniq("bk_def")
        opts = {"url": f"redis://127.0.0.1:{self.svc.redis_port}/0", "command": "xadd",
                "key": "d"}
        self.q("SELECT batchkit.create_sink(%s, 'redis', %s::jsonb)", (name, json.dumps(opts)))
        rows = self.q("SELECT c.key, c.value, c.is_default FROM batchkit.sink s, "
                      "batchkit._sink_config(s.sink_id) c WHERE s.name = %s", (name,))
        self.bk_drop(name)
        return {k: int(v) for k, v, is_def in rows if k in keys and is_def}

    # ---- (v) batch-size sweep: drain throughput per batch_size ------------------------------------
    def sweep(self, n, sizes, sinks):
        """Drain n queued rows per batch_size (batchkit only; both sinks loaded by the same
        INSERT, as in the drain phase), alternating the direction of the sweep per sink
        so that a drift of the machine's load does not bend the curve one way."""
        # batch_size, max_batch_bytes and max_wait_ms are options of every kind of sink
        res = {"rows": n, "sizes": sizes, "defaults": self.effective_defaults(), "points": []}
        for i, bs in enumerate(sizes):
            out = {}
            self.drain_batchkit(n, f"sw{bs}", sinks, out, extra={"batch_size": bs},
                                progress=True)
            for s in sinks:
                r = out[("batchkit", s)]
                res["points"].append({
                    "sink": s, "batch_size": bs, "seconds": r["seconds"],
                    "rows_per_s": r["rows_per_s"], "worker_cpu_s": r["cpu_s"].get("worker"),
                    "rows_per_s_10_90": r["progress"]["rows_per_s_10_90"],
                    "first_sent_s": r["progress"]["first_sent_s"],
                    "loadavg1": r["loadavg1"], "machine_busy": r["machine_busy"],
                    "sink_stats": r.get("sink_stats")})
        return res

    # ---- (ii) end to end ----------------------------------------------------------------------------------
    def e2e(self, n, rep, sinks, systems):
        res = {}
        for s in sinks:
            order = systems if rep % 2 == 0 else list(reversed(systems))
            for system in order:
                self.reset_users()
                self.q("TRUNCATE outbox RESTART IDENTITY")
                topic = f"e2e_{system}_{rep}"
                broker = self.kafka(topic, peer=system != "batchkit") if s == "kafka" else None
                if system == "batchkit":
                    name = self.bk_sink(s, broker, topic)
                    self.q("CHECKPOINT")
                    wpid = self.flush_worker_pid()
                    w0 = benchlib.proc_cpu_seconds(wpid)
                    t0 = time.perf_counter()
                    t_ins = self.load(n)
                    ok = self.q1("SELECT batchkit.flush(%s, '900 s')", (name,))
                    dt = time.perf_counter() - t0
                    assert ok
                    r = {"insert_s": t_ins, "flush_s": dt - t_ins,
                         "cpu_s": {"worker": benchlib.proc_cpu_seconds(wpid) - w0}}
                    r["verify"] = (self.verify_redis(f"{name}:users", n) if s == "redis"
                                   else self.verify_kafka(broker, topic, n))
                    self.bk_drop(name)
                    self.maintain()
                else:
                    if system == "outbox":
                        self.q("CREATE TRIGGER outbox_stmt AFTER INSERT ON users REFERENCING "
                               "NEW TABLE AS new_table FOR EACH STATEMENT "
                               "EXECUTE FUNCTION outbox_stmt()")
                        consumer = None
                    else:
                        self.pgq_fresh(["c"])
                        self.q("CREATE TRIGGER pgq_users AFTER INSERT ON users FOR EACH ROW "
                               "EXECUTE FUNCTION pgq.logutriga('q')")
                        consumer = "c"
                    key = self.uniq(f"{system}_e") + ":users"
                    self.q("CHECKPOINT")
                    p = self.start_relay(system, s, n, key=key, broker=broker, topic=topic,
                                         consumer=consumer)
                    ctx = self.relay_go(p)
                    time.sleep(0.2)  # the relay is polling
                    t0 = time.time()
                    t_ins = self.load(n)
                    r = self.relay_wait(p, ctx)
                    if r["rows"] != n:
                        raise AssertionError(f"relay {system}: {r['rows']} rows")
                    dt = r["t_done"] - t0
                    r.update(insert_s=t_ins, flush_s=dt - t_ins)
                    r["verify"] = (self.verify_redis(key, n) if s == "redis"
                                   else self.verify_kafka(broker, topic, n))
                    self.q(f"DROP TRIGGER {'outbox_stmt' if system == 'outbox' else 'pgq_users'}"
                           " ON users")
                self.kafka_done()
                r.update(seconds=dt, rows_per_s=n / dt, loadavg1=benchlib.loadavg()[0])
                res[(system, s)] = r
                log(f"  e2e {system:<8} -> {s:<5} rep {rep}: {dt:7.2f} s (insert {t_ins:.2f} s, "
                    f"then {dt - t_ins:.2f} s)  loadavg {r['loadavg1']:.2f}")
        return res

    # ---- (iii) steady-state latency ----------------------------------------------------------
    def steady(self, sink, rate, seconds, writers, rep):
        self.reset_users()
        topic = f"steady_{rep}"
        broker = self.kafka(topic, parts=self.args.steady_partitions) if sink == "kafka" else None
        name = self.bk_sink(sink, broker, topic)
        self.q("CHECKPOINT")
        key = f"{name}:users"
        ctx = multiprocessing.get_context("fork")
        expected = ctx.Value("q", -1)
        parent_end, child_end = ctx.Pipe(duplex=False)
        ready = ctx.Event()
        reader = ctx.Process(target=reader_main, args=(
            sink, self.svc.redis_port, key, broker.bootstrap if broker else None, topic,
            expected, child_end, ready, seconds + 120))
        reader.start()
        if not ready.wait(60):
            reader.kill()
            raise RuntimeError("steady-state reader did not start")
        tx_rows = 100
        tx_rate = rate / tx_rows
        commits = [dict() for _ in range(writers)]
        lag = [0.0] * writers
        t_start = time.time() + 0.5
        n_tx = int(seconds * tx_rate)

        def writer(w):
            conn = self.svc.connect(autocommit=False)
            cur = conn.cursor()
            base = (w + 1) * 1_000_000_000
            k = 0
            while True:
                slot = k * writers + w
                if slot >= n_tx:
                    break
                due = t_start + slot / tx_rate
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                else:
                    lag[w] = max(lag[w], now - due)
                lo = base + k * tx_rows + 1
                cur.execute("INSERT INTO users(id, name, email) SELECT g, 'name ' || g, "
                            "'user' || g || '@example.com' FROM generate_series(%s, %s) g",
                            (lo, lo + tx_rows - 1))
                conn.commit()
                commits[w][(lo - 1) // tx_rows] = time.time()
                k += 1
            conn.close()

        ths = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        wpid = self.flush_worker_pid()
        cpu0 = benchlib.proc_cpu_seconds(wpid)
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        t_end_write = time.time()
        total = sum(len(c) for c in commits) * tx_rows
        expected.value = total
        arrivals = parent_end.recv()
        reader.join(30)
        cpu1 = benchlib.proc_cpu_seconds(wpid)
        self.bk_drop(name)
        self.kafka_done()
        self.maintain()
        commit_at = {}
        for c in commits:
            commit_at.update(c)
        lat_all, lat_steady, to_sink, sink_to_reader = [], [], [], []
        per_sec = {}
        missing = 0
        warm = t_start + min(2.0, seconds / 5)
        for rid, t_arr, t_sink in arrivals:
            tc = commit_at.get((rid - 1) // tx_rows)
            if tc is None:
                missing += 1
                continue
            ms = (t_arr - tc) * 1000.0
            lat_all.append(ms)
            per_sec.setdefault(int(tc - t_start), []).append(ms)
            if tc >= warm:
                lat_steady.append(ms)
                to_sink.append((t_sink - tc) * 1000.0)
                sink_to_reader.append((t_arr - t_sink) * 1000.0)
        to_sink.sort()
        sink_to_reader.sort()
        timeline = []
        for sec in sorted(per_sec):
            xs = sorted(per_sec[sec])
            timeline.append({"second": sec, "rows": len(xs), "p50_ms": pctl(xs, 50),
                             "p99_ms": pctl(xs, 99), "max_ms": xs[-1]})
        lat_all.sort()
        lat_steady.sort()
        got = len({a[0] for a in arrivals})
        if got != total:
            raise AssertionError(f"steady {sink}: reader saw {got} distinct rows of {total}")
        achieved = total / (t_end_write - t_start)
        r = {"rows": total, "received": len(arrivals), "distinct": got, "unmatched": missing,
             "achieved_rows_per_s": achieved, "writer_max_behind_s": max(lag),
             "worker_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
             "loadavg1": benchlib.loadavg()[0], "timeline": timeline,
             "warmup_s": warm - t_start,
             # split at the sink's own clock: Redis XADD (entry id), Kafka CreateTime
             # (when the worker handed the message to librdkafka); ms resolution
             "commit_to_sink": {"p50_ms": pctl(to_sink, 50), "p99_ms": pctl(to_sink, 99)},
             "sink_to_reader": {"p50_ms": pctl(sink_to_reader, 50),
                                "p99_ms": pctl(sink_to_reader, 99)},
             # every per-row latency after the warm-up, sorted, in 0.1 ms: the report
             # draws its histogram and CDF from these (the timeline keeps the order in time)
             "samples_ms_sorted": [round(x, 1) for x in lat_steady]}
        for label, xs in (("all", lat_all), ("steady", lat_steady)):
            r[label] = {"n": len(xs), "p50_ms": pctl(xs, 50), "p90_ms": pctl(xs, 90),
                        "p99_ms": pctl(xs, 99), "max_ms": xs[-1] if xs else None,
                        "min_ms": xs[0] if xs else None}
        log(f"  steady {sink:<5}: {total:,} rows at {achieved:,.0f} rows/s; latency p50 "
            f"{r['steady']['p50_ms']:.1f} ms p99 {r['steady']['p99_ms']:.1f} ms max "
            f"{r['steady']['max_ms']:.1f} ms (worker CPU {r['worker_cpu_s']:.1f} s; "
            f"writers max {max(lag) * 1000:.0f} ms behind; loadavg {r['loadavg1']:.2f})")
        log(f"    split: commit -> {'XADD' if sink == 'redis' else 'produce()'} p50 "
            f"{r['commit_to_sink']['p50_ms']:.1f} / p99 {r['commit_to_sink']['p99_ms']:.1f} ms; "
            f"then -> reader p50 {r['sink_to_reader']['p50_ms']:.1f} / p99 "
            f"{r['sink_to_reader']['p99_ms']:.1f} ms")
        log("    per second of commit: " + " ".join(
            f"{x['second']}s:{x['p50_ms']:.0f}/{x['p99_ms']:.0f}" for x in timeline) +
            "  (p50/p99 ms)")
        return r

    # ---- (iv) worker memory while draining a large backlog ----------------------------------------
    def memory(self, backlog, sinks, stmt_rows):
        self.reset_users()
        names = {}
        topic = "memory"
        for s in sinks:
            if s == "kafka":
                broker = self.kafka(topic)
                names[s] = self.bk_sink("kafka", broker, topic, paused=True)
            else:
                names[s] = self.bk_sink("redis", paused=True, maxlen=100000)
        t0 = time.perf_counter()
        done = 0
        src_n = self.q1("SELECT count(*) FROM src")
        while done < backlog:
            k = min(stmt_rows, src_n, backlog - done)
            self.q(f"INSERT INTO users(id, name, email) SELECT id + {done}, name, email FROM src "
                   f"WHERE id <= {k}")
            done += k
        t_load = time.perf_counter() - t0
        wpid = self.flush_worker_pid()
        res = {"backlog": backlog, "load_s": t_load,
               "worker_status_before": benchlib.proc_status(wpid),
               "queue_bytes": int(self.q1("SELECT sum(bytes) FROM batchkit.queue_storage"))}
        log(f"  memory: {backlog:,}-row backlog loaded in {t_load:.1f} s "
            f"(queue {res['queue_bytes'] / 1e6:.0f} MB); worker {wpid} "
            f"{res['worker_status_before']}")
        for s in sinks:
            dt, extra = self.bk_flush_timed(names[s], resume=True)
            extra.pop("_progress")
            acked = self.q1("SELECT acked_records FROM batchkit.sink_progress JOIN batchkit.sink "
                            "USING (sink_id) WHERE name = %s", (names[s],))
            if acked != backlog:
                raise AssertionError(f"memory {s}: {acked} acknowledged of {backlog}")
            if s == "kafka":
                appended, _, _ = self.broker.topic_counts(topic)
                if appended != backlog:
                    raise AssertionError(f"memory kafka: {appended} messages of {backlog}")
            else:
                self.redis.delete(f"{names[s]}:users")
            extra.update(seconds=dt, rows_per_s=backlog / dt)
            res[s] = extra
            pk = extra["worker_peak"]
            log(f"  memory {s:<5}: drained in {dt:.1f} s ({backlog / dt:,.0f} rows/s); worker "
                f"peak VmRSS {pk.get('VmRSS', 0) / 2**20:.1f} MiB, RssAnon "
                f"{pk.get('RssAnon', 0) / 2**20:.1f} MiB, VmHWM "
                f"{extra['worker_status_after'].get('VmHWM', 0) / 2**20:.1f} MiB")
        for s in sinks:
            self.bk_drop(names[s])
        self.kafka_done()
        self.maintain()
        return res


def reader_main(sink, redis_port, key, bootstrap, topic, expected, conn, ready, timeout):
    """Steady-state reader (own process): (row id, arrival time) of every message."""
    arrivals = []
    deadline = time.time() + timeout
    pat = re.compile(rb'"key":\{"id":(\d+)')
    if sink == "redis":
        import redis
        r = redis.Redis(port=redis_port)
        last = "0-0"
        ready.set()
        while time.time() < deadline:
            if 0 <= expected.value <= len(arrivals):
                break
            resp = r.xread({key: last}, count=20000, block=100)
            now = time.time()
            if not resp:
                continue
            entries = resp[0][1]
            last = entries[-1][0]
            for eid, fields in entries:
                m = pat.search(fields[b"data"])
                # the entry id's first part is the server's clock (ms) at XADD
                arrivals.append((int(m.group(1)), now, int(eid.split(b"-")[0]) / 1000.0))
    else:
        # kcat (librdkafka, C) keeps up at 20k msgs/s where a kafka-python consumer
        # over many partitions fell seconds behind; it prints key and CreateTime
        # (when the worker produced the message) and this loop stamps the arrival
        p = subprocess.Popen(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning",
                              "-u", "-q", "-f", "%k %T\\n", "-X", "fetch.wait.max.ms=5",
                              "-X", "fetch.error.backoff.ms=5"],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        ready.set()
        import select
        buf = b""
        fd = p.stdout.fileno()
        while time.time() < deadline:
            if 0 <= expected.value <= len(arrivals):
                break
            r, _, _ = select.select([fd], [], [], 0.1)
            if not r:
                continue
            data = os.read(fd, 1 << 20)
            now = time.time()
            if not data:
                break
            buf += data
            lines = buf.split(b"\n")
            buf = lines.pop()
            for line in lines:
                k, _, ts = line.partition(b" ")
                arrivals.append((int(k), now, int(ts) / 1000.0))
        p.terminate()
        p.wait()
    conn.send(arrivals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (< 60 s): 20k rows, 2 s steady state, 50k backlog")
    ap.add_argument("--rows", type=int, default=None, help="rows for drain and e2e (1,000,000)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of drain and e2e")
    ap.add_argument("--drain-reps", type=int, default=0,
                    help="drains of batchkit in all (the extra ones without the peers); "
                         "the figure is their median (default: --reps)")
    ap.add_argument("--phases", default="drain,e2e,steady,memory",
                    help="comma list of drain,e2e,steady,memory,sweep (sweep: batchkit's drain "
                         "throughput per batch_size; not in the default run)")
    ap.add_argument("--sinks", default="redis,kafka")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--rate", type=int, default=20000, help="steady state rows/s")
    ap.add_argument("--seconds", type=float, default=None, help="steady state duration (20)")
    ap.add_argument("--writers", type=int, default=4, help="steady state writer threads")
    ap.add_argument("--backlog", type=int, default=None, help="memory test backlog (5,000,000)")
    ap.add_argument("--partitions", type=int, default=128,
                    help="partitions of batchkit's Kafka topics (the dev broker keeps 5 MiB "
                         "per partition: 1M envelopes need > 80)")
    ap.add_argument("--kafka-verify", choices=["full", "offsets"], default="full",
                    help="how batchkit's Kafka drains are verified: full (every message read "
                         "back: needs --partitions > 80 for 1M rows) or offsets (the broker's "
                         "append count equals N and what it kept is read back; allows fewer "
                         "partitions, a weaker check: not for the report)")
    ap.add_argument("--steady-partitions", type=int, default=16,
                    help="partitions of the steady-state topic (its reader keeps up, so the "
                         "broker's 5 MiB cap per partition is never reached)")
    ap.add_argument("--peer-partitions", type=int, default=None,
                    help="partitions of the peers' topics (default: --partitions, the same "
                         "shape as batchkit's)")
    ap.add_argument("--redis-client", choices=["resp", "redis-py"], default="resp",
                    help="the peers' Redis client (relay.py): hand-written RESP + hiredis "
                         "replies (default, the fastest Python here) or a redis-py pipeline")
    ap.add_argument("--kafka-client", choices=["confluent", "kafka-python"], default="confluent",
                    help="the peers' Kafka client (relay.py): confluent-kafka (librdkafka; "
                         "default) or kafka-python (pure Python, ~10x slower)")
    ap.add_argument("--sweep-sizes", default="100,500,1000,2000,5000,10000,20000",
                    help="batch_size values of the sweep phase")
    ap.add_argument("--sweep-rows", type=int, default=None,
                    help="rows drained per sweep point (300,000; --quick: 20,000)")
    ap.add_argument("--verify", action="store_true",
                    help="also read every Redis stream entry back (Kafka is always read back)")
    ap.add_argument("--bk-options", default=None,
                    help="JSON merged into every batchkit sink's options, e.g. '{\"batch_size\": 20000}'")
    ap.add_argument("--pg-conf", default="",
                    help="extra postgresql.conf settings, e.g. 'shared_buffers=1GB,work_mem=64MB'")
    args = ap.parse_args()
    n = args.rows or (20_000 if args.quick else 1_000_000)
    seconds = args.seconds or (2 if args.quick else 20)
    backlog = args.backlog or (50_000 if args.quick else 5_000_000)
    phases = args.phases.split(",")
    sinks = args.sinks.split(",")
    systems = args.systems.split(",")

    t_all = time.perf_counter()
    svc = benchlib.Services("flush", redis=True, pg_conf=args.pg_conf)
    b = FlushBench(svc, args)
    info = benchlib.machine_info(b.conn)
    log(f"# {info['postgres'].split(' on ')[0]}; loadavg {info['loadavg_start']}; rows {n:,}, "
        f"reps {args.reps}, phases {phases}, sinks {sinks}")
    sw_rows = args.sweep_rows or (20_000 if args.quick else 300_000)
    b.setup(max(n, min(backlog, 1_000_000), sw_rows if "sweep" in phases else 0))
    result = {"benchmark": "flush", "machine": info,
              "params": dict(vars(args), rows=n, seconds=seconds, backlog=backlog,
                             argv=sys.argv[1:])}
    table = Table(f"batchkit flush: {n:,} rows; median of {args.reps} rep(s)"
                  + (f" ({max(args.reps, args.drain_reps)} drains of batchkit)"
                     if args.drain_reps > args.reps else "") + "; peers in the same run")

    def key(d):
        return {f"{a}/{b}": v for (a, b), v in d.items()}

    if "drain" in phases:
        runs = [b.drain(n, rep, sinks, systems) for rep in range(args.reps)]
        # Extra drains of batchkit alone: this VM's speed drifts by up to 2x within
        # minutes, so one drain of a few seconds lands on either side of a target.
        # The peers' relays take minutes a drain and stay at --reps.
        bk_systems = [sy for sy in systems if sy == "batchkit"]
        for rep in range(args.reps, max(args.reps, args.drain_reps)):
            if bk_systems:
                runs.append(b.drain(n, rep, sinks, bk_systems))
        result["drain"] = [key(r) for r in runs]

        def of(sy, s):
            return [r[(sy, s)] for r in runs if (sy, s) in r]

        def spread(xs):
            return f"; {len(xs)} drains {min(xs):,.0f}..{max(xs):,.0f}" if len(xs) > 1 else ""

        def weak(xs):  # --kafka-verify offsets: say so beside the figure
            v = [x.get("verify") or {} for x in xs]
            if any(y.get("verified") == "offsets" for y in v):
                return f"; {v[0].get('partitions')} partitions, VERIFIED BY OFFSETS ONLY"
            return ""
        for s in sinks:
            rates = {sy: median([x["rows_per_s"] for x in of(sy, s)]) for sy in systems}
            best_peer = max((rates[sy] for sy in systems if sy != "batchkit"), default=None)
            for sy in systems:
                tgt = f">= {TARGET_DRAIN[s]:,} rows/s" if sy == "batchkit" else None
                cpu = median([x["cpu_s"].get("worker" if sy == "batchkit" else "relay") or 0
                              for x in of(sy, s)])
                table.add(f"drain {n:,} rows -> {s}: {LABEL[sy]}", rates[sy], "rows/s",
                          best_peer if sy == "batchkit" else rates.get("batchkit"),
                          (rates[sy] / best_peer if sy == "batchkit" and best_peer else
                           (rates[sy] / rates["batchkit"] if "batchkit" in rates else None)),
                          tgt, note=f"{'worker' if sy == 'batchkit' else 'relay'} CPU {cpu:.1f} s"
                                    + spread([x["rows_per_s"] for x in of(sy, s)])
                                    + weak(of(sy, s)))
            nh = of("batchkit_noheaders", s)
            if nh:
                v = median([x["rows_per_s"] for x in nh])
                cpu = median([x["cpu_s"].get("worker") or 0 for x in nh])
                table.add(f"drain {n:,} rows -> {s}: {LABEL['batchkit_noheaders']}", v, "rows/s",
                          rates.get("batchkit"),
                          v / rates["batchkit"] if rates.get("batchkit") else None, None,
                          note=f"worker CPU {cpu:.1f} s; informational"
                               + spread([x["rows_per_s"] for x in nh]) + weak(nh))
    if "e2e" in phases:
        runs = [b.e2e(n, rep, sinks, systems) for rep in range(args.reps)]
        result["e2e"] = [key(r) for r in runs]
        for s in sinks:
            secs = {sy: median([r[(sy, s)]["seconds"] for r in runs]) for sy in systems}
            best_peer = min((secs[sy] for sy in systems if sy != "batchkit"), default=None)
            for sy in systems:
                ins = median([r[(sy, s)]["insert_s"] for r in runs])
                if sy == "batchkit":
                    table.add(f"end to end {n:,} rows -> {s}: {LABEL[sy]}", secs[sy], "s",
                              best_peer, best_peer / secs[sy] if best_peer else None,
                              ">= 3x faster than best peer", note=f"INSERT {ins:.2f} s")
                else:
                    table.add(f"end to end {n:,} rows -> {s}: {LABEL[sy]}", secs[sy], "s",
                              secs.get("batchkit"),
                              secs[sy] / secs["batchkit"] if "batchkit" in secs else None,
                              note=f"INSERT {ins:.2f} s")
    if "steady" in phases:
        result["steady"] = {}
        for s in sinks:
            r = b.steady(s, args.rate, seconds, args.writers, 0)
            result["steady"][s] = r
            st = r["steady"]
            note = f"{r['rows']:,} rows at {r['achieved_rows_per_s']:,.0f} rows/s"
            table.add(f"steady {args.rate:,} rows/s in 100-row tx -> {s}: latency p50",
                      st["p50_ms"], "ms", target="<= 20 ms", note=note)
            table.add(f"steady {args.rate:,} rows/s in 100-row tx -> {s}: latency p99",
                      st["p99_ms"], "ms", target="<= 100 ms", note=f"max {st['max_ms']:.0f} ms")
    if "memory" in phases:
        r = b.memory(backlog, sinks, 1_000_000)
        result["memory"] = r
        for s in sinks:
            pk = r[s]["worker_peak"]
            table.add(f"worker peak RssAnon draining a {backlog:,}-row backlog -> {s}",
                      pk.get("RssAnon", 0) / 2**20, "MB", target="< 100 MB",
                      note=f"VmRSS peak {pk.get('VmRSS', 0) / 2**20:.0f} MiB (incl. "
                           f"{pk.get('RssShmem', 0) / 2**20:.0f} MiB shared buffers); "
                           f"{r[s]['rows_per_s']:,.0f} rows/s")
        table.add("worker VmHWM (process lifetime peak, incl. shared memory)",
                  r[sinks[-1]]["worker_status_after"].get("VmHWM", 0) / 2**20, "MB")
    if "sweep" in phases:
        sizes = [int(x) for x in args.sweep_sizes.split(",") if x]
        r = b.sweep(sw_rows, sizes, sinks)
        result["sweep"] = r
        for p in r["points"]:
            table.add(f"sweep: drain {sw_rows:,} rows -> {p['sink']}, batch_size {p['batch_size']:,}",
                      p["rows_per_s"], "rows/s",
                      note=f"worker CPU {p['worker_cpu_s'] or 0:.2f} s")
    result["table"] = table.as_json()
    result["machine"]["loadavg_end"] = benchlib.loadavg()
    result["seconds"] = time.perf_counter() - t_all
    b.conn.close()
    svc.stop()
    path = benchlib.write_json("flush", result)
    print(table.render())
    print(f"# loadavg start {info['loadavg_start']} end {result['machine']['loadavg_end']}; "
          f"{result['seconds']:.0f} s; raw numbers: {os.path.relpath(path, benchlib.ROOT)}")


if __name__ == "__main__":
    main()

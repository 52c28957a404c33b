"""Fault injection under sustained writes (issue 7).

A writer thread commits small transactions of inserts, updates and deletes
into a captured table without pause (some rolled back on purpose) and records
exactly what committed. The table is captured into a Redis stream (on a
redis-server of this test, append-only file fsynced at every write) and a
Kafka topic of 16 partitions (on a Kafka dev broker of this test). Each round
injects one fault at a random moment while rows flow:

  kill_worker      kill -9 of the database's flush worker (the postmaster then
                   restarts every backend: the writer reconnects)
  pg_immediate     pg_ctl stop -m immediate, then start
  redis_restart    kill -9 of redis-server, then start it again (same port, same dir)
  kafka_stall      SIGSTOP of the Kafka broker for a few seconds, then SIGCONT
                   (the dev broker keeps its data in memory: it is never restarted)

After each round the writer pauses, both sinks are flushed, and independent
readers (redis-py XRANGE, a kafka-python consumer from the beginning of every
partition) check everything delivered so far against what committed:
no committed change missing, no change of a rolled-back transaction present,
no duplicate in Redis (idempotency keys unique), duplicates in Kafka only as
exact copies under the same idempotency key, and per-key commit order.

The fault plan (faults, their order and timings) comes from one seed, printed
at the start; BATCHKIT_FAULT_SEED=<n> replays it.

A writer transaction whose connection dies may or may not have committed (the
COMMIT may have reached the server). Every transaction inserts a unique
marker row (not captured) along with its changes; after reconnecting, the
writer looks the marker up: present means committed.
"""
import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict

import psycopg2
import pytest

from conftest import make_sink, pg_script
from helpers import (KafkaBroker, RedisServer, connect_retry, kafka_read_all, q,
                     stream_entries, uid, wait_flush_worker)

FAULTS = ("kill_worker", "pg_immediate", "redis_restart", "kafka_stall")
ROUNDS = 8
NKEYS = 300
PARTITIONS = 16
DEFAULT_SEED = 20261127


def fault_seed():
    return int(os.environ.get("BATCHKIT_FAULT_SEED") or DEFAULT_SEED)


def fault_plan(rnd):
    """Every fault at least once, the other rounds drawn at random; with timings."""
    kinds = list(FAULTS) + [rnd.choice(FAULTS) for _ in range(ROUNDS - len(FAULTS))]
    rnd.shuffle(kinds)
    return [{"fault": k,
             "before": round(rnd.uniform(1.0, 3.0), 2),   # writes flowing before the fault
             "outage": round(rnd.uniform(0.3, 1.5) if k != "kafka_stall"
                             else rnd.uniform(2.0, 5.0), 2),
             "after": round(rnd.uniform(0.5, 1.5), 2)}     # writes after it
            for k in kinds]


# ------------------------------------------------------------------------ the writer

class Writer(threading.Thread):
    """Commits small transactions continuously; records what committed, in commit order.

    committed: [(txid, [(op, id, v), ...])] in commit order (one writer: commit
    order is a total order). Every insert and update writes a fresh value v, so
    every change is distinguishable. Rolled-back transactions' txids are kept to
    prove none of their changes is ever delivered.
    """

    def __init__(self, services, dbname, table, seed):
        super().__init__(daemon=True)
        self.services, self.dbname, self.table = services, dbname, table
        self.rnd = random.Random(seed)
        self.committed = []
        self.rolled_back = []          # txids
        self.unknown_committed = 0     # connection lost around COMMIT, marker found
        self.unknown_rolled_back = 0   # connection lost, marker absent
        self.reconnects = 0
        self.errors = []
        self.next_v = 0
        self.txno = 0
        self._halt = threading.Event()
        self._run_ok = threading.Event()   # set: may write
        self._idle = threading.Event()     # set: between transactions, not writing
        self._idle.set()
        self.conn = None

    # control from the test's thread
    def resume(self):
        self._idle.clear()
        self._run_ok.set()

    def pause(self, timeout=120):
        self._run_ok.clear()
        assert self._idle.wait(timeout), "the writer did not pause"
        assert not self.errors, self.errors

    def stop(self):
        self._halt.set()
        self._run_ok.set()
        self.join(60)

    def _connect(self):
        self.conn = connect_retry(self.services, self.dbname, timeout=120, autocommit=False)

    def _drop_conn(self):
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 — it is dead already
            pass
        self.conn = None

    def run(self):
        try:
            while not self._halt.is_set():
                if not self._run_ok.is_set():
                    self._idle.set()
                    self._run_ok.wait()
                    continue
                self._idle.clear()
                if not self._run_ok.is_set():
                    continue
                if self.conn is None:
                    self._connect()
                self.one_transaction()
                time.sleep(0.002)
        except Exception as e:  # noqa: BLE001 — reported by pause()/the test
            self.errors.append(repr(e))
        finally:
            self._idle.set()
            if self.conn is not None:
                self._drop_conn()

    def _marker_committed(self, txno):
        for attempt in range(5):
            try:
                self._connect()
                with self.conn.cursor() as cur:
                    cur.execute("SELECT EXISTS (SELECT 1 FROM fi_marker WHERE txno = %s)", (txno,))
                    done = cur.fetchone()[0]
                self.conn.rollback()
                return done
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._drop_conn()
                if attempt == 4:
                    raise
                time.sleep(0.5)

    def one_transaction(self):
        self.txno += 1
        txno = self.txno
        rollback = self.rnd.random() < 0.12
        ops, txid = [], None
        t = self.table
        try:
            with self.conn.cursor() as cur:
                cur.execute("INSERT INTO fi_marker (txno) VALUES (%s) RETURNING txid_current()",
                            (txno,))
                txid = cur.fetchone()[0]
                for _ in range(self.rnd.randint(1, 4)):
                    k = self.rnd.randrange(NKEYS)
                    cur.execute(f"SELECT v FROM {t} WHERE id = %s", (k,))
                    row = cur.fetchone()
                    self.next_v += 1
                    v = self.next_v
                    if row is None:
                        cur.execute(f"INSERT INTO {t} (id, v) VALUES (%s, %s)", (k, v))
                        ops.append(("insert", k, v))
                    elif self.rnd.random() < 0.25:
                        cur.execute(f"DELETE FROM {t} WHERE id = %s", (k,))
                        ops.append(("delete", k, None))
                    else:
                        cur.execute(f"UPDATE {t} SET v = %s WHERE id = %s", (v, k))
                        ops.append(("update", k, v))
            if rollback:
                self.conn.rollback()
                self.rolled_back.append(txid)
            else:
                self.conn.commit()
                self.committed.append((txid, ops))
        except psycopg2.Error as e:
            # The server went away (crash restart, immediate shutdown). If COMMIT
            # was under way the outcome is unknown: the marker row says. (psycopg2
            # reports a connection lost during COMMIT as a bare DatabaseError.)
            lost = (self.conn.closed or
                    isinstance(e, (psycopg2.OperationalError, psycopg2.InterfaceError)) or
                    "server closed the connection" in str(e) or
                    "terminating connection" in str(e))
            if not lost:
                raise
            self._drop_conn()
            self.reconnects += 1
            done = self._marker_committed(txno)
            if done:
                assert not rollback, f"transaction {txno} was rolled back but its marker exists"
                assert txid is not None
                self.committed.append((txid, ops))
                self.unknown_committed += 1
            else:
                if txid is not None:
                    self.rolled_back.append(txid)
                self.unknown_rolled_back += 1


# ------------------------------------------------------------------------ checking

def envelope_change(value):
    m = json.loads(value)
    after = m["after"]
    return (m["txid"], m["op"], m["key"]["id"], after["v"] if after is not None else None), m["seq"]


def compare(committed, messages):
    """messages: [(ikey, change, order_key)] in the sink's order (per key), duplicates
    included. Returns a dict of counts and a list of problems."""
    problems = []
    expected = []
    for txid, ops in committed:
        for op, k, v in ops:
            expected.append((txid, op, k, v))
    seen = {}
    unique = []
    dups = 0
    for ikey, change, extra in messages:
        if ikey in seen:
            dups += 1
            if seen[ikey] != (change, extra):
                problems.append(f"idempotency key {ikey} carries two different messages: "
                                f"{seen[ikey]} and {(change, extra)}")
            continue
        seen[ikey] = (change, extra)
        unique.append(change)
    exp_c, got_c = Counter(expected), Counter(unique)
    lost = exp_c - got_c
    extra = got_c - exp_c
    committed_txids = {txid for txid, _ in committed}
    phantom = [c for c in unique if c[0] not in committed_txids]
    if lost:
        problems.append(f"{sum(lost.values())} committed changes missing, e.g. {list(lost)[:5]}")
    if extra:
        problems.append(f"{sum(extra.values())} changes delivered that never committed "
                        f"(or twice under different keys), e.g. {list(extra)[:5]}")
    # per-key order: the sink's sequence of one key equals its commit sequence
    exp_k, got_k = defaultdict(list), defaultdict(list)
    for c in expected:
        exp_k[c[2]].append(c)
    for c in unique:
        got_k[c[2]].append(c)
    misordered = [k for k in exp_k if got_k.get(k) != exp_k[k]
                  and Counter(got_k.get(k, [])) == Counter(exp_k[k])]
    if misordered:
        k = misordered[0]
        problems.append(f"{len(misordered)} keys out of commit order, e.g. key {k}: "
                        f"got {got_k[k][:8]} expected {exp_k[k][:8]}")
    return {"rows": len(expected), "lost": sum(lost.values()), "extra": sum(extra.values()),
            "phantom": len(phantom), "duplicated": dups, "misordered": len(misordered)}, problems


def read_redis(r, stream):
    out = []
    for e in stream_entries(r, stream):
        change, seq = envelope_change(e["data"])
        out.append((e["idempotency_key"], change, seq))
    return out


def read_kafka(bootstrap, topic, problems):
    msgs = kafka_read_all(bootstrap, topic, timeout=60)
    parts_of_key = defaultdict(set)
    out = []
    for m in msgs:                    # sorted by (partition, offset)
        change, seq = envelope_change(m["value"])
        parts_of_key[m["key"]].add(m["partition"])
        if m["key"] != str(change[2]):
            problems.append(f"Kafka message key {m['key']!r} does not match row key {change[2]}")
        out.append((m["headers"]["idempotency_key"], change, (seq, m["partition"], m["key"])))
    split = {k: p for k, p in parts_of_key.items() if len(p) > 1}
    if split:
        problems.append(f"keys spread over several partitions: {dict(list(split.items())[:3])}")
    return out


# ------------------------------------------------------------------------ the test

@pytest.fixture
def fault_redis():
    with RedisServer(persistent=True) as srv:
        yield srv


@pytest.fixture
def fault_kafka():
    topic = f"fi_{uid()}"
    with KafkaBroker(brokers=1, topics=[f"{topic}:{PARTITIONS}"]) as broker:
        broker.topic = topic
        yield broker


def test_sustained_writes_survive_random_faults(services, dbname, fault_redis, fault_kafka,
                                                capsys):
    seed = fault_seed()
    rnd = random.Random(seed)
    plan = fault_plan(rnd)
    with capsys.disabled():
        print(f"\n[fault-injection] seed {seed} (replay: BATCHKIT_FAULT_SEED={seed}); plan: "
              + ", ".join(f"{p['fault']}@{p['before']}s/{p['outage']}s" for p in plan))

    t, rs, ks = f"t_fi_{uid()}", f"fi_r_{uid()}", f"fi_k_{uid()}"
    stream = f"fi:{t}"
    conn = connect_retry(services, dbname)
    fast_retry = {"retry_backoff_ms": 50, "retry_backoff_max_ms": 1000, "batch_size": 100,
                  "max_wait_ms": 5}
    make_sink(conn, rs, "redis", dict(url=fault_redis.url, command="xadd", key="fi:{table}",
                                      **fast_retry))
    make_sink(conn, ks, "kafka", {"bootstrap.servers": fault_kafka.bootstrap,
                                  "topic": fault_kafka.topic, **fast_retry})
    q(conn, f"CREATE TABLE {t} (id int PRIMARY KEY, v int NOT NULL)")
    q(conn, "CREATE TABLE IF NOT EXISTS fi_marker (txno bigint PRIMARY KEY)")
    q(conn, "TRUNCATE fi_marker")
    for s in (rs, ks):
        q(conn, "SELECT batchkit.capture(%s::regclass, %s)", (t, s))
    conn.close()
    pg_dir = os.path.join(services["BATCHKIT_RUN_DIR"], "pg")
    wait_flush_worker(services, dbname)

    writer = Writer(services, dbname, t, seed)
    writer.start()
    summary = {"redis": {}, "kafka": {}}
    rounds_done = 0
    t_start = time.time()
    try:
        for i, p in enumerate(plan, 1):
            t_round = time.time()
            writer.resume()
            time.sleep(p["before"])
            fault = p["fault"]
            # how far delivery lags behind the writer when the fault strikes (approximate:
            # Redis is read first, so rows committed meanwhile count as backlog)
            r = fault_redis.client()
            try:
                delivered = r.xlen(stream) if r.exists(stream) else 0
            finally:
                r.close()
            backlog = sum(len(ops) for _, ops in list(writer.committed)) - delivered
            if fault == "kill_worker":
                pid = wait_flush_worker(services, dbname)
                os.kill(pid, signal.SIGKILL)
            elif fault == "pg_immediate":
                pg_script("stop", pg_dir, "immediate")
                time.sleep(p["outage"])
                pg_script("start", pg_dir)
            elif fault == "redis_restart":
                fault_redis.kill9()
                time.sleep(p["outage"])
                fault_redis.start()
            elif fault == "kafka_stall":
                fault_kafka.stall()
                time.sleep(p["outage"])
                fault_kafka.resume()
            time.sleep(p["after"])
            writer.pause()

            conn = connect_retry(services, dbname)
            try:
                wait_flush_worker(services, dbname)
                for s in (rs, ks):
                    assert q(conn, "SELECT batchkit.flush(%s, '120 s')", (s,))[0][0], \
                        f"round {i} ({fault}): sink {s} did not drain within 120 s"
                dead = q(conn, "SELECT sink, count(*) FROM batchkit.dead_letters "
                               "WHERE sink IN (%s, %s) GROUP BY 1", (rs, ks))
                # the writer is idle and both queues drained: the depth counters, rebuilt
                # after every restart while the writer committed, must say 0 exactly
                depth = {s: q(conn, "SELECT batchkit.queue_depth(%s)", (s,))[0][0]
                         for s in (rs, ks)}
            finally:
                conn.close()
            r = fault_redis.client()
            try:
                redis_msgs = read_redis(r, stream)
            finally:
                r.close()
            kproblems = []
            kafka_msgs = read_kafka(fault_kafka.bootstrap, fault_kafka.topic, kproblems)
            summary["redis"], rproblems = compare(writer.committed, redis_msgs)
            summary["kafka"], kp2 = compare(writer.committed, kafka_msgs)
            kproblems += kp2
            if summary["redis"]["duplicated"]:
                rproblems.append(f"{summary['redis']['duplicated']} duplicates in Redis")
            if dead:
                rproblems.append(f"dead letters after an outage: {dead}")
            if depth[rs] != 0:
                rproblems.append(f"queue_depth {depth[rs]} after the drain, expected 0")
            if depth[ks] != 0:
                kproblems.append(f"queue_depth {depth[ks]} after the drain, expected 0")
            rounds_done = i
            with capsys.disabled():
                print(f"[fault-injection] round {i}/{len(plan)} {fault:13s} "
                      f"{time.time() - t_round:5.1f}s: rows {summary['redis']['rows']}, "
                      f"redis lost {summary['redis']['lost']} dup {summary['redis']['duplicated']}, "
                      f"kafka lost {summary['kafka']['lost']} dup {summary['kafka']['duplicated']}, "
                      f"writer reconnects {writer.reconnects}, Redis backlog at the fault ~{backlog} rows")
            assert not rproblems and not kproblems, \
                f"round {i} ({fault}), seed {seed}: Redis: {rproblems}; Kafka: {kproblems}"
    finally:
        writer.stop()
        # the worker lets go of the test's Redis and broker before the fixtures stop them
        conn = connect_retry(services, dbname)
        for s in (rs, ks):
            q(conn, "SELECT batchkit.drop_sink(%s, true)", (s,))
        conn.close()
        with capsys.disabled():
            rr, kk = summary["redis"], summary["kafka"]
            print(f"[fault-injection] SUMMARY seed {seed}: rounds {rounds_done}/{len(plan)}, "
                  f"rows {rr.get('rows', 0)} in {len(writer.committed)} committed transactions "
                  f"({len(writer.rolled_back)} rolled back, commit outcome resolved by marker: "
                  f"{writer.unknown_committed} committed / {writer.unknown_rolled_back} not), "
                  f"lost redis {rr.get('lost', '?')} kafka {kk.get('lost', '?')}, "
                  f"duplicated redis {rr.get('duplicated', '?')} kafka {kk.get('duplicated', '?')}, "
                  f"{time.time() - t_start:.0f}s")
    assert not writer.errors, writer.errors
    assert len(writer.committed) > 100 and writer.rolled_back, "the writer hardly wrote"


# ------------------------------------------------------------------------ a stalled sink and DDL

def test_stalled_kafka_broker_does_not_hold_up_drop_database(services):
    """While the flush worker waits on a stalled broker (SIGSTOP) it must still
    answer the server: DROP DATABASE of an unrelated database waits until every
    backend has absorbed a ProcSignalBarrier, and DROP DATABASE of the worker's
    own database asks the worker to leave (README, Troubleshooting). Neither may
    wait for the send to time out (send_timeout_ms, here 10 s)."""
    admin = connect_retry(services, "postgres")
    own, other = f"bk_fi_stall_{uid()}", f"bk_fi_other_{uid()}"
    q(admin, f'CREATE DATABASE "{own}"')
    broker = KafkaBroker(brokers=1).start()
    problems = []
    try:
        c = connect_retry(services, own)
        q(c, "CREATE EXTENSION batchkit")
        make_sink(c, "k", "kafka", {"bootstrap.servers": broker.bootstrap, "topic": "stall",
                                    "send_timeout_ms": 10000, "retry_backoff_ms": 50,
                                    "retry_backoff_max_ms": 200})
        q(c, "CREATE TABLE t (id int PRIMARY KEY)")
        q(c, "SELECT batchkit.capture('t', 'k')")

        def stall_mid_send(row):
            assert q(c, "SELECT batchkit.flush('k', '60 s')")[0][0]
            broker.stall()
            q(c, "INSERT INTO t VALUES (%s)", (row,))
            deadline = time.time() + 10
            while q(c, "SELECT state FROM batchkit.workers WHERE kind = 'flush' "
                       "AND database = current_database()") != [("sending",)]:
                assert time.time() < deadline, "the worker never started sending"
                time.sleep(0.05)

        q(c, "INSERT INTO t VALUES (1)")
        stall_mid_send(2)
        q(admin, f'CREATE DATABASE "{other}"')
        t0 = time.time()
        q(admin, f'DROP DATABASE "{other}"')
        took = time.time() - t0
        print(f"DROP DATABASE of an unrelated database during a stalled send: {took:.1f}s")
        if took > 5:
            problems.append(f"DROP DATABASE of an unrelated database took {took:.1f}s")
        broker.resume()

        stall_mid_send(3)
        c.close()
        t0 = time.time()
        try:
            q(admin, f'DROP DATABASE "{own}" WITH (FORCE)')
            err = None
        except psycopg2.Error as e:
            err = str(e).strip().splitlines()[0]
        took = time.time() - t0
        print(f"DROP DATABASE of the worker's own database during a stalled send: {took:.1f}s, "
              f"{err or 'dropped'}")
        if err or took > 8:
            problems.append(f"DROP DATABASE ... WITH (FORCE) of the stalled worker's database: "
                            f"{err or 'dropped'} after {took:.1f}s")
    finally:
        broker.resume()
        for d in (own, other):
            for _ in range(10):
                try:
                    q(admin, f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE)')
                    break
                except psycopg2.Error:
                    time.sleep(1)
        broker.stop()
        admin.close()
    assert not problems, problems

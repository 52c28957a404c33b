"""Helpers shared by several integration test files: SQL shortcuts, the
independent readers that verify deliveries (redis-py, kafka-python: neither
shares code with batchkit), the flush worker's pid, and extra service
processes a test owns (a redis-server with persistence, a Kafka dev broker).

Every process started here is stopped by its owner's finalizer (use the
classes as context managers or call stop() in a fixture's teardown), also when
the test fails.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import psycopg2
import redis as redis_lib
from kafka import KafkaConsumer, TopicPartition

from conftest import ROOT, connect, free_port

KAFKA_DEV_BROKER = ROOT / "tools" / "kafka-dev-broker" / "kafka-dev-broker"


# ------------------------------------------------------------------------ SQL

def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def uid():
    return uuid.uuid4().hex[:8]


def connect_retry(services, dbname, timeout=90, **kw):
    """A connection, waiting while the server restarts or recovers from a crash."""
    deadline = time.time() + timeout
    while True:
        try:
            return connect(services, dbname, **kw)
        except psycopg2.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def flush_worker_pid(services, dbname):
    c = connect(services, dbname)
    try:
        rows = q(c, "SELECT pid FROM batchkit.workers "
                    "WHERE kind = 'flush' AND database = current_database()")
        return rows[0][0] if rows else None
    finally:
        c.close()


def wait_flush_worker(services, dbname, timeout=60):
    """The pid of the database's flush worker, once there is one."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            pid = flush_worker_pid(services, dbname)
            if pid:
                return pid
        except psycopg2.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no flush worker for database {dbname}")


# ------------------------------------------------------------------------ readers

def kafka_read_all(bootstrap, topic, timeout=30):
    """Every message of a topic, from the beginning to the current end of each partition."""
    c = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                      consumer_timeout_ms=1000, max_partition_fetch_bytes=8 * 1024 * 1024,
                      fetch_max_bytes=64 * 1024 * 1024)
    try:
        deadline = time.time() + timeout
        parts = None
        while parts is None and time.time() < deadline:
            parts = c.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        while time.time() < deadline:
            if all(c.position(tp) >= end[tp] for tp in tps):
                break
            for tp, msgs in c.poll(timeout_ms=500).items():
                for m in msgs:
                    out.append({"partition": m.partition, "offset": m.offset,
                                "key": m.key.decode() if m.key is not None else None,
                                "headers": {k: v.decode() for k, v in (m.headers or [])},
                                "value": m.value.decode() if m.value is not None else None})
        assert all(c.position(tp) >= end[tp] for tp in tps), "could not read the whole topic"
        return sorted(out, key=lambda m: (m["partition"], m["offset"]))
    finally:
        c.close()


def stream_entries(r, key):
    out = []
    for _id, fields in r.xrange(key):
        out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


def wait_redis(r, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if r.ping():
                return
        except redis_lib.exceptions.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("redis did not start")


# ------------------------------------------------------------------------ processes

class RedisServer:
    """A redis-server of the test's own, on a free loopback port, data in a fresh
    directory. persistent=True: append-only file fsynced at every write, so a
    kill -9 loses nothing Redis acknowledged. restart() keeps port and directory."""

    def __init__(self, persistent=True, extra_args=()):
        self.dir = tempfile.mkdtemp(prefix="batchkit-redis.")
        self.port = free_port()
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", self.dir, "--save", "", "--logfile", os.path.join(self.dir, "log")]
        self.args += (["--appendonly", "yes", "--appendfsync", "always"] if persistent
                      else ["--appendonly", "no"])
        self.args += list(extra_args)
        self.proc = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kw):
        return redis_lib.Redis(host="127.0.0.1", port=self.port, socket_timeout=30, **kw)

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = self.client()
        try:
            wait_redis(r)
            # an AOF being loaded answers PING with LOADING errors: wait for it
            deadline = time.time() + 30
            while int(r.info("persistence").get("loading", 0)) and time.time() < deadline:
                time.sleep(0.05)
        finally:
            r.close()
        return self

    def kill9(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self):
        self.kill9()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class KafkaBroker:
    """A Kafka dev broker of the test's own (in memory: it is stalled, never
    restarted, by fault tests). topics: ["name:partitions", ...]."""

    def __init__(self, brokers=1, topics=()):
        self.dir = tempfile.mkdtemp(prefix="batchkit-kafka.")
        self.bootstrap_file = os.path.join(self.dir, "bootstrap")
        args = [str(KAFKA_DEV_BROKER), "--brokers", str(brokers), "--quiet",
                "--bootstrap-file", self.bootstrap_file]
        for t in topics:
            args += ["--topic", t]
        self.args = args
        self.proc = None
        self.bootstrap = None
        self.stopped = False

    def start(self):
        if not KAFKA_DEV_BROKER.exists():
            subprocess.run(["make", "-s", "-C", str(KAFKA_DEV_BROKER.parent)], check=True)
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not os.path.exists(self.bootstrap_file):
            assert self.proc.poll() is None, "the Kafka dev broker exited"
            assert time.time() < deadline, "the Kafka dev broker did not start"
            time.sleep(0.05)
        self.bootstrap = open(self.bootstrap_file).read().strip()
        return self

    def stall(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def stop(self):
        if self.proc is not None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------------ gdb

class HeldBackend:
    """Hold a PostgreSQL backend (or worker) at a breakpoint with gdb, to make a
    race deterministic: `with HeldBackend(pid, "xact_callback if event == ...")
    as h:` attaches and sets the breakpoint; h.wait_hit() returns once the
    process stopped there; h.release() (also on leaving the block) removes the
    breakpoint, detaches and lets it go on. The process is never left with a
    breakpoint in it: gdb deletes it before detaching."""

    def __init__(self, pid, breakpoint, timeout=60):
        self.pid, self.breakpoint, self.timeout = pid, breakpoint, timeout
        self.dir = tempfile.mkdtemp(prefix="bk-gdb-")
        self.ready, self.hit, self.go = (os.path.join(self.dir, n) for n in ("ready", "hit", "go"))
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["gdb", "-q", "-batch", "-nx", "-p", str(self.pid),
             "-ex", "set pagination off",
             "-ex", f"break {self.breakpoint}",
             "-ex", f"shell touch {self.ready}",
             "-ex", "continue",
             "-ex", f"shell touch {self.hit}; while [ ! -e {self.go} ]; do sleep 0.05; done",
             "-ex", "delete", "-ex", "detach"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._wait(self.ready)
        return self

    def _wait(self, path):
        deadline = time.time() + self.timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None:
                raise AssertionError("gdb ended early: " + self.proc.stdout.read())
            assert time.time() < deadline, f"gdb: timed out waiting for {path}"
            time.sleep(0.05)

    def wait_hit(self):
        self._wait(self.hit)

    def release(self):
        """Let the process go on; returns gdb's output."""
        open(self.go, "w").close()
        out, _ = self.proc.communicate(timeout=self.timeout)
        return out

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.release()
        shutil.rmtree(self.dir, ignore_errors=True)

"""The queue survives physical replication and failover (README, "Delivery
guarantees" 2).

Each test builds its own primary (batchkit preloaded, a Redis `hset` sink on a
captured table) and a streaming standby made with `pg_basebackup -R`, crashes
the primary (immediate shutdown) and promotes the standby with pg_promote().
The Redis reader is redis-py, which shares no code with batchkit.

What is checked:
  - on a standby (in recovery) nothing of batchkit runs and nothing is
    delivered: the launcher and the flush workers are BgWorkerStart_
    RecoveryFinished workers (src/shim/flush/launcher.c), started by the postmaster
    only once recovery has ended;
  - after promotion, without a restart, the launcher starts the flush worker
    and it delivers every committed row (Redis equals the table) and no rolled
    back one;
  - a standby that lagged behind the crashed primary (asynchronous
    replication) finds Redis ahead of it: the old primary delivered batches
    the standby never saw (their claims and acknowledgements were lost with
    the primary). The new primary's batches must not be taken for replays of
    those (Redis skips a batch at or below its fence), even when Redis is
    unreachable at promotion;
  - neither server logs an ERROR/FATAL/PANIC except the standby's WAL receiver
    failing to reach the dead primary, and no process crashed.
"""
import os
import re
import shutil
import subprocess
import tempfile
import time

import psycopg2
import pytest

from conftest import free_port, make_sink, pg_script
from helpers import RedisServer, q

PGBIN = "/usr/lib/postgresql/15/bin"


def as_pg(args):
    """A command as the PostgreSQL OS user (scripts/lib.sh bk_as_pg)."""
    return (["runuser", "-u", "postgres", "--"] + args) if os.geteuid() == 0 else args


class Cluster:
    """A throwaway cluster in a directory of its own (scripts/pg.sh layout)."""

    def __init__(self, port):
        self.dir = tempfile.mkdtemp(prefix="bk-failover-")
        os.chmod(self.dir, 0o755)
        self.port = port
        self.sock = os.path.join(self.dir, "sock")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "pg.log")
        self.started = False

    def conf(self, text):
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(text)

    def start(self):
        pg_script("start", self.dir)
        self.started = True

    def stop(self, mode="fast"):
        if self.started:
            pg_script("stop", self.dir, mode, check=False)
            self.started = False

    def connect(self, dbname="postgres"):
        c = psycopg2.connect(host=self.sock, port=self.port, user="postgres", dbname=dbname)
        c.autocommit = True
        return c

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def remove(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def make_primary():
    p = Cluster(free_port())
    pg_script("init", p.dir, p.port)
    # streaming replication (wal_level = replica is the default); initdb --auth=trust
    # already allows replication connections over the socket and loopback, said
    # again here so the test does not depend on initdb's template
    p.conf("max_wal_senders = 5\nwal_keep_size = '256MB'\nhot_standby = on\n")
    with open(os.path.join(p.data, "pg_hba.conf"), "a") as f:
        f.write("local replication all trust\nhost replication all 127.0.0.1/32 trust\n")
    p.start()
    return p


def make_standby(primary):
    s = Cluster(free_port())
    os.makedirs(s.sock)
    if os.geteuid() == 0:
        shutil.chown(s.dir, "postgres", "postgres")
        shutil.chown(s.sock, "postgres", "postgres")
    r = subprocess.run(as_pg([f"{PGBIN}/pg_basebackup", "-D", s.data, "-h", primary.sock,
                              "-p", str(primary.port), "-U", "postgres", "-X", "stream",
                              "-c", "fast", "-R"]),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the copied postgresql.conf names the primary's port and socket: later lines win
    s.conf(f"\n# --- standby ---\nport = {s.port}\nunix_socket_directories = '{s.sock}'\n"
           "hot_standby = on\n")
    assert os.path.exists(os.path.join(s.data, "standby.signal"))
    s.start()
    return s


def wait_replayed(primary, standby, dbname, timeout=30):
    """Wait until the standby has replayed everything the primary has written."""
    pc = primary.connect(dbname)
    target = q(pc, "SELECT pg_current_wal_lsn()")[0][0]
    pc.close()
    c = standby.connect(dbname)
    try:
        deadline = time.time() + timeout
        while True:
            if q(c, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0][0]:
                return
            assert time.time() < deadline, f"the standby did not replay up to {target}"
            time.sleep(0.05)
    finally:
        c.close()


def batchkit_backends(conn):
    return q(conn, "SELECT backend_type FROM pg_stat_activity "
                   "WHERE backend_type LIKE 'batchkit%' ORDER BY 1")


def wait_flush_worker(conn, timeout=30):
    deadline = time.time() + timeout
    while True:
        rows = q(conn, "SELECT pid FROM batchkit.workers WHERE kind = 'flush' "
                       "AND database = current_database()")
        if rows:
            return rows[0][0]
        assert time.time() < deadline, "no flush worker on the promoted server"
        time.sleep(0.1)


def wait_log(cluster, offset, text, timeout=30):
    """Wait until the server log, from offset on, contains text."""
    deadline = time.time() + timeout
    while text not in cluster.log_text()[offset:]:
        assert time.time() < deadline, f"the server did not log {text!r}"
        time.sleep(0.05)


def promote(standby):
    c = standby.connect()
    try:
        assert q(c, "SELECT pg_promote(wait => true, wait_seconds => 60)")[0][0] is True
        assert q(c, "SELECT pg_is_in_recovery()")[0][0] is False
    finally:
        c.close()


def redis_state(r, prefix="t:"):
    """{id: {column: value}} of every hash the sink wrote (hset: one field per column)."""
    out = {}
    for k in r.scan_iter(match=prefix + "*", count=1000):
        out[int(k.decode()[len(prefix):])] = {f.decode(): v.decode()
                                             for f, v in r.hgetall(k).items()}
    return out


def table_state(conn):
    return {i: {"id": str(i), "v": v, **({"n": str(n)} if n is not None else {})}
            for i, v, n in q(conn, "SELECT id, v, n FROM t")}


# Lines a failover legitimately logs at FATAL: the standby's WAL receiver
# cannot reach the crashed primary (until promotion stops it), and, once a
# shutdown was requested, every process ended by SIGTERM (PostgreSQL's die())
# and a connection refused meanwhile (the standby's walreceiver reconnecting).
WALRECEIVER = re.compile(r" walreceiver FATAL: +(could not connect to the primary server|"
                         r"could not receive data from WAL stream)")
SHUTDOWN = re.compile(r' FATAL: +(terminating (background worker "[^"]+"|walreceiver process) '
                      r'due to administrator command|the database system is shutting down)')


def bad_log_lines(text):
    """ERROR/FATAL/PANIC lines that are not legitimate (above), and crashes."""
    bad = []
    shutting_down = False
    for line in text.splitlines():
        if re.search(r"received (fast|immediate) shutdown request", line):
            shutting_down = True
        elif "starting PostgreSQL" in line:
            shutting_down = False
        if "terminated by signal" in line or "was terminated by" in line:
            bad.append(line)
        elif re.search(r"\b(ERROR|FATAL|PANIC):", line):
            if WALRECEIVER.search(line) or (shutting_down and SHUTDOWN.search(line)):
                continue
            bad.append(line)
    return bad


@pytest.fixture
def clusters():
    """Created clusters and Redis servers, all removed at the end (also on failure)."""
    made = []
    yield made
    for x in reversed(made):
        if isinstance(x, Cluster):
            x.remove()
        else:
            x.stop()


def setup_primary(clusters, redis):
    p = make_primary()
    clusters.append(p)
    c = p.connect()
    q(c, "CREATE DATABASE app")
    c.close()
    c = p.connect("app")
    q(c, "CREATE EXTENSION batchkit")
    q(c, "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, n int)")
    make_sink(c, "cache", "redis", {"url": redis.url, "command": "hset", "key": "t:{id}"})
    q(c, "SELECT batchkit.capture('t', 'cache')")
    return p, c


def test_queue_survives_failover_to_a_promoted_standby(clusters):
    redis = RedisServer(persistent=True)
    clusters.append(redis)
    redis.start()
    primary, pc = setup_primary(clusters, redis)
    r = redis.client()
    try:
        # delivered before the outage: the sink's fence in Redis is above 0
        q(pc, "INSERT INTO t SELECT g, 'first-' || g, g FROM generate_series(1, 200) g")
        assert q(pc, "SELECT batchkit.flush('cache', '30 s')")[0][0] is True
        assert redis_state(r) == table_state(pc)
        standby = make_standby(primary)
        clusters.append(standby)

        # the sink goes down; committed rows wait in the queue
        redis.kill9()
        q(pc, "INSERT INTO t SELECT g, 'v-' || g, CASE WHEN g % 7 = 0 THEN NULL ELSE g END "
              "FROM generate_series(201, 3200) g")
        q(pc, "UPDATE t SET v = v || '-upd', n = coalesce(n, 0) + 1000000 WHERE id % 3 = 0")
        q(pc, "UPDATE t SET n = NULL WHERE id % 11 = 0")
        q(pc, "DELETE FROM t WHERE id % 5 = 0")
        for i in range(20):                        # many small transactions, one chunk each
            q(pc, "UPDATE t SET v = 'small-' || %s WHERE id = %s", (i, 201 + i))
        # a rolled-back transaction and a rolled-back subtransaction: never delivered
        pc.autocommit = False
        q(pc, "INSERT INTO t SELECT g, 'rolled-back', g FROM generate_series(9001, 9500) g")
        q(pc, "UPDATE t SET v = 'rolled-back' WHERE id BETWEEN 1 AND 100")
        q(pc, "DELETE FROM t WHERE id BETWEEN 101 AND 150")
        pc.rollback()
        q(pc, "INSERT INTO t VALUES (9600, 'kept', 1)")
        q(pc, "SAVEPOINT s")
        q(pc, "INSERT INTO t SELECT g, 'rolled-back', g FROM generate_series(9601, 9700) g")
        q(pc, "UPDATE t SET v = 'rolled-back' WHERE id = 9600")
        q(pc, "ROLLBACK TO SAVEPOINT s")
        pc.commit()
        pc.autocommit = True
        expected = table_state(pc)
        queued = q(pc, "SELECT count(*) FROM batchkit.queue")[0][0]
        assert queued > 0, "the rows committed while Redis was down must wait in the queue"
        wait_replayed(primary, standby, "app")

        # the standby holds the same table and queue, and runs nothing of batchkit
        sc = standby.connect("app")
        assert q(sc, "SELECT pg_is_in_recovery()")[0][0] is True
        assert table_state(sc) == expected
        assert q(sc, "SELECT count(*) FROM batchkit.queue")[0][0] == queued
        assert batchkit_backends(sc) == []
        assert q(sc, "SELECT count(*) FROM batchkit.workers")[0][0] == 0
        assert [b for b, in batchkit_backends(pc)] == ["batchkit flush worker",
                                                       "batchkit launcher"]

        # the primary crashes; Redis comes back while the standby is still a standby
        pc.close()
        primary.stop("immediate")
        redis.start()
        before = redis_state(r)
        time.sleep(2.5)                            # > 2 naptimes: a standby worker would deliver
        assert redis_state(r) == before, "something was delivered from the standby"
        assert batchkit_backends(sc) == []
        sc.close()

        # promotion, without a restart: the launcher starts the flush worker
        promote(standby)
        sc = standby.connect("app")
        pid = wait_flush_worker(sc)
        assert q(sc, "SELECT backend_type FROM pg_stat_activity WHERE pid = %s",
                 (pid,)) == [("batchkit flush worker",)]
        assert q(sc, "SELECT batchkit.flush('cache', '30 s')")[0][0] is True
        got = redis_state(r)
        assert table_state(sc) == expected
        assert got == expected
        assert not {i for i in got if i >= 9000} - {9600}, "a rolled-back row was delivered"
        assert got[9600] == {"id": "9600", "v": "kept", "n": "1"}
        assert q(sc, "SELECT count(*) FROM batchkit.queue")[0][0] == 0
        # the new primary keeps capturing and delivering
        q(sc, "UPDATE t SET v = 'after-failover' WHERE id = 1")
        assert q(sc, "SELECT batchkit.flush('cache', '30 s')")[0][0] is True
        assert r.hget("t:1", "v") == b"after-failover"
        sc.close()
        standby.stop()

        assert bad_log_lines(primary.log_text()) == []
        assert bad_log_lines(standby.log_text()) == []
        assert "batchkit flush worker started" in standby.log_text()
    finally:
        r.close()


@pytest.mark.parametrize("redis_at_promotion", ["down", "up"])
def test_a_lagging_standby_promoted_finds_redis_ahead_and_delivers_its_new_rows(
        clusters, redis_at_promotion):
    """Asynchronous replication: the standby stopped receiving WAL (it is stopped
    here) while the primary went on delivering batches to Redis, whose fence then
    stands above every batch sequence the standby knows. After the failover the
    new primary's first batches get the sequences the old primary already used;
    were they sent as they are, Redis would skip them as replays and their rows
    would be lost. The worker must learn the fence before its first batch, also
    when Redis is down at promotion and reachable only later ("down": the fence
    cannot be read when the worker opens the sink)."""
    redis = RedisServer(persistent=True)
    clusters.append(redis)
    redis.start()
    primary, pc = setup_primary(clusters, redis)
    r = redis.client()
    try:
        q(pc, "INSERT INTO t SELECT g, 'first-' || g, g FROM generate_series(1, 100) g")
        assert q(pc, "SELECT batchkit.flush('cache', '30 s')")[0][0] is True
        standby = make_standby(primary)
        clusters.append(standby)
        wait_replayed(primary, standby, "app")
        standby.stop()                           # the standby falls behind

        # the old primary delivers 10 batches the standby never hears of
        for i in range(10):
            q(pc, "INSERT INTO t VALUES (%s, 'lost-with-the-primary', 0)", (1000 + i,))
            assert q(pc, "SELECT batchkit.flush('cache', '30 s')")[0][0] is True
        fence = int(r.get("batchkit:fence:cache"))
        pc.close()
        primary.stop("immediate")

        # failover (while Redis is unreachable)
        if redis_at_promotion == "down":
            redis.kill9()
        standby.start()
        sc = standby.connect("app")
        seq_before = q(sc, "SELECT last_batch_seq FROM batchkit.sink_progress")[0][0]
        assert seq_before < fence - 5, (seq_before, fence)
        log_at = len(standby.log_text())
        promote(standby)
        wait_flush_worker(sc)
        if redis_at_promotion == "down":
            # the worker has opened the sink and failed to read its fence
            wait_log(standby, log_at, 'batchkit sink "cache": redis: cannot connect')
        # the new primary's writes, in several transactions (several batches)
        for i in range(8):
            q(sc, "INSERT INTO t SELECT g, 'new-primary', %s FROM generate_series(%s, %s) g",
              (i, 2000 + 100 * i, 2099 + 100 * i))
        q(sc, "UPDATE t SET v = 'updated-on-new-primary' WHERE id <= 50")
        if redis_at_promotion == "down":
            redis.start()
        assert q(sc, "SELECT batchkit.flush('cache', '30 s')")[0][0] is True
        got = redis_state(r)
        expected = table_state(sc)
        # Redis also holds the rows only the old primary had (async replication lost
        # them from the database, not from the sink)
        only_old = {1000 + i for i in range(10)}
        assert set(got) - set(expected) == only_old
        missing = sorted(set(expected) - set(got))
        assert missing == [], f"{len(missing)} committed rows never reached Redis: {missing[:10]}"
        assert {i: got[i] for i in expected} == expected
        assert int(r.get("batchkit:fence:cache")) > fence
        sc.close()
        standby.stop()
        assert bad_log_lines(primary.log_text()) == []
        assert bad_log_lines(standby.log_text()) == []
    finally:
        r.close()

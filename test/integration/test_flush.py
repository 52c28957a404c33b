"""Delivery to real Redis and Kafka, read back by independent clients.

Redis is read with redis-py, Kafka with python3-kafka (kafka-python); neither
shares code with batchkit. Faults are real: kill -9 of the flush worker,
pg_ctl stop -m immediate, a Redis restart, a Kafka broker stopped with SIGSTOP.
"""
import json
import os
import signal
import subprocess
import tempfile
import time

import psycopg2
import pytest
import redis as redis_lib

from conftest import ROOT, connect, free_port, make_sink, pg_script, set_sink_options, wait_for_server
from helpers import (flush_worker_pid, kafka_read_all, q, stream_entries, uid,
                     wait_flush_worker, wait_redis as _wait_redis)


def flush(conn, sink, timeout="60s"):
    assert q(conn, "SELECT batchkit.flush(%s, %s)", (sink, timeout))[0][0], f"{sink} did not drain"


def redis_sink(db, services, name, command="xadd", key="s:{table}", **extra):
    opts = {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0", "command": command, "key": key}
    opts.update(extra)
    make_sink(db, name, "redis", opts)


def kafka_sink(db, services, name, topic, **extra):
    opts = {"bootstrap.servers": services["KAFKA_BOOTSTRAP"], "topic": topic}
    opts.update(extra)
    make_sink(db, name, "kafka", opts)


def envelope_ops(values):
    out = []
    for v in values:
        m = json.loads(v)
        row = m["after"] if m["after"] is not None else None
        out.append((m["op"], m["key"]["id"], row["v"] if row else None))
    return out


def test_redis_stream_exactly_once_in_commit_order(db, services, redis_client):
    t, sink = f"t_rx_{uid()}", f"rx_{uid()}"
    redis_sink(db, services, sink, key="stream:{table}")
    committed = workload_with_capture(db, t, sink)
    flush(db, sink)
    entries = stream_entries(redis_client, f"stream:{t}")
    assert len({e["idempotency_key"] for e in entries}) == len(entries)   # no duplicates
    assert envelope_ops(e["data"] for e in entries) == committed
    assert all(json.loads(e["data"])["table"] == f"public.{t}" for e in entries)
    assert all(e["idempotency_key"].startswith(sink + ":") for e in entries)


def workload_with_capture(db, table, sink):
    """Inserts, updates and deletes in many transactions, some rolled back.
    Returns the committed changes in commit order: [(op, id, v)]."""
    q(db, f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, note text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (table, sink))
    committed = []
    conn = psycopg2.connect(**{k: v for k, v in db.get_dsn_parameters().items()
                               if k in ("host", "port", "user", "dbname")})
    with conn.cursor() as cur:
        for t in range(60):
            ops = []
            for i in range(5):
                k = (t * 5 + i) % 40
                cur.execute(f"SELECT v FROM {table} WHERE id = %s", (k,))
                row = cur.fetchone()
                if row is None:
                    cur.execute(f"INSERT INTO {table} VALUES (%s, 1, 'n')", (k,))
                    ops.append(("insert", k, 1))
                elif t % 11 == 0:
                    cur.execute(f"DELETE FROM {table} WHERE id = %s", (k,))
                    ops.append(("delete", k, None))
                else:
                    cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (k,))
                    ops.append(("update", k, row[0] + 1))
            if t % 7 == 3:
                conn.rollback()
            else:
                conn.commit()
                committed.extend(ops)
    conn.close()
    return committed


def test_kafka_at_least_once_per_key_order(db, services):
    t, sink, topic = f"t_kx_{uid()}", f"kx_{uid()}", f"topic_{uid()}"
    kafka_sink(db, services, sink, topic)
    committed = workload_with_capture(db, t, sink)
    flush(db, sink)
    msgs = kafka_read_all(services["KAFKA_BOOTSTRAP"], topic)
    seen, unique = set(), []
    for m in msgs:
        if m["headers"]["idempotency_key"] in seen:
            continue            # a duplicate: allowed, and identifiable
        seen.add(m["headers"]["idempotency_key"])
        unique.append(m)
    assert all(m["headers"]["idempotency_key"].startswith(sink + ":") for m in unique)
    # per key: the committed sequence, in order (one key -> one partition)
    by_key = {}
    for m in unique:
        by_key.setdefault(m["key"], []).append(m)
    for k, ms in by_key.items():
        assert len({m["partition"] for m in ms}) == 1
    got = sorted(envelope_ops(m["value"] for m in unique), key=lambda x: x[1])
    expect = sorted(committed, key=lambda x: x[1])
    assert got == expect   # stable sorts: per-key order equal
    assert {m["headers"]["op"] for m in unique} <= {"insert", "update", "delete"}


def test_redis_set_hset_lists_and_ttl(db, services, redis_client):
    t = f"t_rc_{uid()}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, name text, score numeric)")
    sinks = {}
    for cmd, key in (("set", f"{t}:set:{{id}}"), ("hset", f"{t}:hash:{{id}}"),
                     ("rpush", f"{t}:list"), ("lpush", f"{t}:llist")):
        name = f"{cmd}_{uid()}"
        extra = {"format": "row"} if cmd in ("set", "rpush") else {}
        redis_sink(db, services, name, command=cmd, key=key, **extra)
        q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, name))
        sinks[cmd] = name
    ttl_sink = f"ttl_{uid()}"
    redis_sink(db, services, ttl_sink, command="set", key=f"{t}:ttl:{{id}}", ttl_ms=60000)
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, ttl_sink))
    q(db, f"INSERT INTO {t} VALUES (1, 'a', 1.5), (2, 'b', NULL), (3, 'c', 3)")
    q(db, f"UPDATE {t} SET name = 'A' WHERE id = 1")
    q(db, f"DELETE FROM {t} WHERE id = 3")
    for s in list(sinks.values()) + [ttl_sink]:
        flush(db, s)
    r = redis_client
    assert json.loads(r.get(f"{t}:set:1")) == {"id": 1, "name": "A", "score": 1.5}
    assert json.loads(r.get(f"{t}:set:2")) == {"id": 2, "name": "b", "score": None}
    assert r.get(f"{t}:set:3") is None                       # delete -> DEL
    assert r.hgetall(f"{t}:hash:1") == {b"id": b"1", b"name": b"A", b"score": b"1.5"}
    assert r.hgetall(f"{t}:hash:2") == {b"id": b"2", b"name": b"b"}   # NULL -> no field
    assert r.exists(f"{t}:hash:3") == 0
    lst = [json.loads(x) for x in r.lrange(f"{t}:list", 0, -1)]
    assert [x["id"] for x in lst] == [1, 2, 3, 1, 3]
    assert r.llen(f"{t}:llist") == 5
    assert 0 < r.pttl(f"{t}:ttl:1") <= 60000
    assert r.get(f"{t}:ttl:3") is None


def test_redis_publish_reaches_a_subscriber(db, services, redis_client):
    t, sink = f"t_pub_{uid()}", f"pub_{uid()}"
    redis_sink(db, services, sink, command="publish", key=f"chan:{t}")
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    p = redis_client.pubsub()
    p.subscribe(f"chan:{t}")
    assert p.get_message(timeout=5)["type"] == "subscribe"
    q(db, f"INSERT INTO {t} SELECT generate_series(1, 50)")
    flush(db, sink)
    got = []
    deadline = time.time() + 10
    while len(got) < 50 and time.time() < deadline:
        m = p.get_message(timeout=1)
        if m and m["type"] == "message":
            got.append(json.loads(m["data"])["key"]["id"])
    p.close()
    assert got == list(range(1, 51))


def test_large_values_and_types_arrive_intact(db, services, redis_client):
    t = f"t_big_{uid()}"
    rs, ks, topic = f"rbig_{uid()}", f"kbig_{uid()}", f"big_{uid()}"
    redis_sink(db, services, rs, command="set", key=f"{t}:{{id}}", format="row")
    kafka_sink(db, services, ks, topic, format="row", **{"message.max.bytes": "4000000"})
    q(db, f"""CREATE TABLE {t} (id int PRIMARY KEY, big text, raw bytea, arr int[], num numeric,
              ts timestamptz, n text, j jsonb, f float8)""")
    for s in (rs, ks):
        q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, s))
    q(db, f"""INSERT INTO {t} VALUES
        (1, repeat('é', 600000), decode(repeat('00ff', 1000), 'hex'), '{{1,NULL,3}}',
         -12345678901234567890.000000000001, '1999-12-31 23:59:59.999999-08', NULL, '{{"a": [1, {{"b": null}}]}}', 'NaN'),
        (2, '', '', '{{}}', 0, 'infinity', 'x', 'true', 1e-300)""")
    flush(db, rs)
    flush(db, ks)
    expected = {json.loads(r[0])["id"]: json.loads(r[0])
                for r in q(db, f"SELECT row_to_json(x)::text FROM {t} x")}
    for i in (1, 2):
        assert json.loads(redis_client.get(f"{t}:{i}")) == expected[i]
    msgs = kafka_read_all(services["KAFKA_BOOTSTRAP"], topic)
    assert {json.loads(m["value"])["id"]: json.loads(m["value"]) for m in msgs} == expected
    assert len(expected[1]["big"]) == 600000


def test_pause_and_resume(db, services, redis_client):
    t, sink = f"t_pause_{uid()}", f"pause_{uid()}"
    redis_sink(db, services, sink, key=f"stream:{t}")
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    pause(db, sink, True)
    q(db, f"INSERT INTO {t} SELECT generate_series(1, 100)")
    assert not q(db, "SELECT batchkit.flush(%s, '1500ms')", (sink,))[0][0]
    assert redis_client.xlen(f"stream:{t}") == 0
    pause(db, sink, False)
    flush(db, sink)
    assert redis_client.xlen(f"stream:{t}") == 100


def test_resume_wakes_the_worker_at_once(db, services, redis_client):
    """resume_sink() must not wait for the worker's next periodic wake-up (naptime)."""
    t, sink = f"t_resume_{uid()}", f"resume_{uid()}"
    redis_sink(db, services, sink, key=f"stream:{t}")
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    q(db, "ALTER SYSTEM SET batchkit.naptime = '30s'")
    q(db, "SELECT pg_reload_conf()")
    try:
        pause(db, sink, True)
        q(db, f"INSERT INTO {t} SELECT generate_series(1, 100)")
        time.sleep(1.5)                     # the worker went to sleep: nothing to send
        assert redis_client.xlen(f"stream:{t}") == 0
        t0 = time.monotonic()
        pause(db, sink, False)
        while redis_client.xlen(f"stream:{t}") < 100 and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        took = time.monotonic() - t0
        assert redis_client.xlen(f"stream:{t}") == 100
        assert took < 2.0, f"resume took {took:.2f} s to take effect"
    finally:
        q(db, "ALTER SYSTEM RESET batchkit.naptime")
        q(db, "SELECT pg_reload_conf()")


def pause(db, sink, paused):
    if q(db, "SELECT to_regprocedure('batchkit.pause_sink(text)') IS NOT NULL")[0][0]:
        q(db, f"SELECT batchkit.{'pause' if paused else 'resume'}_sink(%s)", (sink,))
    else:
        q(db, "UPDATE batchkit.sink SET paused = %s WHERE name = %s", (paused, sink))


def test_alter_sink_rebuilds_the_producer_without_losing_rows(db, services):
    t, sink = f"t_alt_{uid()}", f"alt_{uid()}"
    topic1, topic2 = f"a1_{uid()}", f"a2_{uid()}"
    kafka_sink(db, services, sink, topic1)
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    q(db, f"INSERT INTO {t} SELECT generate_series(1, 100)")
    flush(db, sink)
    pause(db, sink, True)
    q(db, f"INSERT INTO {t} SELECT generate_series(101, 300)")
    set_sink_options(db, sink, {"topic": topic2, "compression.type": "gzip"})
    pause(db, sink, False)
    flush(db, sink)
    ids1 = {json.loads(m["value"])["key"]["id"] for m in kafka_read_all(services["KAFKA_BOOTSTRAP"], topic1)}
    ids2 = {json.loads(m["value"])["key"]["id"] for m in kafka_read_all(services["KAFKA_BOOTSTRAP"], topic2)}
    assert ids1 == set(range(1, 101)) and ids2 == set(range(101, 301))


def test_poison_redis_message_is_dead_lettered_and_replayable(db, services, redis_client):
    t, sink = f"t_poison_{uid()}", f"poison_{uid()}"
    redis_sink(db, services, sink, command="hset", key=f"{t}:{{id}}")
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    redis_client.set(f"{t}:5", "a string, not a hash")          # HSET on it: WRONGTYPE
    q(db, f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 10) g")
    flush(db, sink)
    for i in range(1, 11):
        if i != 5:
            assert redis_client.hget(f"{t}:{i}", "v") == f"v{i}".encode()
    dl = q(db, "SELECT id, key, error, target FROM batchkit.dead_letters WHERE sink = %s", (sink,))
    assert len(dl) == 1 and dl[0][1] == "5" and "WRONGTYPE" in dl[0][2] and dl[0][3] == f"{t}:5"
    # the rest of the sink keeps flowing
    q(db, f"INSERT INTO {t} VALUES (11, 'v11')")
    flush(db, sink)
    assert redis_client.hget(f"{t}:11", "v") == b"v11"
    # fix the cause, replay: it arrives
    redis_client.delete(f"{t}:5")
    assert q(db, "SELECT batchkit.replay_dead_letters(%s)", (sink,))[0][0] == 1
    flush(db, sink)
    assert redis_client.exists(f"{t}:5") == 1
    assert q(db, "SELECT count(*) FROM batchkit.dead_letters WHERE sink = %s", (sink,))[0][0] == 0


def test_oversized_kafka_message_is_dead_lettered_after_max_attempts(db, services):
    t, sink, topic = f"t_huge_{uid()}", f"hk_{uid()}", f"hk_{uid()}"
    kafka_sink(db, services, sink, topic, max_attempts=2, retry_backoff_ms=50,
               **{"message.max.bytes": "100000"})
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    q(db, f"INSERT INTO {t} VALUES (1, 'small'), (2, repeat('x', 300000)), (3, 'small')")
    flush(db, sink)
    dl = q(db, "SELECT key, attempts, error FROM batchkit.dead_letters WHERE sink = %s", (sink,))
    assert len(dl) == 1 and dl[0][0] == "2" and dl[0][1] == 2, dl
    ids = sorted({json.loads(m["value"])["key"]["id"]
                  for m in kafka_read_all(services["KAFKA_BOOTSTRAP"], topic)})
    assert ids == [1, 3]
    assert q(db, "SELECT batchkit.purge_dead_letters(%s)", (sink,))[0][0] == 1


def _check_all_delivered(conn, services, redis_client, t, rsink, ksink, topic, n):
    flush(conn, rsink, "120s")
    flush(conn, ksink, "120s")
    entries = stream_entries(redis_client, f"stream:{t}")
    ids = [json.loads(e["data"])["key"]["id"] for e in entries]
    assert len(ids) == n and sorted(ids) == list(range(1, n + 1)), "Redis: lost or duplicated rows"
    kids = {json.loads(m["value"])["key"]["id"] for m in kafka_read_all(services["KAFKA_BOOTSTRAP"], topic)}
    assert kids == set(range(1, n + 1)), "Kafka: lost rows"


@pytest.mark.parametrize("fault", ["kill_worker", "immediate_shutdown"])
def test_faults_mid_flush_lose_nothing(db, services, redis_client, fault):
    t, rs, ks, topic = f"t_f_{uid()}", f"rf_{uid()}", f"kf_{uid()}", f"kf_{uid()}"
    dbname = db.info.dbname
    # small batches, so the fault lands mid-drain; a volume the in-memory dev broker
    # keeps whole (it trims partitions past 5 MiB)
    redis_sink(db, services, rs, key="stream:{table}", batch_size=200)
    kafka_sink(db, services, ks, topic, batch_size=200)
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    for s in (rs, ks):
        q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, s))
    n = 20000
    for s in (rs, ks):
        pause(db, s, True)
    q(db, f"INSERT INTO {t} SELECT generate_series(1, {n})")
    for s in (rs, ks):
        pause(db, s, False)
    deadline = time.time() + 30
    while redis_client.exists(f"stream:{t}") == 0 or redis_client.xlen(f"stream:{t}") < 1000:
        assert time.time() < deadline, "delivery did not start"
        time.sleep(0.01)
    assert redis_client.xlen(f"stream:{t}") < n, "the fault came too late to be mid-flush"
    db.close()
    if fault == "kill_worker":
        os.kill(flush_worker_pid(services, dbname), signal.SIGKILL)
        time.sleep(1)
    else:
        run = os.path.join(services["BATCHKIT_RUN_DIR"], "pg")
        pg_script("stop", run, "immediate")
        pg_script("start", run)
    wait_for_server(services)
    wait_flush_worker(services, dbname)
    conn = connect(services, dbname)
    try:
        _check_all_delivered(conn, services, redis_client, t, rs, ks, topic, n)
    finally:
        conn.close()


def test_a_rejection_lost_to_a_crash_is_dead_lettered_on_replay(db, services, redis_client):
    """Redis applied a batch in which one command failed (WRONGTYPE), and the worker was
    killed before it recorded that rejection: the replay is skipped by the fence, yet the
    failed message still lands in dead_letters, and nothing is applied twice."""
    dbname = db.info.dbname
    t, sink = f"t_rj_{uid()}", f"rj_{uid()}"
    redis_sink(db, services, sink, key=t + ":{id}")
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    redis_client.set(f"{t}:2", "a plain string")     # row 2's XADD will fail: WRONGTYPE
    pause(db, sink, True)
    q(db, f"INSERT INTO {t} VALUES (1), (2), (3)")
    # Hold Redis for 3 s, so that the claimed batch waits there while this test locks
    # its inflight row; once Redis applied it, the worker's acknowledgement blocks on it.
    redis_lib.Redis(port=int(services["REDIS_PORT"])).client_pause(3000)
    pause(db, sink, False)
    lock = connect(services, dbname, autocommit=False)
    deadline = time.time() + 10
    while not q(lock, "SELECT 1 FROM batchkit.inflight i JOIN batchkit.sink s USING (sink_id) "
                      "WHERE s.name = %s FOR UPDATE OF i", (sink,)):
        lock.rollback()
        assert time.time() < deadline, "the batch was not claimed"
        time.sleep(0.02)
    r2 = redis_lib.Redis(port=int(services["REDIS_PORT"]))
    deadline = time.time() + 15
    while r2.exists(f"{t}:1") == 0:                  # the transaction was applied
        assert time.time() < deadline, "Redis did not apply the batch"
        time.sleep(0.05)
    time.sleep(0.5)                                  # the worker waits for our lock now
    assert q(db, "SELECT count(*) FROM batchkit.dead_letters WHERE sink = %s", (sink,))[0][0] == 0
    db.close()
    os.kill(flush_worker_pid(services, dbname), signal.SIGKILL)
    try:
        lock.close()
    except psycopg2.Error:
        pass
    time.sleep(1)
    wait_for_server(services)
    wait_flush_worker(services, dbname)
    conn = connect(services, dbname)
    try:
        flush(conn, sink, "60s")
        dead = q(conn, "SELECT target, error FROM batchkit.dead_letters WHERE sink = %s", (sink,))
        assert len(dead) == 1 and dead[0][0] == f"{t}:2" and "WRONGTYPE" in dead[0][1], dead
        for k in (1, 3):                             # applied once, not again on the replay
            assert r2.xlen(f"{t}:{k}") == 1
        assert r2.get(f"{t}:2") == b"a plain string"
    finally:
        conn.close()


def test_redis_restart_mid_flush_exactly_once(db, services):
    """A Redis with persistence (appendfsync always) restarted while batches flow."""
    d = tempfile.mkdtemp(prefix="batchkit-redis.")
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    r = redis_lib.Redis(port=port)
    try:
        _wait_redis(r)
        t, sink = f"t_rr_{uid()}", f"rr_{uid()}"
        make_sink(db, sink, "redis", {"url": f"redis://127.0.0.1:{port}/0", "command": "xadd",
                                      "key": "stream:{table}", "batch_size": 500,
                                      "retry_backoff_ms": 50, "retry_backoff_max_ms": 500})
        q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
        q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
        n = 30000
        pause(db, sink, True)
        q(db, f"INSERT INTO {t} SELECT generate_series(1, {n})")
        pause(db, sink, False)
        time.sleep(0.2)
        proc.kill()                        # crash Redis mid-flush
        proc.wait()
        time.sleep(1.0)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        _wait_redis(r)
        flush(db, sink, "120s")
        ids = [json.loads(e["data"])["key"]["id"] for e in stream_entries(r, f"stream:{t}")]
        assert sorted(ids) == list(range(1, n + 1)), f"{len(ids)} entries for {n} rows"
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", d])


def test_kafka_broker_unreachable_for_10s(db, services):
    """The broker is frozen (SIGSTOP) for 10 s while rows are written: nothing is lost,
    nothing is dead-lettered, and delivery resumes by itself."""
    bfile = tempfile.mktemp(prefix="batchkit-kafka.")
    broker = subprocess.Popen([str(ROOT / "tools/kafka-dev-broker/kafka-dev-broker"), "--brokers", "1",
                               "--bootstrap-file", bfile], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while not os.path.exists(bfile) and time.time() < deadline:
            time.sleep(0.05)
        bootstrap = open(bfile).read().strip()
        t, sink, topic = f"t_ko_{uid()}", f"ko_{uid()}", f"ko_{uid()}"
        make_sink(db, sink, "kafka", {"bootstrap.servers": bootstrap, "topic": topic,
                                      "retry_backoff_ms": 100, "retry_backoff_max_ms": 1000})
        q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
        q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
        q(db, f"INSERT INTO {t} SELECT generate_series(1, 1000)")
        flush(db, sink)
        broker.send_signal(signal.SIGSTOP)
        t0 = time.time()
        i = 1000
        while time.time() - t0 < 10:
            q(db, f"INSERT INTO {t} SELECT generate_series({i + 1}, {i + 100})")
            i += 100
            time.sleep(0.1)
        broker.send_signal(signal.SIGCONT)
        flush(db, sink, "120s")
        ids = {json.loads(m["value"])["key"]["id"] for m in kafka_read_all(bootstrap, topic)}
        assert ids == set(range(1, i + 1))
        assert q(db, "SELECT count(*) FROM batchkit.dead_letters WHERE sink = %s", (sink,))[0][0] == 0
    finally:
        broker.send_signal(signal.SIGCONT)
        broker.terminate()
        broker.wait(10)

"""The flush worker's pipeline: two batches of a sink in flight at once.

Redis is held with CLIENT PAUSE WRITE: the worker's WATCH/GET (reads) are
answered but its EXEC (writes) waits, so the worker starts batch N, claims and
starts N+1, and then waits for N's replies with two batches in
batchkit.inflight. That is the state a kill -9 or a late commit must survive.
Read back with redis-py (shares no code with batchkit).
"""
import json
import os
import signal
import time

import psycopg2

from conftest import connect, make_sink, wait_for_server
from helpers import q, stream_entries, uid


def inflight(conn, sink):
    return [r[0] for r in q(conn, "SELECT i.batch_seq FROM batchkit.inflight i "
                                  "JOIN batchkit.sink s USING (sink_id) WHERE s.name = %s "
                                  "ORDER BY 1", (sink,))]


def wait_two_in_flight(conn, sink, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        seqs = inflight(conn, sink)
        if len(seqs) == 2:
            return seqs
        assert len(seqs) < 2, f"more than two batches in flight: {seqs}"
        time.sleep(0.02)
    raise AssertionError(f"the worker never had two batches in flight: {inflight(conn, sink)}")


def worker_pid(services, dbname, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = connect(services, dbname)
            try:
                rows = q(c, "SELECT pid FROM batchkit.workers WHERE kind = 'flush' "
                            "AND database = current_database()")
            finally:
                c.close()
            if rows and rows[0][0]:
                return rows[0][0]
        except psycopg2.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError("no flush worker")


def make_captured_sink(db, services, batch_size):
    t, sink = f"t_pl_{uid()}", f"pl_{uid()}"
    make_sink(db, sink, "redis", {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0",
                                  "command": "xadd", "key": "stream:{table}",
                                  "batch_size": batch_size}, paused=True)
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    return t, sink


def ids_in(redis_client, t):
    entries = stream_entries(redis_client, f"stream:{t}")
    keys = [e["idempotency_key"] for e in entries]
    assert len(set(keys)) == len(keys), "a duplicate in Redis"
    return [json.loads(e["data"])["key"]["id"] for e in entries]


def test_two_batches_in_flight_are_replayed_in_order_after_kill9(db, services, redis_client):
    t, sink = make_captured_sink(db, services, 500)
    n = 3000
    q(db, f"INSERT INTO {t} SELECT generate_series(1, {n})")
    dbname = db.info.dbname
    redis_client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    try:
        q(db, "SELECT batchkit.resume_sink(%s)", (sink,))
        seqs = wait_two_in_flight(db, sink)
        assert seqs[1] == seqs[0] + 1
        pid = worker_pid(services, dbname)
        db.close()
        os.kill(pid, signal.SIGKILL)       # the whole cluster restarts (crash recovery)
        time.sleep(1)
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    wait_for_server(services)
    worker_pid(services, dbname)
    conn = connect(services, dbname)
    try:
        assert q(conn, "SELECT batchkit.flush(%s, '120s')", (sink,))[0][0]
        # every row exactly once, in commit order: batch N before N+1 on replay
        assert ids_in(redis_client, t) == list(range(1, n + 1))
        assert inflight(conn, sink) == []
    finally:
        conn.close()


def test_late_commit_of_a_lower_chunk_is_delivered_while_a_batch_is_in_flight(
        db, services, redis_client):
    t, sink = make_captured_sink(db, services, 500)
    dsn = {k: v for k, v in db.get_dsn_parameters().items() if k in ("host", "port", "user", "dbname")}
    late = psycopg2.connect(**dsn)
    try:
        with late.cursor() as cur:
            cur.execute(f"INSERT INTO {t} VALUES (0)")   # its chunk_id is allocated now
        q(db, f"INSERT INTO {t} SELECT generate_series(1, 1500)")   # higher chunk_ids, committed
        low = q(db, "SELECT min(chunk_id) FROM batchkit.queue q JOIN batchkit.sink s "
                    "USING (sink_id) WHERE s.name = %s", (sink,))[0][0]
        redis_client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            q(db, "SELECT batchkit.resume_sink(%s)", (sink,))
            wait_two_in_flight(db, sink)
            late.commit()                  # the lower chunk_id commits behind two batches
            assert q(db, "SELECT min(chunk_id) FROM batchkit.queue q JOIN batchkit.sink s "
                         "USING (sink_id) WHERE s.name = %s", (sink,))[0][0] < low
        finally:
            redis_client.execute_command("CLIENT", "UNPAUSE")
    finally:
        late.close()
    assert q(db, "SELECT batchkit.flush(%s, '60s')", (sink,))[0][0]
    ids = ids_in(redis_client, t)
    assert sorted(ids) == list(range(0, 1501))
    # the two batches in flight held rows 1..1000: row 0 came with a later claim
    assert ids.index(0) >= 1000
    assert inflight(db, sink) == []

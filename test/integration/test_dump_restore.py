"""pg_dump / pg_restore of a database that uses batchkit (README "Backups and restores").

A dump carries the sinks (with their secrets), pause states, captures (catalog
rows and the triggers on the user tables), dead letters and the rows still
waiting in the queue; after a restore the waiting rows are delivered with the
seq and idempotency keys they had, rows captured later get new ones, and new
captures, sinks and dead letters do not collide with restored ids. Real
pg_dump, pg_restore and psql; deliveries read back with redis-py and
kafka-python.
"""
import json
import subprocess
import threading
import time

import psycopg2
import psycopg2.errors
import pytest

from conftest import connect, make_sink
from helpers import RedisServer, kafka_read_all, q, stream_entries, uid

PGBIN = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                       check=True).stdout.strip()
PASSWORD = "dump-restore-pw"


def tool(services, name, *args, **kw):
    env = {"PGHOST": services["PGHOST"], "PGPORT": services["PGPORT"],
           "PGUSER": services["PGUSER"], "PATH": "/usr/bin:/bin"}
    return subprocess.run([f"{PGBIN}/{name}", *args], env=env, capture_output=True, check=True,
                          timeout=120, **kw)


@pytest.fixture
def new_database(services):
    """Databases of the test's own, dropped after it: empty (a restore's target), or with
    batchkit installed (extension=True)."""
    made = []

    def make(extension=False):
        name = f"bk_dump_{uid()}"
        tool(services, "createdb", name)
        made.append(name)
        if extension:
            c = connect(services, name)
            q(c, "CREATE EXTENSION batchkit")
            c.close()
        return name
    yield make
    admin = connect(services)
    for name in made:
        q(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def flush(conn, sink, timeout="60s"):
    assert q(conn, "SELECT batchkit.flush(%s, %s)", (sink, timeout))[0][0], f"{sink} did not drain"


def waiting_messages(conn, sink):
    """What the sink would receive next: claimed and rolled back, so nothing changes."""
    conn.autocommit = False
    try:
        return q(conn, "SELECT seq, source, key, message FROM batchkit.claim_batch(%s, 100000, "
                       "1073741824)", (sink,))
    finally:
        conn.rollback()
        conn.autocommit = True


def restored_rows(conn):
    try:
        return q(conn, "SELECT count(*) FROM batchkit.queue")[0][0]
    except psycopg2.errors.UndefinedTable:     # CREATE EXTENSION has not run yet
        return 0


STATE = {
    "sinks": "SELECT sink_id, name, kind, options, paused, created_at, updated_at "
             "FROM batchkit.sinks ORDER BY sink_id",
    "secrets": "SELECT sink_id, options FROM batchkit.sink_secret ORDER BY sink_id",
    "captures": "SELECT capture_id, source::text, sink, events, key_columns, columns, "
                "include_before, created_at FROM batchkit.captures ORDER BY capture_id",
    "capture_columns": "SELECT capture_id, key_attnums::text, column_attnums::text "
                       "FROM batchkit.capture ORDER BY capture_id",
    "dead_letters": "SELECT id, sink, seq, op, source, target, key, message, error, attempts, "
                    "failed_at FROM batchkit.dead_letters ORDER BY id",
    "triggers": "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE t.tgname LIKE 'batchkit_capture_%' ORDER BY 1, 2",
    "queue": "SELECT chunk_id, sink_id, nrecords, done_records, txid::text, captured_at, "
             "payload::text FROM batchkit.queue ORDER BY chunk_id",
    "depths": "SELECT name, batchkit.queue_depth(name) FROM batchkit.sinks ORDER BY name",
}


def state(conn):
    return {k: q(conn, sql) for k, sql in STATE.items()}


def test_a_restore_carries_everything_and_delivers_the_waiting_rows(services, new_database,
                                                                    kafka_bootstrap):
    """-Fc dump, pg_restore into a new database: the state is equal, the rows waiting at dump
    time reach Redis and Kafka after resume_sink with their old seq / idempotency keys (the
    rolled-back ones never), and what is made after the restore gets ids of its own."""
    topic = f"dr_k_{uid()}"
    # persistent: it is restarted below, and must come back with the old database's fence
    redis = RedisServer()
    db = connect(services, new_database(extension=True))

    def start_redis():
        redis.start().client().config_set("requirepass", PASSWORD)
        return redis.client(password=PASSWORD)
    try:
        r = start_redis()
        url = f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"   # the password is a secret
        # dr_r: paused, rows wait in it; dr_h: delivering, with a dead letter; dr_k: Kafka, paused
        make_sink(db, "dr_r", "redis", {"url": url, "command": "xadd", "key": "drs:{table}"},
                  paused=True)
        make_sink(db, "dr_h", "redis", {"url": url, "command": "hset", "key": "drh:{id}",
                                        "retry_backoff_max_ms": 500})
        make_sink(db, "dr_k", "kafka", {"bootstrap.servers": kafka_bootstrap, "topic": topic},
                  paused=True)
        q(db, "CREATE TYPE dr_status AS ENUM ('new', 'paid', 'shipped')")
        q(db, "CREATE TABLE dr_orders (id int PRIMARY KEY, junk int, status dr_status, "
              "tags dr_status[], total numeric(10,2), note text)")
        q(db, "ALTER TABLE dr_orders DROP COLUMN junk")       # a restore renumbers the rest
        q(db, "CREATE TABLE dr_accounts (junk int, id int, email text PRIMARY KEY, "
              "status dr_status)")
        q(db, "ALTER TABLE dr_accounts DROP COLUMN junk")
        q(db, "CREATE TABLE dr_hs (id int PRIMARY KEY, v text)")
        q(db, "CREATE TABLE dr_kt (id int PRIMARY KEY, v text)")
        q(db, "SELECT batchkit.capture('dr_orders', 'dr_r', options => "
              "'{\"include_before\": true}')")
        q(db, "SELECT batchkit.capture('dr_accounts', 'dr_r', ARRAY['insert', 'update'], "
              "'{\"key_columns\": [\"email\"], \"columns\": [\"email\", \"status\"]}')")
        q(db, "SELECT batchkit.capture('dr_hs', 'dr_h')")
        q(db, "SELECT batchkit.capture('dr_kt', 'dr_k')")

        # a dead letter: HSET on a string is WRONGTYPE
        r.set("drh:2", "a string, not a hash")
        q(db, "INSERT INTO dr_hs VALUES (1, 'a'), (2, 'b')")
        flush(db, "dr_h")
        assert r.hget("drh:1", "v") == b"a"
        assert q(db, "SELECT key FROM batchkit.dead_letters")[0][0] == "2"

        # rows waiting at dump time, and some that must never arrive
        q(db, "INSERT INTO dr_orders VALUES (1, 'new', '{new}', 10.5, 'x'), "
              "(2, 'paid', '{new,paid}', 20, NULL), (3, 'new', NULL, NULL, 'gone')")
        # a chunk the sink acknowledged in part: the dump keeps done_records
        batch = q(db, "SELECT batch_seq, seq FROM batchkit.claim_batch('dr_r', 1)")
        assert q(db, "SELECT batchkit.ack_batch('dr_r', %s)", (batch[0][0],))[0][0] == 1
        q(db, "UPDATE dr_orders SET status = 'shipped', tags = tags || 'shipped'::dr_status "
              "WHERE id = 2")
        q(db, "DELETE FROM dr_orders WHERE id = 3")
        q(db, "BEGIN; INSERT INTO dr_orders VALUES (99, 'new', NULL, NULL, 'rolled back'); "
              "ROLLBACK")
        q(db, "BEGIN; INSERT INTO dr_orders VALUES (4, 'new', NULL, 1, 'kept'); SAVEPOINT s; "
              "INSERT INTO dr_orders VALUES (98, 'new', NULL, NULL, 'rolled back'); "
              "ROLLBACK TO s; COMMIT")
        q(db, "INSERT INTO dr_accounts VALUES (7, 'a@example.com', 'new')")
        q(db, "SELECT batchkit.enqueue('dr_r', '{\"hello\": \"outbox\"}', 'k1', '{\"h\": \"v\"}')")
        q(db, "INSERT INTO dr_kt SELECT g, 'k' || g FROM generate_series(1, 3) g")
        expected_r = waiting_messages(db, "dr_r")
        expected_k = waiting_messages(db, "dr_k")
        assert len(expected_r) == 7 and len(expected_k) == 3
        assert batch[0][1] < expected_r[0][0]            # acknowledged: not sent again
        assert q(db, "SELECT max(done_records) FROM batchkit.queue")[0][0] == 1
        before = state(db)
        old_max_seq = max(m[0] for m in expected_r + expected_k)

        dump = f"{services['BATCHKIT_RUN_DIR']}/dr_{uid()}.dump"
        tool(services, "pg_dump", "-Fc", "-d", db.info.dbname, "-f", dump)
        # the old database stops delivering (a migration); Redis is down while the new one starts
        q(db, "SELECT batchkit.pause_sink(name) FROM batchkit.sinks WHERE NOT paused")
        redis.kill9()
        target = new_database()
        tool(services, "pg_restore", "-d", target, dump)
        new = connect(services, target)
        try:
            after = state(new)
            for k in STATE:
                assert after[k] == before[k], k
            assert after["queue"] and after["dead_letters"]
            # secrets stay superuser-only
            assert not q(new, "SELECT has_table_privilege('batchkit_admin', 'batchkit.sink_secret', "
                              "'SELECT')")[0][0]
            assert PASSWORD in json.dumps(after["secrets"], default=str)
            assert PASSWORD not in json.dumps(after["sinks"], default=str)

            # ids made after the restore do not collide with restored ones
            cap_max = max(c[0] for c in after["captures"])
            q(new, "CREATE TABLE dr_fresh (id int PRIMARY KEY)")
            assert q(new, "SELECT batchkit.capture('dr_fresh', 'dr_r')")[0][0] == cap_max + 1
            sink_max = max(s[0] for s in after["sinks"])
            make_sink(new, "dr_new", "redis", {"url": url, "command": "xadd", "key": "drn"},
                      paused=True)
            assert q(new, "SELECT sink_id FROM batchkit.sinks WHERE name = 'dr_new'")[0][0] > sink_max
            dl = q(new, "INSERT INTO batchkit.dead_letter (sink_id, op, message, error) "
                        "SELECT sink_id, 'insert', '{}', 'made by the test' FROM batchkit.sink "
                        "WHERE name = 'dr_new' RETURNING dead_letter_id")[0][0]
            assert dl > max(d[0] for d in after["dead_letters"])
            q(new, "DELETE FROM batchkit.dead_letter WHERE dead_letter_id = %s", (dl,))

            # the restored triggers capture the right columns (the dump renumbered them)
            q(new, "INSERT INTO dr_accounts VALUES (8, 'b@example.com', 'paid')")
            q(new, "INSERT INTO dr_orders VALUES (5, 'paid', NULL, 5, 'after the restore')")
            q(new, "INSERT INTO dr_hs VALUES (3, 'c')")

            # Redis comes back: dr_h numbers its batches above the fence the old database left
            r = start_redis()
            flush(new, "dr_h")
            assert r.hget("drh:3", "v") == b"c"
            # the dead letter replays in the restored database
            r.delete("drh:2")
            assert q(new, "SELECT batchkit.replay_dead_letters('dr_h')")[0][0] == 1
            flush(new, "dr_h")
            assert r.hget("drh:2", "v") == b"b"

            # the waiting rows arrive, as they would have from the old database
            q(new, "SELECT batchkit.resume_sink('dr_r'), batchkit.resume_sink('dr_k')")
            flush(new, "dr_r")
            flush(new, "dr_k")
            got = {}
            for key in ("drs:dr_orders", "drs:dr_accounts", "dr_r"):
                got[key] = [(e["idempotency_key"], e["data"]) for e in stream_entries(r, key)]
            want = {"drs:dr_orders": [], "drs:dr_accounts": [], "dr_r": []}
            for seq, source, _key, message in expected_r:
                stream = f"drs:{source.split('.')[1]}" if source else "dr_r"
                want[stream].append((f"dr_r:{seq}", message))
            for stream, msgs in want.items():
                assert got[stream][:len(msgs)] == msgs, stream
            delivered = [json.loads(m) for s in got.values() for _k, m in s if s]
            ids = {m["key"].get("id") for m in delivered if "key" in m and "op" in m}
            assert 98 not in ids and 99 not in ids
            # rows captured after the restore: new seqs, and their own columns
            late = got["drs:dr_orders"][len(want["drs:dr_orders"]):] + \
                got["drs:dr_accounts"][len(want["drs:dr_accounts"]):]
            assert len(late) == 2
            for idem, message in late:
                assert int(idem.split(":")[1]) > old_max_seq
            acc = json.loads(late[1][1])
            assert acc["key"] == {"email": "b@example.com"}
            assert acc["after"] == {"email": "b@example.com", "status": "paid"}

            kafka = kafka_read_all(kafka_bootstrap, topic)     # keyed: spread over partitions
            assert sorted((m["headers"]["idempotency_key"], m["value"]) for m in kafka) == \
                sorted((f"dr_k:{seq}", message) for seq, _s, _k, message in expected_k)
            assert q(new, "SELECT count(*) FROM batchkit.queue")[0][0] == 0
            # the sql_drop guard knows the restored numbers too: email is now column 2
            with pytest.raises(psycopg2.errors.DependentObjectsStillExist) as e:
                q(new, "ALTER TABLE dr_accounts DROP COLUMN email")
            assert "a key column of its capture" in str(e.value)
            q(new, "ALTER TABLE dr_accounts DROP COLUMN id")    # not captured: it may go
        finally:
            new.close()
    finally:
        db.close()
        redis.stop()


def test_a_plain_restore_through_psql_delivers_nothing_before_it_ends(services, new_database):
    """pg_dump | psql into a new database whose sink is running: the queue's segments arrive
    one by one, the newest first, and nothing is delivered while the restoring session is
    connected (a pause_sink in that session keeps it so: README's way to restore without
    delivering); the depth counter is right afterwards; after resume_sink, every row arrives,
    in commit order, and maintain_queue truncates the restored segments."""
    redis = RedisServer(persistent=False)          # not started: the old database cannot deliver
    db = connect(services, new_database(extension=True))
    new = None
    try:
        make_sink(db, "dr_o", "redis", {"url": redis.url, "command": "xadd", "key": "dro:{table}",
                                        "retry_backoff_max_ms": 200}, paused=True)
        make_sink(db, "dr_tmp", "redis", {"url": redis.url, "command": "xadd", "key": "x"},
                  paused=True)
        q(db, "CREATE TABLE dr_ord (id int PRIMARY KEY, v text)")
        q(db, "SELECT batchkit.capture('dr_ord', 'dr_o')")
        # writers move to segment 1; then v1 -> segment 1, v2 -> 2, v3 -> 0
        q(db, "SELECT batchkit.enqueue('dr_tmp', '{}')")
        q(db, "SELECT * FROM batchkit.maintain_queue('0 s')")
        rows = q(db, "SELECT batch_seq FROM batchkit.claim_batch('dr_tmp')")
        q(db, "SELECT batchkit.ack_batch('dr_tmp', %s)", (rows[0][0],))
        q(db, "SELECT * FROM batchkit.maintain_queue('0 s')")
        q(db, "INSERT INTO dr_ord VALUES (1, 'v1')")
        q(db, "SELECT * FROM batchkit.maintain_queue('0 s')")
        q(db, "UPDATE dr_ord SET v = 'v2'")
        q(db, "SELECT * FROM batchkit.maintain_queue('0 s')")
        q(db, "UPDATE dr_ord SET v = 'v3'")
        assert [s for (s,) in q(db, "SELECT segment FROM batchkit.queue q JOIN batchkit.sink s "
                                    "USING (sink_id) WHERE s.name = 'dr_o' ORDER BY chunk_id")] \
            == [1, 2, 0]
        expected = waiting_messages(db, "dr_o")
        assert [json.loads(m)["after"]["v"] for _s, _src, _k, m in expected] == ["v1", "v2", "v3"]
        q(db, "SELECT batchkit.resume_sink('dr_o')")  # dumped running (its Redis is down)

        sql = tool(services, "pg_dump", "-Fp", "-d", db.info.dbname).stdout
        q(db, "SELECT batchkit.pause_sink('dr_o')")   # the old database stops delivering
        redis.start()
        r = redis.client()
        target = new_database()
        cut = sql.index(b"COPY batchkit.queue_1 ")
        psql = subprocess.Popen([f"{PGBIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                 "-h", services["PGHOST"], "-p", services["PGPORT"],
                                 "-U", services["PGUSER"], "-d", target],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        err = []
        reader = threading.Thread(target=lambda: err.append(psql.stderr.read()), daemon=True)
        reader.start()
        try:
            psql.stdin.write(sql[:cut])                # everything up to segment 0's rows (v3)
            psql.stdin.flush()
            new = connect(services, target)
            deadline = time.time() + 30
            while not restored_rows(new):
                assert time.time() < deadline, "segment 0 was not restored"
                time.sleep(0.05)
            assert q(new, "SELECT batchkit.queue_depth('dr_o')")[0][0] == 1   # so far
            time.sleep(2.5)                            # the new database's worker is running
            psql.stdin.write(sql[cut:] + b"SELECT batchkit.pause_sink('dr_o');\n")
            psql.stdin.flush()
            while not q(new, "SELECT paused FROM batchkit.sinks WHERE name = 'dr_o'")[0][0]:
                assert time.time() < deadline, "the restore did not finish"
                time.sleep(0.05)
            assert r.xlen("dro:dr_ord") == 0, "delivered while the restore was running"
            assert q(new, "SELECT state FROM batchkit.workers WHERE kind = 'flush' "
                          "AND database = current_database()") == [("waiting for a restore",)]
            psql.stdin.close()
            assert psql.wait(timeout=60) == 0
        finally:
            if psql.poll() is None:
                psql.kill()
                psql.wait()
            reader.join(timeout=10)
        assert b"ERROR" not in b"".join(err), err
        # the session is gone: the counter is rebuilt, and the paused sink still waits
        deadline = time.time() + 10
        while q(new, "SELECT state FROM batchkit.workers WHERE kind = 'flush' "
                     "AND database = current_database()") == [("waiting for a restore",)]:
            assert time.time() < deadline, "the worker still waits for the restore"
            time.sleep(0.05)
        assert q(new, "SELECT batchkit.queue_depth('dr_o')")[0][0] == 3
        time.sleep(1)
        assert r.xlen("dro:dr_ord") == 0
        q(new, "SELECT batchkit.resume_sink('dr_o')")
        flush(new, "dr_o")
        entries = stream_entries(r, "dro:dr_ord")
        assert [(e["idempotency_key"], e["data"]) for e in entries] == \
            [(f"dr_o:{seq}", m) for seq, _src, _k, m in expected]
        assert q(new, "SELECT batchkit.queue_depth('dr_o')")[0][0] == 0
        # maintain_queue copes with segments it did not fill: all three are truncated again
        deadline = time.time() + 20
        while q(new, "SELECT sum(batchkit._segment_heap_bytes(s)) FROM generate_series(0, 2) s"
                )[0][0] != 0:
            assert time.time() < deadline, "the restored segments were not truncated"
            time.sleep(0.2)
    finally:
        if new is not None:
            new.close()
        db.close()
        redis.stop()

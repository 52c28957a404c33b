"""Capture into the durable queue, and the consumption API (claim_batch/ack_batch).

Every test reads the queue back through the same API the flush worker uses and
checks what a sink would receive. The sinks are paused, so the flush worker
leaves their queues to the test.
"""
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time

import psycopg2
import pytest

from conftest import (connect, drain, free_port, make_sink, pg_script, set_sink_options,
                      wait_for_server)
from helpers import HeldBackend, flush_worker_pid, q


def new_table(db, name, extra=""):
    q(db, f"DROP TABLE IF EXISTS {name} CASCADE")
    q(db, f"CREATE TABLE {name} (id bigint PRIMARY KEY, name text, email text, "
          f"created_at timestamptz DEFAULT now() {extra})")


def messages(rows):
    return [json.loads(r[5]) for r in rows]


def test_insert_update_delete_envelopes(db):
    make_sink(db, "env", paused=True)
    new_table(db, "t_env")
    q(db, "SELECT batchkit.capture('t_env', 'env', options => '{\"include_before\": true}')")
    q(db, "INSERT INTO t_env (id, name, email) SELECT g, 'n' || g, 'e' || g FROM generate_series(1, 3) g")
    q(db, "UPDATE t_env SET name = 'renamed' WHERE id = 1")
    q(db, "UPDATE t_env SET id = 30 WHERE id = 3")   # key change: delete old key, insert new
    q(db, "DELETE FROM t_env WHERE id = 2")
    rows = drain(db, "env")
    got = [(m["op"], m["key"]["id"]) for m in messages(rows)]
    assert got == [("insert", 1), ("insert", 2), ("insert", 3), ("update", 1),
                   ("delete", 3), ("insert", 30), ("delete", 2)]
    ms = messages(rows)
    assert ms[3]["before"]["name"] == "n1" and ms[3]["after"]["name"] == "renamed"
    assert ms[6]["after"] is None and ms[6]["before"]["name"] == "n2"
    assert all(m["table"] == "public.t_env" for m in ms)
    assert [r[4] for r in rows] == ["1", "2", "3", "1", "3", "30", "2"]  # message keys
    seqs = [m["seq"] for m in ms]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [r[1] for r in rows] == seqs
    assert q(db, "SELECT count(*) FROM batchkit.queue")[0][0] == 0


def test_row_format_and_columns_subset(db):
    make_sink(db, "rowfmt", paused=True)
    new_table(db, "t_cols")
    q(db, "SELECT batchkit.capture('t_cols', 'rowfmt', ARRAY['insert','delete'], "
          "'{\"columns\": [\"id\", \"email\"]}')")
    q(db, "INSERT INTO t_cols (id, name, email) VALUES (7, 'secret name', 'a@b')")
    q(db, "UPDATE t_cols SET name = 'not captured'")   # update is not an event here
    q(db, "DELETE FROM t_cols")
    rows = drain(db, "rowfmt", fmt="row")
    assert [json.loads(r[5]) for r in rows] == [{"id": 7, "email": "a@b"}, {"id": 7}]
    assert [r[2] for r in rows] == ["insert", "delete"]


def test_rollback_and_savepoints_never_enqueue(db):
    make_sink(db, "rb", paused=True)
    new_table(db, "t_rb")
    q(db, "SELECT batchkit.capture('t_rb', 'rb')")
    conn = connect_tx(db)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t_rb (id) VALUES (1)")
        conn.rollback()
        cur.execute("INSERT INTO t_rb (id) VALUES (2)")
        cur.execute("SAVEPOINT a")
        cur.execute("INSERT INTO t_rb (id) VALUES (3)")
        cur.execute("SAVEPOINT b")
        cur.execute("INSERT INTO t_rb (id) VALUES (4)")
        cur.execute("RELEASE SAVEPOINT b")
        cur.execute("ROLLBACK TO SAVEPOINT a")     # drops 3 and 4
        cur.execute("INSERT INTO t_rb (id) VALUES (5)")
        cur.execute("SAVEPOINT c")
        cur.execute("UPDATE t_rb SET name = 'x' WHERE id = 5")
        cur.execute("RELEASE SAVEPOINT c")
        conn.commit()
        cur.execute("INSERT INTO t_rb (id) VALUES (6)")
        conn.rollback()
    conn.close()
    got = [(m["op"], m["key"]["id"]) for m in messages(drain(db, "rb"))]
    assert got == [("insert", 2), ("insert", 5), ("update", 5)]
    assert q(db, "SELECT batchkit.queue_depth('rb')")[0][0] == 0


def connect_tx(db):
    dsn = db.get_dsn_parameters()
    conn = psycopg2.connect(host=dsn["host"], port=dsn["port"], user=dsn["user"],
                            dbname=dsn["dbname"])
    conn.autocommit = False
    return conn


def test_schema_changes_while_rows_wait_do_not_misdecode(db):
    make_sink(db, "ddl", paused=True)
    q(db, "DROP TABLE IF EXISTS t_ddl")
    q(db, "CREATE TABLE t_ddl (id int PRIMARY KEY, a text, b numeric, c int)")
    q(db, "SELECT batchkit.capture('t_ddl', 'ddl')")
    q(db, "INSERT INTO t_ddl VALUES (1, 'one', 1.5, 10)")
    q(db, "ALTER TABLE t_ddl DROP COLUMN a")
    q(db, "INSERT INTO t_ddl VALUES (2, 2.5, 20)")
    q(db, "ALTER TABLE t_ddl ALTER COLUMN b TYPE text USING b::text || ' units'")
    q(db, "INSERT INTO t_ddl VALUES (3, 'three', 30)")
    q(db, "ALTER TABLE t_ddl ADD COLUMN d jsonb DEFAULT '{\"x\": 1}'")
    q(db, "INSERT INTO t_ddl (id, b, c) VALUES (4, 'four', 40)")
    q(db, "ALTER TABLE t_ddl ALTER COLUMN c TYPE bigint")
    q(db, "INSERT INTO t_ddl (id, b, c, d) VALUES (5, 'five', 50, '[1,2]')")
    afters = [m["after"] for m in messages(drain(db, "ddl"))]
    assert afters == [
        {"id": 1, "a": "one", "b": 1.5, "c": 10},
        {"id": 2, "b": 2.5, "c": 20},
        {"id": 3, "b": "three", "c": 30},
        {"id": 4, "b": "four", "c": 40, "d": {"x": 1}},
        {"id": 5, "b": "five", "c": 50, "d": [1, 2]},
    ]


def test_every_type_arrives_in_postgres_json_rendering(db):
    make_sink(db, "types", paused=True)
    q(db, "DROP TABLE IF EXISTS t_types")
    q(db, """CREATE TABLE t_types (id int PRIMARY KEY, big text, raw bytea, arr int[],
             txt text[], num numeric, ts timestamptz, d date, j jsonb, b boolean, f float8,
             iv interval, u uuid, nothing text)""")
    q(db, "SELECT batchkit.capture('t_types', 'types')")
    q(db, """INSERT INTO t_types VALUES
             (1, repeat('x', 1024 * 1024), '\\x00ff10'::bytea, '{1,2,NULL}', '{"a b","c\\"d"}',
              123456789012345678901234567890.123456789, '2024-02-29 12:34:56.789+05:30', '2024-01-01',
              '{"k": [1, "v", null]}', true, 1.5e300, '1 day 02:03:04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
              NULL),
             (2, 'ünïcødé ✓ "quoted" \\ back', '', '{}', '{}', 'NaN', 'infinity', NULL, 'null', NULL, 'NaN',
              NULL, NULL, E'ctl\\t\\n\\x01\\x1f end \\\\ "q"')""")
    # the big value is TOASTed out of line: delete the row so its TOAST is gone before decoding
    expected = {json.loads(r[0])["id"]: json.loads(r[0])
                for r in q(db, "SELECT row_to_json(t)::text FROM t_types t")}
    q(db, "DELETE FROM t_types")
    q(db, "VACUUM t_types")
    ms = [m for m in messages(drain(db, "types")) if m["op"] == "insert"]
    assert len(ms) == 2
    for m in ms:
        assert m["after"] == expected[m["after"]["id"]]
    assert len(ms[0]["after"]["big"]) == 1024 * 1024


def test_backpressure_error_and_wait(db):
    make_sink(db, "bp", paused=True)
    new_table(db, "t_bp")
    q(db, "SELECT batchkit.capture('t_bp', 'bp')")
    set_sink_options(db, "bp", {"max_queue": 100, "on_full": "error"})
    q(db, "INSERT INTO t_bp (id) SELECT g FROM generate_series(1, 80) g")
    with pytest.raises(psycopg2.Error) as err:
        q(db, "INSERT INTO t_bp (id) SELECT g FROM generate_series(81, 101) g")
    msg = str(err.value)
    assert 'batchkit sink "bp" is full' in msg and "80 rows queued" in msg and "max_queue 100" in msg
    assert err.value.pgcode == "53400"
    assert q(db, "SELECT count(*) FROM t_bp")[0][0] == 80   # the statement changed nothing

    # wait: a writer blocks until the consumer makes room
    set_sink_options(db, "bp", {"on_full": "wait", "on_full_timeout_ms": 20000})
    result = {}

    def writer():
        c = connect_tx(db)
        c.autocommit = True
        t0 = time.time()
        try:
            q(c, "INSERT INTO t_bp (id) SELECT g FROM generate_series(81, 150) g")
            result["ok"] = time.time() - t0
        except Exception as e:  # noqa: BLE001
            result["err"] = e
        c.close()

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(1.0)
    assert th.is_alive(), "the writer should be waiting for room"
    drained = drain(db, "bp")
    assert len(drained) == 80
    th.join(30)
    assert "ok" in result, result
    assert result["ok"] >= 0.9
    assert len(drain(db, "bp")) == 70

    # wait with nobody consuming: fails after the timeout, naming the wait
    set_sink_options(db, "bp", {"on_full_timeout_ms": 300, "max_queue": 10})
    q(db, "INSERT INTO t_bp (id) SELECT g FROM generate_series(200, 209) g")
    t0 = time.time()
    with pytest.raises(psycopg2.Error) as err:
        q(db, "INSERT INTO t_bp (id) VALUES (300)")
    assert time.time() - t0 >= 0.25
    assert "Waited 300 ms" in str(err.value)
    # a single transaction larger than max_queue fails at once, even with 'wait'
    drain(db, "bp")
    t0 = time.time()
    with pytest.raises(psycopg2.Error):
        q(db, "INSERT INTO t_bp (id) SELECT g FROM generate_series(1000, 1011) g")
    assert time.time() - t0 < 0.25
    set_sink_options(db, "bp", {"max_queue": 0})


def test_concurrent_writers_keep_per_key_order_and_nothing_is_skipped(db, services):
    make_sink(db, "conc", paused=True)
    q(db, "DROP TABLE IF EXISTS t_conc")
    q(db, "CREATE TABLE t_conc (k int PRIMARY KEY, v int NOT NULL)")
    q(db, "INSERT INTO t_conc SELECT g, 0 FROM generate_series(1, 20) g")
    q(db, "SELECT batchkit.capture('t_conc', 'conc', ARRAY['update'])")
    seed = int(os.environ.get("BATCHKIT_SEED", "20261127"))
    print("seed", seed)
    nthreads, nupdates = 6, 150
    errors = []

    def writer(i):
        rnd = random.Random(seed + i)
        c = connect_tx(db)
        try:
            with c.cursor() as cur:
                for _ in range(nupdates):
                    keys = rnd.sample(range(1, 21), 2)
                    for k in sorted(keys):   # sorted: no deadlocks between writers
                        cur.execute("UPDATE t_conc SET v = v + 1 WHERE k = %s", (k,))
                    if rnd.random() < 0.1:
                        c.rollback()
                    else:
                        c.commit()
                    time.sleep(rnd.random() * 0.002)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    got = []
    # consume while the writers write, in small batches
    while any(t.is_alive() for t in threads):
        got.extend(drain(db, "conc", max_rows=37))
    for t in threads:
        t.join()
    got.extend(drain(db, "conc", max_rows=37))
    assert not errors, errors
    per_key = {}
    for m in messages(got):
        per_key.setdefault(m["key"]["k"], []).append(m["after"]["v"])
    final = dict(q(db, "SELECT k, v FROM t_conc"))
    for k, vs in per_key.items():
        # every committed version exactly once, in commit order
        assert vs == list(range(1, final[k] + 1)), (k, vs[:20])
    assert sum(final.values()) == len(got)


def test_committed_rows_survive_immediate_shutdown(db, services):
    make_sink(db, "crash", paused=True)
    new_table(db, "t_crash")
    q(db, "SELECT batchkit.capture('t_crash', 'crash')")
    q(db, "INSERT INTO t_crash (id) SELECT g FROM generate_series(1, 5000) g")
    # claim a batch (it is now in flight), then crash before acknowledging it
    first = q(db, "SELECT batch_seq, seq FROM batchkit.claim_batch('crash', 1500)")
    assert len(first) == 1500
    dbname = db.info.dbname
    db.close()
    pg_script("stop", os.path.join(services["BATCHKIT_RUN_DIR"], "pg"), "immediate")
    pg_script("start", os.path.join(services["BATCHKIT_RUN_DIR"], "pg"))
    wait_for_server(services)
    conn = connect(services, dbname)
    try:
        # the in-flight batch is replayed first, unchanged
        again = q(conn, "SELECT batch_seq, seq FROM batchkit.claim_batch('crash', 1500)")
        assert again == first
        q(conn, "SELECT batchkit.ack_batch('crash', %s)", (first[0][0],))
        assert q(conn, "SELECT batchkit.queue_depth('crash')")[0][0] == 3500
        rest = drain(conn, "crash")
        ids = [json.loads(r[5])["key"]["id"] for r in rest]
        assert ids == list(range(1501, 5001))
    finally:
        conn.close()


def test_depth_rebuilt_while_a_writer_commits_counts_its_rows_once(db, services):
    """A sink's depth counter is rebuilt from the queue the first time it is needed
    (after a restart, or for a new sink). A writer adds its rows to the counter in
    its commit callback, which runs after its rows became visible: a rebuild in
    between sees the rows in the queue AND gets the writer's delta. gdb holds a
    writer exactly there, between visibility and its callback."""
    n = 600
    worker = flush_worker_pid(services, db.info.dbname)
    assert worker, "the database has a flush worker"
    # the worker would rebuild the new sink's counter at once, before the race
    os.kill(worker, signal.SIGSTOP)
    try:
        make_sink(db, "race", paused=True)
        new_table(db, "t_race")
        q(db, "SELECT batchkit.capture('t_race', 'race')")
        writer = connect_tx(db)
        with writer.cursor() as cur:
            cur.execute("INSERT INTO t_race (id) SELECT g FROM generate_series(1, %s) g", (n,))
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        with HeldBackend(pid, "xact_callback if event == XACT_EVENT_COMMIT") as held:
            committed = threading.Thread(target=writer.commit)
            committed.start()
            held.wait_hit()   # the writer's rows are visible, its callback has not run
            table_sum = ("SELECT sum(nrecords - done_records) FROM batchkit.queue q "
                         "JOIN batchkit.sink s USING (sink_id) WHERE s.name = 'race'")
            assert q(db, table_sum)[0][0] == n
            assert q(db, "SELECT batchkit.queue_depth('race')")[0][0] == n
            out = held.release()
            assert "Breakpoint 1, xact_callback" in out, out
        committed.join(30)
        assert not committed.is_alive()
        writer.close()
    finally:
        os.kill(worker, signal.SIGCONT)

    # counted once: before the fix the counter said 2n here
    assert q(db, "SELECT batchkit.queue_depth('race')")[0][0] == n
    assert q(db, "SELECT rows_queued FROM batchkit.sink_stats WHERE sink = 'race'")[0][0] == n
    # and backpressure judges by the true depth: n/4 more fit under a max_queue of 1.5n
    set_sink_options(db, "race", {"max_queue": n * 3 // 2, "on_full": "error"})
    q(db, "INSERT INTO t_race (id) SELECT g FROM generate_series(%s, %s) g", (n + 1, n + n // 4))
    assert q(db, "SELECT batchkit.queue_depth('race')")[0][0] == n + n // 4
    assert len(drain(db, "race", max_rows=n)) == n + n // 4
    assert q(db, "SELECT batchkit.queue_depth('race')")[0][0] == 0


def test_a_catalog_change_during_a_writers_first_chunk_does_not_fail_it(db):
    """A backend's first chunk looks up the queue segment's columns; a catalog change
    (a sink created or altered, a segment rotated) that arrives during those lookups
    resets the backend's cached queue relations. gdb holds the writer at its first
    column lookup while another session changes the catalog; the writer's INSERT
    used to fail with 'batchkit.queue_N has no column ...'."""
    make_sink(db, "inval", paused=True)
    new_table(db, "t_inval")
    q(db, "SELECT batchkit.capture('t_inval', 'inval')")
    writer = connect_tx(db)
    writer.autocommit = True
    pid = q(writer, "SELECT pg_backend_pid()")[0][0]
    result = {}

    def insert():
        try:
            q(writer, "INSERT INTO t_inval (id) VALUES (1), (2)")
            result["ok"] = True
        except psycopg2.Error as e:
            result["err"] = e

    with HeldBackend(pid, 'get_attnum if $_caller_is("open_segment")') as held:
        th = threading.Thread(target=insert)
        th.start()
        held.wait_hit()
        q(db, "SELECT batchkit._catalog_changed()")   # what create/alter/rotate send
        held.release()
    th.join(30)
    writer.close()
    assert result.get("ok"), result.get("err")
    assert [json.loads(r[5])["key"]["id"] for r in drain(db, "inval")] == [1, 2]


def test_bad_arguments_give_clear_errors_and_change_nothing(db):
    make_sink(db, "bad", paused=True)
    new_table(db, "t_bad")
    q(db, "DROP TABLE IF EXISTS t_nopk; CREATE TABLE t_nopk (a int)")
    q(db, "DROP VIEW IF EXISTS v_bad; CREATE VIEW v_bad AS SELECT 1 AS a")
    cases = [
        ("SELECT batchkit.capture('t_bad', 'nope')", 'batchkit sink "nope" does not exist'),
        ("SELECT batchkit.capture('t_bad', 'bad', ARRAY['insert','upsert'])", 'unknown event "upsert"'),
        ("SELECT batchkit.capture('t_bad', 'bad', ARRAY['truncate'])", "TRUNCATE cannot be captured"),
        ("SELECT batchkit.capture('t_bad', 'bad', ARRAY[]::text[])", "events must name at least one"),
        ("SELECT batchkit.capture('t_bad', 'bad', options => '{\"colums\": []}')", 'unknown capture option "colums"'),
        ("SELECT batchkit.capture('t_bad', 'bad', options => '{\"columns\": [\"nope\"]}')",
         'column "nope" of table public.t_bad does not exist'),
        ("SELECT batchkit.capture('t_bad', 'bad', options => '{\"key_columns\": \"id\"}')",
         "key_columns must be a JSON array"),
        ("SELECT batchkit.capture('t_bad', 'bad', options => '{\"include_before\": \"yes\"}')",
         "include_before must be true or false"),
        ("SELECT batchkit.capture('t_nopk', 'bad')", "table public.t_nopk has no primary key"),
        ("SELECT batchkit.capture('v_bad', 'bad')", "only tables and partitioned tables"),
        ("SELECT batchkit.capture('batchkit.sink', 'bad')", "batchkit's own table"),
        ("SELECT batchkit.uncapture('t_bad', 'bad')", "is not captured by sink"),
        ("SELECT * FROM batchkit.claim_batch('bad', 0)", "max_rows and max_bytes must be positive"),
        ("SELECT * FROM batchkit.claim_batch('bad', 10, 10, 'xml')", 'unknown format "xml"'),
        ("SELECT batchkit.ack_batch('bad', 12345)", "is not in flight"),
        ("SELECT batchkit.enqueue('bad', '{}', NULL, '{\"h\": 1}')", "headers must be a JSON object of strings"),
        ("SELECT batchkit.enqueue_many('bad', ARRAY['{}'::jsonb], ARRAY['a', 'b'])", "2 keys given for 1 payloads"),
    ]
    for sql, expect in cases:
        with pytest.raises(psycopg2.Error) as err:
            q(db, sql)
        assert expect in str(err.value), (sql, str(err.value))
    assert q(db, "SELECT count(*) FROM batchkit.capture c JOIN batchkit.sink s USING (sink_id) "
                 "WHERE s.name = 'bad'")[0][0] == 0
    assert q(db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_bad'::regclass")[0][0] == 0
    # a capture that exists refuses a second one, and TRUNCATE
    q(db, "SELECT batchkit.capture('t_bad', 'bad', options => '{\"key_columns\": [\"email\"]}')")
    with pytest.raises(psycopg2.Error) as err:
        q(db, "SELECT batchkit.capture('t_bad', 'bad')")
    assert "already captured" in str(err.value)
    with pytest.raises(psycopg2.Error) as err:
        q(db, "TRUNCATE t_bad")
    assert 'cannot truncate table "t_bad": it is captured by batchkit sink "bad"' in str(err.value)
    q(db, "SELECT batchkit.uncapture('t_bad', 'bad')")
    q(db, "TRUNCATE t_bad")
    assert q(db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_bad'::regclass")[0][0] == 0


def test_handmade_trigger_cannot_inject_into_a_sink(db):
    make_sink(db, "victim", paused=True)
    new_table(db, "t_victim")
    cap = q(db, "SELECT batchkit.capture('t_victim', 'victim')")[0][0]
    sink_id = q(db, "SELECT sink_id FROM batchkit.sink WHERE name = 'victim'")[0][0]
    q(db, "DROP TABLE IF EXISTS t_attacker; CREATE TABLE t_attacker (id bigint PRIMARY KEY)")
    q(db, f"CREATE TRIGGER evil AFTER INSERT ON t_attacker REFERENCING NEW TABLE AS n "
          f"FOR EACH STATEMENT EXECUTE FUNCTION batchkit._capture_trigger('{cap}', '{sink_id}', '', '1', '')")
    with pytest.raises(psycopg2.Error) as err:
        q(db, "INSERT INTO t_attacker VALUES (1)")
    assert "does not match a batchkit capture" in str(err.value)
    assert drain(db, "victim") == []


def test_roles_writers_need_no_queue_grant_and_non_admins_cannot_manage(db, services):
    make_sink(db, "roles", paused=True)
    new_table(db, "t_roles")
    q(db, "SELECT batchkit.capture('t_roles', 'roles')")
    import uuid
    sfx = uuid.uuid4().hex[:6]
    writer, admin = f"bk_writer_{sfx}", f"bk_admin_{sfx}"
    q(db, f"CREATE ROLE {writer} LOGIN")
    q(db, f"CREATE ROLE {admin} LOGIN IN ROLE batchkit_admin")
    q(db, f"GRANT INSERT, UPDATE, DELETE, SELECT ON t_roles TO {writer}")
    w = connect(services, db.info.dbname, user=writer)
    try:
        q(w, "INSERT INTO t_roles (id) VALUES (1), (2)")
        q(w, "UPDATE t_roles SET name = 'w'")
        q(w, "DELETE FROM t_roles WHERE id = 2")
        for sql in ("SELECT * FROM batchkit.queue", "SELECT * FROM batchkit.sink_secret",
                    "SELECT batchkit.capture('t_roles', 'roles')",
                    "SELECT batchkit.uncapture('t_roles', 'roles')",
                    "SELECT * FROM batchkit.claim_batch('roles')",
                    "SELECT batchkit.enqueue('roles', '{}')",
                    "SELECT * FROM batchkit.maintain_queue()"):
            with pytest.raises(psycopg2.Error) as err:
                q(w, sql)
            assert err.value.pgcode == "42501", (sql, err.value.pgcode, str(err.value))
    finally:
        w.close()
    got = [(m["op"], m["key"]["id"]) for m in messages(drain(db, "roles"))]
    assert got == [("insert", 1), ("insert", 2), ("update", 1), ("update", 2), ("delete", 2)]
    # an admin member may capture tables it can read, and use the outbox
    a = connect(services, db.info.dbname, user=admin)
    try:
        q(db, "DROP TABLE IF EXISTS t_private; CREATE TABLE t_private (id int PRIMARY KEY)")
        with pytest.raises(psycopg2.Error) as err:
            q(a, "SELECT batchkit.capture('t_private', 'roles')")
        assert err.value.pgcode == "42501"
        q(a, "SELECT batchkit.enqueue('roles', '{\"hello\": 1}', 'k1', '{\"h\": \"v\"}')")
    finally:
        a.close()
    rows = drain(db, "roles")
    assert [(r[2], r[4], r[5]) for r in rows] == [("message", "k1", '{"hello": 1}')]


def test_enqueue_many_and_outbox_rollback(db):
    make_sink(db, "outbox", paused=True)
    conn = connect_tx(db)
    with conn.cursor() as cur:
        cur.execute("SELECT batchkit.enqueue('outbox', '{\"n\": 0}')")
        conn.rollback()
        cur.execute("SELECT batchkit.enqueue_many('outbox', "
                    "(SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, 2500) g), "
                    "(SELECT array_agg('k' || g) FROM generate_series(1, 2500) g))")
        assert cur.fetchone()[0] == 2500
        conn.commit()
    conn.close()
    rows = drain(db, "outbox", max_rows=999)
    assert [json.loads(r[5])["n"] for r in rows] == list(range(1, 2501))
    assert [r[4] for r in rows] == [f"k{i}" for i in range(1, 2501)]


def test_storage_returns_to_empty_after_drain(db):
    make_sink(db, "store", paused=True)
    new_table(db, "t_store")
    q(db, "SELECT batchkit.capture('t_store', 'store')")
    for _ in range(3):
        q(db, "SELECT * FROM batchkit.maintain_queue()")
    empty = q(db, "SELECT sum(bytes) FROM batchkit.queue_storage")[0][0]
    for round_ in range(3):
        q(db, f"INSERT INTO t_store (id, name) SELECT g + {round_} * 100000, repeat('x', 50) "
              f"FROM generate_series(1, 100000) g")
        assert len(drain(db, "store")) == 100000
        for _ in range(3):
            q(db, "SELECT * FROM batchkit.maintain_queue()")
    after = q(db, "SELECT sum(bytes) FROM batchkit.queue_storage")[0][0]
    assert after <= 2 * empty, (empty, after)


def test_a_sink_dropped_while_a_transaction_enqueues_leaves_no_chunk_behind(services):
    """enqueue() takes no lock that drop_sink() waits for: a transaction that enqueued
    before the drop may commit after it, leaving a chunk no worker will ever
    acknowledge. Such a chunk used to keep its queue segment from being truncated
    forever (and so the writers from rotating back to it)."""
    admin = connect(services)
    db_name = "bk_orphan_" + os.urandom(4).hex()
    q(admin, f"CREATE DATABASE {db_name}")
    try:
        d = connect(services, db_name)
        q(d, "CREATE EXTENSION batchkit")
        make_sink(d, "gone", paused=True)
        writer = connect(services, db_name, autocommit=False)
        q(writer, "SELECT batchkit.enqueue('gone', '{\"n\": 1}')")
        q(d, "SELECT batchkit.drop_sink('gone', true)")   # does not wait for the writer
        writer.commit()
        writer.close()
        orphans = ("SELECT count(*) FROM batchkit.queue q WHERE NOT EXISTS "
                   "(SELECT 1 FROM batchkit.sink s WHERE s.sink_id = q.sink_id)")
        assert q(d, orphans)[0][0] == 1
        seg = q(d, "SELECT segment FROM batchkit.queue")[0][0]
        deadline = time.time() + 30
        while q(d, "SELECT count(*) FROM batchkit.queue")[0][0] and time.time() < deadline:
            # rotate away from the chunk's segment, then truncate it (the database's
            # flush worker calls the same function; NOWAIT makes the two take turns)
            q(d, "SELECT * FROM batchkit.maintain_queue('0 s', 0)")
            time.sleep(0.05)
        assert q(d, "SELECT count(*) FROM batchkit.queue")[0][0] == 0
        assert q(d, f"SELECT batchkit._segment_heap_bytes({seg})")[0][0] == 0
        d.close()
    finally:
        q(admin, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        admin.close()


def test_a_dropped_sinks_shared_slot_is_freed_even_if_a_late_commit_takes_it_again(services):
    """The same race as above, seen from shared memory: the committing transaction
    takes the dropped sink's shared slot again (its commit counts itself in the slot,
    see queue.c "depth") after the flush worker freed it. The worker frees it again
    at its next catalog read. On a server with batchkit.max_sinks = 2, a leaked slot
    would leave one of two new sinks without one (no depth, no statistics)."""
    d = tempfile.mkdtemp(prefix="bk-slots-")
    os.chmod(d, 0o755)
    port = free_port()
    pg_script("init", d, port)
    with open(os.path.join(d, "data", "postgresql.conf"), "a") as f:
        f.write("batchkit.max_sinks = 2\n")
    pg_script("start", d)
    try:
        def conn(autocommit=True):
            c = psycopg2.connect(host=os.path.join(d, "sock"), port=port, user="postgres",
                                 dbname="postgres")
            c.autocommit = autocommit
            return c

        a = conn()
        q(a, "CREATE EXTENSION batchkit")
        make_sink(a, "gone", paused=True)
        writer = conn(autocommit=False)
        q(writer, "SELECT batchkit.enqueue('gone', '{\"n\": 1}')")
        q(a, "SELECT batchkit.drop_sink('gone', true)")
        time.sleep(1.0)            # the worker re-reads the catalog and frees the slot
        writer.commit()            # ... which this commit takes again
        writer.close()
        make_sink(a, "b", paused=True)
        make_sink(a, "c", paused=True)
        deadline = time.time() + 30
        depths = None
        while time.time() < deadline:
            depths = [q(a, "SELECT batchkit.queue_depth(%s)", (s,))[0][0] for s in ("b", "c")]
            if None not in depths:
                break
            time.sleep(0.2)
        assert depths == [0, 0], "a sink without a shared slot: " + str(depths)
        a.close()
    finally:
        pg_script("stop", d, "immediate", check=False)
        shutil.rmtree(d, ignore_errors=True)


def test_writers_follow_segment_rotation(db, services):
    """A writer caches the current segment; a rotation must move its next chunk."""
    make_sink(db, "rot", paused=True)
    new_table(db, "t_rot")
    q(db, "SELECT batchkit.capture('t_rot', 'rot')")
    w = connect(services, db.info.dbname)
    try:
        q(w, "INSERT INTO t_rot (id) VALUES (1)")
        first = q(db, "SELECT segment FROM batchkit.queue WHERE sink_id = "
                      "(SELECT sink_id FROM batchkit.sink WHERE name = 'rot')")
        assert first == [(q(db, "SELECT current_segment FROM batchkit.queue_state")[0][0],)]
        assert len(drain(db, "rot")) == 1
        rotated = False
        for _ in range(3):
            rotated |= q(db, "SELECT rotated FROM batchkit.maintain_queue()")[0][0]
        cur = q(db, "SELECT current_segment FROM batchkit.queue_state")[0][0]
        assert rotated and cur != first[0][0]
        q(w, "INSERT INTO t_rot (id) VALUES (2)")
        assert q(db, "SELECT segment FROM batchkit.queue WHERE sink_id = "
                     "(SELECT sink_id FROM batchkit.sink WHERE name = 'rot')") == [(cur,)]
        assert [m["key"]["id"] for m in messages(drain(db, "rot"))] == [2]
    finally:
        w.close()


class PeakRss:
    """Samples a process's anonymous resident memory (not shared buffers) every 50 ms."""

    def __init__(self, pid):
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run)

    def _run(self):
        while not self._stop.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.05)

    def __enter__(self):
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join()


def test_huge_statement_is_captured_and_consumed_in_bounded_memory(db, services):
    """One 5M-row statement: the writer and the consumer stay far below the data size."""
    make_sink(db, "huge", paused=True)
    q(db, "DROP TABLE IF EXISTS t_huge")
    q(db, "CREATE TABLE t_huge (id bigint PRIMARY KEY, payload text)")
    q(db, "SELECT batchkit.capture('t_huge', 'huge')")
    n = 5_000_000
    pid = q(db, "SELECT pg_backend_pid()")[0][0]
    with PeakRss(pid) as writer:
        q(db, f"INSERT INTO t_huge SELECT g, md5(g::text) FROM generate_series(1, {n}) g")
    data_bytes = q(db, "SELECT pg_relation_size('t_huge')")[0][0]
    print("writer peak RssAnon", writer.peak, "table bytes", data_bytes)
    assert writer.peak < 200 * 1024 * 1024 < data_bytes
    assert q(db, "SELECT batchkit.queue_depth('huge')")[0][0] == n
    # consume with the worker's protocol in 10k-row batches; count without keeping messages
    consumed = 0
    last = 0
    with PeakRss(pid) as consumer, db.cursor() as cur:
        while True:
            cur.execute("SELECT batch_seq, count(*), min(seq), max(seq) "
                        "FROM batchkit.claim_batch('huge', 20000, 1073741824, 'row') GROUP BY 1")
            row = cur.fetchone()
            if row is None:
                break
            assert row[2] > last
            last = row[3]
            consumed += row[1]
            cur.execute("SELECT batchkit.ack_batch('huge', %s)", (row[0],))
    assert consumed == n
    print("consumer peak RssAnon", consumer.peak)
    assert consumer.peak < 200 * 1024 * 1024
    assert q(db, "SELECT count(*) FROM batchkit.queue")[0][0] == 0
    q(db, "DROP TABLE t_huge")

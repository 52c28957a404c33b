"""batch_upsert on a real server: property test against plain SQL, concurrency,
privileges and row-level security, partitions, triggers, and a cluster without
shared_preload_libraries."""
import json
import os
import random
import tempfile
import threading

import psycopg2
import pytest

from conftest import connect, free_port, pg_script

SEED = int(os.environ.get("BATCHKIT_TEST_SEED", random.randrange(1 << 30)))

# A table whose every name needs quoting; a two-column unique key.
ODD_TABLE = '"Weird ""T"""'
ODD_DDL = f'''
CREATE TABLE {{name}} (
    "select" int NOT NULL,
    "Mixed Case" text NOT NULL,
    "Weird ""Name""" text,
    "with space" int DEFAULT 7,
    note text DEFAULT 'dflt',
    PRIMARY KEY ("select", "Mixed Case"))
'''
KEYS = ["select", "Mixed Case"]
OTHERS = ['Weird "Name"', "with space", "note"]


def qi(name):
    return '"' + name.replace('"', '""') + '"'


def random_value(rng, col):
    if rng.random() < 0.15:
        return None
    if col == "with space":
        return rng.randrange(-1000, 1000)
    return rng.choice(["a", "b'c", 'q"uote', "x); DROP TABLE t; --", "ünï", ""]) + str(
        rng.randrange(50))


def random_rows(rng, keyspace):
    rows = []
    for _ in range(rng.randrange(0, 40)):
        k = rng.choice(keyspace)  # small key space: duplicates and existing keys
        row = {"select": k[0], "Mixed Case": k[1]}
        for c in OTHERS:
            if rng.random() < 0.7:  # missing columns
                row[c] = random_value(rng, c)
        rows.append(row)
    return rows


def reference_upsert(cur, table, rows, update_columns):
    """Plain SQL: the last occurrence of each key, one INSERT ... ON CONFLICT each."""
    last = {}
    for r in rows:
        last[(r["select"], r["Mixed Case"])] = r
    inserted = updated = 0
    for r in last.values():
        cols = list(r.keys())
        upd = [c for c in cols if c not in KEYS and (update_columns is None or c in update_columns)]
        cur.execute(f"SELECT 1 FROM {table} WHERE \"select\" = %s AND \"Mixed Case\" = %s",
                    (r["select"], r["Mixed Case"]))
        exists = cur.fetchone() is not None
        action = ("DO UPDATE SET " + ", ".join(f"{qi(c)} = EXCLUDED.{qi(c)}" for c in upd)
                  if upd else "DO NOTHING")
        cur.execute(f"INSERT INTO {table} ({', '.join(qi(c) for c in cols)}) VALUES "
                    f"({', '.join(['%s'] * len(cols))}) ON CONFLICT (\"select\", \"Mixed Case\") "
                    f"{action}", [r[c] for c in cols])
        if not exists:
            inserted += 1
        elif upd:
            updated += 1
    return inserted, updated


def table_rows(cur, table):
    cur.execute(f'SELECT * FROM {table} ORDER BY "select", "Mixed Case"')
    return cur.fetchall()


def test_property_matches_plain_sql(db):
    print(f"batch_upsert property test seed: {SEED} (BATCHKIT_TEST_SEED to replay)")
    rng = random.Random(SEED)
    cur = db.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS \"Prop Schema\"")
    ours, ref = f'"Prop Schema".{ODD_TABLE}', '"Prop Schema".reference'
    for t in (ours, ref):
        cur.execute(f"DROP TABLE IF EXISTS {t}")
        cur.execute(ODD_DDL.format(name=t))
    keyspace = [(rng.randrange(8), rng.choice(["K", "k", "select", "a b"])) for _ in range(12)]
    for it in range(120):
        rows = random_rows(rng, keyspace)
        update_columns = rng.choice([None, None, [], [OTHERS[0]], OTHERS[1:]])
        present = {c for r in rows for c in r}
        if update_columns and not set(update_columns) <= present:
            update_columns = None
        chunk = rng.choice([1, 3, 1000000])
        cur.execute("SELECT * FROM batchkit.batch_upsert(%s, %s::jsonb, NULL, %s, %s)",
                    (ours, json.dumps(rows), update_columns, chunk))
        got = cur.fetchone()
        want = reference_upsert(cur, ref, rows, update_columns)
        ctx = f"seed {SEED} iteration {it}: rows={rows!r} update_columns={update_columns!r}"
        assert got == want, ctx
        assert table_rows(cur, ours) == table_rows(cur, ref), ctx


def test_array_input_matches_jsonb_input(db):
    cur = db.cursor()
    cur.execute("CREATE TABLE arr_a (id int PRIMARY KEY, v text, n numeric DEFAULT 1)")
    cur.execute("CREATE TABLE arr_b (id int PRIMARY KEY, v text, n numeric DEFAULT 1)")
    cur.execute("CREATE TYPE arr_row AS (id bigint, v text)")
    rng = random.Random(SEED + 1)
    rows = [(rng.randrange(30), f"v{i}") for i in range(100)]
    cur.execute("SELECT * FROM batchkit.batch_upsert('arr_a', %s::jsonb)",
                (json.dumps([{"id": a, "v": b} for a, b in rows]),))
    a = cur.fetchone()
    cur.execute("SELECT * FROM batchkit.batch_upsert('arr_b', "
                "(SELECT array_agg(ROW(a, b)::arr_row ORDER BY o) FROM "
                "unnest(%s::bigint[], %s::text[]) WITH ORDINALITY AS u(a, b, o)))",
                ([r[0] for r in rows], [r[1] for r in rows]))
    assert cur.fetchone() == a
    cur.execute("SELECT * FROM arr_a EXCEPT SELECT * FROM arr_b")
    assert cur.fetchall() == []
    cur.execute("SELECT count(*) FROM arr_a")
    assert cur.fetchone()[0] == a[0] == len({r[0] for r in rows})


def test_concurrent_overlapping_upserts_never_fail_nor_lose_updates(services, dbname):
    setup = connect(services, dbname)
    cur = setup.cursor()
    cur.execute("CREATE TABLE conc (id int PRIMARY KEY, v text, hits int DEFAULT 0)")
    cur.execute("CREATE TABLE conc_log (seq bigserial PRIMARY KEY, id int, v text)")
    # every row write is logged while the row is locked: per key, log order is commit order
    cur.execute("""CREATE FUNCTION conc_log() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN INSERT INTO conc_log(id, v) VALUES (NEW.id, NEW.v); RETURN NEW; END $$""")
    cur.execute("CREATE TRIGGER conc_log AFTER INSERT OR UPDATE ON conc "
                "FOR EACH ROW EXECUTE FUNCTION conc_log()")
    sessions, calls, errors = 4, 25, []
    sent = {}  # id -> number of calls that included it
    lock = threading.Lock()
    totals = []

    def worker(s):
        rng = random.Random(SEED * 10 + s)
        conn = connect(services, dbname)
        c = conn.cursor()
        try:
            for i in range(calls):
                ids = rng.sample(range(1, 301), 120)
                rows = [{"id": k, "v": f"s{s}-c{i}"} for k in ids]
                c.execute("SELECT * FROM batchkit.batch_upsert('conc', %s::jsonb, "
                          "chunk_size => %s)", (json.dumps(rows), rng.choice([40, 1000])))
                ins, upd = c.fetchone()
                with lock:
                    totals.append(ins + upd)
                    for k in ids:
                        sent[k] = sent.get(k, 0) + 1
        except Exception as e:  # noqa: BLE001 - the test reports every failure
            errors.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sum(totals) == sessions * calls * 120
    cur.execute("SELECT id, count(*) FROM conc_log GROUP BY id")
    assert dict(cur.fetchall()) == sent  # every upsert of every key was applied once
    cur.execute("""SELECT c.id FROM conc c JOIN LATERAL (
                     SELECT v FROM conc_log l WHERE l.id = c.id ORDER BY seq DESC LIMIT 1) last
                   ON true WHERE last.v IS DISTINCT FROM c.v""")
    assert cur.fetchall() == []  # the final value is the last one applied
    setup.close()


def test_privileges_and_row_level_security(services, dbname, db):
    cur = db.cursor()
    role = "bk_upsert_user"
    cur.execute(f"DROP ROLE IF EXISTS {role}")
    cur.execute(f"CREATE ROLE {role} LOGIN")
    cur.execute("CREATE TABLE priv (id int PRIMARY KEY, v text, owner text DEFAULT current_user)")
    cur.execute("INSERT INTO priv VALUES (1, 'theirs', 'someone_else')")
    cur.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    cur.execute(f"GRANT SELECT, INSERT ON priv TO {role}")
    user = connect(services, dbname, user=role)
    ucur = user.cursor()
    # no UPDATE privilege: a call that would update fails and changes nothing
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        ucur.execute("SELECT * FROM batchkit.batch_upsert('priv', "
                     "'[{\"id\": 1, \"v\": \"mine\"}, {\"id\": 2, \"v\": \"new\"}]'::jsonb)")
    cur.execute("SELECT count(*) FROM priv")
    assert cur.fetchone()[0] == 1
    # insert-or-skip only needs INSERT
    ucur.execute("SELECT * FROM batchkit.batch_upsert('priv', "
                 "'[{\"id\": 1, \"v\": \"mine\"}, {\"id\": 2, \"v\": \"new\"}]'::jsonb, "
                 "update_columns => '{}')")
    assert ucur.fetchone() == (1, 0)
    # row-level security: only your own rows
    cur.execute(f"GRANT UPDATE ON priv TO {role}")
    cur.execute("ALTER TABLE priv ENABLE ROW LEVEL SECURITY")
    cur.execute("CREATE POLICY own ON priv USING (owner = current_user) "
                "WITH CHECK (owner = current_user)")
    ucur.execute("SELECT * FROM batchkit.batch_upsert('priv', '[{\"id\": 2, \"v\": \"mine2\"}]'::jsonb)")
    assert ucur.fetchone() == (0, 1)
    with pytest.raises(psycopg2.Error) as e:
        ucur.execute("SELECT * FROM batchkit.batch_upsert('priv', '[{\"id\": 1, \"v\": \"stolen\"}]'::jsonb)")
    assert "row-level security" in str(e.value) or "unique" not in str(e.value)
    with pytest.raises(psycopg2.Error) as e:
        ucur.execute("SELECT * FROM batchkit.batch_upsert('priv', "
                     "'[{\"id\": 3, \"v\": \"x\", \"owner\": \"someone_else\"}]'::jsonb)")
    assert "row-level security" in str(e.value)
    cur.execute("SELECT id, v, owner FROM priv ORDER BY id")
    assert cur.fetchall() == [(1, "theirs", "someone_else"), (2, "mine2", role)]
    user.close()
    cur.execute("DROP TABLE priv")
    cur.execute(f"DROP OWNED BY {role}")
    cur.execute(f"DROP ROLE {role}")


def test_partitioned_target_and_triggers(db):
    cur = db.cursor()
    cur.execute("CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    cur.execute("CREATE TABLE parted_lo PARTITION OF parted FOR VALUES FROM (0) TO (100)")
    cur.execute("CREATE TABLE parted_hi PARTITION OF parted FOR VALUES FROM (100) TO (1000)")
    cur.execute("CREATE TABLE trig_log (tg text, op text, id int)")
    cur.execute("""CREATE FUNCTION trig_log() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                     IF TG_LEVEL = 'ROW' THEN
                       INSERT INTO trig_log VALUES (TG_WHEN || ' ROW', TG_OP, NEW.id);
                       IF TG_WHEN = 'BEFORE' THEN NEW.v := NEW.v || '!'; END IF;
                       RETURN NEW;
                     END IF;
                     INSERT INTO trig_log VALUES (TG_WHEN || ' STATEMENT', TG_OP, NULL);
                     RETURN NULL;
                   END $$""")
    for when in ("BEFORE", "AFTER"):
        cur.execute(f"CREATE TRIGGER r_{when} {when} INSERT OR UPDATE ON parted "
                    "FOR EACH ROW EXECUTE FUNCTION trig_log()")
        cur.execute(f"CREATE TRIGGER s_{when} {when} INSERT OR UPDATE ON parted "
                    "FOR EACH STATEMENT EXECUTE FUNCTION trig_log()")
    cur.execute("INSERT INTO parted VALUES (5, 'old'), (150, 'old')")
    cur.execute("TRUNCATE trig_log")
    cur.execute("SELECT * FROM batchkit.batch_upsert('parted', "
                "'[{\"id\": 5, \"v\": \"a\"}, {\"id\": 150, \"v\": \"b\"}, {\"id\": 7, \"v\": \"c\"},"
                " {\"id\": 700, \"v\": \"d\"}]'::jsonb)")
    assert cur.fetchone() == (2, 2)
    cur.execute("SELECT tableoid::regclass::text, id, v FROM parted ORDER BY id")
    assert cur.fetchall() == [("parted_lo", 5, "a!"), ("parted_lo", 7, "c!"),
                              ("parted_hi", 150, "b!"), ("parted_hi", 700, "d!")]
    cur.execute("SELECT tg, op, array_agg(id ORDER BY id) FROM trig_log "
                "WHERE tg LIKE '%ROW' GROUP BY 1, 2 ORDER BY 1, 2")
    assert cur.fetchall() == [("AFTER ROW", "INSERT", [7, 700]), ("AFTER ROW", "UPDATE", [5, 150]),
                              ("BEFORE ROW", "INSERT", [7, 700]),
                              ("BEFORE ROW", "UPDATE", [5, 150])]
    cur.execute("SELECT count(*) FROM trig_log WHERE tg LIKE '%STATEMENT'")
    assert cur.fetchone()[0] >= 2


def test_stats_count_calls_when_preloaded(db):
    cur = db.cursor()
    cur.execute("CREATE TABLE st (id int PRIMARY KEY, v text)")
    cur.execute("SELECT * FROM batchkit.batch_upsert('st', '[{\"id\": 1}, {\"id\": 1}, {\"id\": 2}]'::jsonb)")
    cur.execute("SELECT * FROM batchkit.batch_upsert('st', '[{\"id\": 2, \"v\": \"x\"}]'::jsonb)")
    cur.execute("SELECT calls, rows_in, inserted, updated, total_time_ms > 0 "
                "FROM batchkit.upsert_stats WHERE relid = 'st'::regclass")
    assert cur.fetchone() == (2, 4, 2, 1, True)


def test_works_without_preload_and_stats_say_why_not(services):
    d = tempfile.mkdtemp(prefix="bk-upsert-nopreload-")
    os.chmod(d, 0o755)
    port = free_port()
    pg_script("init", d, port, "--no-preload")
    pg_script("start", d)
    try:
        conn = psycopg2.connect(host=os.path.join(d, "sock"), port=port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("CREATE EXTENSION batchkit")
        cur.execute("SELECT batchkit.preloaded()")
        assert cur.fetchone()[0] is False
        cur.execute("CREATE TABLE np (id int PRIMARY KEY, v text)")
        cur.execute("SELECT * FROM batchkit.batch_upsert('np', '[{\"id\": 1, \"v\": \"a\"}]')")
        assert cur.fetchone() == (1, 0)
        cur.execute("SELECT * FROM batchkit.batch_upsert('np', '[{\"id\": 1, \"v\": \"b\"}]')")
        assert cur.fetchone() == (0, 1)
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("SELECT * FROM batchkit.upsert_stats")
        assert "must be loaded via shared_preload_libraries" in str(e.value)
        conn.close()
    finally:
        pg_script("stop", d, "immediate", check=False)
        import shutil
        shutil.rmtree(d, ignore_errors=True)

"""DDL on captured tables (the sql_drop event trigger, batchkit._on_sql_drop):
DROP TABLE forgets the table's captures and still delivers its queued rows; a column a
capture needs cannot be dropped, so an application's writes never start failing later."""
import json

import psycopg2
import pytest

from conftest import make_sink
from helpers import q, stream_entries, uid


@pytest.fixture
def sink(db, services):
    name = "ddl_" + uid()
    make_sink(db, name, "redis", {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0",
                                  "command": "xadd", "key": name + ":{table}"})
    yield name
    q(db, "SELECT batchkit.drop_sink(%s, true)", (name,))


def captures_of(db, table):
    return q(db, "SELECT sink FROM batchkit.captures WHERE source::text = %s", (table,))


def test_drop_table_forgets_its_captures_and_delivers_its_queued_rows(db, sink, redis_client):
    t = "dropped_" + uid()
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    q(db, f"SELECT batchkit.capture('{t}', %s)", (sink,))
    q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
    q(db, f"INSERT INTO {t} SELECT g, 'v' FROM generate_series(1, 50) g")
    oid = q(db, f"SELECT '{t}'::regclass::oid")[0][0]
    q(db, f"DROP TABLE {t}")
    assert q(db, "SELECT count(*) FROM batchkit.capture WHERE source::oid = %s", (oid,))[0][0] == 0
    assert not any(str(oid) == r[0] for r in q(db, "SELECT source::text FROM batchkit.captures"))
    # its rows, queued before the drop, still reach the sink, named after the table
    q(db, "SELECT batchkit.resume_sink(%s)", (sink,))
    assert q(db, "SELECT batchkit.flush(%s, '30 s')", (sink,))[0][0]
    entries = stream_entries(redis_client, f"{sink}:{t}")
    assert [json.loads(e["data"])["key"]["id"] for e in entries] == list(range(1, 51))
    assert {json.loads(e["data"])["table"] for e in entries} == {f"public.{t}"}
    # the table can be created and captured again under the same name
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, f"SELECT batchkit.capture('{t}', %s)", (sink,))
    assert captures_of(db, t) == [(sink,)]


def test_drop_schema_cascade_and_a_non_owner_role(db, sink):
    s = "ddl_s_" + uid()
    q(db, f"CREATE SCHEMA {s}")
    q(db, f"CREATE TABLE {s}.a (id int PRIMARY KEY)")
    q(db, f"CREATE TABLE {s}.b (id int PRIMARY KEY)")
    q(db, f"SELECT batchkit.capture('{s}.a', %s)", (sink,))
    q(db, f"SELECT batchkit.capture('{s}.b', %s)", (sink,))
    q(db, f"DROP SCHEMA {s} CASCADE")
    assert q(db, "SELECT count(*) FROM batchkit.captures WHERE sink = %s", (sink,))[0][0] == 0

    # the table's owner, an ordinary role that cannot read batchkit's catalog, drops it
    role = "ddl_owner_" + uid()
    t = "owned_" + uid()
    q(db, f"CREATE ROLE {role}")
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, note text)")
    q(db, f"ALTER TABLE {t} OWNER TO {role}")
    q(db, f"SELECT batchkit.capture('{t}', %s)", (sink,))
    q(db, f"SET ROLE {role}")
    try:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "SELECT * FROM batchkit.capture")
        q(db, f"ALTER TABLE {t} DROP COLUMN note")   # not captured by key: allowed
        with pytest.raises(psycopg2.errors.DependentObjectsStillExist):
            q(db, f"ALTER TABLE {t} DROP COLUMN id")
        q(db, f"DROP TABLE {t}")
    finally:
        q(db, "RESET ROLE")
    assert captures_of(db, t) == []
    q(db, f"DROP ROLE {role}")


def test_dropping_a_column_a_capture_needs_is_refused(db, sink):
    t = "cols_" + uid()
    q(db, f"CREATE TABLE {t} (id int, region text, a text, b text, c text, "
          "PRIMARY KEY (id, region))")
    q(db, f"SELECT batchkit.capture('{t}', %s, options => %s)",
      (sink, json.dumps({"columns": ["id", "region", "a"]})))
    depth = q(db, "SELECT batchkit.queue_depth(%s)", (sink,))[0][0]

    for col, what in (("id", "a key column of"), ("region", "a key column of"),
                      ("a", "one of the columns sent by")):
        with pytest.raises(psycopg2.errors.DependentObjectsStillExist) as e:
            q(db, f"ALTER TABLE {t} DROP COLUMN {col}")
        assert (f'cannot drop column "{col}" of table public.{t}: it is {what} its capture '
                f'into batchkit sink "{sink}"') in str(e.value)
        assert e.value.diag.message_hint == (
            f"Run batchkit.uncapture('public.{t}', '{sink}') first, and batchkit.capture() "
            "again after the change.")
    # also in a multi-command ALTER and after a RENAME (the capture knows attribute numbers)
    with pytest.raises(psycopg2.errors.DependentObjectsStillExist):
        q(db, f"ALTER TABLE {t} DROP COLUMN b, DROP COLUMN a")
    q(db, f"ALTER TABLE {t} RENAME COLUMN region TO zone")
    with pytest.raises(psycopg2.errors.DependentObjectsStillExist) as e:
        q(db, f"ALTER TABLE {t} DROP COLUMN zone CASCADE")
    assert 'cannot drop column "zone"' in str(e.value)

    # nothing changed; a column the capture does not send can go, and writes keep working
    cols = [r[0] for r in q(db, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (t,))]
    assert cols == ["id", "zone", "a", "b", "c"]
    q(db, f"ALTER TABLE {t} DROP COLUMN b, DROP COLUMN c")
    q(db, f"INSERT INTO {t} VALUES (1, 'eu', 'x')")
    q(db, f"UPDATE {t} SET a = 'y'")
    assert q(db, "SELECT batchkit.queue_depth(%s)", (sink,))[0][0] >= depth   # delivered or queued
    assert q(db, "SELECT batchkit.flush(%s, '30 s')", (sink,))[0][0]

    # after uncapture the column can be dropped
    q(db, f"SELECT batchkit.uncapture('{t}', %s)", (sink,))
    q(db, f"ALTER TABLE {t} DROP COLUMN a")


def test_drop_extension_with_captures(services):
    """The event trigger does not stand in the way of DROP EXTENSION (it is dropped with it)."""
    from conftest import connect
    name = "bk_ddl_dropext_" + uid()
    admin = connect(services)
    q(admin, f'CREATE DATABASE "{name}"')
    try:
        c = connect(services, name)
        q(c, "CREATE EXTENSION batchkit")
        make_sink(c, "s", "redis")
        q(c, "CREATE TABLE t (id int PRIMARY KEY)")
        q(c, "SELECT batchkit.capture('t', 's')")
        q(c, "DROP EXTENSION batchkit CASCADE")
        assert q(c, "SELECT count(*) FROM pg_event_trigger")[0][0] == 0
        assert q(c, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass "
                    "AND NOT tgisinternal")[0][0] == 0
        q(c, "ALTER TABLE t DROP COLUMN id")             # no longer captured: allowed
        q(c, "DROP TABLE t")
        c.close()
    finally:
        q(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

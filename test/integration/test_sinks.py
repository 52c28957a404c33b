"""The sinks catalog on a real server: privileges of real login roles, secrets,
pg_dump/restore of the catalog, reachability warnings against real servers,
notifications to workers, and bad input that changes nothing."""
import os
import select
import socket
import subprocess
import threading
import time
import uuid

import psycopg2
import psycopg2.errors
import pytest

from conftest import connect

PGBIN = os.environ.get("BK_PGBIN", "/usr/lib/postgresql/15/bin")


def q1(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def qall(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def create_sink(conn, name, kind, options):
    import json
    return q1(conn, "SELECT batchkit.create_sink(%s, %s, %s::jsonb)",
              (name, kind, json.dumps(options)))[0]


def ex(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)


def catalog_snapshot(conn):
    """Everything the catalog holds, secrets included (needs a superuser)."""
    return qall(conn, """
        SELECT s.sink_id, s.name, s.kind, s.options::text, s.paused, s.created_at, s.updated_at,
               x.options::text
          FROM batchkit.sink s LEFT JOIN batchkit.sink_secret x USING (sink_id)
         ORDER BY s.sink_id""")


@pytest.fixture(scope="module")
def roles(services, dbname):
    """Three login roles: plain, a batchkit_admin member, a pg_monitor member."""
    suffix = uuid.uuid4().hex[:6]
    names = {"plain": f"bk_it_plain_{suffix}", "admin": f"bk_it_admin_{suffix}",
             "monitor": f"bk_it_monitor_{suffix}"}
    su = connect(services, dbname)
    with su.cursor() as cur:
        cur.execute(f'CREATE ROLE "{names["plain"]}" LOGIN')
        cur.execute(f'CREATE ROLE "{names["admin"]}" LOGIN IN ROLE batchkit_admin')
        cur.execute(f'CREATE ROLE "{names["monitor"]}" LOGIN IN ROLE pg_monitor')
    yield names
    with su.cursor() as cur:
        cur.execute("SELECT batchkit.drop_sink(name, true) FROM batchkit.sinks")
        for n in names.values():
            cur.execute(f'DROP ROLE IF EXISTS "{n}"')
    su.close()


@pytest.fixture
def as_role(services, dbname, roles):
    opened = []

    def _open(which):
        c = connect(services, dbname, user=roles[which])
        opened.append(c)
        return c
    yield _open
    for c in opened:
        c.close()


@pytest.fixture
def listener():
    """A TCP port that accepts connections (a stand-in for a reachable broker)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------------ privileges

def test_role_without_batchkit_admin_cannot_manage_or_read(db, as_role):
    create_sink(db, "priv_target", "kafka",
                {"bootstrap.servers": "127.0.0.1:1", "sasl.password": "topsecret"})
    sink_id = q1(db, "SELECT sink_id FROM batchkit.sinks WHERE name = 'priv_target'")[0]
    plain = as_role("plain")
    before = catalog_snapshot(db)
    calls = [
        ("SELECT batchkit.create_sink('p1', 'redis', "
         "'{\"url\": \"redis://127.0.0.1:1\", \"command\": \"xadd\"}')",
         "permission denied to create sinks"),
        ("SELECT batchkit.alter_sink('priv_target', '{\"batch_size\": 1}')",
         "permission denied to alter sinks"),
        ("SELECT batchkit.pause_sink('priv_target')", "permission denied to pause sinks"),
        ("SELECT batchkit.resume_sink('priv_target')", "permission denied to resume sinks"),
        ("SELECT batchkit.drop_sink('priv_target', true)", "permission denied to drop sinks"),
    ]
    for sql, msg in calls:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege) as e:
            q1(plain, sql)
        assert msg in str(e.value)
        assert "only superusers and members of batchkit_admin" in str(e.value)
    for sql in ("SELECT * FROM batchkit.sinks", "SELECT * FROM batchkit.sink",
                "SELECT * FROM batchkit.sink_secret",
                f"SELECT * FROM batchkit._sink_config({sink_id})"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q1(plain, sql)
    assert catalog_snapshot(db) == before


def test_admin_member_manages_but_never_reads_secrets(db, as_role, listener):
    admin = as_role("admin")
    create_sink(admin, "adm_k", "kafka",
                {"bootstrap.servers": f"127.0.0.1:{listener}", "sasl.username": "svc",
                 "sasl.password": "adm1n-pw", "ssl.key.pem": "-----BEGIN PRIVATE KEY-----"})
    create_sink(admin, "adm_r", "redis", {"url": f"redis://app:r3dis-pw@127.0.0.1:{listener}/1",
                                         "command": "xadd"})
    q1(admin, "SELECT batchkit.alter_sink('adm_k', '{\"linger.ms\": 7}')")
    q1(admin, "SELECT batchkit.pause_sink('adm_k')")
    q1(admin, "SELECT batchkit.resume_sink('adm_k')")
    # what the admin can see never contains a secret
    rows = qall(admin, "SELECT name, options::text FROM batchkit.sinks WHERE name LIKE 'adm_%'")
    seen = " ".join(o for _, o in rows)
    for secret in ("adm1n-pw", "r3dis-pw", "BEGIN PRIVATE KEY"):
        assert secret not in seen
    opts = dict(rows)
    assert '"sasl.password": "***"' in opts["adm_k"]
    assert '"ssl.key.pem": "***"' in opts["adm_k"]
    assert '"linger.ms": 7' in opts["adm_k"]
    assert f"redis://app:***@127.0.0.1:{listener}/1" in opts["adm_r"]
    sink_id = q1(db, "SELECT sink_id FROM batchkit.sinks WHERE name = 'adm_k'")[0]
    for sql in ("SELECT * FROM batchkit.sink_secret", "SELECT * FROM batchkit.sink",
                f"SELECT * FROM batchkit._sink_config({sink_id})"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q1(admin, sql)
    # ... while the superuser (the flush worker) gets the clear values
    cfg = dict(qall(db, "SELECT key, value FROM batchkit._sink_config(%s)", (sink_id,)))
    assert cfg["sasl.password"] == "adm1n-pw"
    assert cfg["linger.ms"] == "7"
    assert cfg["enable.idempotence"] == "true" and cfg["acks"] == "all"
    # an admin may not make the server read files, run programs or load code
    for key, value in (("ssl.ca.location", "/etc/passwd"),
                       ("sasl.kerberos.kinit.cmd", "touch /tmp/bk_pwned"),
                       ("plugin.library.paths", "/tmp/bk_evil.so")):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege) as e:
            q1(admin, "SELECT batchkit.alter_sink('adm_k', jsonb_build_object(%s, %s))",
               (key, value))
        assert f'permission denied to set option "{key}"' in str(e.value)
    q1(admin, "SELECT batchkit.drop_sink('adm_k')")
    q1(admin, "SELECT batchkit.drop_sink('adm_r')")
    assert q1(db, "SELECT count(*) FROM batchkit.sink_secret s WHERE NOT EXISTS "
                  "(SELECT 1 FROM batchkit.sink k WHERE k.sink_id = s.sink_id)")[0] == 0


def test_monitor_reads_view_without_secrets(db, as_role):
    create_sink(db, "mon_k", "kafka", {"bootstrap.servers": "127.0.0.1:1",
                                        "sasl.password": "m0n-pw"})
    mon = as_role("monitor")
    rows = qall(mon, "SELECT name, options::text FROM batchkit.sinks WHERE name = 'mon_k'")
    assert len(rows) == 1 and "m0n-pw" not in rows[0][1] and '"***"' in rows[0][1]
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        q1(mon, "SELECT batchkit.pause_sink('mon_k')")
    q1(db, "SELECT batchkit.drop_sink('mon_k')")


# ------------------------------------------------------------------------ reachability

def test_unreachable_server_gives_a_warning_not_an_error(db):
    port = closed_port()
    db.notices.clear()
    create_sink(db, "down_r", "redis", {"url": f"redis://127.0.0.1:{port}/0", "command": "xadd"})
    warnings = [n for n in db.notices if n.startswith("WARNING")]
    assert len(warnings) == 1, db.notices
    assert (f'sink "down_r" created, but its Redis server 127.0.0.1:{port} cannot be reached: '
            "connection refused") in warnings[0]
    assert q1(db, "SELECT count(*) FROM batchkit.sinks WHERE name = 'down_r'")[0] == 1

    db.notices.clear()
    create_sink(db, "down_k", "kafka", {"bootstrap.servers": f"127.0.0.1:{port},127.0.0.1:2"})
    assert any(f"Kafka bootstrap server 127.0.0.1:{port} cannot be reached" in n
               for n in db.notices), db.notices

    db.notices.clear()
    q1(db, "SELECT batchkit.alter_sink('down_r', '{\"batch_size\": 5}')")
    assert any('sink "down_r" altered, but' in n for n in db.notices), db.notices
    q1(db, "SELECT batchkit.drop_sink('down_r')")
    q1(db, "SELECT batchkit.drop_sink('down_k')")


def test_unresolvable_host_warns_within_the_deadline(db):
    db.notices.clear()
    t0 = time.monotonic()
    create_sink(db, "nohost", "redis", {"url": "redis://no-such-host.invalid:6379/0",
                                    "command": "xadd"})
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0
    assert any("no-such-host.invalid:6379 cannot be reached" in n for n in db.notices), db.notices
    q1(db, "SELECT batchkit.drop_sink('nohost')")


def test_reachable_servers_give_no_warning(db, services, listener):
    db.notices.clear()
    create_sink(db, "up_r", "redis",
                {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0", "command": "rpush"})
    create_sink(db, "up_k", "kafka", {"bootstrap.servers": f"127.0.0.1:{listener}"})
    q1(db, "SELECT batchkit.alter_sink('up_r', '{\"batch_size\": 5}')")
    assert not [n for n in db.notices if "WARNING" in n], db.notices
    q1(db, "SELECT batchkit.drop_sink('up_r')")
    q1(db, "SELECT batchkit.drop_sink('up_k')")


# ------------------------------------------------------------------------ bad input

def test_bad_options_change_nothing(db):
    create_sink(db, "stable", "redis", {"url": "redis://u:stable-pw@127.0.0.1:1/0",
                                        "command": "set", "key": "t:{id}", "ttl_ms": 1000,
                                        "batch_size": 10})
    before = catalog_snapshot(db)
    bad = [
        ("SELECT batchkit.create_sink('stable2', 'redis', '{\"url\": \"redis://h\", "
         "\"command\": \"xadd\", \"batch_size\": 0}')", "must be an integer from 1 to 1000000"),
        ("SELECT batchkit.create_sink('stable', 'redis', '{\"url\": \"redis://h\", "
         "\"command\": \"xadd\"}')",
         'sink "stable" already exists'),
        ("SELECT batchkit.create_sink('st able', 'redis', '{\"url\": \"redis://h\"}')",
         "may contain only ASCII letters"),
        ("SELECT batchkit.create_sink('k', 'kafka', '{\"bootstrap.servers\": \"b:1\", "
         "\"foo.bar\": 1}')", 'unknown librdkafka property "foo.bar"'),
        ("SELECT batchkit.alter_sink('stable', '{\"command\": \"hset\"}')",
         'option "ttl_ms" applies only to command "set"'),
        ("SELECT batchkit.alter_sink('stable', '{\"url\": \"rediss://h\"}')", "TLS not supported"),
        ("SELECT batchkit.alter_sink('stable', '{\"batch_size\": \"10\"}')", "not the string"),
        ("SELECT batchkit.alter_sink('stable', '{\"url\": null}')", 'needs option "url"'),
        ("SELECT batchkit.alter_sink('stable', '{\"key\": null}')",
         'needs option "key" with a column placeholder'),
        ("SELECT batchkit.alter_sink('nope', '{}')", 'sink "nope" does not exist'),
        ("SELECT batchkit.pause_sink('nope')", 'sink "nope" does not exist'),
        ("SELECT batchkit.drop_sink('nope')", 'sink "nope" does not exist'),
    ]
    for sql, msg in bad:
        with pytest.raises(psycopg2.Error) as e:
            q1(db, sql)
        assert msg in str(e.value), (sql, str(e.value))
        assert e.value.pgcode in ("22023", "42704", "42710"), (sql, e.value.pgcode)
    assert catalog_snapshot(db) == before
    q1(db, "SELECT batchkit.drop_sink('stable')")


def test_concurrent_create_of_one_name_gives_duplicate_error(db, services, dbname):
    first = connect(services, dbname, autocommit=False)
    second = connect(services, dbname)
    try:
        create_sink(first, "racy", "redis", {"url": "redis://127.0.0.1:1", "command": "xadd"})
        result = {}

        def run():
            try:
                create_sink(second, "racy", "redis",
                            {"url": "redis://127.0.0.1:1", "command": "xadd"})
                result["ok"] = True
            except psycopg2.Error as e:
                result["err"] = e

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "the second create_sink should wait for the first transaction"
        first.commit()
        t.join(10)
        assert "err" in result, result
        assert result["err"].pgcode == "42710"
        assert 'sink "racy" already exists' in str(result["err"])
    finally:
        first.close()
        second.close()
    q1(db, "SELECT batchkit.drop_sink('racy')")


# ------------------------------------------------------------------------ notifications

def test_workers_are_notified_at_commit_of_every_change(db, services, dbname):
    listen = connect(services, dbname)
    ex(listen, "LISTEN batchkit_sinks")

    def payloads(wait=2.0):
        """Notifications that arrive within `wait` s (then 0.3 s more for stragglers)."""
        got, deadline = [], time.time() + wait
        while time.time() < deadline:
            if select.select([listen], [], [], 0.1) != ([], [], []):
                listen.poll()
                while listen.notifies:
                    got.append(listen.notifies.pop(0).payload)
                if got:
                    deadline = min(deadline, time.time() + 0.3)
        return got

    create_sink(db, "noisy", "redis", {"url": "redis://127.0.0.1:1", "command": "xadd"})
    assert payloads() == ["noisy"]
    for call in ("alter_sink('noisy', '{\"batch_size\": 3}')", "pause_sink('noisy')",
                 "resume_sink('noisy')", "drop_sink('noisy')"):
        q1(db, f"SELECT batchkit.{call}")
        assert payloads() == ["noisy"], call
    # a failed or rolled-back change notifies nobody
    with pytest.raises(psycopg2.Error):
        q1(db, "SELECT batchkit.create_sink('noisy', 'redis', '{\"url\": 1}')")
    tx = connect(services, dbname, autocommit=False)
    create_sink(tx, "ghost", "redis", {"url": "redis://127.0.0.1:1", "command": "xadd"})
    tx.rollback()
    tx.close()
    assert payloads(1.0) == []
    listen.close()


# ------------------------------------------------------------------------ pg_dump

def test_pg_dump_keeps_the_catalog_and_restores_it(db, services, dbname):
    create_sink(db, "dumped_k", "kafka", {"bootstrap.servers": "127.0.0.1:1",
                                          "sasl.password": "dump-pw", "linger.ms": 3})
    create_sink(db, "dumped_r", "redis", {"url": "redis://u:rpw@127.0.0.1:1/4",
                                          "command": "hset", "key": "t:{id}"})
    q1(db, "SELECT batchkit.pause_sink('dumped_r')")
    env = dict(os.environ, PGHOST=services["PGHOST"], PGPORT=services["PGPORT"],
               PGUSER=services["PGUSER"])
    dump = subprocess.run([f"{PGBIN}/pg_dump", "-d", dbname], env=env, capture_output=True,
                          text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    text = dump.stdout
    assert "CREATE EXTENSION IF NOT EXISTS batchkit" in text
    assert "COPY batchkit.sink (sink_id, name, kind, options, paused, created_at, updated_at)" in text
    assert "COPY batchkit.sink_secret (sink_id, options)" in text
    sink_rows = text.split("COPY batchkit.sink (")[1].split("\\.")[0]
    assert "dumped_k" in sink_rows and "dumped_r" in sink_rows
    assert "dump-pw" not in sink_rows  # the sink table itself holds only ***
    secret_rows = text.split("COPY batchkit.sink_secret (")[1].split("\\.")[0]
    assert "dump-pw" in secret_rows and "rpw@" in secret_rows

    restored = f"{dbname}_restored"
    admin = connect(services)
    ex(admin, f'CREATE DATABASE "{restored}"')
    try:
        r = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", restored],
                           input=text, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rc = connect(services, restored)
        view = "SELECT name, kind, options::text, paused FROM batchkit.sinks ORDER BY name"
        assert qall(rc, view) == qall(db, view)
        for name in ("dumped_k", "dumped_r"):
            cfg = ("SELECT key, value FROM batchkit._sink_config("
                   "(SELECT sink_id FROM batchkit.sinks WHERE name = %s)) ORDER BY key")
            assert qall(rc, cfg, (name,)) == qall(db, cfg, (name,))
        # the sequence came along: a new sink gets a fresh id
        new_id = create_sink(rc, "after_restore", "redis",
                             {"url": "redis://127.0.0.1:1", "command": "xadd"})
        assert new_id > max(r[0] for r in qall(db, "SELECT sink_id FROM batchkit.sink"))
        rc.close()
    finally:
        ex(admin, f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')
        admin.close()
    q1(db, "SELECT batchkit.drop_sink('dumped_k')")
    q1(db, "SELECT batchkit.drop_sink('dumped_r')")

"""Releases: released install scripts stay frozen, ALTER EXTENSION batchkit UPDATE gives the
catalog of a fresh install, and a server upgraded from the 0.1.0 library (built from this
repository's history, scripts/build-release.sh) keeps capturing and delivering — rows the
old library queued, rows captured while the database is still at 0.1.0, and rows after
the update — exactly as a fresh 0.2.0 database delivers the same statements.
"""
import hashlib
import json
import os
import pathlib
import subprocess
import tempfile
import time

import psycopg2
import pytest

from conftest import ROOT, SCRIPTS, connect, free_port, pg_script
from helpers import RedisServer, kafka_read_all, q, stream_entries, uid

SNAPSHOT_SQL = (pathlib.Path(__file__).parent / "catalog_snapshot.sql").read_text()
PGBIN = os.environ.get("BK_PGBIN", "/usr/lib/postgresql/15/bin")
CURRENT = "0.2.0"


def releases():
    """sql/releases.tsv: (version, commit, sha256 of the install script)."""
    out = []
    for line in (ROOT / "sql" / "releases.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            out.append(tuple(line.split("\t")))
    return out


def snapshot(conn):
    return [r[0] for r in q(conn, SNAPSHOT_SQL)]


def assert_same_catalog(fresh, updated, what):
    a, b = snapshot(fresh), snapshot(updated)
    only_fresh = sorted(set(a) - set(b))
    only_updated = sorted(set(b) - set(a))
    assert not only_fresh and not only_updated, (
        f"{what}: the catalogs differ\n--- only in the fresh install:\n" +
        "\n".join(x[:400] for x in only_fresh) + "\n--- only in the updated database:\n" +
        "\n".join(x[:400] for x in only_updated))
    assert a == b
    return a


def new_database(services, name, version=None):
    admin = connect(services)
    q(admin, f'CREATE DATABASE "{name}"')
    admin.close()
    c = connect(services, name)
    q(c, "CREATE EXTENSION batchkit" + (f" VERSION '{version}'" if version else ""))
    return c


def drop_database(services, name):
    admin = connect(services)
    q(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


# ----------------------------------------------------------------------- frozen scripts

def test_released_install_scripts_are_frozen():
    rel = releases()
    assert rel and rel[0][0] == "0.1.0"
    for version, commit, sha in rel:
        script = ROOT / "sql" / f"batchkit--{version}.sql"
        assert script.exists(), f"the install script of released {version} is missing"
        assert hashlib.sha256(script.read_bytes()).hexdigest() == sha, (
            f"{script.name} changed: a released version's install script is never edited; "
            "put the change into the newest upgrade script and sql/install/")
        # and it is what that release's commit built (sql/install/*.sql concatenated)
        if (ROOT / ".git").exists():
            names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", commit,
                                    "sql/install/"], check=True, capture_output=True,
                                   text=True).stdout.split()
            built = b"".join(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{n}"],
                                            check=True, capture_output=True).stdout
                             for n in sorted(names))
            assert built == script.read_bytes(), f"{script.name} is not what {commit} built"


def test_versions_agree():
    control = (ROOT / "batchkit.control").read_text()
    assert f"default_version = '{CURRENT}'" in control
    assert f"EXTVERSION   = {CURRENT}" in (ROOT / "Makefile").read_text()
    # every released version has a path to the current one (one script per step)
    for version, _, _ in releases():
        assert (ROOT / "sql" / f"batchkit--{version}--{CURRENT}.sql").exists() or any(
            p.name.startswith(f"batchkit--{version}--") for p in (ROOT / "sql").iterdir())


def test_update_path_and_library_version(services):
    c = connect(services)
    paths = q(c, "SELECT source, target, path FROM pg_extension_update_paths('batchkit') "
                 "WHERE path IS NOT NULL")
    assert ("0.1.0", CURRENT, f"0.1.0--{CURRENT}") in paths
    c.close()
    name = "bk_upgrade_v_" + uid()
    try:
        c = new_database(services, name)
        assert q(c, "SELECT extversion FROM pg_extension WHERE extname = 'batchkit'")[0][0] == CURRENT
        assert q(c, "SELECT batchkit.version()")[0][0] == CURRENT
        c.close()
    finally:
        drop_database(services, name)


# ----------------------------------------------------------------------- catalog equality

def test_updated_catalog_equals_a_fresh_install(services):
    """ALTER EXTENSION batchkit UPDATE from every released version gives exactly the
    objects, definitions, grants, comments and configuration tables of a fresh install
    (catalog_snapshot.sql), and the same pg_dump --schema-only."""
    fresh_name = "bk_upgrade_fresh_" + uid()
    dbs = [fresh_name]
    try:
        fresh = new_database(services, fresh_name)
        for version, _, _ in releases():
            name = f"bk_upgrade_from_{version.replace('.', '_')}_{uid()}"
            dbs.append(name)
            old = new_database(services, name, version)
            assert q(old, "SELECT extversion FROM pg_extension WHERE extname = 'batchkit'")[0][0] == version
            q(old, "ALTER EXTENSION batchkit UPDATE")
            assert q(old, "SELECT extversion FROM pg_extension WHERE extname = 'batchkit'")[0][0] == CURRENT
            lines = assert_same_catalog(fresh, old, f"updated from {version}")
            # the comparison sees what matters: members of every kind, with their details
            for needle in ("member: function batchkit.capture(", "member: view batchkit.sink_stats",
                           "member: event trigger batchkit_sql_drop",
                           "extension config: batchkit.sink filter", "column batchkit.queue.payload"):
                assert any(x.startswith(needle) for x in lines), needle

            dumps = []
            for db in (fresh_name, name):
                out = subprocess.run([f"{PGBIN}/pg_dump", "--schema-only", "-h", services["PGHOST"],
                                      "-p", services["PGPORT"], "-U", services["PGUSER"], db],
                                     check=True, capture_output=True, text=True).stdout
                # (the \\restrict lines carry a random key of each run)
                dumps.append([ln for ln in out.splitlines()
                              if not ln.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))])
            assert dumps[0] == dumps[1]
            old.close()
        fresh.close()
    finally:
        for db in dbs:
            drop_database(services, db)


# ----------------------------------------------------------------------- the library upgrade

def as_root(cmd):
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    subprocess.run(cmd, check=True)


class Cluster:
    """A throwaway cluster of this test's own (scripts/pg.sh), restartable."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="batchkit-upgrade.", dir="/tmp")
        self.port = free_port()
        pg_script("init", self.dir, self.port)
        self.env = {"PGHOST": os.path.join(self.dir, "sock"), "PGPORT": str(self.port),
                    "PGUSER": "postgres"}

    def start(self):
        pg_script("start", self.dir)

    def stop(self, mode="fast"):
        pg_script("stop", self.dir, mode, check=False)

    def log(self):
        return pathlib.Path(self.dir, "pg.log").read_text(errors="replace")

    def remove(self):
        self.stop("immediate")
        subprocess.run(["rm", "-rf", self.dir], check=False)


@pytest.fixture(scope="module")
def old_library():
    out = subprocess.run(["bash", str(SCRIPTS / "build-release.sh"), "0.1.0"], check=True,
                         capture_output=True, text=True)
    path = out.stdout.strip().splitlines()[-1]
    assert os.path.exists(path)
    return path


def start_on_library(cluster, library):
    """Start the cluster with `library` in place of the installed batchkit.so, then put
    the installed one back. A running server keeps the library it loaded at start
    (shared_preload_libraries; backends and workers find it loaded under the same
    path), so only this server runs the old code; each file is replaced by rename,
    never rewritten, so no running server's mapping changes."""
    pkglibdir = subprocess.run([f"{PGBIN}/pg_config", "--pkglibdir"], check=True,
                               capture_output=True, text=True).stdout.strip()
    lib = os.path.join(pkglibdir, "batchkit.so")
    keep = os.path.join(pkglibdir, f".batchkit.so.upgrade-test.{os.getpid()}")
    as_root(["ln", "-f", lib, keep])
    try:
        as_root(["cp", library, lib + ".old-release"])
        as_root(["mv", "-f", lib + ".old-release", lib])
        cluster.start()
    finally:
        as_root(["mv", "-f", keep, lib])


TABLE = ("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), tags text[], "
         "doc jsonb, at timestamptz)")

# The same statements run in the upgraded database (across the upgrade) and in a fresh
# one; both must deliver the same messages. Part 1 runs on the 0.1.0 library, part 2
# while Redis is down (queued, a batch claimed and in flight at shutdown), part 3 on the
# new library with the database still at 0.1.0, part 4 after ALTER EXTENSION UPDATE.
WORKLOAD = {
    1: ["INSERT INTO items SELECT g, 'item ' || g, g * 1.25, ARRAY['t' || (g % 3)], "
        "jsonb_build_object('n', g, 'odd', g % 2 = 1), '2026-12-01 10:00:00+00'::timestamptz "
        "+ g * interval '1 minute' FROM generate_series(1, 100) g",
        "UPDATE items SET price = price * 2 WHERE id % 10 = 0",
        "DELETE FROM items WHERE id IN (5, 6)",
        "BEGIN; INSERT INTO items VALUES (1000, 'never'); UPDATE items SET name = 'never'; ROLLBACK"],
    2: ["INSERT INTO items SELECT g, NULL, NULL, NULL, NULL, NULL FROM generate_series(101, 200) g",
        "UPDATE items SET id = 1007 WHERE id = 7",
        "BEGIN; UPDATE items SET name = 'kept' WHERE id = 8; SAVEPOINT s; "
        "UPDATE items SET name = 'never' WHERE id = 9; ROLLBACK TO s; COMMIT",
        "UPDATE items SET name = 'thirteen' WHERE id = 13"],
    3: ["UPDATE items SET name = 'v3 ' || id WHERE id BETWEEN 150 AND 160",
        "DELETE FROM items WHERE id > 190 AND id < 1000",
        "SELECT batchkit.enqueue('stream', '{\"event\": \"hello\", \"n\": 3}', key => 'k3')"],
    4: ["INSERT INTO items SELECT g, 'v4', 0.5, '{}', '[]', NULL FROM generate_series(201, 250) g",
        "UPDATE items SET tags = tags || 'x'::text WHERE id < 20",
        "SELECT batchkit.enqueue('stream', '{\"event\": \"bye\"}', key => 'k4')"],
}


def run_part(conn, part):
    for sql in WORKLOAD[part]:
        if sql.startswith("BEGIN"):
            with conn.cursor() as cur:
                cur.execute(sql)  # autocommit: the script's own BEGIN/COMMIT/ROLLBACK
        else:
            q(conn, sql)


def make_sinks(conn, prefix, redis_url, bootstrap, topic):
    q(conn, "SET client_min_messages = error")
    q(conn, "SELECT batchkit.create_sink('stream', 'redis', %s)",
      (json.dumps({"url": redis_url, "command": "xadd", "key": prefix + ":{table}",
                   "outbox_target": prefix + ":outbox", "batch_size": 50}),))
    q(conn, "SELECT batchkit.create_sink('cache', 'redis', %s)",
      (json.dumps({"url": redis_url, "command": "hset", "key": prefix + "c:{id}"}),))
    q(conn, "SELECT batchkit.create_sink('events', 'kafka', %s)",
      (json.dumps({"bootstrap.servers": bootstrap, "topic": topic}),))
    q(conn, "RESET client_min_messages")
    q(conn, TABLE)
    q(conn, "SELECT batchkit.capture('items', 'stream', options => '{\"include_before\": true}')")
    q(conn, "SELECT batchkit.capture('items', 'cache')")
    q(conn, "SELECT batchkit.capture('items', 'events')")


def flush(conn, *sinks):
    for s in sinks:
        assert q(conn, "SELECT batchkit.flush(%s, '60 s')", (s,))[0][0], f"sink {s} did not drain"


def normalized(message):
    """A message without what differs between two databases: txid, seq, ts."""
    m = json.loads(message)
    for k in ("txid", "seq", "ts"):
        m.pop(k, None)
    return m


def wait_for(cond, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def test_library_and_extension_upgrade_from_0_1_0(services, old_library):
    t = uid()
    cluster = Cluster()
    redis = RedisServer(persistent=True)

    def start_redis():  # the sinks log in as an ACL user with a password (a secret option)
        redis.start()
        c = redis.client()
        c.execute_command("ACL", "SETUSER", "bk", "on", ">s3cret", "~*", "&*", "+@all")
        return c
    r = start_redis()
    url = f"redis://bk:s3cret@127.0.0.1:{redis.port}/0"
    bootstrap = services["KAFKA_BOOTSTRAP"]
    try:
        # --- the 0.1.0 library and SQL -----------------------------------------------------
        start_on_library(cluster, old_library)
        up = new_database(cluster.env, "up", "0.1.0")
        assert q(up, "SELECT batchkit.version()")[0][0] == "0.1.0"
        make_sinks(up, "old", url, bootstrap, f"old_{t}")
        q(up, "SELECT batchkit.pause_sink('events')")            # its rows wait throughout
        r.rpush("oldc:13", "not a hash")                         # HSET of id 13: WRONGTYPE
        run_part(up, 1)
        flush(up, "stream", "cache")
        assert q(up, "SELECT count(*) FROM batchkit.dead_letters WHERE sink = 'cache'")[0][0] == 1
        redis.kill9()                                            # the sink goes down
        run_part(up, 2)
        wait_for(lambda: q(up, "SELECT count(*) FROM batchkit.inflight")[0][0] > 0,
                 "the worker claimed no batch while Redis was down")
        assert q(up, "SELECT batchkit.queue_depth('events')")[0][0] > 0
        up.close()
        cluster.stop("fast")

        # --- the new library, the database still at 0.1.0 --------------------------------
        cluster.start()
        up = connect(cluster.env, "up")
        assert q(up, "SELECT batchkit.version(), extversion FROM pg_extension "
                     "WHERE extname = 'batchkit'")[0] == (CURRENT, "0.1.0")
        wait_for(lambda: 'database "up" has batchkit 0.1.0, the library is 0.2.0' in cluster.log(),
                 "the flush worker did not say which ALTER EXTENSION to run")
        run_part(up, 3)                                           # capture keeps working
        r = start_redis()                                         # same port, same data
        flush(up, "stream", "cache")
        assert q(up, "SELECT count(*) FROM batchkit.inflight i JOIN batchkit.sink s "
                     "USING (sink_id) WHERE s.name <> 'events'")[0][0] == 0

        # --- ALTER EXTENSION UPDATE --------------------------------------------------------
        q(up, "ALTER EXTENSION batchkit UPDATE")
        assert q(up, "SELECT extversion FROM pg_extension WHERE extname = 'batchkit'")[0][0] == CURRENT
        run_part(up, 4)
        q(up, "SELECT batchkit.resume_sink('events')")
        flush(up, "stream", "cache", "events")

        # --- the same statements in a fresh 0.2.0 database ---------------------------------
        # (its own Redis database: a sink's fence key is batchkit:fence:<sink name>, and
        # two databases with sinks of one name must not share it)
        fresh = new_database(cluster.env, "fresh")
        make_sinks(fresh, "new", url[:-1] + "1", bootstrap, f"new_{t}")
        r1 = redis.client(db=1)
        r1.rpush("newc:13", "not a hash")
        for part in (1, 2, 3, 4):
            run_part(fresh, part)
        flush(fresh, "stream", "cache", "events")

        # every row delivered exactly as the fresh database delivered it
        old_s, new_s = stream_entries(r, "old:items"), stream_entries(r1, "new:items")
        assert len(old_s) == len(new_s) > 300
        # per key in commit order (the guarantee); the order of different keys inside one
        # statement follows its scan of the table, which heap pruning may change
        def by_key(entries):
            out = {}
            for e in entries:
                m = normalized(e["data"])
                out.setdefault(json.dumps(m["key"], sort_keys=True), []).append(m)
            return out
        assert by_key(old_s) == by_key(new_s)
        assert not any("never" in e["data"] for e in old_s)       # rolled back, never sent
        enq = stream_entries(r, "old:outbox")
        assert [json.loads(e["data"])["event"] for e in enq] == ["hello", "bye"]
        assert [e["data"] for e in enq] == [e["data"] for e in stream_entries(r1, "new:outbox")]
        ids = q(fresh, "SELECT id FROM items ORDER BY id")
        assert q(up, "SELECT id FROM items ORDER BY id") == ids
        for (i,) in ids:
            if i == 13:
                continue
            va, vb = r.hgetall(f"oldc:{i}"), r1.hgetall(f"newc:{i}")
            assert va and va == vb, i
        assert not r.exists("oldc:5") and not r1.exists("newc:5")  # deleted keys

        def kafka_by_key(topic):
            out = {}
            for m in kafka_read_all(bootstrap, topic):
                out.setdefault(m["key"], []).append(
                    (normalized(m["value"]), m["headers"].get("op"), m["headers"].get("table")))
            return out
        ko, kn = kafka_by_key(f"old_{t}"), kafka_by_key(f"new_{t}")
        assert ko == kn and sum(map(len, ko.values())) > 300

        def dead(conn):
            return [(op, key, normalized(msg), err) for op, key, msg, err in
                    q(conn, "SELECT op, key, message, error FROM batchkit.dead_letters "
                            "WHERE sink = 'cache' ORDER BY id")]
        assert dead(up) == dead(fresh) and len(dead(up)) == 3   # the insert and two updates of id 13
        assert "WRONGTYPE" in dead(up)[0][3]

        # statistics carried across the library change (the stats file)
        sent = q(up, "SELECT rows_sent, batches > 0 FROM batchkit.sink_stats WHERE sink = 'stream'")[0]
        assert sent == (len(old_s) + len(enq), True)

        # secrets stay hidden
        opts = q(up, "SELECT options->>'url' FROM batchkit.sinks WHERE name = 'stream'")[0][0]
        assert "s3cret" not in opts and "***" in opts
        q(up, "CREATE ROLE upgrade_reader LOGIN")
        q(up, "GRANT batchkit_admin TO upgrade_reader")
        reader = connect(cluster.env, "up", user="upgrade_reader")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(reader, "SELECT options FROM batchkit.sink_secret")
        assert "s3cret" not in json.dumps(q(reader, "SELECT * FROM batchkit.sinks"), default=str)
        reader.close()

        # the updated database's catalog is a fresh install's, data and all
        assert_same_catalog(fresh, up, "updated with data")

        # and 0.2.0's behaviour is there: a key column cannot be dropped any more
        with pytest.raises(psycopg2.errors.DependentObjectsStillExist):
            q(up, "ALTER TABLE items DROP COLUMN id")
        q(up, "INSERT INTO items (id) VALUES (5000)")
        flush(up, "stream")
        assert json.loads(stream_entries(r, "old:items")[-1]["data"])["key"] == {"id": 5000}
        up.close()
        fresh.close()
        log = cluster.log()
        assert "terminated by signal" not in log
        assert "PANIC" not in log
    finally:
        cluster.remove()
        redis.stop()


def test_update_and_drop_while_writers_and_the_worker_are_busy(services):
    """ALTER EXTENSION UPDATE while writers write captured tables and the worker
    delivers: no writer fails, the worker steps aside and comes back, nothing is lost;
    the script's lock settings end with it; DROP EXTENSION right after CREATE EXTENSION
    (the worker starting) never deadlocks with the worker."""
    import threading
    name = "bk_upgrade_busy_" + uid()
    c = new_database(services, name, "0.1.0")
    errors, stop = [], threading.Event()
    try:
        q(c, "SET client_min_messages = error")
        q(c, "SELECT batchkit.create_sink('busy', 'redis', %s)",
          (json.dumps({"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0",
                       "command": "hset", "key": name + ":{id}"}),))
        q(c, "CREATE TABLE t (id int PRIMARY KEY, n int)")
        q(c, "SELECT batchkit.capture('t', 'busy')")
        q(c, "INSERT INTO t SELECT g, 0 FROM generate_series(1, 50) g")
        before = q(c, "SELECT pid FROM batchkit.workers WHERE kind = 'flush'")

        def writer(k):
            w = connect(services, name)
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    q(w, "UPDATE t SET n = n + 1 WHERE id = %s", (k * 10 + i % 10 + 1,))
                except psycopg2.Error as e:
                    errors.append(str(e))
            w.close()
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        time.sleep(1)
        q(c, "ALTER EXTENSION batchkit UPDATE")
        assert q(c, "SHOW lock_timeout")[0][0] == "0"          # the script's settings ended
        assert q(c, "SHOW deadlock_timeout")[0][0] == "1s"
        time.sleep(1)
        stop.set()
        for th in threads:
            th.join()
        assert errors == []
        assert q(c, "SELECT extversion FROM pg_extension WHERE extname = 'batchkit'")[0][0] == CURRENT
        assert q(c, "SELECT batchkit.flush('busy', '60 s')")[0][0]
        after = q(c, "SELECT pid FROM batchkit.workers WHERE kind = 'flush'")
        assert after and after != before                        # it stepped aside and came back
        import redis as redis_lib
        r = redis_lib.Redis(host="127.0.0.1", port=int(services["REDIS_PORT"]))
        for i, n in q(c, "SELECT id, n FROM t"):
            assert r.hget(f"{name}:{i}", "n") == str(n).encode(), i
        r.close()

        for _ in range(5):                                       # worker starting each time
            q(c, "DROP EXTENSION batchkit CASCADE")
            q(c, "CREATE EXTENSION batchkit")
        q(c, "DROP EXTENSION batchkit CASCADE")
    finally:
        stop.set()
        c.close()
        drop_database(services, name)

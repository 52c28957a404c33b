"""Capture under concurrent OLTP writers (issue 18): a few seconds of pgbench with
8 clients on the four pgbench tables, every table captured and delivering into
Redis while the writers run, then per-key final state checked against the tables.

The mix is the built-in TPC-B transaction plus two scripts whose rolled-back parts
write a poison balance (a SAVEPOINT rolled back, a PL/pgSQL exception block, a
whole transaction rolled back): no poison value may ever reach Redis. Scale 1 puts
every transaction on the one branch row and ten teller rows, so concurrent
transactions update the same keys all the time: the last write delivered for a
key must be the last one committed.
"""
import json
import os
import subprocess
from collections import Counter

from conftest import connect
from helpers import q, uid

PGBIN = os.environ.get("BK_PGBIN", "/usr/lib/postgresql/15/bin")
POISON = 999999999

ROLLBACKS = f"""\\set aid random(1, 100000)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SAVEPOINT s;
UPDATE pgbench_accounts SET abalance = {POISON} WHERE aid = :aid;
UPDATE pgbench_branches SET bbalance = {POISON} WHERE bid = 1;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, {POISON}, now());
ROLLBACK TO s;
DO $$ BEGIN
    UPDATE pgbench_accounts SET abalance = {POISON} WHERE aid = 1 + (:aid % 100000);
    UPDATE pgbench_tellers SET tbalance = {POISON} WHERE tid = 1 + (:aid % 10);
    RAISE EXCEPTION 'undo';
EXCEPTION WHEN raise_exception THEN NULL;
END $$;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, now());
END;
"""
ABORTED = f"""\\set aid random(1, 100000)
BEGIN;
UPDATE pgbench_accounts SET abalance = {POISON} WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (2, 1, :aid, {POISON}, now());
ROLLBACK;
"""


def pg_env(services, dbname):
    return dict(os.environ, PGHOST=services["PGHOST"], PGPORT=services["PGPORT"],
                PGUSER=services["PGUSER"], PGDATABASE=dbname)


def row_hash(cols, row):
    """The hset fields of a row: one per non-NULL column, as PostgreSQL prints it."""
    return {c: str(v) for c, v in zip(cols, row) if v is not None}


def test_concurrent_pgbench_final_state_per_key(db, dbname, services, redis_client, tmp_path):
    env = pg_env(services, dbname)
    pgbench = os.path.join(PGBIN, "pgbench")
    p = subprocess.run([pgbench, "-i", "-q", "-s", "1"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p_ = uid()
    url = "redis://127.0.0.1:%s/0" % services["REDIS_PORT"]

    def sink(name, command, key):
        q(db, "SET client_min_messages = error")
        q(db, "SELECT batchkit.create_sink(%s, 'redis', %s::jsonb)",
          (name, json.dumps({"url": url, "command": command, "key": key})))
    sink(f"acct_{p_}", "hset", f"{p_}:acct:{{aid}}")
    sink(f"tell_{p_}", "hset", f"{p_}:tell:{{tid}}")
    sink(f"br_{p_}", "hset", f"{p_}:br:{{bid}}")
    sink(f"log_{p_}", "xadd", f"{p_}:log:{{table}}")    # every change of every table, in order
    q(db, "SELECT batchkit.capture('pgbench_accounts', %s)", (f"acct_{p_}",))
    q(db, "SELECT batchkit.capture('pgbench_tellers', %s)", (f"tell_{p_}",))
    q(db, "SELECT batchkit.capture('pgbench_branches', %s)", (f"br_{p_}",))
    for t in ("pgbench_accounts", "pgbench_tellers", "pgbench_branches"):
        q(db, "SELECT batchkit.capture(%s, %s)", (t, f"log_{p_}"))
    q(db, "SELECT batchkit.capture('pgbench_history', %s, "
          "options => '{\"key_columns\": [\"tid\", \"aid\", \"mtime\"]}')", (f"log_{p_}",))

    (tmp_path / "rollbacks.sql").write_text(ROLLBACKS)
    (tmp_path / "aborted.sql").write_text(ABORTED)
    os.chmod(tmp_path, 0o755)
    p = subprocess.run([pgbench, "-n", "-c", "8", "-j", "2", "-T", "3", "-b", "tpcb-like@8",
                        "-f", f"{tmp_path}/rollbacks.sql@1", "-f", f"{tmp_path}/aborted.sql@1"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    tx = int(p.stdout.split("number of transactions actually processed: ")[1].split()[0])
    assert tx > 500, p.stdout   # enough concurrent commits to have raced on the same keys
    for s in ("acct", "tell", "br", "log"):
        assert q(db, "SELECT batchkit.flush(%s, '120 s')", (f"{s}_{p_}",))[0][0], s

    # the history: every committed row delivered once, nothing rolled back
    hist = q(db, "SELECT tid, bid, aid, delta FROM pgbench_history")
    assert len(hist) > tx // 2
    entries = [json.loads(f[b"data"]) for _, f in
               redis_client.xrange(f"{p_}:log:pgbench_history")]
    assert all(e["op"] == "insert" for e in entries)
    got = Counter((e["after"]["tid"], e["after"]["bid"], e["after"]["aid"], e["after"]["delta"])
                  for e in entries)
    assert got == Counter(hist)

    # accounts: every touched account's hash equals its row, and only those exist
    cols = ["aid", "bid", "abalance", "filler"]
    rows = q(db, f"SELECT {', '.join(cols)} FROM pgbench_accounts WHERE aid IN "
                 "(SELECT aid FROM pgbench_history)")
    assert len(rows) > 300
    pipe = redis_client.pipeline(transaction=False)
    for r in rows:
        pipe.hgetall(f"{p_}:acct:{r[0]}")
    bad = []
    for r, h in zip(rows, pipe.execute()):
        h = {k.decode(): v.decode() for k, v in h.items()}
        if h != row_hash(cols, r):
            bad.append((r[:3], h.get("abalance")))
    assert not bad, f"{len(bad)} of {len(rows)} accounts differ: {bad[:5]}"
    assert len(list(redis_client.scan_iter(f"{p_}:acct:*", count=10000))) == len(rows)

    # tellers and branches: hot rows updated by every transaction, in commit order
    for t, k, short in (("pgbench_tellers", "tid", "tell"), ("pgbench_branches", "bid", "br")):
        c = [x[0] for x in q(db, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                                 " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (t,))]
        for r in q(db, f"SELECT {', '.join(c)} FROM {t}"):
            h = {k_.decode(): v.decode()
                 for k_, v in redis_client.hgetall(f"{p_}:{short}:{r[c.index(k)]}").items()}
            assert h == row_hash(c, r), (t, r, h)

    # the change log of every table: one entry per committed change, none rolled back
    n_acct = redis_client.xlen(f"{p_}:log:pgbench_accounts")
    n_tell = redis_client.xlen(f"{p_}:log:pgbench_tellers")
    n_br = redis_client.xlen(f"{p_}:log:pgbench_branches")
    assert n_acct == len(hist)              # one account update per committed history row
    assert n_tell == n_br                   # TPC-B updates one teller and one branch
    assert 0 < n_br < len(hist)             # the savepoint script commits a history row too
    for t in ("pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history"):
        for _, f in redis_client.xrange(f"{p_}:log:{t}"):
            assert str(POISON) not in f[b"data"].decode(), (t, f)
    # per key, the log's last version is the table's final one (order across transactions)
    last = {}
    for _, f in redis_client.xrange(f"{p_}:log:pgbench_accounts"):
        e = json.loads(f[b"data"])
        last[e["after"]["aid"]] = e["after"]["abalance"]
    assert last == {r[0]: r[2] for r in rows}
    for s in ("acct", "tell", "br", "log"):
        q(db, "SELECT batchkit.drop_sink(%s, true)", (f"{s}_{p_}",))
    for k in redis_client.scan_iter(f"{p_}:*", count=10000):
        redis_client.delete(k)

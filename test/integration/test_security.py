"""Security suite (issue 7): privileges, secrets, payload privacy, batch_upsert
under privileges and row-level security, search_path hijacking of what batchkit
runs with more rights than its caller, SQL/RESP injection, absurd input, and
oversized rows.

Roles are real login roles connecting over the network: `plain` (no grant at
all), `monitor` (member of pg_monitor, which may read batchkit's views) and
`admin` (member of batchkit_admin, which manages sinks but is no superuser).
Secrets are passed to failing calls through a table, so the statement text
never contains them: what reaches an error message or the server log can only
come from batchkit. Deliveries are read back by redis-py and kafka-python.
"""
import json
import os
import time
import uuid

import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

from conftest import connect, make_sink
from helpers import RedisServer, kafka_read_all, q, stream_entries, uid

SECRETS = {
    "sasl": "S3cr3t-sasl-pw-7f1c",
    "keypw": "S3cr3t-key-pw-90ab",
    "pem": "S3cr3tPEMmaterial55",
    "oauth": "S3cr3t-oauth-cfg-d00d",
    "redis": "S3cr3t-redis-pw-4242",
}
NEW_SECRET = "N3w-s3cr3t-in-a-bad-call-1e9"
ALL_SECRETS = list(SECRETS.values()) + [NEW_SECRET]


# ------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def roles(services, dbname):
    sfx = uuid.uuid4().hex[:6]
    names = {"plain": f"bk_sec_plain_{sfx}", "monitor": f"bk_sec_mon_{sfx}",
             "admin": f"bk_sec_admin_{sfx}"}
    su = connect(services, dbname)
    q(su, f'CREATE ROLE "{names["plain"]}" LOGIN')
    q(su, f'CREATE ROLE "{names["monitor"]}" LOGIN IN ROLE pg_monitor')
    q(su, f'CREATE ROLE "{names["admin"]}" LOGIN IN ROLE batchkit_admin')
    yield names
    q(su, "SELECT batchkit.drop_sink(name, true) FROM batchkit.sinks")
    for n in names.values():
        q(su, f'DROP OWNED BY "{n}" CASCADE')
        q(su, f'DROP ROLE "{n}"')
    su.close()


@pytest.fixture
def as_role(services, dbname, roles):
    opened = []

    def _open(which, autocommit=True):
        c = connect(services, dbname, user=roles[which], autocommit=autocommit)
        opened.append(c)
        return c
    yield _open
    for c in opened:
        c.close()


@pytest.fixture(scope="module")
def private_redis():
    """A redis-server of this module (injection tests must not touch the shared one)."""
    with RedisServer(persistent=False) as srv:
        yield srv


def server_log(services):
    return os.path.join(services["BATCHKIT_RUN_DIR"], "pg", "pg.log")


def log_size(services):
    return os.path.getsize(server_log(services))


def log_since(services, offset):
    with open(server_log(services), "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def postmaster_start(conn):
    return q(conn, "SELECT pg_postmaster_start_time()")[0][0]


def catalog_snapshot(db):
    """Everything a management call could change (read as superuser)."""
    return (q(db, "SELECT s.sink_id, s.name, s.kind, s.options::text, s.paused, s.updated_at, "
                  "x.options::text FROM batchkit.sink s LEFT JOIN batchkit.sink_secret x "
                  "USING (sink_id) ORDER BY 1"),
            q(db, "SELECT capture_id, source::text, sink_id, events, key_columns, columns "
                  "FROM batchkit.capture ORDER BY 1"),
            q(db, "SELECT dead_letter_id, sink_id, message FROM batchkit.dead_letter ORDER BY 1"),
            q(db, "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
                  "WHERE tgname LIKE 'batchkit%%' ORDER BY 1, 2"))


def error_text(e):
    d = e.diag
    return " | ".join(str(x) for x in (e.pgerror, d.message_primary, d.message_detail,
                                         d.message_hint, d.context) if x)


def expect_error(conn, stmt, args=None, code=None, contains=None):
    with pytest.raises(psycopg2.Error) as ei:
        q(conn, stmt, args)
    if not conn.autocommit:
        conn.rollback()
    if code is not None:
        assert ei.value.pgcode == code, (stmt, ei.value.pgcode, str(ei.value))
    if contains is not None:
        assert contains in str(ei.value), (stmt, str(ei.value))
    return ei.value


def readable_relations(conn):
    return [r[0] for r in q(conn, """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'batchkit' AND c.relkind IN ('r', 'v', 'p', 'm')
           AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1""")]


def everything_readable(conn):
    """All a role can read in schema batchkit (every readable table and view, and
    metrics() when it exists), as one text."""
    out = []
    for rel in readable_relations(conn):
        rows = q(conn, f"SELECT row_to_json(x)::text FROM {rel} x")
        out.extend(r[0] for r in rows)
    if q(conn, "SELECT to_regprocedure('batchkit.metrics()') IS NOT NULL")[0][0]:
        if q(conn, "SELECT has_function_privilege('batchkit.metrics()', 'EXECUTE')")[0][0]:
            out.append(str(q(conn, "SELECT batchkit.metrics()")[0][0]))
    return "\n".join(out)


def secret_sinks(db, services, prefix):
    """A Kafka sink and a Redis sink holding every kind of secret."""
    kafka = f"{prefix}_k"
    redis_ = f"{prefix}_r"
    make_sink(db, kafka, "kafka", {
        "bootstrap.servers": services["KAFKA_BOOTSTRAP"], "topic": f"{prefix}_topic",
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
        "sasl.username": "svc", "sasl.password": SECRETS["sasl"],
        "ssl.key.password": SECRETS["keypw"],
        "ssl.key.pem": f"-----BEGIN PRIVATE KEY-----\n{SECRETS['pem']}\n-----END PRIVATE KEY-----\n",
        "sasl.oauthbearer.config": f"principal=svc extension_x={SECRETS['oauth']}"})
    make_sink(db, redis_, "redis", {
        "url": f"redis://app:{SECRETS['redis']}@127.0.0.1:{services['REDIS_PORT']}/0",
        "command": "xadd", "key": "sec:{table}"})
    return kafka, redis_


def assert_no_secret(text, where):
    for s in ALL_SECRETS:
        assert s not in text, f"secret {s!r} visible in {where}"


# ------------------------------------------------------------------------ privileges

def test_roles_without_batchkit_admin_cannot_manage_anything(db, services, as_role):
    kafka, redis_ = secret_sinks(db, services, f"mgmt_{uid()}")
    t = f"t_mgmt_{uid()}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, redis_))
    q(db, "SELECT batchkit.pause_sink(%s)", (redis_,))
    sink_id = q(db, "SELECT sink_id FROM batchkit.sinks WHERE name = %s", (redis_,))[0][0]
    q(db, "INSERT INTO batchkit.dead_letter (sink_id, seq, op, source, key, message, error) "
          "VALUES (%s, 1, 'insert', 'public.x', '1', '{\"dead\": 1}', 'test')", (sink_id,))
    dl_id = q(db, "SELECT max(dead_letter_id) FROM batchkit.dead_letter")[0][0]
    before = catalog_snapshot(db)
    calls = [
        ("SELECT batchkit.create_sink('evil', 'redis', "
         "'{\"url\": \"redis://127.0.0.1:1/0\", \"command\": \"xadd\"}')", "create sinks"),
        (f"SELECT batchkit.alter_sink('{kafka}', '{{\"batch_size\": 1}}')", "alter sinks"),
        (f"SELECT batchkit.alter_sink('{redis_}', '{{\"url\": \"redis://evil:1/0\"}}')", "alter sinks"),
        (f"SELECT batchkit.drop_sink('{kafka}', true)", "drop sinks"),
        (f"SELECT batchkit.pause_sink('{kafka}')", "pause sinks"),
        (f"SELECT batchkit.resume_sink('{redis_}')", "resume sinks"),
        (f"SELECT batchkit.capture('{t}', '{kafka}')", None),
        (f"SELECT batchkit.uncapture('{t}', '{redis_}')", None),
        (f"SELECT batchkit.replay_dead_letters('{redis_}')", None),
        (f"SELECT batchkit.replay_dead_letters('{redis_}', ARRAY[{dl_id}]::bigint[])", None),
        (f"SELECT batchkit.purge_dead_letters('{redis_}')", None),
        (f"SELECT batchkit._requeue('{redis_}', ARRAY['insert'], ARRAY['k'], ARRAY['1'], "
         "ARRAY['{{}}'])", None),
        ("SELECT batchkit._catalog_changed()", None),
        ("SELECT * FROM batchkit.maintain_queue()", None),
        (f"SELECT batchkit.enqueue('{redis_}', '{{}}')", None),
        (f"SELECT batchkit.enqueue_many('{redis_}', ARRAY['{{}}'::jsonb])", None),
        (f"SELECT * FROM batchkit.claim_batch('{redis_}')", None),
        (f"SELECT batchkit.ack_batch('{redis_}', 1)", None),
        (f"SELECT batchkit.flush('{redis_}', '1 ms')", None),
        (f"SELECT * FROM batchkit._sink_config({sink_id})", None),
        ("UPDATE batchkit.sink SET paused = false", None),
        ("DELETE FROM batchkit.dead_letter", None),
        ("INSERT INTO batchkit.capture (source, sink_id, events, key_columns) "
         f"VALUES ('{t}'::regclass, {sink_id}, '{{insert}}', '{{id}}')", None),
        ("UPDATE batchkit.queue_state SET current_segment = 1", None),
        ("DELETE FROM batchkit.inflight", None),
    ]
    for role in ("plain", "monitor"):
        conn = as_role(role)
        for stmt, what in calls:
            e = expect_error(conn, stmt, code="42501")
            if what:
                assert f"permission denied to {what}" in str(e), (role, stmt, str(e))
    assert catalog_snapshot(db) == before
    q(db, "SELECT batchkit.drop_sink(%s, true)", (kafka,))
    q(db, "SELECT batchkit.drop_sink(%s, true)", (redis_,))


def test_batchkit_admin_member_may_do_what_others_may_not(db, services, as_role):
    """The other side of the test above: a member of batchkit_admin (no superuser)
    manages sinks, captures and dead letters, as the README promises, so the
    denials above come from the role and not from a broken function."""
    admin = as_role("admin")
    t = f"t_adm_{uid()}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    # SELECT (capture sends the rows out) and TRIGGER (capture creates triggers)
    q(db, f'GRANT SELECT, TRIGGER ON {t} TO "{q(admin, "SELECT current_user")[0][0]}"')
    sink = f"adm_{uid()}"
    url = f"redis://127.0.0.1:{services['REDIS_PORT']}/0"
    failed = []

    def run(steps):
        for what, stmt, args, expect in steps:
            try:
                got = q(admin, stmt, args)
                if expect is not None and got[0][0] != expect:
                    failed.append(f"{what}: returned {got[0][0]}, expected {expect}")
            except psycopg2.Error as e:
                failed.append(f"{what}: {e.pgcode} {str(e).splitlines()[0]}")

    run([("create_sink", "SELECT batchkit.create_sink(%s, 'redis', %s)",
          (sink, json.dumps({"url": url, "command": "xadd", "key": f"adm:{sink}"})), None),
         ("alter_sink", "SELECT batchkit.alter_sink(%s, '{\"batch_size\": 10}')", (sink,), None),
         ("pause_sink", "SELECT batchkit.pause_sink(%s)", (sink,), None)])
    if q(db, "SELECT count(*) FROM batchkit.sinks WHERE name = %s", (sink,))[0][0] == 1:
        for i in (1, 2):
            q(db, "INSERT INTO batchkit.dead_letter (sink_id, seq, op, target, key, message, error) "
                  "SELECT sink_id, %s, 'message', %s, 'k', '{\"dl\": 1}', 'test' "
                  "FROM batchkit.sinks WHERE name = %s", (i, f"adm:{sink}", sink))
    run([("capture", "SELECT batchkit.capture(%s::regclass, %s)", (t, sink), None),
         ("enqueue", "SELECT batchkit.enqueue(%s, '{\"a\": 1}')", (sink,), None),
         ("queue_depth", "SELECT batchkit.queue_depth(%s)", (sink,), 1),
         ("dead_letters view", "SELECT count(*) FROM batchkit.dead_letters WHERE sink = %s",
          (sink,), 2),
         ("replay_dead_letters", "SELECT batchkit.replay_dead_letters(%s, "
          "(SELECT array_agg(id) FROM (SELECT min(id) AS id FROM batchkit.dead_letters "
          "WHERE sink = %s) m))", (sink, sink), 1),
         ("purge_dead_letters", "SELECT batchkit.purge_dead_letters(%s)", (sink,), 1),
         ("resume_sink", "SELECT batchkit.resume_sink(%s)", (sink,), None),
         ("flush", "SELECT batchkit.flush(%s, '30 s')", (sink,), True),
         ("uncapture", "SELECT batchkit.uncapture(%s::regclass, %s)", (t, sink), None),
         ("drop_sink", "SELECT batchkit.drop_sink(%s, true)", (sink,), None)])
    q(db, "SELECT batchkit.drop_sink(name, true) FROM batchkit.sinks WHERE name = %s", (sink,))
    assert not failed, "a batchkit_admin member cannot: " + "; ".join(failed)


def test_secrets_are_never_readable_by_any_role(db, services, as_role):
    kafka, redis_ = secret_sinks(db, services, f"rd_{uid()}")
    ids = [q(db, "SELECT sink_id FROM batchkit.sinks WHERE name = %s", (n,))[0][0]
           for n in (kafka, redis_)]
    # the superuser sees the clear values where they live (the test is not vacuous)
    clear = q(db, "SELECT options::text FROM batchkit.sink_secret WHERE sink_id = ANY(%s)", (ids,))
    assert all(s in " ".join(r[0] for r in clear) for s in SECRETS.values())
    for role in ("plain", "monitor", "admin"):
        conn = as_role(role)
        for stmt in ("SELECT * FROM batchkit.sink_secret", "SELECT * FROM batchkit.sink",
                     f"SELECT * FROM batchkit._sink_config({ids[0]})",
                     f"SELECT * FROM batchkit._sink_config({ids[1]})"):
            expect_error(conn, stmt, code="42501")
        assert_no_secret(everything_readable(conn), f"what {role} can read")
    for role in ("monitor", "admin"):
        conn = as_role(role)
        opts = dict(q(conn, "SELECT name, options FROM batchkit.sinks WHERE name IN (%s, %s)",
                      (kafka, redis_)))
        assert opts[kafka]["sasl.password"] == "***"
        assert opts[kafka]["ssl.key.password"] == "***"
        assert opts[kafka]["ssl.key.pem"] == "***"
        assert opts[kafka]["sasl.oauthbearer.config"] == "***"
        assert opts[kafka]["sasl.username"] == "svc"
        assert opts[redis_]["url"] == f"redis://app:***@127.0.0.1:{services['REDIS_PORT']}/0"
    # the plain role cannot even list the sinks
    expect_error(as_role("plain"), "SELECT * FROM batchkit.sinks", code="42501")
    q(db, "SELECT batchkit.drop_sink(%s, true)", (kafka,))
    q(db, "SELECT batchkit.drop_sink(%s, true)", (redis_,))


def test_failed_calls_never_reveal_secrets_in_errors_or_the_server_log(db, services, as_role):
    """Bad alter_sink/create_sink calls by an admin, on sinks that hold secrets and
    with new secrets in the bad options: no error field and no server log line
    (default logging settings) contains a secret. The worker's own failures
    (wrong Redis password, unparsable key material) do not log one either."""
    pfx = f"lg_{uid()}"
    offset = log_size(services)
    kafka, redis_ = secret_sinks(db, services, pfx)
    admin = as_role("admin")
    port = services["REDIS_PORT"]
    ns = NEW_SECRET
    bad = [
        (kafka, {"batch_size": 0}),
        (kafka, {"acks": "1"}),
        (kafka, {"sasl.password": {"nested": ns}}),
        (kafka, {"sasl.password": [ns]}),
        (kafka, {"sasl.password": ns, "security.protocol": "nope"}),
        (kafka, {"sasl.password": ns, "batch_size": -1}),
        (kafka, {"sasl.password": ns, "ssl.key.location": "/etc/ssl/private/x.key"}),
        (kafka, {"ssl.key.password": ns, "no_such_option": 1}),
        (kafka, {"sasl.oauthbearer.config": ns, "enable.sasl.oauthbearer.unsecure.jwt": "maybe"}),
        (kafka, {"bootstrap.servers": None}),
        (kafka, {"topic": "bad topic {nope}"}),
        (redis_, {"url": f"redis://app:{ns}@127.0.0.1:99999/0"}),
        (redis_, {"url": f"redis://app:{ns}%zz@127.0.0.1:{port}/0"}),
        (redis_, {"url": f"redis://app:{ns}@127.0.0.1:{port}/0?x=1"}),
        (redis_, {"url": f"rediss://app:{ns}@127.0.0.1:{port}/0"}),
        (redis_, {"url": f"unix://app:{ns}@/{'p' * 120}"}),
        (redis_, {"url": f"redis://app:{ns}@127.0.0.1:{port}/99999999999"}),
        (redis_, {"url": f"redis://app:{ns}@127.0.0.1:{port}/0", "command": "bogus"}),
        (redis_, {"url": f"redis://app:{ns}@bad host:{port}/0"}),
        (redis_, {"password": ns}),
        (redis_, {"command": "set"}),
        (redis_, {"url": None}),
        ("no_such_sink", {"url": f"redis://app:{ns}@127.0.0.1:{port}/0"}),
    ]
    q(admin, "CREATE TEMP TABLE bad_opts (n int, sink text, o jsonb)")
    for i, (sink, o) in enumerate(bad):
        q(admin, "INSERT INTO bad_opts VALUES (%s, %s, %s)", (i, sink, json.dumps(o)))
    before = catalog_snapshot(db)
    for i, (sink, o) in enumerate(bad):
        e = expect_error(admin, "SELECT batchkit.alter_sink((SELECT sink FROM bad_opts WHERE n = %s), "
                                "(SELECT o FROM bad_opts WHERE n = %s))", (i, i))
        assert_no_secret(error_text(e), f"the error of alter_sink({sink}, {o})")
    # create_sink with a name that exists, or bad options, plus a secret
    creates = [(kafka, "kafka", {"bootstrap.servers": "127.0.0.1:1", "sasl.password": ns}),
               ("bad name!", "redis", {"url": f"redis://u:{ns}@127.0.0.1:1/0", "command": "xadd"}),
               ("newsink", "redis", {"url": f"redis://u:{ns}@127.0.0.1:1/0", "command": "nope"}),
               ("newsink", "kafka", {"bootstrap.servers": "127.0.0.1:1", "sasl.password": ns,
                                     "ssl.ca.location": "/etc/passwd"}),
               ("newsink", "mongo", {"password": ns})]
    for i, (name, kind, o) in enumerate(creates):
        q(admin, "INSERT INTO bad_opts VALUES (%s, %s, %s)", (100 + i, name, json.dumps(o)))
        e = expect_error(admin, "SELECT batchkit.create_sink((SELECT sink FROM bad_opts WHERE n = %s), "
                                "%s, (SELECT o FROM bad_opts WHERE n = %s))", (100 + i, kind, 100 + i))
        assert_no_secret(error_text(e), f"the error of create_sink({name}, {kind}, {o})")
    assert catalog_snapshot(db) == before

    # the worker's failures: a Redis password the server refuses, key material
    # librdkafka cannot parse. Rows wait for the Redis sink so the worker connects.
    t = f"t_{pfx}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, redis_))
    q(db, f"INSERT INTO {t} VALUES (1)")
    q(db, "SELECT batchkit.alter_sink(%s, '{\"security.protocol\": \"SSL\"}')", (kafka,))
    deadline = time.time() + 20
    want = (f'batchkit sink "{redis_}": redis: cannot connect', f'batchkit sink "{kafka}" cannot be opened')
    while time.time() < deadline:
        text = log_since(services, offset)
        if all(w in text for w in want):
            break
        time.sleep(0.3)
    text = log_since(services, offset)
    assert want[0] in text and "WRONGPASS" in text, text[-3000:]
    assert want[1] in text and "ssl.key.pem" in text, text[-3000:]
    assert "ERROR:" in text and "STATEMENT:" in text       # the failed calls were logged...
    assert_no_secret(text, "the server log")               # ...without a secret
    q(db, "SELECT batchkit.drop_sink(%s, true)", (kafka,))
    q(db, "SELECT batchkit.drop_sink(%s, true)", (redis_,))


def test_queued_payloads_of_unreadable_tables_stay_private(db, services, as_role):
    """A writer may write a captured table it cannot read; nobody without
    batchkit_admin can read what was queued or dead-lettered from it."""
    sink = f"priv_{uid()}"
    make_sink(db, sink, "redis", {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0",
                                  "command": "xadd", "key": f"{sink}:{{table}}"})
    q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
    t = f"t_priv_{uid()}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, ssn text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    marker = "SSN-" + uuid.uuid4().hex
    roles_ = {r: as_role(r) for r in ("plain", "monitor")}
    q(db, f"GRANT INSERT ON {t} TO " + ", ".join(
        f'"{q(c, "SELECT current_user")[0][0]}"' for c in roles_.values()))
    # the plain role writes the table (capture needs no grant) but cannot read it
    q(roles_["plain"], f"INSERT INTO {t} VALUES (1, %s)", (marker,))
    expect_error(roles_["plain"], f"SELECT * FROM {t}", code="42501")
    sink_id = q(db, "SELECT sink_id FROM batchkit.sinks WHERE name = %s", (sink,))[0][0]
    q(db, "INSERT INTO batchkit.dead_letter (sink_id, seq, op, source, key, message, error) "
          "VALUES (%s, 2, 'insert', %s, '2', %s, 'test')",
      (sink_id, f"public.{t}", json.dumps({"id": 2, "ssn": marker})))
    assert q(db, "SELECT batchkit.queue_depth(%s)", (sink,))[0][0] == 1
    for role, conn in roles_.items():
        for stmt in ("SELECT * FROM batchkit.queue", "SELECT * FROM batchkit.queue_0",
                     "SELECT * FROM batchkit.queue_1", "SELECT * FROM batchkit.queue_2",
                     "SELECT * FROM batchkit.inflight", "SELECT * FROM batchkit.dead_letter",
                     "SELECT * FROM batchkit.dead_letters",
                     f"SELECT * FROM batchkit.claim_batch('{sink}')",
                     f"SELECT * FROM batchkit.claim_batch('{sink}', 10, 1000000, 'row')"):
            expect_error(conn, stmt, code="42501")
        assert marker not in everything_readable(conn), f"{role} can read a queued payload"
    # nothing was consumed by the attempts
    assert q(db, "SELECT batchkit.queue_depth(%s)", (sink,))[0][0] == 1
    q(db, "SELECT batchkit.drop_sink(%s, true)", (sink,))


def test_writer_cannot_run_code_as_the_queue_owner_through_search_path(db, services, as_role,
                                                                      roles):
    """The capture trigger and the outbox functions write the queue as its owner (a
    superuser). A writer that owns a schema can put operators there that shadow
    pg_catalog's (=, ->>, -, ...) and put that schema first in its search_path:
    batchkit's own queries must never resolve to them, or the writer's code runs
    as the superuser (CVE-2018-1058 class). The shadowing functions here only
    record who runs them."""
    sink = f"hij_{uid()}"
    make_sink(db, sink, "redis", {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0",
                                  "command": "xadd", "key": f"{sink}:{{table}}"})
    q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
    t = f"t_hij_{uid()}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, v text, n int)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    seen = f"hij_seen_{uid()}"
    q(db, f"CREATE TABLE public.{seen} (who text, session text, what text)")
    q(db, f"GRANT INSERT ON public.{seen} TO PUBLIC")
    shadows = [  # (operator, left, right, pg_catalog operator it forwards to)
        ("=", "integer", "integer"), ("=", "text", "text"), ("=", "bigint", "bigint"),
        ("=", "oid", "oid"), ("=", "boolean", "boolean"), ("->>", "jsonb", "text"),
        ("-", "integer", "integer"), ("<", "bigint", "bigint"), (">", "bigint", "bigint"),
        ("<=", "bigint", "bigint"), (">=", "bigint", "bigint"), ("+", "bigint", "bigint"),
        ("+", "integer", "integer"), ("<>", "integer", "integer"), ("||", "text", "text"),
    ]
    ret = {"=": "boolean", "<": "boolean", ">": "boolean", "<=": "boolean", ">=": "boolean",
           "<>": "boolean", "->>": "text", "||": "text"}
    for which in ("plain", "admin"):
        role = roles[which]
        schema = f"own_{which}_{uid()}"
        q(db, f'CREATE SCHEMA {schema} AUTHORIZATION "{role}"')
        q(db, f'GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO "{role}"')
        conn = as_role(which)
        for i, (op, left, right) in enumerate(shadows):
            rtype = ret.get(op, left)
            q(conn, f"""CREATE FUNCTION {schema}.f{i}(a {left}, b {right}) RETURNS {rtype}
                        LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
                        BEGIN
                            INSERT INTO public.{seen} VALUES (current_user, session_user, '{op}');
                            RETURN a OPERATOR(pg_catalog.{op}) b;
                        END $f$""")
            q(conn, f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
                    f"FUNCTION = {schema}.f{i})")
        q(conn, f"SET search_path = {schema}, pg_catalog")
        # the shadows work: the writer's own query resolves to them
        q(conn, "SELECT 1 = 1")
        assert q(db, f"SELECT count(*) FROM public.{seen} WHERE session = %s", (role,))[0][0] == 1
        base = 100 if which == "admin" else 0
        q(conn, f"INSERT INTO public.{t} VALUES ({base + 1}, 'a', 1), ({base + 2}, 'b', 2)")
        q(conn, f"UPDATE public.{t} SET v = 'c' WHERE id = {base + 1}")
        q(conn, f"DELETE FROM public.{t} WHERE id = {base + 2}")
        if which == "admin":
            q(conn, "SELECT batchkit.enqueue(%s, '{\"x\": 1}', 'k')", (sink,))
            q(conn, "SELECT batchkit.enqueue_many(%s, ARRAY['{}'::jsonb, '{}'::jsonb])", (sink,))
            q(conn, "SELECT batchkit.queue_depth(%s)", (sink,))
            q(conn, "SELECT batchkit.flush(%s, '10 ms')", (sink,))
        q(conn, "RESET search_path")
    assert q(db, "SELECT batchkit.queue_depth(%s)", (sink,))[0][0] == 11   # all of it was captured
    ran_as = q(db, f"SELECT DISTINCT who, session, what FROM public.{seen} WHERE who <> session "
                   "ORDER BY 1, 2, 3")
    assert ran_as == [], ("a writer's operator ran under another identity "
                          f"(who, session, operator): {ran_as}")
    q(db, "SELECT batchkit.drop_sink(%s, true)", (sink,))


def test_database_owner_cannot_run_code_in_the_flush_worker_through_search_path(services):
    """The flush worker is a superuser session in each database with batchkit. A
    database owner (no superuser) may ALTER DATABASE ... SET search_path, which
    every new session of the database, the worker included, starts with: the
    worker's queries must not resolve to operators the owner put first in it."""
    from helpers import connect_retry, wait_flush_worker
    sfx = uid()
    owner, dbn = f"bk_sec_dbo_{sfx}", f"bk_sec_owned_{sfx}"
    admin = connect_retry(services, "postgres")
    q(admin, f'CREATE ROLE "{owner}" LOGIN')
    q(admin, f'CREATE DATABASE "{dbn}" OWNER "{owner}"')
    try:
        su = connect_retry(services, dbn)
        q(su, "CREATE EXTENSION batchkit")
        q(su, "CREATE TABLE public.seen (who text, what text, backend text)")
        q(su, "GRANT INSERT ON public.seen TO PUBLIC")
        o = connect_retry(services, dbn, user=owner)
        q(o, "CREATE SCHEMA own")
        for i, (op, left, right, rtype) in enumerate([
                ("||", "jsonb", "jsonb", "jsonb"), ("=", "integer", "integer", "boolean"),
                ("=", "bigint", "bigint", "boolean"), ("=", "text", "text", "boolean"),
                ("->>", "jsonb", "text", "text"), ("-", "integer", "integer", "integer"),
                ("<=", "bigint", "bigint", "boolean"), ("+", "bigint", "bigint", "bigint")]):
            q(o, f"""CREATE FUNCTION own.f{i}(a {left}, b {right}) RETURNS {rtype}
                     LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
                     BEGIN
                         INSERT INTO public.seen VALUES (current_user, '{op}',
                             (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()));
                         RETURN a OPERATOR(pg_catalog.{op}) b;
                     END $f$""")
            q(o, f"CREATE OPERATOR own.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = own.f{i})")
        q(o, f'ALTER DATABASE "{dbn}" SET search_path = own, pg_catalog')
        o.close()
        # the worker starts anew with the database's settings
        old_pid = wait_flush_worker(services, dbn)
        q(su, "SELECT pg_terminate_backend(%s)", (old_pid,))
        deadline = time.time() + 30
        while wait_flush_worker(services, dbn) == old_pid:
            assert time.time() < deadline, "the flush worker was not restarted"
            time.sleep(0.2)
        su.close()
        su = connect_retry(services, dbn)
        q(su, "SET search_path = pg_catalog")
        make_sink(su, "w", "redis", {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0",
                                     "command": "xadd", "key": f"{dbn}:{{table}}"})
        q(su, "CREATE TABLE public.t (id int PRIMARY KEY)")
        q(su, "SELECT batchkit.capture('public.t', 'w')")
        q(su, "INSERT INTO public.t SELECT g FROM generate_series(1, 10) g")
        assert q(su, "SELECT batchkit.flush('w', '30 s')")[0][0]
        # (the test's own superuser sessions start with the owner's search_path too:
        # only what batchkit's worker ran counts)
        ran = q(su, "SELECT who, backend, what, count(*) FROM public.seen "
                    "WHERE backend IS DISTINCT FROM 'client backend' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
        su.close()
        assert ran == [], f"the database owner's operators ran inside batchkit as: {ran}"
    finally:
        q(admin, f'DROP DATABASE IF EXISTS "{dbn}" WITH (FORCE)')
        q(admin, f'DROP ROLE IF EXISTS "{owner}"')
        admin.close()


# ------------------------------------------------------------------------ batch_upsert

UPSERT_VARIANTS = ("jsonb", "text", "array", "from")


def upsert_as(conn, variant, table, rows, **kw):
    """batch_upsert through one of its four entry points; returns (inserted, updated).
    The array and staging variants carry exactly the columns the rows name (a
    temporary table typed like the target's columns), as the JSON ones do."""
    extra = "".join(f", {k} => %s" for k in kw)
    args = list(kw.values())
    if variant == "jsonb":
        return q(conn, f"SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::jsonb{extra})",
                 [table, json.dumps(rows)] + args)[0]
    if variant == "text":
        return q(conn, f"SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::text{extra})",
                 [table, json.dumps(rows)] + args)[0]
    cols = []
    for row in rows:
        cols.extend(c for c in row if c not in cols)
    stage = f"stage_{uid()}"
    q(conn, sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM jsonb_populate_recordset(NULL::{}, %s)")
      .format(sql.Identifier(stage), sql.SQL(", ").join(map(sql.Identifier, cols)),
              sql.SQL(table)).as_string(conn), (json.dumps(rows),))
    try:
        if variant == "array":
            return q(conn, f"SELECT * FROM batchkit.batch_upsert(%s::regclass, "
                           f"(SELECT array_agg(s) FROM {stage} s){extra})", [table] + args)[0]
        return q(conn, f"SELECT * FROM batchkit.batch_upsert_from(%s::regclass, %s::regclass{extra})",
                 [table, stage] + args)[0]
    finally:
        q(conn, f"DROP TABLE IF EXISTS {stage}")


def test_batch_upsert_never_bypasses_privileges(db, services, as_role, roles):
    """INSERT without UPDATE: an upsert that would update fails and changes nothing,
    through every entry point; column privileges and the source of
    batch_upsert_from are checked too."""
    t = f"t_noupd_{uid()}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, v text, secret_col text)")
    q(db, f"INSERT INTO {t} VALUES (1, 'orig', 'hidden')")
    user = roles["plain"]
    q(db, f'GRANT SELECT (id, v), INSERT (id, v) ON {t} TO "{user}"')
    conn = as_role("plain")
    snap = lambda: q(db, f"SELECT * FROM {t} ORDER BY id")  # noqa: E731
    before = snap()
    for variant in UPSERT_VARIANTS:
        # would update row 1: needs UPDATE
        with pytest.raises(psycopg2.Error) as e:
            upsert_as(conn, variant, t, [{"id": 1, "v": "stolen"}, {"id": 50, "v": "new"}])
        assert e.value.pgcode == "42501", (variant, str(e.value))
        # a column without INSERT privilege
        with pytest.raises(psycopg2.Error) as e:
            upsert_as(conn, variant, t, [{"id": 60, "v": "x", "secret_col": "mine"}],
                      update_columns="{}")
        assert e.value.pgcode == "42501", (variant, str(e.value))
        assert snap() == before, variant
    # insert-or-skip needs only INSERT: new keys go in, existing ones stay untouched
    for i, variant in enumerate(UPSERT_VARIANTS):
        got = upsert_as(conn, variant, t, [{"id": 1, "v": "stolen"}, {"id": 100 + i, "v": "new"}],
                        update_columns="{}")
        assert tuple(got) == (1, 0), (variant, got)
    assert q(db, f"SELECT v, secret_col FROM {t} WHERE id = 1")[0] == ("orig", "hidden")
    # UPDATE on v only: updating v works, updating secret_col does not
    q(db, f'GRANT UPDATE (v) ON {t} TO "{user}"')
    assert tuple(upsert_as(conn, "jsonb", t, [{"id": 1, "v": "mine"}])) == (0, 1)
    before = snap()
    for variant in UPSERT_VARIANTS:
        with pytest.raises(psycopg2.Error) as e:
            upsert_as(conn, variant, t, [{"id": 1, "v": "x", "secret_col": "overwritten"}])
        assert e.value.pgcode == "42501", (variant, str(e.value))
    assert snap() == before
    # batch_upsert_from a source the caller cannot read
    src = f"src_{uid()}"
    q(db, f"CREATE TABLE {src} AS SELECT 1 AS id, 'from unreadable source'::text AS v")
    with pytest.raises(psycopg2.Error) as e:
        q(conn, "SELECT * FROM batchkit.batch_upsert_from(%s::regclass, %s::regclass)", (t, src))
    assert e.value.pgcode == "42501", str(e.value)
    # ... nor a target it cannot write, from a source it can read
    other = f"t_ro_{uid()}"
    q(db, f"CREATE TABLE {other} (id int PRIMARY KEY, v text)")
    q(db, f'GRANT SELECT ON {other} TO "{user}"')
    for variant in UPSERT_VARIANTS:
        with pytest.raises(psycopg2.Error) as e:
            upsert_as(conn, variant, other, [{"id": 1, "v": "x"}])
        assert e.value.pgcode == "42501", (variant, str(e.value))
    assert snap() == before
    assert q(db, f"SELECT count(*) FROM {other}")[0][0] == 0


def test_batch_upsert_never_bypasses_row_level_security(db, as_role, roles):
    """Rows outside the caller's policy are neither inserted nor updated, through
    every entry point, and a batch mixing allowed and forbidden rows changes nothing."""
    t = f"t_rls_{uid()}"
    user = roles["plain"]
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, owner text NOT NULL DEFAULT current_user, "
          "balance int, note text)")
    q(db, f"INSERT INTO {t} VALUES (1, 'someone_else', 100, 'theirs'), (2, %s, 10, 'mine')", (user,))
    q(db, f'GRANT SELECT, INSERT, UPDATE ON {t} TO "{user}"')
    q(db, f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY")
    q(db, f"CREATE POLICY p_sel ON {t} FOR SELECT USING (owner = current_user)")
    q(db, f"CREATE POLICY p_ins ON {t} FOR INSERT WITH CHECK (owner = current_user)")
    q(db, f"CREATE POLICY p_upd ON {t} FOR UPDATE USING (owner = current_user) "
          "WITH CHECK (owner = current_user)")
    conn = as_role("plain")
    snap = lambda: q(db, f"SELECT * FROM {t} ORDER BY id")  # noqa: E731
    forbidden = [
        [{"id": 1, "balance": 0}],                                   # someone else's row
        [{"id": 1, "balance": 0, "owner": user}],                    # ... taken over
        [{"id": 3, "balance": 5, "owner": "someone_else"}],          # a row outside the policy
        [{"id": 2, "owner": "someone_else"}],                        # giving one's row away
        [{"id": 2, "balance": 11}, {"id": 1, "balance": 0}],         # mixed: all or nothing
        [{"id": 4, "balance": 4}, {"id": 5, "balance": 5, "owner": "someone_else"}],
    ]
    before = snap()
    for variant in UPSERT_VARIANTS:
        for rows in forbidden:
            with pytest.raises(psycopg2.Error) as e:
                upsert_as(conn, variant, t, rows)
            assert e.value.pgcode == "42501" and "row-level security" in str(e.value), \
                (variant, rows, str(e.value))
            assert snap() == before, (variant, rows)
        # insert-or-skip of someone else's key: skipped, not overwritten
        got = upsert_as(conn, variant, t, [{"id": 1, "balance": 0}], update_columns="{}")
        assert tuple(got) == (0, 0), (variant, got)
        assert snap() == before
    # what the policy allows works (the test is not vacuous)
    for i, variant in enumerate(UPSERT_VARIANTS):
        got = upsert_as(conn, variant, t, [{"id": 2, "balance": 20 + i}, {"id": 10 + i, "balance": 1}])
        assert tuple(got) == (1, 1), (variant, got)
    rows = q(db, f"SELECT id, owner, balance FROM {t} ORDER BY id")
    assert rows[0] == (1, "someone_else", 100)
    assert rows[1] == (2, user, 23)
    assert [r[0] for r in rows[2:]] == [10, 11, 12, 13] and all(r[1] == user for r in rows[2:])


# ------------------------------------------------------------------------ injection

def victim_ok(db, victim):
    assert q(db, "SELECT to_regclass(%s) IS NOT NULL", (victim,))[0][0], f"{victim} was dropped"
    assert q(db, f"SELECT count(*) FROM {victim}")[0][0] == 3


WEIRD_TABLE = 'x"; DROP TABLE {victim}; --'
WEIRD_COL = "v'); DROP TABLE {victim}; --"
RESP_COL = "c\r\n*1\r\n$8\r\nFLUSHALL\r\n"
RESP_VALUE = "n\r\n*1\r\n$8\r\nFLUSHALL\r\n"


def test_injection_through_identifiers_names_options_templates(db, services, private_redis):
    """Hostile table, column, sink and option names, key templates and values fail
    cleanly or are carried as data: the victim table survives, Redis runs only the
    commands batchkit meant (canary keys intact, no other key appears)."""
    victim = f"victim_{uid()}"
    q(db, f"CREATE TABLE {victim} (id int)")
    q(db, f"INSERT INTO {victim} VALUES (1), (2), (3)")
    wt, wc = WEIRD_TABLE.format(victim=victim), WEIRD_COL.format(victim=victim)
    q(db, sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {} text, name text, {} text)").format(
        sql.Identifier(wt), sql.Identifier(wc), sql.Identifier(RESP_COL)).as_string(db))
    reg = q(db, "SELECT oid::regclass::text FROM pg_class WHERE relname = %s", (wt,))[0][0]
    r = private_redis.client()
    r.flushall()
    canaries = {f"canary:{i}": f"v{i}" for i in range(5)}
    for k, v in canaries.items():
        r.set(k, v)
    url = private_redis.url
    s_set, s_hset, s_x = f"inj_set_{uid()}", f"inj_hset_{uid()}", f"inj_x_{uid()}"
    make_sink(db, s_set, "redis", {"url": url, "command": "set", "key": "{id}; DEL *",
                                   "format": "row"})
    make_sink(db, s_hset, "redis", {"url": url, "command": "hset", "key": "h:{name}"})
    make_sink(db, s_x, "redis", {"url": url, "command": "xadd", "key": "x:{table}"})
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (reg, s_set))
    q(db, "SELECT batchkit.capture(%s::regclass, %s, options => %s)",
      (reg, s_hset, json.dumps({"columns": ["id", wc, "name", RESP_COL]})))
    q(db, "SELECT batchkit.capture(%s::regclass, %s, ARRAY['insert'])", (reg, s_x))
    victim_ok(db, victim)

    # rows with hostile values, written by plain SQL and by batch_upsert
    q(db, sql.SQL("INSERT INTO {} VALUES (1, %s, %s, 'a')").format(sql.Identifier(wt)).as_string(db),
      ("'; DROP TABLE " + victim + "; --", RESP_VALUE))
    got = q(db, "SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::jsonb, "
                "conflict_columns => ARRAY['id'], update_columns => ARRAY[%s, %s])",
            (reg, json.dumps([{"id": 2, wc: "two", "name": "plain", RESP_COL: "b"},
                              {"id": 1, wc: "updated", RESP_COL: "c"}]), wc, RESP_COL))[0]
    assert tuple(got) == (1, 1)
    victim_ok(db, victim)
    for s in (s_set, s_hset, s_x):
        assert q(db, "SELECT batchkit.flush(%s, '60 s')", (s,))[0][0], s
    rows = {row["id"]: row for row in (json.loads(x[0]) for x in
            q(db, sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(
                sql.Identifier(wt)).as_string(db)))}
    assert rows[1][wc] == "updated" and rows[1]["name"] == RESP_VALUE and rows[1][RESP_COL] == "c"
    # Redis holds exactly the keys batchkit meant to write
    keys = {k.decode() for k in r.keys("*")}
    expected_keys = set(canaries) | {"1; DEL *", "2; DEL *", f"h:{RESP_VALUE}", "h:plain", f"x:{wt}"}
    expected_keys |= {f"batchkit:fence:{s}" for s in (s_set, s_hset, s_x)}   # README: the fence
    assert keys == expected_keys, keys ^ expected_keys
    for k, v in canaries.items():
        assert r.get(k) == v.encode()
    assert json.loads(r.get("1; DEL *")) == rows[1]
    assert json.loads(r.get("2; DEL *")) == rows[2]
    h = {k.decode(): v.decode() for k, v in r.hgetall(f"h:{RESP_VALUE}").items()}
    assert h == {"id": "1", wc: "updated", "name": RESP_VALUE, RESP_COL: "c"}
    entries = stream_entries(r, f"x:{wt}")
    assert [json.loads(e["data"])["key"]["id"] for e in entries] == [1, 2]
    assert json.loads(entries[0]["data"])["table"] == f"public.{wt}"
    r.close()

    # hostile names, option keys and values, template and capture columns: clean errors
    before = catalog_snapshot(db)
    redis_opts = json.dumps({"url": url, "command": "xadd"})
    bad = [
        ("SELECT batchkit.create_sink(%s, 'redis', %s)", ("a; drop table " + victim, redis_opts), "22023"),
        ("SELECT batchkit.create_sink(%s, 'redis', %s)", ("a'); DROP TABLE " + victim + "; --", redis_opts), "22023"),
        ("SELECT batchkit.create_sink(%s, 'redis', %s)", ('a"b', redis_opts), "22023"),
        ("SELECT batchkit.create_sink(%s, 'redis', %s)", ("a b", redis_opts), "22023"),
        ("SELECT batchkit.create_sink(%s, 'redis', %s)", ("ä", redis_opts), "22023"),
        ("SELECT batchkit.create_sink(%s, 'redis', %s)", ("x" * 64, redis_opts), "22023"),
        ("SELECT batchkit.create_sink(%s, 'redis', %s)", ("", redis_opts), "22023"),
        ("SELECT batchkit.create_sink('ok_name', %s, %s)", ("redis'; DROP TABLE " + victim, redis_opts), "22023"),
        ("SELECT batchkit.alter_sink(%s, %s)", (s_x, json.dumps({'x"; DROP': 1})), "22023"),
        ("SELECT batchkit.alter_sink(%s, %s)", (s_x, json.dumps({f"x'; DROP TABLE {victim}; --": 1})), "22023"),
        ("SELECT batchkit.create_sink('ok_k', 'kafka', %s)",
         (json.dumps({"bootstrap.servers": "127.0.0.1:1", f"x.y'; DROP TABLE {victim}; --": 1}),), "22023"),
        ("SELECT batchkit.create_sink('ok_k', 'kafka', %s)",
         (json.dumps({"bootstrap.servers": "127.0.0.1:1", "topic": f"t'; DROP TABLE {victim}; --"}),), "22023"),
        ("SELECT batchkit.alter_sink(%s, %s)", (s_x, json.dumps({"key": "{id}; DROP TABLE " + victim + "; {nope"})), "22023"),
        ("SELECT batchkit.alter_sink(%s, %s)", (s_x, json.dumps({"command": "xadd\r\nFLUSHALL"})), "22023"),
        ("SELECT batchkit.pause_sink(%s)", (f"{s_x}'; DROP TABLE {victim}; --",), "42704"),
        ("SELECT batchkit.drop_sink(%s, true)", (f"{s_x}; DROP TABLE {victim}",), "42704"),
        ("SELECT batchkit.capture(%s, %s)", (f"{victim}; DROP TABLE {victim}", s_x), None),
        ("SELECT batchkit.capture(%s::regclass, %s, options => %s)",
         (victim, s_x, json.dumps({"key_columns": [f"id); DROP TABLE {victim}; --"]})), "42703"),
        ("SELECT batchkit.capture(%s::regclass, %s, options => %s)",
         (victim, s_x, json.dumps({"key_columns": ["id"], "columns": [f"id\"; DROP TABLE {victim}; --"]})), "42703"),
        ("SELECT batchkit.capture(%s::regclass, %s, ARRAY[%s])",
         (victim, s_x, f"insert'; DROP TABLE {victim}; --"), "22023"),
        ("SELECT batchkit.uncapture(%s::regclass, %s)", (victim, f"x'; DROP TABLE {victim}; --"), None),
        ("SELECT * FROM batchkit.batch_upsert(%s::regclass, '[{\"id\": 1}]'::jsonb, "
         "conflict_columns => ARRAY[%s])", (victim, f"id) DO NOTHING; DROP TABLE {victim}; --"), None),
        ("SELECT * FROM batchkit.batch_upsert(%s::regclass, '[{\"id\": 1}]'::jsonb, "
         "update_columns => ARRAY[%s])", (reg, f"{wc}\" = 1; DROP TABLE {victim}; --"), None),
        ("SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::jsonb)",
         (reg, json.dumps([{"id": 9, f"name\" = 1; DROP TABLE {victim}; --": 1}])), None),
        ("SELECT * FROM batchkit.batch_upsert_from(%s::regclass, %s)",
         (reg, f"{victim}; DROP TABLE {victim}"), None),
        ("SELECT * FROM batchkit.batch_upsert_from(%s::regclass, %s::regclass, order_column => %s)",
         (reg, victim, f"id; DROP TABLE {victim}"), None),
    ]
    for stmt, args, code in bad:
        expect_error(db, stmt, args, code=code)
        victim_ok(db, victim)
    assert catalog_snapshot(db) == before
    assert q(db, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(wt)).as_string(db))[0][0] == 2

    # A Redis key template may name any column (the table is known only at delivery),
    # so a hostile placeholder is accepted; at delivery it names no column: the sink
    # stops with a configuration error (README), sends nothing, and resumes, with the
    # same rows, once the template is fixed.
    hostile = "{id'); DROP TABLE " + victim + "; --}"
    q(db, "SELECT batchkit.alter_sink(%s, %s)", (s_x, json.dumps({"key": hostile})))
    q(db, sql.SQL("INSERT INTO {} (id, name) VALUES (3, 'three')").format(
        sql.Identifier(wt)).as_string(db))
    for s in (s_set, s_hset):          # the other sinks deliver the row as usual
        assert q(db, "SELECT batchkit.flush(%s, '60 s')", (s,))[0][0], s
    assert not q(db, "SELECT batchkit.flush(%s, '3 s')", (s_x,))[0][0]
    victim_ok(db, victim)
    r = private_redis.client()
    assert {k.decode() for k in r.keys("*")} == expected_keys | {"3; DEL *", "h:three"}
    assert r.xlen(f"x:{wt}") == 2
    q(db, "SELECT batchkit.alter_sink(%s, %s)", (s_x, json.dumps({"key": "x:{table}"})))
    assert q(db, "SELECT batchkit.flush(%s, '60 s')", (s_x,))[0][0]
    assert [json.loads(e["data"])["key"]["id"] for e in stream_entries(r, f"x:{wt}")] == [1, 2, 3]
    r.close()
    q(db, "SELECT batchkit.uncapture(%s::regclass, %s)", (reg, s_hset))
    for s in (s_set, s_hset, s_x):
        q(db, "SELECT batchkit.drop_sink(%s, true)", (s,))
    victim_ok(db, victim)


# ------------------------------------------------------------------------ absurd input

def test_absurd_options_and_arguments_get_clear_errors(db, services):
    sink = f"abs_{uid()}"
    make_sink(db, sink, "redis", {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0",
                                  "command": "xadd", "key": "abs:{table}"})
    t = f"t_abs_{uid()}"
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, v int)")
    start = postmaster_start(db)
    before = catalog_snapshot(db)
    A = lambda o: ("SELECT batchkit.alter_sink(%s, %s)", (sink, json.dumps(o)))  # noqa: E731
    cases = [
        (A({"batch_size": 0}), "22023", 'option "batch_size" must be an integer from 1 to 1000000'),
        (A({"batch_size": 10 ** 12}), "22023", "not 1000000000000"),
        (A({"batch_size": -1}), "22023", 'option "batch_size" must be an integer'),
        (A({"batch_size": 1.5}), "22023", 'option "batch_size" must be an integer'),
        (A({"batch_size": "100"}), "22023", "not the string"),
        (A({"max_wait_ms": -1}), "22023", 'option "max_wait_ms" must be an integer from 0'),
        (A({"send_timeout_ms": -1}), "22023", 'option "send_timeout_ms" must be an integer'),
        (A({"send_timeout_ms": 0}), "22023", 'option "send_timeout_ms" must be an integer'),
        (A({"retry_backoff_ms": -100}), "22023", 'option "retry_backoff_ms" must be an integer'),
        (A({"retry_backoff_max_ms": -1}), "22023", 'option "retry_backoff_max_ms" must be an integer'),
        (A({"on_full": "wait", "on_full_timeout_ms": -1}), "22023", 'option "on_full_timeout_ms"'),
        (A({"connect_timeout_ms": -1}), "22023", 'option "connect_timeout_ms" must be an integer'),
        (A({"max_queue": -1}), "22023", 'option "max_queue" must be an integer'),
        (A({"max_batch_bytes": 0}), "22023", 'option "max_batch_bytes" must be an integer'),
        (A({"max_batch_bytes": 10 ** 15}), "22023", 'option "max_batch_bytes" must be an integer'),
        (A({"max_attempts": 0}), "22023", 'option "max_attempts" must be an integer'),
        (A({"maxlen": -1}), "22023", 'option "maxlen" must be an integer'),
        (A({"format": "xml"}), "22023", 'option "format" must be'),
        (("SELECT batchkit.alter_sink(%s, %s::jsonb)", (sink, '{"batch_size": ')), "22P02", "invalid input syntax for type json"),
        (("SELECT batchkit.alter_sink(%s, %s::jsonb)", (sink, "[1, 2]")), "22023", "sink options must be a JSON object"),
        (("SELECT batchkit.create_sink('abs2', 'redis', %s::jsonb)", ("{url: redis}",)), "22P02", "invalid input syntax for type json"),
        (("SELECT batchkit.create_sink('abs2', 'redis', NULL)", None), "22023", "must not be null"),
        (("SELECT batchkit.flush(%s, '-5 seconds')", (sink,)), "22023", "timeout must not be negative"),
        (("SELECT batchkit.purge_dead_letters(%s, '-1 day')", (sink,)), "22023", "older_than must not be negative"),
        (("SELECT * FROM batchkit.claim_batch(%s, 0)", (sink,)), "22023", "must be positive"),
        (("SELECT * FROM batchkit.claim_batch(%s, 10, -1)", (sink,)), "22023", "must be positive"),
        (("SELECT batchkit.enqueue(%s, %s::jsonb)", (sink, "{not json")), "22P02", "invalid input syntax for type json"),
        (("SELECT batchkit.capture(%s::regclass, %s, options => %s::jsonb)", (t, sink, "{bad")), "22P02", "invalid input syntax"),
        (("SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::text)", (t, '[{"id": 1')), "22P02", "invalid input syntax for type json"),
        (("SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::jsonb)", (t, '{"id": 1}')), "22023", "rows must be a JSON array"),
        (("SELECT * FROM batchkit.batch_upsert(%s::regclass, '[{\"id\": 1}]'::jsonb, chunk_size => 0)", (t,)), "22023", "chunk_size must be a positive"),
        (("SELECT * FROM batchkit.batch_upsert(%s::regclass, '[{\"id\": 1}]'::jsonb, chunk_size => -5)", (t,)), "22023", "chunk_size must be a positive"),
        (("SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::jsonb)", (t, '[{"id": 1, "v": 1e400}]')), "22003", "row 1, column \"v\""),
    ]
    for (stmt, args), code, msg in cases:
        expect_error(db, stmt, args, code=code, contains=msg)
    assert catalog_snapshot(db) == before
    assert q(db, f"SELECT count(*) FROM {t}")[0][0] == 0
    assert postmaster_start(db) == start
    q(db, "SELECT batchkit.drop_sink(%s, true)", (sink,))


MB = 1024 * 1024


def test_100mb_row_and_payload_are_dead_lettered_and_kafka_sink_keeps_flowing(db, services):
    """A 100 MB row and a 100 MB enqueue()d message, above the producer's
    message.max.bytes: retried max_attempts times, dead-lettered; the rows around
    them and after them are delivered; the server does not crash."""
    t, sink, topic = f"t_big_{uid()}", f"bigk_{uid()}", f"bigk_{uid()}"
    make_sink(db, sink, "kafka", {"bootstrap.servers": services["KAFKA_BOOTSTRAP"], "topic": topic,
                                  "message.max.bytes": 1000000, "max_attempts": 2,
                                  "retry_backoff_ms": 50, "retry_backoff_max_ms": 200})
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, payload text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    start = postmaster_start(db)
    t0 = time.time()
    try:
        q(db, f"INSERT INTO {t} VALUES (1, 'small')")
        q(db, f"INSERT INTO {t} VALUES (2, repeat('x', {100 * MB}))")
        q(db, "SELECT batchkit.enqueue(%s, jsonb_build_object('blob', repeat('y', %s)), "
              "key => 'blob')", (sink, 100 * MB))
        q(db, f"INSERT INTO {t} VALUES (3, 'small')")
        assert q(db, "SELECT batchkit.flush(%s, '120 s')", (sink,))[0][0], \
            "the oversized row blocks the sink"
        dl = q(db, "SELECT key, op, length(message), attempts, error FROM batchkit.dead_letters "
                   "WHERE sink = %s ORDER BY id", (sink,))
        assert [(d[0], d[1], d[3]) for d in dl] == [("2", "insert", 2), ("blob", "message", 2)], dl
        assert all(d[2] > 100 * MB and "too large" in d[4].lower() for d in dl), dl
        q(db, f"INSERT INTO {t} VALUES (4, 'after')")
        assert q(db, "SELECT batchkit.flush(%s, '60 s')", (sink,))[0][0]
        ids = sorted(json.loads(m["value"])["key"]["id"]
                     for m in kafka_read_all(services["KAFKA_BOOTSTRAP"], topic))
        assert ids == [1, 3, 4]
        assert postmaster_start(db) == start
        print(f"100 MB row + payload dead-lettered and sink drained in {time.time() - t0:.1f}s")
        assert q(db, "SELECT batchkit.purge_dead_letters(%s)", (sink,))[0][0] == 2
    finally:
        q(db, "SELECT batchkit.drop_sink(%s, true)", (sink,))


@pytest.fixture
def small_bulk_redis():
    """A redis-server that refuses bulk strings over 1 MB (proto-max-bulk-len)."""
    with RedisServer(persistent=False, extra_args=["--proto-max-bulk-len", "1mb"]) as srv:
        yield srv


def test_row_larger_than_redis_accepts_is_dead_lettered_not_blocking(db, small_bulk_redis):
    """The Redis server refuses a 4 MB row (over its proto-max-bulk-len, 1 MB): the
    row must go to dead letters and the rows after it must still be delivered
    (issue 7: an oversized row is dead-lettered instead of blocking the sink).
    4 MB rather than 100 MB: the server's limit is what matters, and a sink that
    does block would re-encode 100 MB on every retry.
    The sink's max_message_bytes is set to the server's proto-max-bulk-len (its
    default, 512 MiB, is Redis's default)."""
    t, sink = f"t_bigr_{uid()}", f"bigr_{uid()}"
    make_sink(db, sink, "redis", {"url": small_bulk_redis.url, "command": "xadd",
                                  "key": "big:{table}", "max_attempts": 2,
                                  "max_message_bytes": MB,
                                  "retry_backoff_ms": 50, "retry_backoff_max_ms": 500})
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, payload text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    try:
        q(db, f"INSERT INTO {t} VALUES (1, 'small')")
        q(db, f"INSERT INTO {t} VALUES (2, repeat('x', {4 * MB}))")
        q(db, f"INSERT INTO {t} VALUES (3, 'small')")
        drained = q(db, "SELECT batchkit.flush(%s, '30 s')", (sink,))[0][0]
        r = small_bulk_redis.client()
        ids = [json.loads(e["data"])["key"]["id"] for e in stream_entries(r, f"big:{t}")]
        r.close()
        dl = q(db, "SELECT key FROM batchkit.dead_letters WHERE sink = %s", (sink,))
        assert drained and ids == [1, 3] and dl == [("2",)], \
            f"sink blocked by an oversized row: drained={drained}, delivered ids {ids}, dead letters {dl}"
    finally:
        q(db, "SELECT batchkit.drop_sink(%s, true)", (sink,))

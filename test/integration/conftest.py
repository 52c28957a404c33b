"""Fixtures for batchkit's integration tests: real PostgreSQL, Redis and Kafka.

scripts/test.sh starts the services and exports their settings (PGHOST, PGPORT,
REDIS_PORT, KAFKA_BOOTSTRAP, BATCHKIT_RUN_DIR). Run pytest on its own and this
file starts them itself (scripts/services.sh) and stops them at the end: a test
never skips because a service is missing.
"""
import os
import pathlib
import subprocess
import time
import uuid

import psycopg2
import psycopg2.extensions
import pytest
import redis as redis_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def _load_env(path):
    env = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env


@pytest.fixture(scope="session")
def services():
    """The running services' settings; starts them when the caller did not."""
    started_here = False
    if not os.environ.get("BATCHKIT_RUN_DIR"):
        subprocess.run(["bash", str(SCRIPTS / "services.sh"), "start"], check=True)
        started_here = True
        run_dir = (ROOT / ".run" / "current").read_text().strip()
        os.environ.update(_load_env(pathlib.Path(run_dir) / "env"))
    env = {k: os.environ[k] for k in
           ("BATCHKIT_RUN_DIR", "PGHOST", "PGPORT", "PGUSER", "PGDATA", "REDIS_PORT",
            "KAFKA_BOOTSTRAP")}
    yield env
    if started_here:
        subprocess.run(["bash", str(SCRIPTS / "services.sh"), "stop"], check=False)


def connect(services, dbname="postgres", autocommit=True, **kw):
    conn = psycopg2.connect(host=services["PGHOST"], port=services["PGPORT"],
                            user=kw.pop("user", services["PGUSER"]), dbname=dbname, **kw)
    conn.autocommit = autocommit
    return conn


def wait_for_server(services, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            connect(services).close()
            return
        except psycopg2.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def dbname(services, request):
    """A fresh database with batchkit installed, one per test module."""
    name = "bk_" + request.module.__name__.split(".")[-1][:40] + "_" + uuid.uuid4().hex[:6]
    admin = connect(services)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    conn = connect(services, name)
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION batchkit")
    conn.close()
    yield name
    admin = connect(services)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def db(services, dbname):
    """An autocommit connection to the module's database."""
    conn = connect(services, dbname)
    yield conn
    conn.close()


@pytest.fixture
def redis_client(services):
    r = redis_lib.Redis(host="127.0.0.1", port=int(services["REDIS_PORT"]), socket_timeout=10)
    yield r
    r.close()


@pytest.fixture
def kafka_bootstrap(services):
    return services["KAFKA_BOOTSTRAP"]


def pg_script(*args, check=True):
    """scripts/pg.sh: init/start/stop extra throwaway clusters."""
    return subprocess.run(["bash", str(SCRIPTS / "pg.sh"), *map(str, args)], check=check,
                          capture_output=True, text=True)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_sink(conn, name, kind="kafka", options=None, paused=False):
    """Create a sink. paused=True for tests that consume the queue by hand
    (claim_batch/ack_batch): the flush worker then leaves the sink alone."""
    import json
    opts = options or {}
    with conn.cursor() as cur:
        cur.execute("SELECT to_regprocedure('batchkit.create_sink(text,text,jsonb)') IS NOT NULL")
        if cur.fetchone()[0]:
            base = ({"bootstrap.servers": "127.0.0.1:9", "topic": "t"} if kind == "kafka"
                    else {"url": "redis://127.0.0.1:9/0", "command": "xadd", "key": "k"})
            base.update(opts)
            cur.execute("SET client_min_messages = error")
            cur.execute("SELECT batchkit.create_sink(%s, %s, %s)", (name, kind, json.dumps(base)))
            cur.execute("RESET client_min_messages")
            if paused:
                cur.execute("SELECT batchkit.pause_sink(%s)", (name,))
        else:
            cur.execute("INSERT INTO batchkit.sink (name, kind, options, paused) VALUES (%s, %s, %s, %s)",
                        (name, kind, json.dumps(opts), paused))


def set_sink_options(conn, name, options):
    import json
    with conn.cursor() as cur:
        cur.execute("SELECT to_regprocedure('batchkit.alter_sink(text,jsonb)') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("SET client_min_messages = error")
            cur.execute("SELECT batchkit.alter_sink(%s, %s)", (name, json.dumps(options)))
            cur.execute("RESET client_min_messages")
        else:
            cur.execute("UPDATE batchkit.sink SET options = options || %s WHERE name = %s",
                        (json.dumps(options), name))
            cur.execute("SELECT batchkit._catalog_changed()")


def drain(conn, sink, max_rows=10000, fmt="envelope"):
    """Consume everything queued for a sink through claim_batch/ack_batch; returns the rows."""
    out = []
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT batch_seq, seq, op, source, key, message "
                        "FROM batchkit.claim_batch(%s, %s, 1073741824, %s)", (sink, max_rows, fmt))
            rows = cur.fetchall()
            if not rows:
                return out
            out.extend(rows)
            cur.execute("SELECT batchkit.ack_batch(%s, %s)", (sink, rows[0][0]))

"""Smoke tests: the services are real, and the extension's bones work on them."""
import os
import signal
import subprocess
import tempfile
import time

import psycopg2
import pytest

from conftest import connect, free_port, pg_script, wait_for_server


def test_redis_set_get_through_redis_cli(services):
    port = services["REDIS_PORT"]
    key = f"bk:smoke:{os.getpid()}"
    out = subprocess.run(["redis-cli", "-p", port, "SET", key, "hello batchkit"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "OK"
    out = subprocess.run(["redis-cli", "-p", port, "GET", key],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "hello batchkit"
    info = subprocess.run(["redis-cli", "-p", port, "INFO", "server"],
                          capture_output=True, text=True, timeout=10).stdout
    assert "redis_version:" in info


def test_kafka_dev_broker_answers_metadata_with_kcat(services):
    out = subprocess.run(["kcat", "-b", services["KAFKA_BOOTSTRAP"], "-L", "-J", "-m", "10"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    import json
    meta = json.loads(out.stdout)
    assert len(meta["brokers"]) == 3


def _launcher_pid(services):
    conn = connect(services)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'batchkit launcher'")
            rows = cur.fetchall()
            return rows[0][0] if rows else None
    finally:
        conn.close()


def test_launcher_runs_and_comes_back_after_kill_9(services):
    pid = _launcher_pid(services)
    assert pid, "the batchkit launcher is not in pg_stat_activity"
    os.kill(pid, signal.SIGKILL)
    # A SIGKILLed child makes the postmaster reinitialise: every backend restarts.
    time.sleep(1)
    wait_for_server(services)
    deadline = time.time() + 30
    new_pid = None
    while time.time() < deadline:
        try:
            new_pid = _launcher_pid(services)
        except psycopg2.OperationalError:
            new_pid = None
        if new_pid and new_pid != pid:
            break
        time.sleep(0.2)
    assert new_pid and new_pid != pid, "the launcher did not come back after kill -9"


def test_launcher_reloads_config_on_sighup_and_stays_up(services):
    pid = _launcher_pid(services)
    assert pid
    conn = connect(services)
    with conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET batchkit.naptime = '250ms'")
        cur.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)
    with conn.cursor() as cur:
        cur.execute("SHOW batchkit.naptime")
        assert cur.fetchone()[0] == "250ms"
        cur.execute("ALTER SYSTEM RESET batchkit.naptime")
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    assert _launcher_pid(services) == pid, "SIGHUP must not restart the launcher"
    log = open(os.path.join(services["BATCHKIT_RUN_DIR"], "pg", "pg.log")).read()
    assert "batchkit launcher started" in log


@pytest.fixture(scope="module")
def unpreloaded_server():
    """A second throwaway cluster *without* shared_preload_libraries."""
    d = tempfile.mkdtemp(prefix="batchkit-nopreload.", dir="/tmp")
    port = free_port()
    pg_script("init", d, port, "--no-preload")
    pg_script("start", d)
    svc = {"PGHOST": os.path.join(d, "sock"), "PGPORT": str(port), "PGUSER": "postgres"}
    yield svc
    pg_script("stop", d, "immediate", check=False)
    subprocess.run(["rm", "-rf", d], check=False)


def test_create_extension_without_preload(unpreloaded_server):
    conn = connect(unpreloaded_server)
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION batchkit")
        cur.execute("SELECT batchkit.version(), batchkit.preloaded()")
        version, preloaded = cur.fetchone()
        assert version == "0.2.0"
        assert preloaded is False
        with pytest.raises(psycopg2.Error) as err:
            cur.execute("SELECT * FROM batchkit.workers")
        assert "batchkit must be loaded via shared_preload_libraries" in str(err.value)
        assert err.value.pgcode == "55000"
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'batchkit launcher'")
        assert cur.fetchone()[0] == 0
    conn.close()

"""Metrics against real deliveries: sink_stats, batch_histograms, metrics(), reset_stats.

Counters are checked exactly against what an independent client (redis-py) reads
back from Redis; the Prometheus text is parsed with Debian's python3-prometheus-client
and, because that parser is lax, checked again line by line with the rules
Prometheus's own parser enforces.
"""
import json
import os
import re
import signal
import tempfile
import time
from decimal import Decimal

import psycopg2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import connect, free_port, make_sink, pg_script, wait_for_server
from helpers import q, uid


def flush(conn, sink, timeout="60s"):
    assert q(conn, "SELECT batchkit.flush(%s, %s)", (sink, timeout))[0][0], f"{sink} did not drain"


def redis_sink(db, services, name, command="xadd", key="s:{table}", **extra):
    opts = {"url": f"redis://127.0.0.1:{services['REDIS_PORT']}/0", "command": command, "key": key}
    opts.update(extra)
    make_sink(db, name, "redis", opts)


def stats(conn, sink):
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM batchkit.sink_stats WHERE sink = %s", (sink,))
        row = cur.fetchone()
        assert row is not None, f"no sink_stats row for {sink}"
        return dict(zip([d[0] for d in cur.description], row))


def histograms(conn, sink):
    """{metric: [(le, cumulative count), ...]} in le order."""
    out = {}
    for metric, le, count in q(conn, "SELECT metric, le, count FROM batchkit.batch_histograms "
                                     "WHERE sink = %s ORDER BY metric, le", (sink,)):
        out.setdefault(metric, []).append((le, count))
    return out


def check_exposition(text):
    """What Prometheus's parser enforces and prometheus_client does not: HELP and TYPE
    once per family, before its samples; a family's samples contiguous; sample names
    of the declared type; no duplicate series; histogram buckets cumulative, ending
    with le="+Inf" equal to _count. Returns {family: type}."""
    assert text.endswith("\n")
    types, seen_series, closed = {}, set(), set()
    current = None
    buckets = {}
    for line in text.splitlines():
        m = re.match(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$", line)
        if m:
            kind, name, rest = m.groups()
            if kind == "HELP":
                assert name not in types and name not in closed, f"family {name} declared twice"
                if current:
                    closed.add(current)
                current = name
            else:
                assert name == current, f"TYPE {name} without its HELP just before"
                assert rest in ("counter", "gauge", "histogram"), rest
                types[name] = rest
            continue
        assert not line.startswith("#"), line
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        assert m, f"malformed sample line: {line!r}"
        name, _, labels, value = m.groups()
        float(value)
        allowed = ([current + s for s in ("_bucket", "_sum", "_count")]
                   if types.get(current) == "histogram" else [current])
        assert name in allowed, f"{name} outside its family {current}"
        series = (name, labels)
        assert series not in seen_series, f"duplicate series {line}"
        seen_series.add(series)
        if name.endswith("_bucket"):
            base = re.sub(r',?le="[^"]*"', "", labels)
            le = re.search(r'le="([^"]*)"', labels).group(1)
            buckets.setdefault((current, base), []).append((le, float(value)))
        elif name.endswith("_count") and types.get(current) == "histogram":
            bs = buckets[(current, labels)]
            assert bs[-1][0] == "+Inf" and bs[-1][1] == float(value), f"{line}: +Inf != _count"
            counts = [c for _, c in bs]
            assert counts == sorted(counts), f"buckets not cumulative: {bs}"
            les = [float(le) for le, _ in bs]
            assert les == sorted(les), f"le not increasing: {bs}"
    return types


def parse_metrics(text):
    """{(sample name, frozenset(labels)): value} via prometheus_client, after the strict checks."""
    types = check_exposition(text)
    samples = {}
    for fam in text_string_to_metric_families(text):
        assert fam.type != "untyped", f"{fam.name} parsed as untyped"
        expected = types.get(fam.name) or types.get(fam.name + "_total")
        assert expected == fam.type, (fam.name, fam.type, expected)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def sample(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, f"missing {name}{labels}"
    return samples[key]


def capture_paused_then_drain(db, services, sink, table, nrows, batch_size=1000):
    """2,500 rows queued while paused, then drained in batches of batch_size."""
    redis_sink(db, services, sink, key="s:{table}", batch_size=batch_size)
    q(db, f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (table, sink))
    q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
    q(db, f"INSERT INTO {table} SELECT g, repeat('x', g % 17) FROM generate_series(1, {nrows}) g")
    q(db, "SELECT batchkit.resume_sink(%s)", (sink,))
    flush(db, sink)


def test_counters_equal_what_redis_received(db, dbname, services, redis_client):
    sink, table = f"m_{uid()}", f"t_{uid()}"
    capture_paused_then_drain(db, services, sink, table, 2500)

    entries = redis_client.xrange(f"s:{table}")
    assert len(entries) == 2500
    ids = sorted(json.loads(f[b"data"])["key"]["id"] for _, f in entries)
    assert ids == list(range(1, 2501))
    # bytes = message values + message keys (the key column's text)
    expected_bytes = sum(len(f[b"data"]) + len(str(json.loads(f[b"data"])["key"]["id"]))
                         for _, f in entries)

    s = stats(db, sink)
    assert s["kind"] == "redis"
    assert s["state"] in ("idle", "active")
    assert (s["batches"], s["rows_sent"], s["rows_failed"], s["rows_dead_lettered"]) == (3, 2500, 0, 0)
    assert s["bytes_sent"] == expected_bytes
    assert s["retries"] == 0 and s["dead_letters"] == 0
    assert s["rows_queued"] == 0
    assert s["last_batch_size"] == 500                 # 1000, 1000, then the rest
    assert s["avg_batch_size"] == Decimal("833.3")  # rounded to one decimal, fixed scale
    assert s["last_flush_at"] is not None and s["last_flush_duration"].total_seconds() >= 0
    assert 0 < s["lag_p50_ms"] <= s["lag_p99_ms"]
    assert s["last_error"] is None and s["stats_reset"] is not None

    h = histograms(db, sink)
    assert set(h) == {"batch_size", "flush_duration_seconds", "lag_seconds"}
    assert [le for le, _ in h["batch_size"]] == [10, 50, 100, 500, 1000, 5000, 10000, float("inf")]
    assert [c for _, c in h["batch_size"]] == [0, 0, 0, 1, 3, 3, 3, 3]
    assert [le for le, _ in h["flush_duration_seconds"]] == [0.01, 0.05, 0.1, 0.5, 1, 5, 10,
                                                            float("inf")]
    assert h["flush_duration_seconds"][-1][1] == 3      # one observation per batch
    assert h["lag_seconds"][-1][1] == 2500              # one per row
    for metric, buckets in h.items():
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), metric

    m = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
    lab = {"database": dbname, "operation": sink}
    assert sample(m, "batch_items_processed_total", status="success", **lab) == 2500
    assert sample(m, "batch_items_processed_total", status="failed", **lab) == 0
    assert sample(m, "batch_items_processed_total", status="dead_lettered", **lab) == 0
    assert sample(m, "batch_bytes_sent_total", **lab) == expected_bytes
    assert sample(m, "batch_queue_size", **lab) == 0
    assert sample(m, "batch_queue_oldest_age_seconds", **lab) == 0
    assert sample(m, "batch_dead_letters", **lab) == 0
    assert sample(m, "batch_processing_size_count", **lab) == 3
    assert sample(m, "batch_processing_size_sum", **lab) == 2500
    assert sample(m, "batch_processing_size_bucket", le="500", **lab) == 1
    assert sample(m, "batch_processing_size_bucket", le="1000", **lab) == 3
    assert sample(m, "batch_processing_size_bucket", le="+Inf", **lab) == 3
    assert sample(m, "batch_processing_duration_seconds_count", **lab) == 3
    assert sample(m, "batch_commit_to_ack_lag_seconds_count", **lab) == 2500
    # the same buckets as the view
    for view_metric, prom in (("batch_size", "batch_processing_size"),
                              ("flush_duration_seconds", "batch_processing_duration_seconds"),
                              ("lag_seconds", "batch_commit_to_ack_lag_seconds")):
        for le, count in h[view_metric]:
            le_label = ("+Inf" if le == float("inf") else
                        str(int(le)) if float(le).is_integer() else repr(float(le)))
            assert sample(m, prom + "_bucket", le=le_label, **lab) == count, (prom, le)
    states = {st: sample(m, "batch_sink_state", state=st, **lab)
              for st in ("active", "paused", "failing", "idle")}
    assert sum(states.values()) == 1 and states[s["state"]] == 1


def test_queue_depth_and_age_while_paused(db, dbname, services):
    sink, table = f"mq_{uid()}", f"tq_{uid()}"
    redis_sink(db, services, sink)
    q(db, f"CREATE TABLE {table} (id int PRIMARY KEY)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (table, sink))
    q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
    q(db, f"INSERT INTO {table} SELECT generate_series(1, 1234)")
    time.sleep(1.1)
    s = stats(db, sink)
    assert s["state"] == "paused" and s["rows_queued"] == 1234 and s["batches"] == 0
    assert s["oldest_queued_age"].total_seconds() >= 1.0
    m = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
    lab = {"database": dbname, "operation": sink}
    assert sample(m, "batch_queue_size", **lab) == 1234
    assert sample(m, "batch_queue_oldest_age_seconds", **lab) >= 1.0
    assert sample(m, "batch_sink_state", state="paused", **lab) == 1
    q(db, "SELECT batchkit.resume_sink(%s)", (sink,))
    flush(db, sink)
    s = stats(db, sink)
    assert s["rows_queued"] == 0 and s["rows_sent"] == 1234
    assert s["oldest_queued_age"].total_seconds() == 0


def test_reads_use_the_depth_counter_the_worker_rebuilt(db, dbname, services):
    """A sink without max_queue: once the flush worker has served it, sink_stats and
    metrics() read its depth counter instead of summing the queue table (which cost
    a read ~1.5 ms with millions of rows queued and slowed drains). Shown by removing
    the queued rows behind the counter's back as superuser: the counter still says 7."""
    sink, table = f"md_{uid()}", f"td_{uid()}"
    capture_paused_then_drain(db, services, sink, table, 30)   # the worker served the sink
    q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
    q(db, f"INSERT INTO {table} SELECT g, 'q' FROM generate_series(101, 107) g")
    assert stats(db, sink)["rows_queued"] == 7
    q(db, "DELETE FROM batchkit.queue WHERE sink_id = "
          "(SELECT sink_id FROM batchkit.sink WHERE name = %s)", (sink,))
    assert q(db, "SELECT count(*) FROM batchkit.queue")[0][0] == 0
    assert stats(db, sink)["rows_queued"] == 7                  # the counter, not the table
    m = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
    assert sample(m, "batch_queue_size", database=dbname, operation=sink) == 7


def test_dead_letters_are_counted(db, dbname, services, redis_client):
    sink, t = f"md_{uid()}", f"td_{uid()}"
    redis_sink(db, services, sink, command="hset", key=f"{t}:{{id}}")
    q(db, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    q(db, "SELECT batchkit.capture(%s::regclass, %s)", (t, sink))
    redis_client.set(f"{t}:5", "a string, not a hash")          # HSET on it: WRONGTYPE
    q(db, f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 10) g")
    flush(db, sink)
    delivered = sum(1 for i in range(1, 11) if redis_client.type(f"{t}:{i}") == b"hash")
    assert delivered == 9
    s = stats(db, sink)
    assert (s["rows_sent"], s["rows_dead_lettered"], s["dead_letters"]) == (9, 1, 1)
    m = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
    lab = {"database": dbname, "operation": sink}
    assert sample(m, "batch_items_processed_total", status="success", **lab) == 9
    assert sample(m, "batch_items_processed_total", status="dead_lettered", **lab) == 1
    assert sample(m, "batch_dead_letters", **lab) == 1
    # the gauge follows the table; the counter does not go back
    q(db, "SELECT batchkit.purge_dead_letters(%s)", (sink,))
    s = stats(db, sink)
    assert (s["rows_dead_lettered"], s["dead_letters"]) == (1, 0)


def test_upsert_counters_and_label_escaping(db, dbname):
    table = 'up"s\\ert'                                  # a quote and a backslash
    q(db, f'CREATE TABLE "{table.replace(chr(34), chr(34) * 2)}" (id int PRIMARY KEY, v text)')
    regclass = q(db, "SELECT %s::regclass::text", (f'"{table.replace(chr(34), chr(34) * 2)}"',))[0][0]
    q(db, "SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::jsonb)",
      (regclass, json.dumps([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])))
    q(db, "SELECT * FROM batchkit.batch_upsert(%s::regclass, %s::jsonb)",
      (regclass, json.dumps([{"id": 2, "v": "c"}, {"id": 3, "v": "d"}, {"id": 3, "v": "e"}])))
    text = q(db, "SELECT batchkit.metrics()")[0][0]
    m = parse_metrics(text)
    # always schema-qualified: the label must not depend on the caller's search_path
    label = q(db, "SELECT format('%%I.%%I', 'public', %s::text)", (table,))[0][0]
    assert label == 'public."up""s\\ert"'
    lab = {"database": dbname, "target": label}
    assert sample(m, "batch_upsert_calls_total", **lab) == 2
    assert sample(m, "batch_upsert_input_rows_total", **lab) == 5
    assert sample(m, "batch_upsert_rows_total", result="inserted", **lab) == 3
    assert sample(m, "batch_upsert_rows_total", result="updated", **lab) == 1
    assert sample(m, "batch_upsert_duration_seconds_total", **lab) > 0
    # the escaped form is on the wire
    assert 'target="public.\\"up\\"\\"s\\\\ert\\""' in text


def _role(db, name, *in_roles):
    q(db, f"DROP ROLE IF EXISTS {name}")
    q(db, f"CREATE ROLE {name} LOGIN" + (f" IN ROLE {', '.join(in_roles)}" if in_roles else ""))


def test_pg_monitor_reads_ordinary_role_is_denied(db, dbname, services):
    sink = f"mp_{uid()}"
    redis_sink(db, services, sink)
    mon, plain = f"bk_mon_{uid()}", f"bk_plain_{uid()}"
    _role(db, mon, "pg_monitor")
    _role(db, plain)
    try:
        c = connect(services, dbname, user=mon)
        assert q(c, "SELECT sink FROM batchkit.sink_stats WHERE sink = %s", (sink,)) == [(sink,)]
        assert q(c, "SELECT count(*) FROM batchkit.batch_histograms WHERE sink = %s", (sink,)) == [(28,)]
        assert f'operation="{sink}"' in q(c, "SELECT batchkit.metrics()")[0][0]
        q(c, "SELECT count(*) FROM batchkit.upsert_stats")
        q(c, "SELECT count(*) FROM batchkit.workers")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(c, "SELECT batchkit.reset_stats()")
        c.close()
        c = connect(services, dbname, user=plain)
        for sql in ("SELECT * FROM batchkit.sink_stats", "SELECT * FROM batchkit.batch_histograms",
                    "SELECT batchkit.metrics()", "SELECT * FROM batchkit._sink_stats()",
                    "SELECT batchkit.reset_stats()", "SELECT * FROM batchkit.upsert_stats"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege) as e:
                q(c, sql)
            assert "permission denied" in str(e.value)
        c.close()
    finally:
        q(db, f"DROP ROLE {mon}")
        q(db, f"DROP ROLE {plain}")


def test_no_secret_anywhere(db, dbname, services):
    """Sinks whose options carry passwords, unreachable so they fail and record errors."""
    rsink, ksink = f"ms_r_{uid()}", f"ms_k_{uid()}"
    redis_pw, sasl_pw = f"rpw-{uid()}", f"sasl-{uid()}"
    q(db, "SET client_min_messages = error")
    make_sink(db, rsink, "redis", {"url": f"redis://alice:{redis_pw}@127.0.0.1:1/0",
                                   "command": "xadd", "key": "k"})
    make_sink(db, ksink, "kafka", {"bootstrap.servers": "127.0.0.1:1", "topic": "t",
                                   "security.protocol": "sasl_plaintext",
                                   "sasl.mechanism": "PLAIN", "sasl.username": "svc",
                                   "sasl.password": sasl_pw, "message.timeout.ms": 2000})
    for s in (rsink, ksink):
        q(db, "SELECT batchkit.enqueue(%s, '{\"a\": 1}')", (s,))
    # wait until both have tried and failed (their errors are what could leak)
    deadline = time.time() + 60
    while time.time() < deadline:
        errs = q(db, "SELECT sink, last_error FROM batchkit.sink_stats WHERE sink IN (%s, %s)",
                 (rsink, ksink))
        if all(e is not None for _, e in errs):
            break
        time.sleep(0.5)
    assert all(e is not None for _, e in errs), errs
    mon = f"bk_mon_{uid()}"
    _role(db, mon, "pg_monitor")
    try:
        c = connect(services, dbname, user=mon)
        shown = []
        for sql in ("SELECT s::text FROM batchkit.sink_stats s",
                    "SELECT h::text FROM batchkit.batch_histograms h",
                    "SELECT batchkit.metrics()",
                    "SELECT s::text FROM batchkit.sinks s",
                    "SELECT w::text FROM batchkit.workers w",
                    "SELECT x::text FROM batchkit._sink_stats() x"):
            shown += [r[0] for r in q(c, sql)]
        c.close()
        shown += [r[0] for r in q(db, "SELECT s::text FROM batchkit.sink_stats s")]
        blob = "\n".join(x for x in shown if x)
        assert rsink in blob and ksink in blob
        assert redis_pw not in blob and sasl_pw not in blob
        # nor in the server log (the worker logs each failed delivery)
        log = open(os.path.join(services["BATCHKIT_RUN_DIR"], "pg", "pg.log")).read()
        assert redis_pw not in log and sasl_pw not in log
    finally:
        q(db, f"DROP ROLE {mon}")
        q(db, "SELECT batchkit.drop_sink(%s, true)", (rsink,))
        q(db, "SELECT batchkit.drop_sink(%s, true)", (ksink,))


def test_reset_stats_zeroes_this_database_only(db, dbname, services):
    sink, table = f"mr_{uid()}", f"tr_{uid()}"
    capture_paused_then_drain(db, services, sink, table, 300, batch_size=100)
    # a sink in another database keeps its numbers
    other = f"bk_metrics_other_{uid()}"
    q(db, f'CREATE DATABASE "{other}"')
    try:
        o = connect(services, other)
        q(o, "CREATE EXTENSION batchkit")
        osink = f"mo_{uid()}"
        capture_paused_then_drain(o, services, osink, f"to_{uid()}", 50)
        before = stats(db, sink)
        assert before["batches"] == 3 and before["rows_sent"] == 300
        q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
        q(db, f"INSERT INTO {table} VALUES (100001, 'queued')")

        q(db, "SELECT batchkit.reset_stats(%s)", (sink,))
        s = stats(db, sink)
        assert all(s[k] == 0 for k in ("batches", "rows_sent", "rows_failed", "rows_dead_lettered",
                                       "bytes_sent", "retries", "last_batch_size"))
        assert s["avg_batch_size"] is None and s["last_flush_at"] is None
        assert s["lag_p50_ms"] is None and s["last_error"] is None
        assert s["stats_reset"] > before["stats_reset"]
        assert s["rows_queued"] == 1                   # the queue is not a statistic
        assert all(c == 0 for buckets in histograms(db, sink).values() for _, c in buckets)
        m = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
        lab = {"database": dbname, "operation": sink}
        assert sample(m, "batch_items_processed_total", status="success", **lab) == 0
        assert sample(m, "batch_processing_size_count", **lab) == 0
        assert sample(m, "batch_queue_size", **lab) == 1

        # counting starts again from zero
        q(db, "SELECT batchkit.resume_sink(%s)", (sink,))
        flush(db, sink)
        s = stats(db, sink)
        assert (s["batches"], s["rows_sent"]) == (1, 1)

        q(db, "SELECT batchkit.reset_stats()")        # NULL: every sink of this database
        assert stats(db, sink)["rows_sent"] == 0
        assert stats(o, osink)["rows_sent"] == 50     # another database: untouched
        o.close()
    finally:
        q(db, f'DROP DATABASE "{other}" WITH (FORCE)')


def _restart(services, mode):
    pgdir = os.path.join(services["BATCHKIT_RUN_DIR"], "pg")
    pg_script("stop", pgdir, mode)
    pg_script("start", pgdir)
    wait_for_server(services)


def test_stats_survive_a_clean_restart_and_queued_is_rebuilt(dbname, services, redis_client):
    db = connect(services, dbname)
    sink, table = f"mk_{uid()}", f"tk_{uid()}"
    capture_paused_then_drain(db, services, sink, table, 2500)
    q(db, "SELECT batchkit.pause_sink(%s)", (sink,))
    q(db, f"INSERT INTO {table} SELECT g, 'q' FROM generate_series(10001, 10007) g")
    before, hist_before = stats(db, sink), histograms(db, sink)
    metrics_before = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
    db.close()

    _restart(services, "fast")
    datadir = services["PGDATA"]
    assert not os.path.exists(os.path.join(datadir, "pg_stat", "batchkit.stat")), \
        "the file is removed once loaded"
    db = connect(services, dbname)
    after = stats(db, sink)
    for k in ("batches", "rows_sent", "rows_failed", "rows_dead_lettered", "bytes_sent",
              "retries", "last_batch_size", "last_flush_at", "last_flush_duration",
              "lag_p50_ms", "lag_p99_ms", "stats_reset"):
        assert after[k] == before[k], k
    assert histograms(db, sink) == hist_before
    assert after["state"] == "paused"
    assert after["rows_queued"] == 7                 # from the queue table, not the file
    lab = {"database": dbname, "operation": sink}
    m = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
    for name in ("batch_processing_size_count", "batch_processing_size_sum",
                 "batch_bytes_sent_total", "batch_commit_to_ack_lag_seconds_count"):
        assert sample(m, name, **lab) == sample(metrics_before, name, **lab), name
    assert sample(m, "batch_queue_size", **lab) == 7

    # delivery after the restart adds to the restored numbers, no double counting
    q(db, "SELECT batchkit.resume_sink(%s)", (sink,))
    flush(db, sink)
    assert redis_client.xlen(f"s:{table}") == 2507
    s = stats(db, sink)
    assert (s["batches"], s["rows_sent"], s["rows_queued"]) == (4, 2507, 0)
    db.close()


def test_a_crash_loses_the_stats_and_never_restores_stale_ones(dbname, services):
    db = connect(services, dbname)
    sink, table = f"mc_{uid()}", f"tc_{uid()}"
    capture_paused_then_drain(db, services, sink, table, 100)
    assert stats(db, sink)["rows_sent"] == 100
    db.close()
    _restart(services, "fast")                       # saved, then loaded and the file removed
    db = connect(services, dbname)
    assert stats(db, sink)["rows_sent"] == 100
    # a crash: kill -9 of a backend makes the postmaster reinitialise shared memory
    pid = q(db, "SELECT pid FROM batchkit.workers WHERE kind = 'flush' AND database = %s",
            (dbname,))[0][0]
    db.close()
    crashed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    wait_for_server(services)
    deadline = time.time() + 30
    while True:
        try:
            db = connect(services, dbname)
            s = stats(db, sink)
            break
        except psycopg2.Error:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    assert s["rows_sent"] == 0 and s["batches"] == 0
    assert s["stats_reset"] is None or s["stats_reset"].timestamp() >= crashed_at - 1
    assert s["rows_queued"] == 0

    # an immediate shutdown is followed by crash recovery: the numbers are not kept
    q(db, "SELECT batchkit.enqueue(%s, '{\"x\": 1}')", (sink,))
    flush(db, sink)
    assert stats(db, sink)["rows_sent"] == 1
    db.close()
    _restart(services, "immediate")
    db = connect(services, dbname)
    s = stats(db, sink)
    assert s["rows_sent"] == 0 and s["batches"] == 0
    log = open(os.path.join(services["BATCHKIT_RUN_DIR"], "pg", "pg.log")).read()
    assert "discarding batchkit statistics: the server was not shut down cleanly" in log
    db.close()


def test_functions_fail_clearly_without_preload(services):
    d = tempfile.mkdtemp(prefix="bk-metrics-nopreload-")
    os.chmod(d, 0o755)
    port = free_port()
    pg_script("init", d, port, "--no-preload")
    pg_script("start", d)
    try:
        conn = psycopg2.connect(host=os.path.join(d, "sock"), port=port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        q(conn, "CREATE EXTENSION batchkit")
        # no sink at all: the views must still say why they cannot work
        for sql in ("SELECT * FROM batchkit.sink_stats", "SELECT * FROM batchkit.batch_histograms",
                    "SELECT batchkit.metrics()", "SELECT batchkit.reset_stats()",
                    "SELECT batchkit.reset_stats('x')", "SELECT * FROM batchkit._sink_stats()"):
            with pytest.raises(psycopg2.Error) as e:
                q(conn, sql)
            assert "batchkit must be loaded via shared_preload_libraries" in str(e.value), sql
            assert e.value.pgcode == "55000", sql
        conn.close()
    finally:
        pg_script("stop", d, "immediate", check=False)
        import shutil
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- the launcher's /metrics endpoint

def _http(port, request=b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5):
    """One raw HTTP exchange: (status, headers, body)."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return status, headers, body.decode()


def _set_metrics_port(services, port):
    c = connect(services)
    if port:
        q(c, f"ALTER SYSTEM SET batchkit.metrics_port = {int(port)}")
    else:
        q(c, "ALTER SYSTEM RESET batchkit.metrics_port")
    q(c, "SELECT pg_reload_conf()")
    c.close()


def _wait_http(port, up=True, timeout=15):
    deadline = time.time() + timeout
    while True:
        try:
            _http(port, timeout=1)
            if up:
                return
        except OSError:
            if not up:
                return
        if time.time() > deadline:
            raise AssertionError(f"endpoint on port {port} did not come {'up' if up else 'down'}")
        time.sleep(0.2)


def test_http_endpoint_serves_every_database_without_stalling_the_launcher(db, dbname, services):
    import socket
    sink, table = f"mh_{uid()}", f"th_{uid()}"
    capture_paused_then_drain(db, services, sink, table, 1200)
    other = f"bk_metrics_http_{uid()}"
    q(db, f'CREATE DATABASE "{other}"')
    port = free_port()
    silent = []
    try:
        o = connect(services, other)
        q(o, "CREATE EXTENSION batchkit")
        osink = f"mho_{uid()}"
        redis_sink(o, services, osink)
        q(o, "CREATE TABLE t (id int PRIMARY KEY)")
        q(o, "SELECT batchkit.capture('t'::regclass, %s)", (osink,))
        q(o, "SELECT batchkit.pause_sink(%s)", (osink,))
        q(o, "INSERT INTO t SELECT generate_series(1, 77)")

        _set_metrics_port(services, port)
        _wait_http(port)
        time.sleep(1.5)                     # the flush workers publish their gauges each second
        status, headers, body = _http(port)
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        m = parse_metrics(body)
        sql = parse_metrics(q(db, "SELECT batchkit.metrics()")[0][0])
        lab = {"database": dbname, "operation": sink}
        for name, extra in (("batch_items_processed_total", {"status": "success"}),
                            ("batch_items_processed_total", {"status": "dead_lettered"}),
                            ("batch_bytes_sent_total", {}),
                            ("batch_processing_size_count", {}),
                            ("batch_processing_size_sum", {}),
                            ("batch_processing_size_bucket", {"le": "1000"}),
                            ("batch_commit_to_ack_lag_seconds_count", {}),
                            ("batch_queue_size", {}),
                            ("batch_dead_letters", {})):
            assert sample(m, name, **lab, **extra) == sample(sql, name, **lab, **extra), name
        assert sample(m, "batch_items_processed_total", status="success", **lab) == 1200
        # the other database, from the same endpoint
        olab = {"database": other, "operation": osink}
        assert sample(m, "batch_queue_size", **olab) == 77
        assert sample(m, "batch_queue_oldest_age_seconds", **olab) > 0
        assert sample(m, "batch_sink_state", state="paused", **olab) == 1

        # wrong path and method
        assert _http(port, b"GET /other HTTP/1.1\r\n\r\n")[0] == 404
        assert _http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")[0] == 405
        assert _http(port, b"garbage\r\n\r\n")[0] == 400

        # silent and half-open clients, more than the endpoint serves at once
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            silent.append(s)
        silent[0].sendall(b"GET /metr")
        t0 = time.time()
        act0 = q(db, "SELECT last_activity FROM batchkit.workers WHERE kind = 'launcher'")[0][0]
        time.sleep(2.5)                     # > batchkit.naptime (1 s): the launcher went round
        act1 = q(db, "SELECT last_activity FROM batchkit.workers WHERE kind = 'launcher'")[0][0]
        assert act1 > act0, "the launcher stalled behind silent HTTP clients"
        for s in silent:
            s.close()
        silent = []
        status, _, body = _http(port)
        assert status == 200 and f'operation="{osink}"' in body
        assert time.time() - t0 < 10
        o.close()
    finally:
        for s in silent:
            s.close()
        _set_metrics_port(services, 0)
        q(db, f'DROP DATABASE "{other}" WITH (FORCE)')
    _wait_http(port, up=False)
    log = open(os.path.join(services["BATCHKIT_RUN_DIR"], "pg", "pg.log")).read()
    assert f'batchkit metrics endpoint listening on "127.0.0.1" port {port}' in log
    assert "batchkit metrics endpoint closed" in log

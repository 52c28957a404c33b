"""The Kafka dev broker (tools/kafka-dev-broker) is a real Kafka endpoint.

Self-contained: every test that needs a broker starts its OWN broker process
from the built binary, with its own bootstrap file, and stops it with SIGTERM.
So the tests do not depend on scripts/services.sh or on the session
`services` fixture.  If KAFKA_BOOTSTRAP is set (scripts/test.sh exports it),
one extra smoke test also runs against that shared broker.

Needs: tools/kafka-dev-broker/kafka-dev-broker (built here with `make` if it is
missing), kcat, and python3-kafka.  Run with /usr/bin/python3 -m pytest.
Every subprocess call and wait loop has a timeout.  The whole module takes
about 15 s; most of that is the mock's ~3 s delay before the first join of a
consumer group completes.
"""
import collections
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BROKER_DIR = ROOT / "tools" / "kafka-dev-broker"
BROKER_BIN = BROKER_DIR / "kafka-dev-broker"

KCAT = shutil.which("kcat")
assert KCAT, "kcat is not installed: run scripts/install-deps.sh"




def _topic(prefix):
    return f"kdb-{prefix}-{uuid.uuid4().hex[:8]}"


def _run(args, timeout=30, **kw):
    return subprocess.run(args, capture_output=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def broker_bin():
    if not BROKER_BIN.exists():
        out = _run(["make", "-C", str(BROKER_DIR)], timeout=120, text=True)
        assert out.returncode == 0, f"building the dev broker failed:\n{out.stdout}\n{out.stderr}"
    assert os.access(BROKER_BIN, os.X_OK), f"{BROKER_BIN} is not executable"
    return str(BROKER_BIN)


class DevBroker:
    """One kafka-dev-broker process; its files live in `workdir`."""

    def __init__(self, binary, workdir, *args):
        self.binary = binary
        self.workdir = pathlib.Path(workdir)
        self.bootstrap_file = self.workdir / "bootstrap"
        self.pid_file = self.workdir / "broker.pid"
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.args = list(args)
        self.proc = None
        self.bootstrap = None

    def start(self, timeout=10):
        # stdout/stderr go to files, never to pipes: a full pipe would block
        # the broker's logging threads.
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [self.binary, "--bootstrap-file", str(self.bootstrap_file),
                 "--pid-file", str(self.pid_file), *self.args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        line = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited early with {self.proc.returncode}: "
                                     f"{self.stderr_path.read_text()}")
            text = self.stdout_path.read_text()
            if self.bootstrap_file.exists() and text.endswith("\n"):
                line = text.splitlines()[0]
                break
            time.sleep(0.02)
        else:
            self.kill()
            raise AssertionError(f"broker not ready within {timeout}s: "
                                 f"{self.stderr_path.read_text()}")
        self.bootstrap = self.bootstrap_file.read_text().strip()
        assert line == "bootstrap=" + self.bootstrap
        return self

    def stop(self, sig=signal.SIGTERM, timeout=5):
        """Send `sig`; returns (exit code, seconds until exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"broker did not exit within {timeout}s of signal {sig}")
        return rc, time.monotonic() - t0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stderr(self):
        return self.stderr_path.read_text()


def _start_broker(binary, tmp_path_factory, *args):
    return DevBroker(binary, tmp_path_factory.mktemp("kafka-dev-broker"), *args).start()


@pytest.fixture(scope="module")
def broker(broker_bin, tmp_path_factory):
    """A 3-broker dev cluster with one pre-created topic, shared by this module."""
    b = _start_broker(broker_bin, tmp_path_factory, "--brokers", "3", "--topic", "kdb-pre:3")
    try:
        yield b
    finally:
        if b.proc.poll() is None:
            rc, _ = b.stop()
            assert rc == 0, b.stderr()
        assert not b.bootstrap_file.exists()


def _kcat_metadata(bootstrap, topic=None):
    args = [KCAT, "-b", bootstrap, "-L", "-J", "-m", "10"]
    if topic:
        args += ["-t", topic]
    out = _run(args, timeout=20, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _kcat_consume_all(bootstrap, topic, fmt, extra=()):
    out = _run([KCAT, "-C", "-b", bootstrap, "-t", topic, "-e", "-o", "beginning", "-q",
                "-f", fmt, *extra], timeout=30)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode()


# --------------------------------------------------------------------------
# metadata / topics


def test_metadata_lists_brokers_precreated_and_auto_created_topics(broker):
    meta = _kcat_metadata(broker.bootstrap)
    assert len(meta["brokers"]) == 3
    assert {f"127.0.0.1:{b['name'].rsplit(':', 1)[1]}" for b in meta["brokers"]} \
        == set(broker.bootstrap.split(","))
    pre = {t["topic"]: t for t in meta["topics"]}["kdb-pre"]
    assert len(pre["partitions"]) == 3

    # A metadata lookup for a topic that does not exist creates it, with the
    # mock's fixed default of 4 partitions.
    name = _topic("auto")
    meta = _kcat_metadata(broker.bootstrap, name)
    (t,) = meta["topics"]
    assert t["topic"] == name and "error" not in t
    assert len(t["partitions"]) == 4


# --------------------------------------------------------------------------
# (a) kcat producer -> kcat consumer, exact set


@pytest.mark.parametrize("producer_conf", [
    [],
    ["-X", "enable.idempotence=true", "-X", "acks=all"],
], ids=["plain", "idempotent"])
def test_kcat_roundtrip_1000_keyed_messages(broker, producer_conf):
    topic = _topic("kcat")
    expected = [f"key{i % 37:02d}:value-{i:04d}" for i in range(1000)]
    out = _run([KCAT, "-P", "-b", broker.bootstrap, "-t", topic, "-K:", *producer_conf],
               input=("\n".join(expected) + "\n").encode(), timeout=30)
    assert out.returncode == 0, out.stderr.decode(errors="replace")

    got = _kcat_consume_all(broker.bootstrap, topic, "%k:%s\n").splitlines()
    assert len(got) == 1000  # no duplicates, nothing lost
    assert set(got) == set(expected)

    # Keyed records: one partition per key, in production order.
    rows = _kcat_consume_all(broker.bootstrap, topic, "%p|%o|%k|%s\n").splitlines()
    by_key = collections.defaultdict(list)
    for row in rows:
        p, o, k, v = row.split("|")
        by_key[k].append((int(p), int(o), v))
    assert len(by_key) == 37
    for k, recs in by_key.items():
        assert len({p for p, _, _ in recs}) == 1, f"key {k} spread over partitions"
        recs.sort(key=lambda r: r[1])
        assert [v for _, _, v in recs] == sorted(v for _, _, v in recs)


# --------------------------------------------------------------------------
# (b) python-kafka producer (acks=all) -> consumer group


def test_python_kafka_producer_and_consumer_group(broker):
    import kafka
    from kafka.structs import TopicPartition

    servers = broker.bootstrap.split(",")
    topic = _topic("py")
    group = "kdb-group-" + uuid.uuid4().hex[:8]
    keys = [f"k{i}".encode() for i in range(12)]
    n_per_key = 50

    producer = kafka.KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5,
                                   retries=3, request_timeout_ms=10000, max_block_ms=10000)
    try:
        futures = [producer.send(topic, key=k, value=b"%s:%d" % (k, seq))
                   for seq in range(n_per_key) for k in keys]
        producer.flush(timeout=15)
        metas = [f.get(timeout=10) for f in futures]
    finally:
        producer.close(timeout=5)
    assert {m.topic for m in metas} == {topic}
    assert len({m.partition for m in metas}) > 1  # keys spread over partitions

    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=servers, group_id=group,
                                   auto_offset_reset="earliest", enable_auto_commit=False,
                                   request_timeout_ms=15000, session_timeout_ms=10000,
                                   heartbeat_interval_ms=1000)
    got = []  # (partition, offset, key, value) in consumption order
    try:
        deadline = time.monotonic() + 25
        while len(got) < len(futures) and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                got.extend((tp.partition, m.offset, m.key, m.value) for m in msgs)
        consumer.commit()
        partitions = consumer.assignment()
        end = consumer.end_offsets(list(partitions))
    finally:
        consumer.close(autocommit=False)

    assert len(got) == len(futures), f"got {len(got)} of {len(futures)} records"
    assert sorted(v for _, _, _, v in got) == sorted(b"%s:%d" % (k, s)
                                                       for s in range(n_per_key) for k in keys)

    # Per partition offsets only go up; per key the sequence is produced order
    # and every key stays in one partition.
    last_offset = {}
    seqs = collections.defaultdict(list)
    key_partition = {}
    for p, off, k, v in got:
        assert off > last_offset.get(p, -1)
        last_offset[p] = off
        assert key_partition.setdefault(k, p) == p
        seqs[k].append(int(v.split(b":")[1]))
    for k in keys:
        assert seqs[k] == list(range(n_per_key)), f"order broken for key {k!r}"

    # The group's commit is stored by the broker: a new client of the same
    # group reads it back (OffsetFetch, no rejoin needed).
    assert {tp.topic for tp in partitions} == {topic}
    checker = kafka.KafkaConsumer(bootstrap_servers=servers, group_id=group,
                                  enable_auto_commit=False, request_timeout_ms=15000)
    try:
        for tp in partitions:
            assert checker.committed(TopicPartition(topic, tp.partition)) == end[tp]
    finally:
        checker.close(autocommit=False)


# --------------------------------------------------------------------------
# (c) clean shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_broker_cleanly_with_clients_connected(broker_bin, tmp_path_factory, sig):
    b = _start_broker(broker_bin, tmp_path_factory, "--brokers", "2", "--topic", "t1:2:2")
    assert b.pid_file.read_text().strip() == str(b.proc.pid)
    ports = [int(hp.rsplit(":", 1)[1]) for hp in b.bootstrap.split(",")]
    assert len(ports) == 2

    # A consumer that stays connected while the broker goes away.
    client = subprocess.Popen([KCAT, "-C", "-b", b.bootstrap, "-t", "t1", "-q"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        assert client.poll() is None
        rc, took = b.stop(sig, timeout=5)
    finally:
        client.kill()
        client.wait(timeout=5)
        b.kill()

    assert rc == 0, b.stderr()
    assert took < 5
    assert not b.bootstrap_file.exists()
    assert not pathlib.Path(str(b.bootstrap_file) + ".tmp").exists()
    assert not b.pid_file.exists()
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --------------------------------------------------------------------------
# (d) bad arguments


@pytest.mark.parametrize("args, message", [
    (["--brokers", "0"], "--brokers"),
    (["--brokers", "three"], "--brokers"),
    (["--brokers"], "requires a value"),
    (["--topic", "bad/name"], "invalid topic name"),
    (["--topic", "t:0"], "PARTITIONS"),
    (["--topic", "t:x"], "PARTITIONS"),
    (["--brokers", "2", "--topic", "t:1:3"], "replication factor 3 is larger than --brokers 2"),
    (["--topic", "t", "--topic", "t:2"], "more than once"),
    (["--no-such-option"], "unknown option"),
    (["stray"], "unexpected argument"),
])
def test_bad_arguments_exit_2_with_message(broker_bin, tmp_path, args, message):
    bootstrap = tmp_path / "bootstrap"
    out = _run([broker_bin, "--bootstrap-file", str(bootstrap), *args], timeout=5, text=True)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("kafka-dev-broker: ")
    assert message in out.stderr
    assert "--help" in out.stderr
    assert out.stdout == ""
    assert not bootstrap.exists()


def test_help_exits_0(broker_bin):
    out = _run([broker_bin, "--help"], timeout=5, text=True)
    assert out.returncode == 0
    assert "--bootstrap-file" in out.stdout and "--topic" in out.stdout


# --------------------------------------------------------------------------
# retention: what the Kafka sink must know


def test_partition_log_keeps_only_last_5MiB(broker):
    """The mock keeps at most 5 MiB (and 100000 batches) per partition and
    drops the oldest batches when an append goes over."""
    topic = _topic("trim")
    payload = b"x" * 1_000_000
    for i in range(8):  # one kcat run per record: one batch per record
        out = _run([KCAT, "-P", "-b", broker.bootstrap, "-t", topic, "-p", "0",
                    "-X", "message.max.bytes=2000000", "-X", "compression.codec=none",
                    "-k", f"r{i}"], input=payload, timeout=20)
        assert out.returncode == 0, out.stderr.decode(errors="replace")
    rows = _kcat_consume_all(broker.bootstrap, topic, "%p %o %k %S\n",
                             ["-X", "fetch.message.max.bytes=2000000"]).splitlines()
    assert rows == [f"0 {o} r{o} 1000000" for o in range(3, 8)]


def test_ack_timestamp_is_mock_log_append_time(broker):
    """Produce acks carry LogAppendTime=1234, so the client reports 1234 as the
    delivery timestamp; consumers still see the producer's CreateTime."""
    import kafka
    servers = broker.bootstrap.split(",")
    topic = _topic("ts")
    producer = kafka.KafkaProducer(bootstrap_servers=servers, acks="all", max_block_ms=10000)
    try:
        meta = producer.send(topic, b"v", partition=0, timestamp_ms=1_700_000_000_000).get(10)
    finally:
        producer.close(timeout=5)
    assert meta.timestamp == 1234
    consumer = kafka.KafkaConsumer(bootstrap_servers=servers, consumer_timeout_ms=5000)
    try:
        tp = kafka.TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        rec = next(iter(consumer))
    finally:
        consumer.close(autocommit=False)
    assert rec.timestamp == 1_700_000_000_000 and rec.timestamp_type == 0  # CreateTime


# --------------------------------------------------------------------------
# the shared broker started by scripts/services.sh, when there is one


def test_shared_broker_from_env_roundtrip(services):
    bootstrap = services["KAFKA_BOOTSTRAP"]
    assert _kcat_metadata(bootstrap)["brokers"]
    topic = _topic("env")
    lines = [f"k{i}:v{i}" for i in range(20)]
    out = _run([KCAT, "-P", "-b", bootstrap, "-t", topic, "-K:", "-X", "acks=all"],
               input=("\n".join(lines) + "\n").encode(), timeout=20)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert sorted(_kcat_consume_all(bootstrap, topic, "%k:%s\n").splitlines()) == sorted(lines)

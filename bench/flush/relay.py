#!/usr/bin/env python3
"""The peers' relay: ONE Python process that moves rows from Postgres to a sink.

  --source outbox   loops: BEGIN; DELETE FROM outbox WHERE id IN (SELECT id FROM
                    outbox ORDER BY id LIMIT 10000 FOR UPDATE SKIP LOCKED)
                    RETURNING ...; push the batch; wait for the sink's
                    acknowledgement; COMMIT.
  --source pgq      a PgQ consumer: every loop runs `SELECT pgq.ticker()` (pgqd is
                    not installed), then pgq.next_batch(queue, consumer); a batch is
                    read with pgq.get_batch_cursor + FETCH 10000, each block pushed
                    and acknowledged by the sink, then pgq.finish_batch(); COMMIT.
  --sink redis      pipelined XADD (no MULTI) of every payload to one stream, one
                    round trip per block of 10,000. --redis-client resp (default):
                    the commands are written as RESP by hand on one socket and the
                    replies parsed by hiredis (C), every reply checked; redis-py: a
                    redis-py pipeline (its command packing is Python, ~3x slower).
  --sink kafka      --kafka-client confluent (default): confluent-kafka, i.e.
                    librdkafka, the C client batchkit uses too (acks=all, idempotent,
                    murmur2_random, linger 5 ms; key = the row's id so one key stays on
                    one partition); delivery reports for errors only, flush() ends
                    each block and must leave nothing undelivered. kafka-python: its
                    KafkaProducer (acks=all, 1 MiB batches, linger 1 s as flush() ends
                    each block), every future checked; pure Python, ~10x slower.

Protocol with the benchmark: the relay connects to everything, prints "ready",
waits for one line on stdin ("go"), then records time.time() and runs until it
has delivered --rows rows (or --timeout seconds pass), and prints one JSON line:
{"t_go", "t_done", "rows", "batches", "cpu_s", "idle_polls"}.
"""
import argparse
import json
import os
import resource
import sys
import time

import psycopg2

BLOCK = 10000


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class RespRedisOut:
    """XADD written as RESP by hand, replies parsed by hiredis: what a relay tuned for
    speed does in Python (redis-py spends most of its time packing commands)."""

    def __init__(self, port, key):
        import socket

        import hiredis
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.error_type = hiredis.ReplyError
        k = key.encode()
        self.head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$4\r\ndata\r\n" % (len(k), k)
        self.roundtrip(b"*1\r\n$4\r\nPING\r\n", 1)

    def roundtrip(self, data, n):
        self.sock.sendall(data)
        got = 0
        while got < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("redis closed the connection")
            self.reader.feed(chunk)
            while True:
                reply = self.reader.gets()
                if reply is False:
                    break
                if isinstance(reply, self.error_type):
                    raise RuntimeError(f"redis: {reply}")
                got += 1

    def push(self, rows):
        head = self.head
        parts = []
        for _key, payload in rows:
            b = payload.encode()
            parts.append(b"%s$%d\r\n%s\r\n" % (head, len(b), b))
        self.roundtrip(b"".join(parts), len(rows))

    def close(self):
        self.sock.close()


class RedisOut:
    def __init__(self, port, key):
        import redis
        self.r = redis.Redis(port=port)
        self.r.ping()
        self.key = key

    def push(self, rows):
        p = self.r.pipeline(transaction=False)
        for _key, payload in rows:
            p.xadd(self.key, {"data": payload})
        res = p.execute()
        if len(res) != len(rows):
            raise RuntimeError("redis pipeline answered %d of %d" % (len(res), len(rows)))

    def close(self):
        pass


class KafkaOut:
    def __init__(self, bootstrap, topic):
        from kafka import KafkaProducer
        # linger 1 s: the relay flush()es every block itself; a short linger makes
        # kafka-python's sender drain half-built batches and wake up (a socket write)
        # for nearly every send, which halves its speed here
        self.p = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all",
                               linger_ms=1000, batch_size=1024 * 1024,
                               buffer_memory=256 * 1024 * 1024,
                               max_request_size=4 * 1024 * 1024,
                               max_in_flight_requests_per_connection=5, retries=5)
        self.topic = topic
        # metadata first, so the first block is not slowed by the topic lookup
        self.p.partitions_for(topic)

    def push(self, rows):
        futs = [self.p.send(self.topic, value=payload.encode(), key=key.encode())
                for key, payload in rows]
        self.p.flush()
        for f in futs:
            if f.failed():
                raise RuntimeError(f"kafka send failed: {f.exception}")

    def close(self):
        self.p.close()


class ConfluentKafkaOut:
    def __init__(self, bootstrap, topic):
        from confluent_kafka import Producer
        self.errors = []
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                           "enable.idempotence": True, "partitioner": "murmur2_random",
                           "linger.ms": 5, "queue.buffering.max.messages": 1000000,
                           "queue.buffering.max.kbytes": 1048576,
                           "delivery.report.only.error": True,
                           "on_delivery": self.failed})
        self.topic = topic
        # metadata first, so the first block is not slowed by the topic lookup
        self.p.list_topics(topic, timeout=10)

    def failed(self, err, msg):
        self.errors.append(err)

    def push(self, rows):
        produce, topic = self.p.produce, self.topic
        for key, payload in rows:
            produce(topic, payload, key)
        left = self.p.flush(60)
        if left or self.errors:
            raise RuntimeError(f"kafka: {left} undelivered, errors {self.errors[:3]}")

    def close(self):
        self.p.flush(10)


def run_outbox(conn, out, want, deadline):
    cur = conn.cursor()
    done = batches = idle = 0
    while done < want and time.time() < deadline:
        cur.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id "
                    "LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING payload->>'id', payload::text",
                    (BLOCK,))
        rows = cur.fetchall()
        if not rows:
            conn.rollback()
            idle += 1
            time.sleep(0.005)
            continue
        out.push(rows)
        conn.commit()
        done += len(rows)
        batches += 1
    return done, batches, idle


def run_pgq(conn, out, want, deadline, queue, consumer):
    cur = conn.cursor()
    done = batches = idle = 0
    while done < want and time.time() < deadline:
        cur.execute("SELECT pgq.ticker()")
        conn.commit()
        cur.execute("SELECT pgq.next_batch(%s, %s)", (queue, consumer))
        batch_id = cur.fetchone()[0]
        if batch_id is None:
            conn.commit()
            idle += 1
            time.sleep(0.005)
            continue
        # logutriga's ev_data is the url-encoded row, "id=42&name=...": the key is
        # its first field (taken in Python: the cursor returns pgq's own columns)
        cur.execute("SELECT * FROM pgq.get_batch_cursor(%s, 'bk_relay', 0)", (batch_id,))
        while True:
            cur.execute("FETCH %d FROM bk_relay" % BLOCK)
            evs = cur.fetchall()
            if not evs:
                break
            out.push([(d[3:d.find("&")], d) for d in (e[5] for e in evs)])
            done += len(evs)
        cur.execute("CLOSE bk_relay")
        cur.execute("SELECT pgq.finish_batch(%s)", (batch_id,))
        conn.commit()
        batches += 1
    return done, batches, idle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=["outbox", "pgq"], required=True)
    ap.add_argument("--sink", choices=["redis", "kafka"], required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--redis-port", type=int)
    ap.add_argument("--redis-key")
    ap.add_argument("--bootstrap")
    ap.add_argument("--topic")
    ap.add_argument("--queue", default="q")
    ap.add_argument("--consumer", default="c")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--redis-client", choices=["resp", "redis-py"], default="resp")
    ap.add_argument("--kafka-client", choices=["confluent", "kafka-python"], default="confluent")
    args = ap.parse_args()

    conn = psycopg2.connect(args.dsn)
    if args.sink == "redis":
        cls = RespRedisOut if args.redis_client == "resp" else RedisOut
        out = cls(args.redis_port, args.redis_key)
    else:
        cls = ConfluentKafkaOut if args.kafka_client == "confluent" else KafkaOut
        out = cls(args.bootstrap, args.topic)
    print("ready", flush=True)
    sys.stdin.readline()
    t_go = time.time()
    c0 = cpu_s()
    deadline = t_go + args.timeout
    if args.source == "outbox":
        done, batches, idle = run_outbox(conn, out, args.rows, deadline)
    else:
        done, batches, idle = run_pgq(conn, out, args.rows, deadline, args.queue, args.consumer)
    t_done = time.time()
    c1 = cpu_s()
    out.close()
    conn.close()
    print(json.dumps({"t_go": t_go, "t_done": t_done, "rows": done, "batches": batches,
                      "cpu_s": c1 - c0, "idle_polls": idle, "pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The README's first command: batchkit end to end on a throwaway stack.
#
#   build and install the extension, start PostgreSQL 15 (batchkit preloaded),
#   redis-server and the Kafka dev broker, capture a table into a Redis stream
#   and a Kafka topic, write a burst of inserts/updates/deletes, read the
#   messages back with redis-cli and kcat, and show the metrics.
#
# BATCHKIT_KEEP=1 leaves the services running afterwards (scripts/services.sh
# stop ends them; scripts/services.sh env prints how to connect).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BK_ROOT"

bash scripts/install-deps.sh

bk_log "building batchkit"
make -s -j2 >/dev/null
bk_log "installing batchkit into $(pg_config --pkglibdir)"
bk_as_root make -s install >/dev/null || bk_die "make install needs root (or passwordless sudo)"

if [ -z "${BATCHKIT_KEEP:-}" ]; then
    trap 'bash scripts/services.sh stop >/dev/null 2>&1 || true' EXIT
fi
bash scripts/services.sh start
set -a; . "$(bk_current_run_dir)/env"; set +a

step() { printf '\n\033[1;34m== %s\033[0m\n' "$*"; }
sql() { psql -X -q -v ON_ERROR_STOP=1 -d batchkit_demo "$@"; }

step "CREATE EXTENSION batchkit"
psql -X -q -c "CREATE DATABASE batchkit_demo"
sql -c "CREATE EXTENSION batchkit" -c "SELECT batchkit.version()"

step "two sinks: a Redis stream and a Kafka topic"
sql <<SQL
SELECT batchkit.create_sink('orders_redis', 'redis', jsonb_build_object(
    'url', 'redis://127.0.0.1:$REDIS_PORT/0', 'command', 'xadd', 'key', 'stream:{table}'));
SELECT batchkit.create_sink('orders_kafka', 'kafka', jsonb_build_object(
    'bootstrap.servers', '$KAFKA_BOOTSTRAP', 'topic', '{schema}.{table}'));
SELECT name, kind, paused, options FROM batchkit.sinks;
SQL

step "capture a table into both"
sql <<'SQL'
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(10,2),
                     status text DEFAULT 'new', created_at timestamptz DEFAULT now());
SELECT batchkit.capture('orders', 'orders_redis');
SELECT batchkit.capture('orders', 'orders_kafka', options => '{"include_before": true}');
SELECT source, sink, events, key_columns FROM batchkit.captures;
SQL

step "a burst of writes: 10,000 inserts, 2,000 updates, 500 deletes, one rolled-back transaction"
sql <<'SQL'
\timing on
INSERT INTO orders (id, customer, amount)
SELECT g, 'customer ' || (g % 97), (g % 1000) / 10.0 FROM generate_series(1, 10000) g;
UPDATE orders SET status = 'paid' WHERE id % 5 = 0;
DELETE FROM orders WHERE id % 20 = 0;
BEGIN; INSERT INTO orders (id, customer) VALUES (999999, 'never delivered'); ROLLBACK;
\timing off
SELECT batchkit.flush('orders_redis', '30 s') AS redis_drained,
       batchkit.flush('orders_kafka', '30 s') AS kafka_drained;
SQL

step "read back from Redis with redis-cli"
echo "XLEN stream:orders = $(redis-cli -p "$REDIS_PORT" XLEN stream:orders)   (expected 12500)"
redis-cli -p "$REDIS_PORT" XREVRANGE stream:orders + - COUNT 1

step "read back from Kafka with kcat"
# every message once: its key, a tab, its headers (the idempotency key is among them)
kafka_msgs=$(kcat -b "$KAFKA_BOOTSTRAP" -C -t public.orders -e -o beginning -q -f '%k\t%h\n')
n=$(cut -f2 <<<"$kafka_msgs" | sort -u | wc -l)
echo "distinct messages (by idempotency key) in topic public.orders = $n   (expected 12500)"
kcat -b "$KAFKA_BOOTSTRAP" -C -t public.orders -e -o beginning -q -c 1 \
     -f 'key=%k  headers=%h\n%s\n'

step "the queue is empty, nothing dead-lettered"
sql <<'SQL'
SELECT count(*) AS queued_chunks FROM batchkit.queue;
SELECT count(*) AS dead_letters FROM batchkit.dead_letters;
SELECT pid, kind, database, state FROM batchkit.workers;
SQL

step "metrics"
sql -c "SELECT sink, state, rows_queued, batches, rows_sent, avg_batch_size, lag_p50_ms, lag_p99_ms FROM batchkit.sink_stats"
metrics=$(sql -Atc "SELECT batchkit.metrics()")
grep -E '^batch_(items_processed_total|queue_size)' <<<"$metrics" | head -8

# The demo checks what it showed (scripts/test.sh runs it and counts it as a test).
[ "$(redis-cli -p "$REDIS_PORT" XLEN stream:orders)" = 12500 ] || bk_die "Redis did not get every change"
[ "$n" = 12500 ] || bk_die "Kafka did not get every change"
[ "$(redis-cli -p "$REDIS_PORT" --raw XRANGE stream:orders - + | grep -cF '"key":{"id":999999}')" = 0 ] ||
    bk_die "the rolled-back row reached Redis"
[ "$(cut -f1 <<<"$kafka_msgs" | grep -cx 999999)" = 0 ] ||
    bk_die "the rolled-back row reached Kafka"
[ "$(sql -Atc "SELECT count(*) FROM batchkit.queue")" = 0 ] || bk_die "the queue is not empty"
[ "$(sql -Atc "SELECT count(*) FROM batchkit.dead_letters")" = 0 ] || bk_die "something was dead-lettered"
for s in orders_redis orders_kafka; do
    grep -qx "batch_items_processed_total{database=\"batchkit_demo\",operation=\"$s\",status=\"success\"} 12500" <<<"$metrics" ||
        bk_die "metrics() does not count 12,500 rows sent by $s"
done
echo
bk_log "demo done: 12,500 changes captured and delivered to Redis and Kafka"

#!/usr/bin/env bash
# Start or stop the real services batchkit's tests and demo use:
# a throwaway PostgreSQL 15 (batchkit preloaded), redis-server and the Kafka dev
# broker (tools/kafka-dev-broker), all on loopback, on free ports, with their
# data under a fresh /tmp directory. Everything is stopped by pid.
#
#   services.sh start    start all three; writes $RUN/env and .run/current
#   services.sh stop     stop all three and remove the run directory
#   services.sh env      print the env file of the running services
set -euo pipefail
. "$(dirname "$0")/lib.sh"

start() {
    local old; old=$(bk_current_run_dir || true)
    if [ -n "$old" ] && [ -d "$old" ]; then
        bk_log "stopping services left from an earlier run ($old)"
        stop
    fi
    local run; run=$(mktemp -d /tmp/batchkit-run.XXXXXX)
    chmod 755 "$run"
    mkdir -p "$BK_ROOT/.run"
    echo "$run" >"$BK_ROOT/.run/current"

    local pgport redisport
    pgport=$(bk_free_port)
    redisport=$(bk_free_port)

    bk_log "starting PostgreSQL 15 on port $pgport ($run/pg)"
    mkdir -p "$run/pg"
    bash "$BK_ROOT/scripts/pg.sh" init "$run/pg" "$pgport"
    bash "$BK_ROOT/scripts/pg.sh" start "$run/pg"

    bk_log "starting redis-server on port $redisport"
    mkdir -p "$run/redis"
    redis-server --port "$redisport" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$run/redis/redis.pid" --logfile "$run/redis/redis.log" \
        --dir "$run/redis" >/dev/null
    for _ in $(seq 1 100); do
        redis-cli -p "$redisport" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$redisport" ping >/dev/null || bk_die "redis-server did not start"

    bk_log "starting the Kafka dev broker"
    make -s -C "$BK_ROOT/tools/kafka-dev-broker" >/dev/null
    mkdir -p "$run/kafka"
    nohup "$BK_ROOT/tools/kafka-dev-broker/kafka-dev-broker" --brokers 3 \
        --bootstrap-file "$run/kafka/bootstrap" --pid-file "$run/kafka/broker.pid" \
        >"$run/kafka/broker.log" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
        [ -s "$run/kafka/bootstrap" ] && break
        sleep 0.1
    done
    [ -s "$run/kafka/bootstrap" ] || { cat "$run/kafka/broker.log" >&2; bk_die "Kafka dev broker did not start"; }

    {
        echo "BATCHKIT_RUN_DIR=$run"
        bash "$BK_ROOT/scripts/pg.sh" env "$run/pg"
        echo "PGDATABASE=postgres"
        echo "REDIS_PORT=$redisport"
        echo "REDIS_URL=redis://127.0.0.1:$redisport/0"
        echo "KAFKA_BOOTSTRAP=$(cat "$run/kafka/bootstrap")"
    } >"$run/env"
    bk_log "services up; their settings are in $run/env"
}

stop_pidfile() { # name pidfile
    local pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(head -n1 "$pidfile" 2>/dev/null || true)
    stop_pid "$1" "$pid"
}

stop_pid() { # name pid
    local pid=$2
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    bk_log "$1 (pid $pid) did not stop on SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    local run; run=$(bk_current_run_dir || true)
    [ -n "$run" ] && [ -d "$run" ] || { rm -f "$BK_ROOT/.run/current"; return 0; }
    bash "$BK_ROOT/scripts/pg.sh" stop "$run/pg" fast || true
    # a stopped server may leave its postmaster if pg_ctl failed: make sure
    if [ -f "$run/pg/data/postmaster.pid" ]; then
        stop_pidfile postgres "$run/pg/data/postmaster.pid"
    fi
    stop_pidfile redis-server "$run/redis/redis.pid"
    stop_pidfile kafka-dev-broker "$run/kafka/broker.pid"
    rm -rf "$run"
    rm -f "$BK_ROOT/.run/current"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env) run=$(bk_current_run_dir) && cat "$run/env" ;;
*) bk_die "usage: services.sh start|stop|env" ;;
esac

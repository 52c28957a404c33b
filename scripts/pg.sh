#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster in a directory of its own.
#
#   pg.sh init  DIR PORT [--no-preload]   initdb DIR/data, socket in DIR/sock
#   pg.sh start DIR                       start and wait until it accepts connections
#   pg.sh stop  DIR [fast|immediate|smart] stop (default fast)
#   pg.sh env   DIR                       print PGHOST/PGPORT/PGUSER lines
#
# As root the server runs as the "postgres" OS user (Postgres refuses root);
# otherwise as the current user. Loopback and a Unix socket only.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || bk_die "usage: pg.sh init|start|stop|env DIR [...]"

case "$cmd" in
init)
    port=${3:?port}; preload=batchkit
    [ "${4:-}" = "--no-preload" ] && preload=""
    mkdir -p "$dir/sock"
    chmod 755 "$dir"
    bk_is_root && chown -R postgres:postgres "$dir"
    bk_as_pg "$BK_PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    conf="$dir/data/postgresql.conf"
    bk_as_pg tee -a "$conf" >/dev/null <<CONF
# --- batchkit throwaway cluster ---
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/sock'
shared_preload_libraries = '$preload'
max_worker_processes = 24
max_connections = 100
logging_collector = off
log_line_prefix = '%m [%p] %b '
fsync = on
CONF
    ;;
start)
    bk_as_pg "$BK_PGBIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -t 120 start >/dev/null \
        || { tail -n 30 "$dir/pg.log" >&2; exit 1; }
    ;;
stop)
    mode=${3:-fast}
    if [ -f "$dir/data/postmaster.pid" ]; then
        bk_as_pg "$BK_PGBIN/pg_ctl" -D "$dir/data" -m "$mode" -w -t 120 stop >/dev/null 2>&1 || true
    fi
    ;;
env)
    port=$(sed -n 's/^port = //p' "$dir/data/postgresql.conf" | tail -n1)
    echo "PGHOST=$dir/sock"
    echo "PGPORT=$port"
    echo "PGUSER=postgres"
    echo "PGDATA=$dir/data"
    ;;
*) bk_die "unknown command $cmd" ;;
esac

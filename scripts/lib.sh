# scripts/lib.sh — helpers shared by batchkit's scripts (sourced, not run).
# shellcheck shell=bash

BK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BK_ROOT
BK_PGBIN=${BK_PGBIN:-/usr/lib/postgresql/15/bin}
BK_PY=/usr/bin/python3   # Debian's python: it sees python3-psycopg2/redis/kafka

bk_log() { printf '\033[1m[batchkit]\033[0m %s\n' "$*" >&2; }
bk_die() { printf '[batchkit] error: %s\n' "$*" >&2; exit 1; }

bk_is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root: directly when root, through passwordless sudo otherwise.
bk_as_root() {
    if bk_is_root; then "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 100
    fi
}

# Run a command as the PostgreSQL server's OS user. Postgres refuses to run as
# root, so as root we use the "postgres" account; otherwise the current user.
bk_as_pg() {
    if bk_is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A free TCP port on the loopback interface.
bk_free_port() {
    "$BK_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The directory of the running services (written by services.sh start).
bk_current_run_dir() {
    local f="$BK_ROOT/.run/current"
    [ -f "$f" ] && cat "$f"
}

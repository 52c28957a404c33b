#!/usr/bin/env bash
# Install the Debian 12 packages batchkit needs to build, test and demo.
# As root (or with passwordless sudo) it installs what is missing with apt-get;
# otherwise it lists the missing packages and exits 1. Idempotent and quiet when
# everything is present.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PACKAGES=(
    # build
    make gcc g++ cmake pkg-config
    postgresql-15 postgresql-server-dev-15 postgresql-contrib
    librdkafka-dev libhiredis-dev libgtest-dev
    # services and independent readers used by tests and the demo
    redis-server redis-tools kcat
    python3 python3-pytest python3-psycopg2 python3-redis python3-kafka
    python3-prometheus-client
    # peers measured by the benchmarks (pgq); the C clients the peers' Python relays
    # use (hiredis's reply parser, confluent-kafka = librdkafka; kafka-python's
    # CRC-32C for the relays' --kafka-client kafka-python)
    postgresql-15-pgq3 python3-crc32c python3-hiredis python3-confluent-kafka
    # make bench: the report's plots
    python3-matplotlib
    # the Debian package (scripts/build-deb.sh, make deb): pg_buildext and its dh
    # add-ons, dpkg-buildpackage, and build-essential, which it checks for
    build-essential dpkg-dev debhelper postgresql-server-dev-all
    # misc tools the scripts use; gdb holds a backend inside its commit for a
    # race test (test_capture.py)
    procps util-linux gdb
)

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

bk_log "installing missing Debian packages: ${missing[*]}"
install_cmd() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@"
}
if bk_is_root; then
    install_cmd "${missing[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "batchkit needs these Debian packages, which are not installed:" >&2
    echo "    sudo apt-get install ${missing[*]}" >&2
    echo "Run that (or re-run this command as root), then try again." >&2
    exit 1
fi
# redis-server's package starts a system-wide redis on 6379 where systemd runs;
# batchkit never uses it (its scripts start their own on a free port).

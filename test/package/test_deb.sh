#!/usr/bin/env bash
# The Debian package, built, installed, used and removed (scripts/test.sh runs this
# after its services are stopped; as root, or with passwordless sudo):
#
#   1. META.json parses; its version = the Makefile's EXTVERSION = batchkit.control's
#      default_version = debian/changelog's upstream version
#   2. scripts/build-deb.sh builds postgresql-15-batchkit (reused while the tree is
#      unchanged); it holds exactly the files `make install` installs (batchkit.so,
#      batchkit.control, every sql/batchkit--*.sql, the JIT bitcode) plus the docs,
#      and depends on postgresql-15, librdkafka and hiredis
#   3. the files `make install` put in place are removed, the package is installed
#      (dpkg -i): dpkg -L lists the files, dpkg -V finds them unmodified
#   4. on a throwaway cluster (batchkit preloaded) and redis-server: CREATE EXTENSION,
#      a Redis sink, a captured table, one inserted row, which redis-cli then reads;
#      CREATE EXTENSION batchkit VERSION '0.1.0' in a second database, ALTER EXTENSION
#      batchkit UPDATE, and extversion is 0.2.0
#   5. dpkg -P removes the files; `make install` puts the make-installed files back,
#      also when a step fails (trap), so the machine is as before
#
# The window without the make-installed files is kept short: the package is built
# and the cluster initialised before they are removed. Prints "ok - ..." and
# "FAIL - ..." lines, last "test_deb: N passed, N failed (S s)"; exits non-zero
# on any failure.
set -uo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
cd "$BK_ROOT" || exit 1

PG_MAJOR=15
PKG=postgresql-$PG_MAJOR-batchkit
t0=$SECONDS
passed=0; failed=0
ok()  { echo "  ok   - $*"; passed=$((passed + 1)); }
bad() { echo "  FAIL - $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null; then ok "$what"; else bad "$what"; fi; }
summary() { echo "test_deb: $passed passed, $failed failed ($((SECONDS - t0)) s)"; }

if ! bk_as_root true 2>/dev/null; then
    bad "the package test needs root or passwordless sudo (dpkg -i, make install)"
    summary; exit 1
fi
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'ok installed'; then
    bad "$PKG is already installed; this test would remove it: 'dpkg -P $PKG' first"
    summary; exit 1
fi

run=$(mktemp -d /tmp/batchkit-deb.XXXXXX)
chmod 755 "$run"
files_removed=""
# the script's own stdout/stderr: a signal may run the EXIT trap while a command's
# output is redirected to a log file
exec 3>&1 4>&2
cleanup() {
    exec 1>&3 2>&4
    bash "$BK_ROOT/scripts/pg.sh" stop "$run/pg" immediate >/dev/null 2>&1 || true
    [ -f "$run/redis.pid" ] && kill "$(cat "$run/redis.pid")" 2>/dev/null
    if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'ok installed'; then
        echo "  (cleanup: dpkg -P $PKG)"
        bk_as_root dpkg -P "$PKG" >/dev/null 2>&1
    fi
    if [ -n "$files_removed" ]; then
        echo "  (cleanup: make install)"
        bk_as_root make -s install >/dev/null 2>&1 || echo "  make install failed: run it by hand" >&2
    fi
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. versions -------------------------------------------------------------------------
mk_version=$(sed -n 's/^EXTVERSION *= *//p' Makefile)
ctl_version=$(sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" batchkit.control)
meta=$("$BK_PY" -c '
import json
m = json.load(open("META.json"))
p = m["provides"]["batchkit"]
print(m["version"], p["version"], p["file"], m["meta-spec"]["version"],
      m["prereqs"]["runtime"]["requires"]["PostgreSQL"])' 2>&1)
read -r meta_version meta_ext_version meta_file meta_spec meta_pg <<<"$meta"
check "META.json parses; version $meta_version = Makefile EXTVERSION $mk_version = batchkit.control default_version $ctl_version" \
    test -n "$mk_version" -a "$meta_version" = "$mk_version" -a "$ctl_version" = "$mk_version"
check "META.json (meta-spec $meta_spec) provides batchkit $meta_ext_version in $meta_file, needs PostgreSQL $meta_pg" \
    test "$meta_ext_version" = "$mk_version" -a "$meta_file" = "sql/batchkit--$mk_version.sql" \
         -a "$meta_spec" = 1.0.0 -a "${meta_pg%%.*}" = "$PG_MAJOR"
deb_version=$(dpkg-parsechangelog -S Version 2>/dev/null)
check "debian/changelog's version $deb_version is EXTVERSION $mk_version plus a Debian revision" \
    test "${deb_version%-*}" = "$mk_version" -a "${deb_version%-*}" != "$deb_version"

# --- 2. build and contents -----------------------------------------------------------------
tb=$SECONDS
deb=$(bash scripts/build-deb.sh 2>"$run/build-deb.err" | grep "/${PKG}_" | tail -n 1)
how="built"; grep -q "up to date" "$run/build-deb.err" && how="reused the unchanged"
check "scripts/build-deb.sh $how $(basename "${deb:-nothing}") ($((SECONDS - tb)) s)" test -f "$deb"
if [ ! -f "$deb" ]; then tail -n 30 "$run/build-deb.err"; summary; exit 1; fi

# what `make install` installs, as absolute paths
make -s -j2 >"$run/make.log" 2>&1 && make -s install DESTDIR="$run/destdir" >>"$run/make.log" 2>&1 \
    || { cat "$run/make.log"; bad "make install DESTDIR=..."; summary; exit 1; }
(cd "$run/destdir" && find . -type f -printf '/%P\n') | sort >"$run/make-install.files"
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -n 's|^\./|/|; /[^/]$/p' | sort >"$run/deb.files"
grep -E "^/usr/(lib|share)/postgresql/" "$run/deb.files" >"$run/deb-pg.files"
check "the package holds exactly the $(wc -l <"$run/make-install.files") files make install installs" \
    cmp -s "$run/make-install.files" "$run/deb-pg.files"
cmp -s "$run/make-install.files" "$run/deb-pg.files" ||
    diff "$run/make-install.files" "$run/deb-pg.files" | sed 's/^/      /'

extdir=/usr/share/postgresql/$PG_MAJOR/extension
want=("/usr/lib/postgresql/$PG_MAJOR/lib/batchkit.so" "$extdir/batchkit.control")
for f in sql/batchkit--*.sql; do want+=("$extdir/$(basename "$f")"); done
missing=()
for f in "${want[@]}"; do grep -qxF "$f" "$run/deb.files" || missing+=("$f"); done
check "it has batchkit.so, batchkit.control and every install/upgrade script ($(cd sql && echo batchkit--*.sql))${missing[*]:+ - missing: ${missing[*]}}" \
    test ${#missing[@]} -eq 0 -a -f sql/batchkit--0.1.0.sql -a -f sql/batchkit--0.1.0--0.2.0.sql \
         -a -f "sql/batchkit--$mk_version.sql"

docdir=/usr/share/doc/$PKG
missing=()
for f in $(cat debian/docs) copyright changelog.Debian; do
    b=$(basename "$f")
    grep -qxE "$docdir/$b(\.gz)?" "$run/deb.files" || missing+=("$b")
done
check "it has the docs in $docdir ($(tr '\n' ' ' <debian/docs)copyright, changelog)${missing[*]:+ - missing: ${missing[*]}}" \
    test ${#missing[@]} -eq 0

depends=$(dpkg-deb -f "$deb" Depends)
check "it depends on postgresql-$PG_MAJOR, librdkafka and hiredis ($depends)" \
    bash -c '[[ "$1" =~ (^|, )postgresql-'"$PG_MAJOR"'(,|$) && "$1" == *librdkafka1* && "$1" == *libhiredis* ]]' _ "$depends"

# --- services prepared while the make-installed files are still there --------------------------
pgport=$(bk_free_port); rport=$(bk_free_port)
mkdir -p "$run/pg"
bash scripts/pg.sh init "$run/pg" "$pgport" >"$run/pg-init.log" 2>&1 ||
    { cat "$run/pg-init.log"; bad "initdb"; summary; exit 1; }
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$run/redis.pid" --logfile "$run/redis.log" --dir "$run" >/dev/null
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
check "redis-server runs on port $rport" redis-cli -p "$rport" ping

# --- 3. swap the make-installed files for the package -------------------------------------------
tw=$SECONDS
files_removed=1
bk_as_root xargs -d '\n' -a "$run/make-install.files" rm -f
left=$(while read -r f; do [ -e "$f" ] && echo "$f"; done <"$run/make-install.files")
check "the $(wc -l <"$run/make-install.files") make-installed files are removed" test -z "$left"

bk_as_root dpkg -i "$deb" >"$run/dpkg-i.log" 2>&1
rc=$?
check "dpkg -i $(basename "$deb")" test $rc -eq 0
[ $rc -eq 0 ] || sed 's/^/      /' "$run/dpkg-i.log"
dpkg -L "$PKG" 2>/dev/null | sort >"$run/dpkg-L.files"
unlisted=$(comm -23 "$run/deb.files" "$run/dpkg-L.files")
check "dpkg -L lists the package's $(wc -l <"$run/deb.files") files${unlisted:+; not listed: $unlisted}" \
    test -s "$run/dpkg-L.files" -a -z "$unlisted"
absent=$(while read -r f; do [ -f "$f" ] || echo "$f"; done <"$run/deb.files")
changed=$(dpkg -V "$PKG" 2>&1)
check "the package's files are in place and unmodified (dpkg -V)${absent:+; absent: $absent}${changed:+; $changed}" \
    test -z "$absent" -a -z "$changed"

# --- 4. use it ------------------------------------------------------------------------------------
export PGHOST=$run/pg/sock PGPORT=$pgport PGUSER=postgres
psql_() { "$BK_PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
check "PostgreSQL $PG_MAJOR starts with shared_preload_libraries = 'batchkit' from the package" \
    bash scripts/pg.sh start "$run/pg"

out=$(psql_ -d postgres -c "CREATE DATABASE deb_a" -c "CREATE DATABASE deb_b" 2>&1 &&
      psql_ -d deb_a 2>&1 <<SQL
CREATE EXTENSION batchkit;
SELECT 'extversion=' || extversion FROM pg_extension WHERE extname = 'batchkit';
SELECT batchkit.create_sink('deb_redis', 'redis', jsonb_build_object(
    'url', 'redis://127.0.0.1:$rport/0', 'command', 'xadd', 'key', 'deb:{table}')) > 0;
CREATE TABLE items (id int PRIMARY KEY, label text);
SELECT batchkit.capture('items', 'deb_redis') > 0;
INSERT INTO items VALUES (1, 'shipped by the Debian package');
SELECT 'drained=' || batchkit.flush('deb_redis', '30 s');
SQL
)
check "CREATE EXTENSION batchkit ($(sed -n 's/^extversion=//p' <<<"$out")), a Redis sink, capture, INSERT, flush drained" \
    test "$(grep -cxE "extversion=$mk_version|t|drained=true" <<<"$out")" -eq 4
[ "$(grep -cxE "extversion=$mk_version|t|drained=true" <<<"$out")" -eq 4 ] || echo "$out" | sed 's/^/      /'
xlen=$(redis-cli -p "$rport" XLEN deb:items 2>&1)
entry=$(redis-cli -p "$rport" XRANGE deb:items - + 2>&1)
check "redis-cli reads the row from stream deb:items (XLEN $xlen)" \
    bash -c '[ "$1" = 1 ] && [[ "$2" == *"shipped by the Debian package"* ]] && [[ "$2" == *insert* ]]' _ "$xlen" "$entry"

out=$(psql_ -d deb_b 2>&1 <<'SQL'
CREATE EXTENSION batchkit VERSION '0.1.0';
SELECT 'before=' || extversion FROM pg_extension WHERE extname = 'batchkit';
ALTER EXTENSION batchkit UPDATE;
SELECT 'after=' || extversion FROM pg_extension WHERE extname = 'batchkit';
SQL
)
before=$(sed -n 's/^before=//p' <<<"$out"); after=$(sed -n 's/^after=//p' <<<"$out")
check "CREATE EXTENSION batchkit VERSION '0.1.0', ALTER EXTENSION batchkit UPDATE: extversion $before -> $after" \
    test "$before" = 0.1.0 -a "$after" = "$mk_version"
[ "$after" = "$mk_version" ] || echo "$out" | sed 's/^/      /'
if grep -qE 'terminated by signal' "$run/pg/pg.log"; then
    bad "the server log shows a crash"; grep -E 'terminated by signal' "$run/pg/pg.log"
fi
bash scripts/pg.sh stop "$run/pg" fast

# --- 5. remove it, put the make-installed files back ---------------------------------------------
bk_as_root dpkg -P "$PKG" >"$run/dpkg-P.log" 2>&1
rc=$?
left=$(while read -r f; do [ -e "$f" ] && echo "$f"; done <"$run/deb.files")
check "dpkg -P $PKG removes its files${left:+; left: $left}" \
    test $rc -eq 0 -a -z "$left"
bk_as_root make -s install >"$run/make-install.log" 2>&1
rc=$?
absent=$(while read -r f; do [ -f "$f" ] || echo "$f"; done <"$run/make-install.files")
check "make install puts the make-installed files back (the files were swapped for $((SECONDS - tw)) s)" \
    test $rc -eq 0 -a -z "$absent"
[ $rc -eq 0 ] && files_removed=""

summary
[ "$failed" -eq 0 ]

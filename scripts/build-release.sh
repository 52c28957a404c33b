#!/usr/bin/env bash
# Build the batchkit.so of a released version from this repository's history, for the
# upgrade tests (test_upgrade.py runs a server on the old library, then on the new one).
#
#   scripts/build-release.sh VERSION      -> prints the path of build/releases/VERSION/batchkit.so
#
# The commit of each release is listed in sql/releases.tsv. The build is kept: a second
# call with the same commit only prints the path.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

version=${1:?usage: build-release.sh VERSION}
commit=$(awk -v v="$version" '$1 == v { print $2 }' "$BK_ROOT/sql/releases.tsv")
[ -n "$commit" ] || bk_die "version $version is not in sql/releases.tsv"
git -C "$BK_ROOT" cat-file -e "$commit^{commit}" 2>/dev/null ||
    bk_die "commit $commit of release $version is not in this clone's history (a shallow clone? git fetch --unshallow)"

out=$BK_ROOT/build/releases/$version
if [ -f "$out/batchkit.so" ] && [ "$(cat "$out/commit" 2>/dev/null)" = "$commit" ]; then
    echo "$out/batchkit.so"; exit 0
fi
rm -rf "$out"; mkdir -p "$out/src"
git -C "$BK_ROOT" archive "$commit" | tar -x -C "$out/src"
bk_log "building batchkit $version (commit $commit) for the upgrade tests"
make -C "$out/src" -s -j2 ${PG_CONFIG:+PG_CONFIG="$PG_CONFIG"} >"$out/build.log" 2>&1 ||
    { tail -n 30 "$out/build.log" >&2; exit 1; }
cp "$out/src/batchkit.so" "$out/batchkit.so"
echo "$commit" >"$out/commit"
rm -rf "$out/src"
echo "$out/batchkit.so"

#!/usr/bin/env bash
# Build the Debian package of batchkit (make deb):
#
#   build/deb/postgresql-15-batchkit_<version>_<arch>.deb   (version from debian/changelog)
#
# debian/ builds it the way Debian builds PGXS extensions (pg_buildext, dh --with
# pgxs_loop; see debian/rules). The build runs on a copy of the tree (the files git
# tracks plus untracked ones it does not ignore) in build/deb/src, so the work tree
# stays clean. A package built from the same sources is reused (build/deb/stamp: a hash
# of every file but the tests, benchmarks, clients and tools, which the package does
# not contain, and of the build dependencies' versions); --force rebuilds it anyway. Installs missing build dependencies first
# (scripts/install-deps.sh); prints the path of the .deb on its last line.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BK_ROOT"

force=""
[ "${1:-}" = "--force" ] && force=1

bash scripts/install-deps.sh

OUT=$BK_ROOT/build/deb
version=$(dpkg-parsechangelog -S Version)
upstream=${version%-*}
arch=$(dpkg --print-architecture)
# one binary package per PostgreSQL version in debian/pgversions
mapfile -t packages < <(sed -n 's/^Package: //p' debian/control)
debs=()
for p in "${packages[@]}"; do debs+=("$OUT/${p}_${version}_${arch}.deb"); done

# The source files: tracked ones (unless deleted) and untracked ones git does not
# ignore; without git (an unpacked tarball) everything but build output.
list_sources() {
    if git -C "$BK_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$BK_ROOT" ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done
    else
        find . \( -path ./build -o -path ./.run -o -path ./.git \) -prune -o -type f -printf '%P\0'
    fi | sort -z -u
}

mkdir -p "$OUT"
stamp=$( { list_sources | grep -zvE '^(test|bench|clients|tools|expected|\.ci)/' | xargs -0 sha256sum
            dpkg-query -W postgresql-server-dev-15 librdkafka-dev libhiredis-dev debhelper 2>/dev/null
          } | sha256sum | cut -d' ' -f1)
fresh=1
for d in "${debs[@]}"; do [ -f "$d" ] || fresh=""; done
if [ -z "$force" ] && [ -n "$fresh" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
    bk_log "the Debian package is up to date with the tree (scripts/build-deb.sh --force rebuilds it)"
    printf '%s\n' "${debs[@]}"
    exit 0
fi

src=$OUT/src/batchkit-$upstream
rm -rf "$OUT/src" "$OUT/stamp"
mkdir -p "$src"
list_sources | tar -c --null -T - -f - | tar -x -C "$src" -f -

bk_log "building the Debian package $version in $src (log: $OUT/build.log)"
start=$SECONDS
# -b: binary packages only (no source package, so no orig tarball is needed);
# Rules-Requires-Root: no, so neither root nor fakeroot is needed.
if ! (cd "$src" && dpkg-buildpackage -b -us -uc -j2) >"$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log" >&2
    bk_die "dpkg-buildpackage failed (full log: $OUT/build.log)"
fi
rm -f "$OUT"/*.deb "$OUT"/*.changes "$OUT"/*.buildinfo
mv "$OUT"/src/*.deb "$OUT"/src/*.changes "$OUT"/src/*.buildinfo "$OUT"/
rm -rf "$OUT/src"
for d in "${debs[@]}"; do [ -f "$d" ] || bk_die "dpkg-buildpackage did not produce $d"; done
echo "$stamp" >"$OUT/stamp"
bk_log "built in $((SECONDS - start)) s"
printf '%s\n' "${debs[@]}"

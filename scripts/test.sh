#!/usr/bin/env bash
# The README's second command: run batchkit's whole test suite on real services.
#
#   1. install missing Debian packages (scripts/install-deps.sh)
#   2. unit tests of the C++ core (CMake + GoogleTest via ctest -LE services; no
#      server), once plain and once with ASan/UBSan
#   3. build and install the extension (make, make install)
#   4. start PostgreSQL 15 + redis-server + the Kafka dev broker (scripts/services.sh)
#   5. the core's sink tests on the real Redis/Kafka (ctest -L services), pg_regress
#      (make installcheck), then the integration suite (pytest)
#   6. stop every service it started — also when a test fails
#   7. the Debian package (test/package/test_deb.sh, its own cluster and Redis):
#      build it, swap the make-installed files for it, use it, remove it, make
#      install again; each of its checks counts as a test
#   8. run the README's first command (scripts/demo.sh, its own services) and
#      count it as one test: it checks what it reads back and fails otherwise;
#      then print "N passed, N failed"
#
# Options (environment): BATCHKIT_TEST_FILTER=expr  passes -k expr to pytest;
#                        BATCHKIT_SKIP_ASAN=1        skips the sanitizer build;
#                        BATCHKIT_SKIP_DEB=1         skips the Debian package test.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BK_ROOT"

bash scripts/install-deps.sh || exit 1

OUT=$BK_ROOT/build/test-results
rm -rf "$OUT"; mkdir -p "$OUT"
passed=0; failed=0
add() { passed=$((passed + $1)); failed=$((failed + $2)); }

# Count a JUnit XML file: prints "passed failed".
junit_counts() {
    "$BK_PY" - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1); sys.exit()
suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
t = f = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0)) + int(su.get("errors", 0))
    s += int(su.get("skipped", 0) or su.get("disabled", 0) or 0)
print(t - f - s, f)
PY
}

cleanup() { bash scripts/services.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM

# --- 1. unit tests (no PostgreSQL involved) ----------------------------------------
run_unit() { # build-dir extra-cmake-args...
    local dir=$1; shift
    cmake -S . -B "$dir" -DBATCHKIT_UNIT_TESTS=ON "$@" >"$OUT/cmake-$(basename "$dir").log" 2>&1 &&
        cmake --build "$dir" -j2 >>"$OUT/cmake-$(basename "$dir").log" 2>&1 || {
        tail -n 40 "$OUT/cmake-$(basename "$dir").log"; add 0 1; return; }
    (cd "$dir" && ctest -LE services --output-on-failure --output-junit "$OUT/ctest-$(basename "$dir").xml" >"$OUT/ctest-$(basename "$dir").log" 2>&1)
    tail -n 3 "$OUT/ctest-$(basename "$dir").log"
    grep -q 'tests passed' "$OUT/ctest-$(basename "$dir").log" || cat "$OUT/ctest-$(basename "$dir").log"
    # shellcheck disable=SC2046
    add $(junit_counts "$OUT/ctest-$(basename "$dir").xml")
}
bk_log "unit tests (ctest)"
run_unit build/unit -DCMAKE_BUILD_TYPE=Debug
if [ -z "${BATCHKIT_SKIP_ASAN:-}" ]; then
    bk_log "unit tests under ASan/UBSan (ctest)"
    run_unit build/unit-asan -DCMAKE_BUILD_TYPE=Debug -DBATCHKIT_SANITIZE=ON
fi

# --- 2. build and install the extension --------------------------------------------------
bk_log "building and installing the extension"
if ! make -s -j2 >"$OUT/make.log" 2>&1; then
    tail -n 40 "$OUT/make.log"; add 0 1
    echo "$passed passed, $failed failed"; exit 1
fi
if ! bk_as_root make -s install >>"$OUT/make.log" 2>&1; then
    tail -n 20 "$OUT/make.log"
    echo "make install needs root: run this as root or with passwordless sudo" >&2
    add 0 1; echo "$passed passed, $failed failed"; exit 1
fi

# --- 3. services ---------------------------------------------------------------------------------
if ! bash scripts/services.sh start; then
    add 0 1; echo "$passed passed, $failed failed"; exit 1
fi
set -a; . "$(bk_current_run_dir)/env"; set +a

# --- 4a. the core's sink tests against the real Redis and Kafka (ctest -L services) --------------
bk_log "core sink tests against redis-server and the Kafka dev broker (ctest -L services)"
(cd build/unit && ctest -L services --output-on-failure --output-junit "$OUT/ctest-services.xml" \
    >"$OUT/ctest-services.log" 2>&1)
grep -E "tests passed|tests failed" "$OUT/ctest-services.log"
grep -q 'tests passed' "$OUT/ctest-services.log" || tail -n 60 "$OUT/ctest-services.log"
# shellcheck disable=SC2046
add $(junit_counts "$OUT/ctest-services.xml")

# --- 4. pg_regress ---------------------------------------------------------------------------
bk_log "pg_regress (make installcheck)"
make -s installcheck >"$OUT/regress.log" 2>&1
grep -E '^(ok|not ok|test |     |All |[0-9]+ of)' "$OUT/regress.log" | sed 's/^/  /' | tail -n 60
if grep -qE '^ *All [0-9]+ tests passed' "$OUT/regress.log"; then
    n=$(sed -nE 's/^ *All ([0-9]+) tests passed.*/\1/p' "$OUT/regress.log"); add "$n" 0
elif grep -qE '^ *[0-9]+ of [0-9]+ tests failed' "$OUT/regress.log"; then
    f=$(sed -nE 's/^ *([0-9]+) of ([0-9]+) tests failed.*/\1/p' "$OUT/regress.log")
    t=$(sed -nE 's/^ *([0-9]+) of ([0-9]+) tests failed.*/\2/p' "$OUT/regress.log")
    add $((t - f)) "$f"
    [ -f regression.diffs ] && head -n 80 regression.diffs
else
    tail -n 30 "$OUT/regress.log"; add 0 1
fi

# --- 5. integration tests (pytest on real services) -------------------------------------------
bk_log "integration tests (pytest)"
pyargs=(-q -p no:cacheprovider --junitxml "$OUT/pytest.xml" -o junit_family=xunit2)
[ -n "${BATCHKIT_TEST_FILTER:-}" ] && pyargs+=(-k "$BATCHKIT_TEST_FILTER")
"$BK_PY" -m pytest "${pyargs[@]}" test/integration 2>&1 | tee "$OUT/pytest.log" | tail -n 40
# shellcheck disable=SC2046
add $(junit_counts "$OUT/pytest.xml")

# --- 6. the server must not have crashed (a kill -9 by a test is signal 9) --------------------
if grep -E 'terminated by signal (4|6|7|8|11)' "$BATCHKIT_RUN_DIR/pg/pg.log"; then
    bk_log "the PostgreSQL server log shows a crash"; add 0 1
fi

cleanup
trap - EXIT

# --- 7. the Debian package: built, installed, used, removed (test/package/test_deb.sh) ------------
if [ -z "${BATCHKIT_SKIP_DEB:-}" ]; then
    bk_log "the Debian package (test/package/test_deb.sh)"
    bash test/package/test_deb.sh >"$OUT/deb.log" 2>&1
    deb_rc=$?
    grep -E '^  (ok|FAIL) ' "$OUT/deb.log"
    deb_counts=$(sed -nE 's/^test_deb: ([0-9]+) passed, ([0-9]+) failed.*/\1 \2/p' "$OUT/deb.log")
    if [ -n "$deb_counts" ]; then
        # shellcheck disable=SC2086
        add $deb_counts
        [ "$deb_rc" -ne 0 ] && [ "${deb_counts#* }" -eq 0 ] && add 0 1
    else
        tail -n 30 "$OUT/deb.log"; add 0 1
    fi
    [ "$deb_rc" -eq 0 ] || echo "  (full log: $OUT/deb.log)"
fi

# --- 8. the README's first command, end to end on its own services --------------------------------
bk_log "the README's first command (scripts/demo.sh)"
if bash scripts/demo.sh >"$OUT/demo.log" 2>&1 && grep -q "demo done" "$OUT/demo.log"; then
    echo "  demo: ok"; add 1 0
else
    echo "  demo: FAILED"; tail -n 40 "$OUT/demo.log"; add 0 1
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

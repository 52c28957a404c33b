# batchkit — the one way the extension is built, installed and regression-tested (PGXS).
#
#   make                 build batchkit.so (C shim + the C++ core static library from CMake)
#   make install         install it into the PostgreSQL found by $(PG_CONFIG)
#   make installcheck    pg_regress against a running server (PGHOST/PGPORT/PGUSER)
#   make demo / test     aliases of the README's two commands (scripts/demo.sh, scripts/test.sh)
#   make bench           install, then every benchmark (~28 min) -> bench/REPORT.md + plots;
#                        make bench BENCH_ARGS=--quick for a ~5 min smoke run (bench/out/quick)
#
# The C++ core is built by CMake as a Postgres-free static library (build/core) and
# linked into batchkit.so; only the C shim (src/shim/, one folder per concern) sees
# postgres.h.

EXTENSION    = batchkit
EXTVERSION   = 0.2.0
MODULE_big   = batchkit
SHIM_SRCS    = $(sort $(wildcard src/shim/*.c src/shim/*/*.c))
OBJS         = $(SHIM_SRCS:.c=.o)
# Releases (see "Upgrading" in the README and CHANGELOG.md):
#   sql/install/*.sql             the current version's objects; assembled into the
#                                 install script sql/batchkit--$(EXTVERSION).sql
#   sql/batchkit--0.1.0.sql       a released version's install script, frozen as shipped
#                                 (test_upgrade.py checks its checksum: never edit it)
#   sql/batchkit--A--B.sql        the upgrade scripts; every change of SQL objects since
#                                 the last release goes into the newest one
DATA_built   = sql/batchkit--$(EXTVERSION).sql
DATA         = $(filter-out $(DATA_built),$(wildcard sql/batchkit--*.sql))

# pg_regress: every sql/<test>.sql except the install scripts
REGRESS      = $(sort $(basename $(notdir $(filter-out sql/batchkit--%,$(wildcard sql/*.sql)))))
REGRESS_OPTS = --inputdir=. --load-extension=batchkit

CORE_BUILD   = build/core
CORE_LIB     = $(CORE_BUILD)/libbatchkit_core.a
CORE_SRCS    = $(shell find src/core include -name '*.cpp' -o -name '*.hpp' -o -name '*.h' 2>/dev/null) CMakeLists.txt

# -Isrc/shim: shim headers are named from the shim's root in every folder
# (#include "batchkit.h", #include "queue/chunk.h").
PG_CPPFLAGS  = -I$(CURDIR)/include -I$(CURDIR)/src/shim -Werror -Wall -Wmissing-prototypes
SHLIB_LINK   = $(CORE_LIB) -lrdkafka -lhiredis -lstdc++ -lpthread
EXTRA_CLEAN  = $(CORE_BUILD) $(DATA_built) results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
override BITCODE_CXXFLAGS += -std=c++17
else
all install installcheck:
	@echo "pg_config not found: run scripts/install-deps.sh (or install postgresql-server-dev-15)" >&2; exit 1
endif

# The install script is assembled from sql/install/NN_*.sql, one file per concern.
sql/batchkit--$(EXTVERSION).sql: $(sort $(wildcard sql/install/*.sql))
	cat $^ > $@

$(CORE_LIB): $(CORE_SRCS)
	cmake -S . -B $(CORE_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATCHKIT_UNIT_TESTS=OFF >/dev/null
	cmake --build $(CORE_BUILD) --target batchkit_core -j2

$(shlib): $(CORE_LIB)
$(OBJS): $(wildcard include/batchkit/*.h) $(wildcard src/shim/*.h src/shim/*/*.h)

.PHONY: demo test core bench
core: $(CORE_LIB)
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh

# The benchmarks run the batchkit installed in $(PG_CONFIG)'s PostgreSQL (they start
# their own throwaway clusters from its bin/), so install first.
BENCH_ARGS ?=
bench: install
	BK_PGBIN="$${BK_PGBIN:-$$($(PG_CONFIG) --bindir)}" /usr/bin/python3 bench/run_all.py $(BENCH_ARGS)

# The Debian package (debian/, pg_buildext), built from a copy of the tree:
# build/deb/postgresql-15-batchkit_<version>_<arch>.deb (scripts/build-deb.sh).
.PHONY: deb
deb:
	bash scripts/build-deb.sh

/*
 * module.c — _PG_init: GUCs, shared-memory hooks and the launcher registration.
 *
 * Works both preloaded and not. Without shared_preload_libraries the SQL
 * functions that need shared memory fail with a clear message (bk_require_shmem)
 * and everything else (e.g. batch_upsert) works.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "batchkit.h"
#include "shmem/shmem.h"
#include "metrics/metrics.h"
#include "flush/flush.h"
#include "upsert/upsert.h"

PG_MODULE_MAGIC;

int bk_max_workers = 8;
int bk_naptime_ms = 1000;
int bk_max_sinks = 128;
int bk_chunk_records = 1000;
bool bk_launcher_enabled = true;

void _PG_init(void);

void
_PG_init(void)
{
    /* pg_upgrade runs with binary_upgrade: never start workers or touch shmem there. */
    if (IsBinaryUpgrade)
        return;

    DefineCustomIntVariable("batchkit.naptime",
                            "How long the batchkit launcher sleeps between checks.",
                            "Workers are woken by commits; this only bounds how late a "
                            "missed wake-up or a new database is noticed.",
                            &bk_naptime_ms, 1000, 10, 3600 * 1000,
                            PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

    DefineCustomIntVariable("batchkit.chunk_records",
                            "Most records one queue chunk holds.",
                            "A statement's captured rows are packed into chunks of at most "
                            "this many records (and about 1 MB).",
                            &bk_chunk_records, 1000, 1, 65536,
                            PGC_USERSET, 0, NULL, NULL, NULL);

    if (!process_shared_preload_libraries_in_progress)
    {
        /*
         * Loaded by CREATE EXTENSION or a function call: PGC_POSTMASTER settings
         * cannot be created after startup, and there is no shared memory. SQL
         * functions that need it say so (bk_require_shmem).
         */
        MarkGUCPrefixReserved("batchkit");
        return;
    }

    DefineCustomIntVariable("batchkit.max_workers",
                            "Maximum number of batchkit flush workers (one per database).",
                            "Sizes shared memory; takes effect at server start.",
                            &bk_max_workers, 8, 1, 256,
                            PGC_POSTMASTER, 0, NULL, NULL, NULL);

    DefineCustomIntVariable("batchkit.max_sinks",
                            "Maximum number of sinks (over all databases) with shared state.",
                            "Sizes shared memory for queue depth and statistics.",
                            &bk_max_sinks, 128, 1, 65536,
                            PGC_POSTMASTER, 0, NULL, NULL, NULL);

    DefineCustomBoolVariable("batchkit.launcher_enabled",
                             "Start the batchkit launcher background worker.",
                             NULL, &bk_launcher_enabled, true,
                             PGC_POSTMASTER, 0, NULL, NULL, NULL);

    bk_metrics_http_define_gucs();

    MarkGUCPrefixReserved("batchkit");

    bk_shmem_install_hooks();
    bk_upsert_stats_install_hooks();
    bk_install_utility_hook();
    if (bk_launcher_enabled)
        bk_register_launcher();
}

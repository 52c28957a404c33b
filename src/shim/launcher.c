/*
 * launcher.c — the batchkit launcher background worker.
 *
 * One launcher per cluster, registered by _PG_init when batchkit is preloaded.
 * It connects to no database (shared catalogs only), shows up in
 * pg_stat_activity as backend_type "batchkit launcher", and sleeps on its latch
 * between rounds. State machine:
 *
 *     starting ──▶ idle ──(latch / naptime)──▶ checking ──▶ idle ...
 *                    │ SIGHUP: reload config       SIGTERM: exit
 *
 * Per-database flush workers hang off the "checking" round (flush issue).
 * If it dies it is restarted by the postmaster after BK_LAUNCHER_RESTART_SECS.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"

#include "batchkit.h"

#define BK_LAUNCHER_RESTART_SECS 1

void
bk_register_launcher(void)
{
    BackgroundWorker worker;

    memset(&worker, 0, sizeof(worker));
    worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
    worker.bgw_restart_time = BK_LAUNCHER_RESTART_SECS;
    strlcpy(worker.bgw_library_name, "batchkit", BGW_MAXLEN);
    strlcpy(worker.bgw_function_name, "batchkit_launcher_main", BGW_MAXLEN);
    strlcpy(worker.bgw_name, "batchkit launcher", BGW_MAXLEN);
    strlcpy(worker.bgw_type, "batchkit launcher", BGW_MAXLEN);
    RegisterBackgroundWorker(&worker);
}

void
batchkit_launcher_main(Datum main_arg)
{
    BkWorkerSlot *slot;

    /* Handlers first, then unblock (pg_cron's order). */
    pqsignal(SIGTERM, die);
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    BackgroundWorkerUnblockSignals();

    /* No database: the launcher reads shared catalogs only. */
    BackgroundWorkerInitializeConnection(NULL, NULL, 0);
    pgstat_report_appname("batchkit launcher");

    slot = bk_slot_claim(BK_WORKER_KIND_LAUNCHER, InvalidOid);
    ereport(LOG, (errmsg("batchkit launcher started")));

    for (;;)
    {
        int rc;

        bk_slot_set_state(slot, "idle", NULL);
        pgstat_report_activity(STATE_IDLE, NULL);
        rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
                       bk_naptime_ms, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        CHECK_FOR_INTERRUPTS();

        if (ConfigReloadPending)
        {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
            ereport(DEBUG1, (errmsg("batchkit launcher reloaded its configuration")));
        }
        (void) rc;
        bk_slot_set_state(slot, "checking", NULL);
        /* The flush issue starts per-database workers here. */
    }
}

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
 * Each "checking" round lists the databases that accept connections and
 * starts a flush worker (flush_worker.c) for every one that has none, at most
 * batchkit.max_workers. A worker finding no batchkit extension in its database
 * exits; the launcher tries that database again after BK_RECHECK_SECS, or at
 * once when woken (CREATE EXTENSION and create_sink wake it). A worker that
 * dies is started again the same way. If the launcher dies it is restarted by
 * the postmaster after BK_LAUNCHER_RESTART_SECS.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"

#include "shmem/shmem.h"
#include "metrics/metrics.h"
#include "flush/flush.h"

#define BK_LAUNCHER_RESTART_SECS 1
#define BK_RECHECK_SECS 10

typedef struct DbState
{
	Oid			dboid;			/* hash key */
	TimestampTz last_start;
} DbState;

static HTAB *db_states = NULL;

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

static bool
worker_running_for(Oid dboid)
{
	bool		found = false;

	LWLockAcquire(bk_shared->lock, LW_SHARED);
	for (int i = 1; i <= bk_shared->max_workers; i++)
		if (bk_shared->slots[i].in_use && bk_shared->slots[i].dboid == dboid)
			found = true;
	LWLockRelease(bk_shared->lock);
	return found;
}

static bool
start_flush_worker(Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher restarts it */
	strlcpy(worker.bgw_library_name, "batchkit", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "batchkit_flush_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "batchkit flush worker for database %u", dboid);
	strlcpy(worker.bgw_type, "batchkit flush worker", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&worker, &handle);
}

/* One round: start a worker for each database that has none (and was not tried lately). */
static void
check_databases(bool force)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dbs = NIL;
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	int			free_slots = 0;
	MemoryContext outer = CurrentMemoryContext;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate && db->datconnlimit != -2)
		{
			/* the list must outlive the transaction */
			MemoryContext old = MemoryContextSwitchTo(outer);

			dbs = lappend_oid(dbs, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();

	LWLockAcquire(bk_shared->lock, LW_SHARED);
	for (int i = 1; i <= bk_shared->max_workers; i++)
		if (!bk_shared->slots[i].in_use)
			free_slots++;
	LWLockRelease(bk_shared->lock);

	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		DbState    *st;
		bool		found;

		if (worker_running_for(dboid))
			continue;
		LWLockAcquire(bk_shared->lock, LW_SHARED);
		if (bk_shared->evicted_dboid == dboid &&
			!TimestampDifferenceExceeds(bk_shared->evicted_at, now, 30 * 1000))
		{
			LWLockRelease(bk_shared->lock);
			continue;
		}
		LWLockRelease(bk_shared->lock);
		st = hash_search(db_states, &dboid, HASH_ENTER, &found);
		if (found && !force &&
			!TimestampDifferenceExceeds(st->last_start, now, BK_RECHECK_SECS * 1000))
			continue;
		if (free_slots <= 0)
		{
			ereport(WARNING,
					(errmsg("batchkit cannot start a flush worker for database %u: all "
							"batchkit.max_workers (%d) are busy", dboid, bk_max_workers)));
			break;
		}
		if (!start_flush_worker(dboid))
		{
			ereport(WARNING,
					(errmsg("batchkit could not register a flush worker for database %u", dboid),
					 errhint("Raise max_worker_processes.")));
			break;
		}
		st->last_start = now;
		free_slots--;
	}
	list_free(dbs);
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
    {
        HASHCTL ctl;

        memset(&ctl, 0, sizeof(ctl));
        ctl.keysize = sizeof(Oid);
        ctl.entrysize = sizeof(DbState);
        ctl.hcxt = TopMemoryContext;
        db_states = hash_create("batchkit launcher databases", 16, &ctl,
                                HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
    }

    for (;;)
    {
        int rc;
        uint64 gen;
        static uint64 seen_gen = 0;

        bk_slot_set_state(slot, "idle", NULL);
        pgstat_report_activity(STATE_IDLE, NULL);
        /* WaitLatch, serving the optional /metrics endpoint meanwhile (metrics_http.c) */
        rc = bk_metrics_http_wait(bk_naptime_ms);
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
        LWLockAcquire(bk_shared->lock, LW_SHARED);
        gen = bk_shared->recheck_generation;
        LWLockRelease(bk_shared->lock);
        check_databases(gen != seen_gen);
        seen_gen = gen;
    }
}

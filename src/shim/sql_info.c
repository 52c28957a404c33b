/*
 * sql_info.c — SQL entry points that describe batchkit itself:
 * batchkit.version(), batchkit._workers() (behind the batchkit.workers view).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "batchkit/core.h"
#include "batchkit.h"
#include "shmem/shmem.h"

PG_FUNCTION_INFO_V1(batchkit_version);
PG_FUNCTION_INFO_V1(batchkit_workers);
PG_FUNCTION_INFO_V1(batchkit_preloaded);

Datum
batchkit_version(PG_FUNCTION_ARGS)
{
    PG_RETURN_TEXT_P(cstring_to_text(bk_core_version()));
}

Datum
batchkit_preloaded(PG_FUNCTION_ARGS)
{
    PG_RETURN_BOOL(bk_shared != NULL);
}

/* One row per running batchkit process: the launcher and the flush workers. */
Datum
batchkit_workers(PG_FUNCTION_ARGS)
{
    ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
    BkWorkerSlot *copy;
    int nslots;

    bk_require_shmem();
    InitMaterializedSRF(fcinfo, 0);

    /* Copy under the lock, release at once, then build tuples. */
    nslots = bk_shared->max_workers + 1;
    copy = palloc(sizeof(BkWorkerSlot) * nslots);
    LWLockAcquire(bk_shared->lock, LW_SHARED);
    memcpy(copy, bk_shared->slots, sizeof(BkWorkerSlot) * nslots);
    LWLockRelease(bk_shared->lock);

    for (int i = 0; i < nslots; i++)
    {
        Datum values[7];
        bool nulls[7] = {0};
        BkWorkerSlot *s = &copy[i];
        char *dbname;

        if (!s->in_use)
            continue;
        values[0] = Int32GetDatum(s->pid);
        values[1] = CStringGetTextDatum(s->kind == BK_WORKER_KIND_LAUNCHER ? "launcher" : "flush");
        dbname = OidIsValid(s->dboid) ? get_database_name(s->dboid) : NULL;
        if (dbname)
            values[2] = CStringGetTextDatum(dbname);
        else
            nulls[2] = true;
        values[3] = CStringGetTextDatum(s->state);
        if (s->sink[0])
            values[4] = CStringGetTextDatum(s->sink);
        else
            nulls[4] = true;
        values[5] = TimestampTzGetDatum(s->started);
        values[6] = TimestampTzGetDatum(s->last_activity);
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
    }
    return (Datum) 0;
}

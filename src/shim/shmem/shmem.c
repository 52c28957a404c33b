/*
 * shmem.c — batchkit's shared memory: request, initialise, find, and the
 * helpers that claim and update worker slots.
 *
 * Locking contract: BkShared->lock (LWLock tranche "batchkit").
 *   - EXCLUSIVE: claiming or releasing a slot, updating a slot's fields.
 *   - SHARED: reading slots (SQL views copy the slot out, then release).
 * A worker only ever updates its own slot. The lock is never held across I/O,
 * a call into the C++ core, or anything that can ereport(ERROR).
 * Restore marks (BkShared->restores): taken and freed under the lock, EXCLUSIVE,
 * by the restoring backend only (the mark is freed when it exits); read SHARED.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "shmem/shmem.h"

BkShared *bk_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
bk_workers_size(void)
{
    /* slot 0 is the launcher, then one per flush worker */
    return MAXALIGN(add_size(offsetof(BkShared, slots),
                             mul_size(sizeof(BkWorkerSlot), bk_max_workers + 1)));
}

static Size
bk_shmem_size(void)
{
    return add_size(bk_workers_size(), mul_size(sizeof(BkSinkSlot), bk_max_sinks));
}

static void
bk_shmem_request(void)
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(bk_shmem_size());
    RequestNamedLWLockTranche("batchkit", 1);
}

static void
bk_shmem_startup(void)
{
    bool found;

    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();

    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bk_shared = ShmemInitStruct("batchkit", bk_shmem_size(), &found);
    if (!found)
    {
        memset(bk_shared, 0, bk_shmem_size());
        bk_shared->lock = &(GetNamedLWLockTranche("batchkit"))->lock;
        bk_shared->max_workers = bk_max_workers;
        bk_shared->max_sinks = bk_max_sinks;
    }
    /* every process computes the same address (the segment is mapped at the same place) */
    bk_shared->sinks = (BkSinkSlot *) ((char *) bk_shared + bk_workers_size());
    LWLockRelease(AddinShmemInitLock);

    /* statistics survive a clean restart (stats_file.c), as pg_stat_statements' do */
    if (!IsUnderPostmaster)
        on_shmem_exit(bk_stats_file_save, (Datum) 0);
    if (!found)
        bk_stats_file_load();
}

void
bk_shmem_install_hooks(void)
{
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = bk_shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = bk_shmem_startup;
}

void
bk_require_shmem(void)
{
    if (bk_shared == NULL)
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                 errmsg("batchkit must be loaded via shared_preload_libraries"),
                 errhint("Add batchkit to shared_preload_libraries in postgresql.conf "
                         "and restart the server.")));
}

static void
bk_slot_release(int code, Datum arg)
{
    BkWorkerSlot *slot = (BkWorkerSlot *) DatumGetPointer(arg);

    LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
    if (slot->pid == MyProcPid)
    {
        slot->in_use = false;
        slot->pid = 0;
        strlcpy(slot->state, "stopped", BK_STATE_LEN);
        slot->sink[0] = '\0';
    }
    LWLockRelease(bk_shared->lock);
}

/*
 * Claim a slot for this process: slot 0 for the launcher, a free one of
 * 1..max_workers for a flush worker. Returns NULL when none is free. The slot
 * is released automatically when the process exits (also after kill -9: the
 * postmaster then reinitialises shared memory).
 */
BkWorkerSlot *
bk_slot_claim(char kind, Oid dboid)
{
    BkWorkerSlot *slot = NULL;
    TimestampTz now = GetCurrentTimestamp();

    bk_require_shmem();
    LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
    if (kind == BK_WORKER_KIND_LAUNCHER)
    {
        slot = &bk_shared->slots[0];
        bk_shared->launcher_starts++;
    }
    else
    {
        for (int i = 1; i <= bk_shared->max_workers; i++)
        {
            if (!bk_shared->slots[i].in_use)
            {
                slot = &bk_shared->slots[i];
                break;
            }
        }
    }
    if (slot != NULL)
    {
        memset(slot, 0, sizeof(*slot));
        slot->in_use = true;
        slot->kind = kind;
        slot->pid = MyProcPid;
        slot->dboid = dboid;
        slot->started = now;
        slot->last_activity = now;
        strlcpy(slot->state, "starting", BK_STATE_LEN);
        slot->latch = &MyProc->procLatch;
        pg_atomic_init_u32(&slot->reload_requested, 0);
    }
    LWLockRelease(bk_shared->lock);

    if (slot != NULL)
        on_shmem_exit(bk_slot_release, PointerGetDatum(slot));
    return slot;
}

void
bk_slot_set_state(BkWorkerSlot *slot, const char *state, const char *sink)
{
    TimestampTz now = GetCurrentTimestamp();

    LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
    strlcpy(slot->state, state, BK_STATE_LEN);
    strlcpy(slot->sink, sink ? sink : "", NAMEDATALEN);
    slot->last_activity = now;
    LWLockRelease(bk_shared->lock);
}

/*
 * Find the shared slot of a sink; with `create`, take a free one. Returns NULL
 * when batchkit is not preloaded, or when every slot is taken (then depth is
 * unknown and backpressure cannot apply: a WARNING says so once per backend).
 */
BkSinkSlot *
bk_sink_slot(Oid dboid, int32 sink_id, bool create)
{
    BkSinkSlot *found = NULL;
    static bool warned = false;

    if (bk_shared == NULL)
        return NULL;
    LWLockAcquire(bk_shared->lock, LW_SHARED);
    for (int i = 0; i < bk_shared->max_sinks; i++)
    {
        BkSinkSlot *s = &bk_shared->sinks[i];

        if (s->in_use && s->dboid == dboid && s->sink_id == sink_id)
        {
            found = s;
            break;
        }
    }
    LWLockRelease(bk_shared->lock);
    if (found || !create)
        return found;

    LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
    for (int i = 0; i < bk_shared->max_sinks && found == NULL; i++)
    {
        BkSinkSlot *s = &bk_shared->sinks[i];

        if (s->in_use && s->dboid == dboid && s->sink_id == sink_id)
            found = s;
    }
    for (int i = 0; i < bk_shared->max_sinks && found == NULL; i++)
    {
        BkSinkSlot *s = &bk_shared->sinks[i];

        if (!s->in_use)
        {
            memset(s, 0, sizeof(*s));
            s->in_use = true;
            s->dboid = dboid;
            s->sink_id = sink_id;
            s->depth_known = false;
            pg_atomic_init_u64(&s->queued, 0);
            pg_atomic_init_u32(&s->committing, 0);
            pg_atomic_init_u32(&s->flush_requested, 0);
            SpinLockInit(&s->mutex);
            strlcpy(s->state, "idle", sizeof(s->state));
            s->stats_reset = GetCurrentTimestamp();
            found = s;
        }
    }
    LWLockRelease(bk_shared->lock);
    if (found == NULL && !warned)
    {
        warned = true;
        ereport(WARNING,
                (errmsg("batchkit has no free shared slot for another sink"),
                 errhint("Raise batchkit.max_sinks (currently %d) and restart the server.",
                         bk_shared->max_sinks)));
    }
    return found;
}

void
bk_sink_slot_forget(Oid dboid, int32 sink_id)
{
    if (bk_shared == NULL)
        return;
    LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
    for (int i = 0; i < bk_shared->max_sinks; i++)
    {
        BkSinkSlot *s = &bk_shared->sinks[i];

        if (s->in_use && s->dboid == dboid && s->sink_id == sink_id)
            s->in_use = false;
    }
    LWLockRelease(bk_shared->lock);
}

/* The sink ids of a database's slots, at most `max` of them; returns how many. */
int
bk_sink_slot_ids(Oid dboid, int32 *ids, int max)
{
    int n = 0;

    if (bk_shared == NULL)
        return 0;
    LWLockAcquire(bk_shared->lock, LW_SHARED);
    for (int i = 0; i < bk_shared->max_sinks && n < max; i++)
    {
        BkSinkSlot *s = &bk_shared->sinks[i];

        if (s->in_use && s->dboid == dboid)
            ids[n++] = s->sink_id;
    }
    LWLockRelease(bk_shared->lock);
    return n;
}

static void wake_flush_worker(Oid dboid, bool reload);

/* Set the latch of the flush worker serving a database (no-op when there is none). */
void
bk_wake_database(Oid dboid)
{
    wake_flush_worker(dboid, false);
}

/* Wake it and make it re-read the sink catalog at once (pause, resume, alter, ...). */
void
bk_request_reload(Oid dboid)
{
    wake_flush_worker(dboid, true);
}

static void
wake_flush_worker(Oid dboid, bool reload)
{
    Latch *latch = NULL;

    if (bk_shared == NULL)
        return;
    LWLockAcquire(bk_shared->lock, LW_SHARED);
    for (int i = 1; i <= bk_shared->max_workers; i++)
    {
        BkWorkerSlot *w = &bk_shared->slots[i];

        if (w->in_use && w->kind == BK_WORKER_KIND_FLUSH && w->dboid == dboid)
        {
            if (reload)
                pg_atomic_write_u32(&w->reload_requested, 1);
            latch = w->latch;
            break;
        }
    }
    LWLockRelease(bk_shared->lock);
    if (latch)
        SetLatch(latch);
}

/* Set the launcher's latch and make it retry every database now. */
void
bk_wake_launcher(void)
{
    Latch *latch = NULL;

    if (bk_shared == NULL)
        return;
    LWLockAcquire(bk_shared->lock, LW_SHARED);
    if (bk_shared->slots[0].in_use)
        latch = bk_shared->slots[0].latch;
    bk_shared->recheck_generation++; /* benign race: any change means "recheck" */
    LWLockRelease(bk_shared->lock);
    if (latch)
        SetLatch(latch);
}

/* ---- restores ---------------------------------------------------------------- */

/*
 * Forget the depth counters of a database's sinks: the next reader or the flush
 * worker sums the queue again. Bumping `applied` makes a rebuild that is summing
 * right now (from a snapshot that may predate what changed) discard its result.
 */
void
bk_forget_depths(Oid dboid)
{
    if (bk_shared == NULL)
        return;
    LWLockAcquire(bk_shared->lock, LW_SHARED);
    for (int i = 0; i < bk_shared->max_sinks; i++)
    {
        BkSinkSlot *s = &bk_shared->sinks[i];

        if (s->in_use && s->dboid == dboid)
        {
            SpinLockAcquire(&s->mutex);
            s->depth_known = false;
            s->applied++;
            SpinLockRelease(&s->mutex);
        }
    }
    LWLockRelease(bk_shared->lock);
}

static bool restore_marked = false;

/*
 * At exit of a session that restored queue chunks (its transactions have
 * committed, or are about to be aborted): free its mark, make the counters be
 * rebuilt (rows COPYed into the queue never went through a writer's commit
 * bookkeeping) and wake the worker.
 */
static void
restore_unmark(int code, Datum arg)
{
    Oid dboid = DatumGetObjectId(arg);

    LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
    for (int i = 0; i < BK_MAX_RESTORES; i++)
        if (bk_shared->restores[i].pid == MyProcPid)
        {
            bk_shared->restores[i].pid = 0;
            bk_shared->restores[i].dboid = InvalidOid;
        }
    LWLockRelease(bk_shared->lock);
    bk_forget_depths(dboid);
    bk_request_reload(dboid);
}

/*
 * This session is loading queue chunks from their text form (a restore, see
 * chunk_io.c): hold delivery in its database until it ends. Only a role that
 * may write the queue counts (anyone may cast text to batchkit.chunk).
 */
void
bk_note_restoring(void)
{
    Oid nsp;
    Oid relid;
    bool marked = false;

    if (bk_shared == NULL || restore_marked || !OidIsValid(MyDatabaseId))
        return;
    nsp = get_namespace_oid("batchkit", true);
    relid = OidIsValid(nsp) ? get_relname_relid("queue", nsp) : InvalidOid;
    if (!OidIsValid(relid) || pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
        return;
    LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
    for (int i = 0; i < BK_MAX_RESTORES && !marked; i++)
        if (bk_shared->restores[i].pid == 0)
        {
            bk_shared->restores[i].dboid = MyDatabaseId;
            bk_shared->restores[i].pid = MyProcPid;
            marked = true;
        }
    LWLockRelease(bk_shared->lock);
    restore_marked = true;      /* tried: do not warn again */
    if (!marked)
    {
        ereport(WARNING,
                (errmsg("batchkit cannot hold delivery during this restore: %d other restores "
                        "are running", BK_MAX_RESTORES),
                 errdetail("The flush worker may deliver restored rows while the queue is "
                           "still loading, so changes of one key may arrive out of order."),
                 errhint("Pause the sinks (batchkit.pause_sink) before the restore ends.")));
        return;
    }
    before_shmem_exit(restore_unmark, ObjectIdGetDatum(MyDatabaseId));
}

/* Is a session restoring this database's queue? */
bool
bk_restore_pending(Oid dboid)
{
    bool pending = false;

    if (bk_shared == NULL)
        return false;
    LWLockAcquire(bk_shared->lock, LW_SHARED);
    for (int i = 0; i < BK_MAX_RESTORES && !pending; i++)
        pending = bk_shared->restores[i].pid != 0 && bk_shared->restores[i].dboid == dboid;
    LWLockRelease(bk_shared->lock);
    return pending;
}

/*
 * shmem/shmem.h — batchkit's shared memory (shmem.c): the worker slots, the
 * per-sink slots, waking a database's flush worker or the launcher, restore
 * marks; and the statistics kept across a clean restart (stats_file.c).
 * The layout and the locking contract are in batchkit.h.
 */
#ifndef BATCHKIT_SHIM_SHMEM_H
#define BATCHKIT_SHIM_SHMEM_H

#include "batchkit.h"

/* shmem.c */
extern BkShared *bk_shared;
extern void bk_shmem_install_hooks(void);
extern void bk_require_shmem(void);
extern BkWorkerSlot *bk_slot_claim(char kind, Oid dboid);
extern void bk_slot_set_state(BkWorkerSlot *slot, const char *state, const char *sink);
extern BkSinkSlot *bk_sink_slot(Oid dboid, int32 sink_id, bool create);
extern void bk_sink_slot_forget(Oid dboid, int32 sink_id);
extern int bk_sink_slot_ids(Oid dboid, int32 *ids, int max);
extern void bk_wake_database(Oid dboid);
extern void bk_request_reload(Oid dboid);
extern void bk_wake_launcher(void);
extern void bk_note_restoring(void);
extern bool bk_restore_pending(Oid dboid);
extern void bk_forget_depths(Oid dboid);

/* stats_file.c: statistics saved at clean shutdown, loaded at start-up */
extern void bk_stats_file_load(void);
extern void bk_stats_file_save(int code, Datum arg);

#endif /* BATCHKIT_SHIM_SHMEM_H */

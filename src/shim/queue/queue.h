/*
 * queue/queue.h — writing the durable queue from a user's transaction and the
 * bookkeeping around it (queue.c): depth, backpressure, wake-on-commit, the
 * catalog cache, running as the queue's owner. Chunks: chunk.h; claiming and
 * acknowledging batches: consume.h.
 */
#ifndef BATCHKIT_SHIM_QUEUE_H
#define BATCHKIT_SHIM_QUEUE_H

#include "batchkit.h"

struct _SPI_plan;
extern struct _SPI_plan *bk_keep_plan(struct _SPI_plan **slot, const char *sql, int nargs,
                                      Oid *argtypes);
extern void bk_queue_init_backend(void);
extern uint64 bk_sink_depth(int32 sink_id, bool *known);
extern uint64 bk_queue_rebuild_depth(BkSinkSlot *slot, int32 sink_id);
extern void bk_queue_note_enqueued(int32 sink_id, uint64 nrecords);
extern void bk_queue_note_acked(int32 sink_id, uint64 nrecords);
extern bool bk_queue_needs_spi(int32 sink_id);
extern void bk_queue_check_backpressure(int32 sink_id, uint64 adding);
extern void bk_queue_insert_chunk(int32 sink_id, Oid source, const char *data, int len,
                                  uint32 nrecords);
extern Oid bk_queue_owner(void);
extern void bk_begin_as_owner(Oid *save_userid, int *save_sec);
extern void bk_end_as_owner(Oid save_userid, int save_sec);
extern void bk_invalidate_catalog_cache(void);
extern void bk_wake_launcher_at_commit(void);
extern void bk_wake_worker_at_commit(void);
extern int32 bk_lookup_sink_id(const char *name, bool missing_ok);

#endif /* BATCHKIT_SHIM_QUEUE_H */

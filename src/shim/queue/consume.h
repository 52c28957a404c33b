/*
 * consume.h — claiming, decoding and acknowledging batches of queued records.
 *
 * Used by the flush worker and by the SQL functions batchkit.claim_batch() /
 * batchkit.ack_batch(). All functions run inside a transaction, connected to
 * SPI, as the queue's owner (bk_begin_as_owner).
 *
 * Protocol, per sink (one consumer at a time — the flush worker holds the
 * sink's advisory lock):
 *   1. bk_claim_batch(after_seq): if an unacknowledged batch with a batch_seq
 *      above after_seq is recorded in batchkit.inflight, return the lowest one
 *      again (same batch_seq: a replay). Otherwise take the oldest records in
 *      chunk_id order up to the limits, EXCLUDING the records the in-flight
 *      batches (those up to after_seq) hold, give them the next batch_seq and
 *      record them in batchkit.inflight. Commit before sending, so a crash
 *      leaves a replayable record.
 *      The flush worker pipelines: it claims batch N+1 while N is in flight
 *      (after_seq = N), so up to two batches of a sink are in flight. The SQL
 *      API and a restarted worker pass after_seq = 0: the lowest in-flight
 *      batch is replayed first, then the next, in batch_seq order.
 *      Exclusion is per chunk (from past the furthest record a batch in flight
 *      holds in it), not by position: a chunk with a lower id that committed
 *      after batch N was claimed is taken by N+1.
 *   2. bk_batch_decode(): decode the batch's records into messages.
 *   3. bk_ack_batch(): after the sink acknowledged every message: delete the
 *      fully consumed chunks, advance done_records of a partly consumed one,
 *      delete the inflight row. Commit. Batches are acknowledged in batch_seq
 *      order (the worker never acknowledges N+1 before N).
 * Nothing is ever skipped: consumption deletes what it consumed instead of
 * moving a "last id" cursor, so a chunk whose id was allocated early but
 * committed late is simply found by a later claim.
 */
#ifndef BATCHKIT_CONSUME_H
#define BATCHKIT_CONSUME_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "queue/chunk.h"

#define BK_FORMAT_ENVELOPE 0
#define BK_FORMAT_ROW 1

/* seq of a record: stable across replays, unique per database */
#define BK_SEQ_PER_CHUNK INT64CONST(100000)
#define BK_SEQ(chunk_id, index) ((chunk_id) * BK_SEQ_PER_CHUNK + (index))

typedef struct BkBatch
{
	int32		sink_id;
	int64		batch_seq;
	bool		replay;			/* claimed before and never acknowledged */
	int			nchunks;
	int64	   *chunk_ids;
	int32	   *chunk_starts;
	int32		last_end;		/* -1: through the end of the last chunk */
	int64		nrecords;
	TimestampTz oldest_capture;
} BkBatch;

typedef struct BkMessage
{
	char		op;				/* BK_REC_INSERT/UPDATE/DELETE/MESSAGE */
	int64		seq;
	int64		chunk_id;
	const char *source;			/* "schema.table"; NULL for enqueued messages */
	bool		has_key;
	StringInfoData key;			/* message key */
	StringInfoData value;		/* message body, per the sink's format */
	const char *headers;		/* enqueued messages: JSON object text or NULL */
	int			headerslen;
	const char *target;			/* replayed dead letters: the original topic/key */
	int			targetlen;
	TimestampTz captured_at;
	BkChunkReader *reader;		/* rows: for key templates and per-column output */
	HeapTupleHeader row;		/* rows: after image, or before for deletes */
} BkMessage;

typedef void (*bk_message_cb) (BkMessage *m, void *arg);

extern bool bk_claim_batch(int32 sink_id, int64 max_rows, int64 max_bytes, int64 after_seq,
						   BkBatch *batch);
extern void bk_batch_decode(BkBatch *batch, int format, bk_message_cb cb, void *arg);
extern int64 bk_ack_batch(int32 sink_id, int64 batch_seq);

#endif							/* BATCHKIT_CONSUME_H */

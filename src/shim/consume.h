/*
 * consume.h — claiming, decoding and acknowledging batches of queued records.
 *
 * Used by the flush worker and by the SQL functions batchkit.claim_batch() /
 * batchkit.ack_batch(). All functions run inside a transaction, connected to
 * SPI, as the queue's owner (bk_begin_as_owner).
 *
 * Protocol, per sink (one consumer at a time — the flush worker holds the
 * sink's advisory lock):
 *   1. bk_claim_batch(): if an unacknowledged batch is recorded in
 *      batchkit.inflight, return it again (same batch_seq: a replay);
 *      otherwise take the oldest chunks in chunk_id order up to the limits,
 *      give them the next batch_seq and record them in batchkit.inflight.
 *      Commit before sending, so a crash leaves a replayable record.
 *   2. bk_batch_decode(): decode the batch's records into messages.
 *   3. bk_ack_batch(): after the sink acknowledged every message: delete the
 *      fully consumed chunks, advance done_records of a partly consumed one,
 *      delete the inflight row. Commit.
 * Nothing is ever skipped: consumption deletes what it consumed instead of
 * moving a "last id" cursor, so a chunk whose id was allocated early but
 * committed late is simply found by a later claim.
 */
#ifndef BATCHKIT_CONSUME_H
#define BATCHKIT_CONSUME_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "chunk.h"

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

extern bool bk_claim_batch(int32 sink_id, int64 max_rows, int64 max_bytes, BkBatch *batch);
extern void bk_batch_decode(BkBatch *batch, int format, bk_message_cb cb, void *arg);
extern int64 bk_ack_batch(int32 sink_id, int64 batch_seq);

#endif							/* BATCHKIT_CONSUME_H */

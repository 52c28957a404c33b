/*
 * flush/flush_batch.h — a claimed batch of the flush worker, decoded into the sink's
 * messages (bk_message of batchkit/sink.h) for the flush pipeline
 * (batchkit/flush_pipeline.h).
 *
 * Lifetime: everything of a batch lives in its own memory context (FlushBatch.cxt),
 * from its claim until the pipeline releases it (acknowledged, or dropped for a
 * replay); the sink reads its messages until the batch is finished. Released
 * batches are reset and reused (bk_flush_batch_get).
 */
#ifndef BATCHKIT_FLUSH_BATCH_H
#define BATCHKIT_FLUSH_BATCH_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "batchkit/encoding.h"
#include "batchkit/sink.h"
#include "queue/consume.h"

#define BK_TEMPLATE_CACHE 32

typedef struct TemplateEntry
{
	char	   *source;			/* "schema.table" */
	uint32		layout_hash;	/* of the column names it was compiled for */
	bk_template *tpl;
	int			ncols;
	char	  **cols;			/* columns the template may use, in compile order */
} TemplateEntry;

/* How a sink's messages are built (its options) and its compiled target templates. */
typedef struct BkFlushFormat
{
	const char *name;			/* the sink's */
	char	   *target_template;	/* topic (kafka) or key (redis) */
	char	   *outbox_target;	/* where enqueue()d messages go */
	bool		is_hset;
	bool		is_redis;
	TemplateEntry templates[BK_TEMPLATE_CACHE];
	int			ntemplates;
} BkFlushFormat;

typedef struct PendingMsg
{
	uint8		op;
	int64		seq;
	size_t		key_off,
				key_len;
	bool		has_key;
	size_t		val_off,
				val_len;
	size_t		tgt_off,
				tgt_len;
	bool		has_target;
	size_t		src_off,
				src_len;
	bool		has_source;
	int			field_first;	/* into fields[] */
	int			nfields;
	int			header_first;
	int			nheaders;
	TimestampTz captured_at;
} PendingMsg;

typedef struct PendingField
{
	size_t		name_off,
				name_len;
	size_t		val_off,
				val_len;
	bool		isnull;
} PendingField;

typedef struct BatchBuild
{
	BkFlushFormat *sink;
	MemoryContext cxt;
	StringInfoData arena;
	PendingMsg *msgs;
	int			nmsgs,
				maxmsgs;
	PendingField *fields;
	int			nfields,
				maxfields;
	/*
	 * What every row of one chunk shares, stored once per chunk: its source
	 * name and, when the target template does not depend on the row, the
	 * rendered target (and the template entry found for the chunk's layout).
	 */
	int64		chunk_id;
	bool		chunk_valid;
	size_t		chunk_src_off,
				chunk_src_len;
	struct TemplateEntry *chunk_te;
	bool		chunk_tgt_valid;
	size_t		chunk_tgt_off,
				chunk_tgt_len;
	char		error[256];
} BatchBuild;

/* A batch of the pipeline, from its claim until the pipeline releases it. */
typedef struct FlushBatch
{
	bool		in_use;
	MemoryContext cxt;
	BkBatch		batch;
	BatchBuild	build;
	bk_message *msgs;			/* per build.msgs, pointing into build.arena */
	struct FlushBatch *next;
} FlushBatch;

/* A free batch of the list (reset), or a new one added to it. */
extern FlushBatch *bk_flush_batch_get(FlushBatch **list, BkFlushFormat *fmt);
extern void bk_flush_batch_put(FlushBatch *b);
extern void bk_flush_batch_free_all(FlushBatch **list);

/* Claim (or replay) and decode a batch into b (inside a transaction, SPI connected). */
extern bool bk_flush_batch_claim(FlushBatch *b, int32 sink_id, int format, int64 max_rows,
								 int64 max_bytes, int64 after_seq);

extern void bk_flush_format_forget_templates(BkFlushFormat *fmt);

#endif							/* BATCHKIT_FLUSH_BATCH_H */

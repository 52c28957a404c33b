/*
 * chunk.h — the packed binary form of captured records ("chunks").
 *
 * One queue row holds one chunk: up to batchkit.chunk_records records of one
 * statement for one sink. A chunk starts with a header that describes how to
 * decode its tuples (attribute names, type OIDs, typmods, lengths, alignment,
 * which columns are keys and which are emitted), so ALTER TABLE between capture
 * and delivery never mis-decodes a waiting row: the worker decodes with the
 * layout the row was written with.
 *
 * Layout (native endianness; the queue never leaves this server's storage):
 *
 *   BkChunkHeader                         fixed part
 *   schema\0 table\0                      source name (empty for messages)
 *   BkChunkAtt[natts]                     per attribute
 *   name\0 ...                            attribute names
 *   (MAXALIGN)
 *   records: BkChunkRecord, then for kind 'T' up to two tuple images
 *            (before, after), each MINIMAL_TUPLE_OFFSET bytes of spare room
 *            followed by the MinimalTuple, MAXALIGNed — the spare room lets the
 *            reader turn the image into a full HeapTupleHeader in place;
 *            for kind 'M' (enqueue) the key, payload and headers texts.
 *
 * Lifetime: writers build chunks in a palloc'd StringInfo in the trigger's
 * memory context; readers decode a detoasted copy they own and may modify.
 */
#ifndef BATCHKIT_CHUNK_H
#define BATCHKIT_CHUNK_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "lib/stringinfo.h"

#define BK_CHUNK_MAGIC 0x314B4342 /* "BCK1" */
#define BK_CHUNK_VERSION 1

#define BK_CHUNK_KIND_ROWS 'T'
#define BK_CHUNK_KIND_MESSAGES 'M'

/* BkChunkHeader.flags */
#define BK_CHUNK_FLAG_INCLUDE_BEFORE 0x01

/* BkChunkAtt.flags */
#define BK_ATT_DROPPED 0x01
#define BK_ATT_KEY 0x02
#define BK_ATT_EMIT 0x04

/* BkChunkRecord.op */
#define BK_REC_INSERT 'i'
#define BK_REC_UPDATE 'u'
#define BK_REC_DELETE 'd'
#define BK_REC_MESSAGE 'm'

/*
 * appendBinaryStringInfo / appendStringInfoChar for the decode's hot paths
 * (tens of small appends a row): inline, calling enlargeStringInfo only when
 * the buffer is full. Same result.
 */
static inline void
bk_append(StringInfo out, const char *p, int n)
{
	if (unlikely(n >= out->maxlen - out->len))
		enlargeStringInfo(out, n);
	memcpy(out->data + out->len, p, n);
	out->len += n;
	out->data[out->len] = '\0';
}

static inline void
bk_append_char(StringInfo out, char c)
{
	if (unlikely(out->len + 1 >= out->maxlen))
		enlargeStringInfo(out, 1);
	out->data[out->len++] = c;
	out->data[out->len] = '\0';
}

#define BK_APPEND_LIT(out, lit) bk_append((out), (lit), sizeof(lit) - 1)

/* BkChunkRecord.flags */
#define BK_REC_HAS_BEFORE 0x01
#define BK_REC_HAS_AFTER 0x02
#define BK_REC_HAS_KEY 0x04     /* messages: key is not NULL */
#define BK_REC_HAS_HEADERS 0x08 /* messages: headers is not NULL */
#define BK_REC_HAS_TARGET 0x10	/* messages: an explicit topic/key (replayed dead letters) */

typedef struct BkChunkHeader
{
	uint32		magic;
	uint16		version;
	uint8		kind;
	uint8		flags;
	uint16		natts;
	uint16		reserved;
	uint32		nrecords;
	uint32		header_len;		/* MAXALIGNed length of everything before the records */
	Oid			relid;
} BkChunkHeader;

typedef struct BkChunkAtt
{
	Oid			typid;
	int32		typmod;
	int16		attlen;
	char		attbyval;
	char		attalign;
	uint8		flags;
	uint8		reserved[3];
} BkChunkAtt;

typedef struct BkChunkRecord
{
	uint8		op;
	uint8		flags;
	uint16		len4;			/* messages: target length (BK_REC_HAS_TARGET) */
	uint32		len1;			/* rows: before tuple length; messages: key length */
	uint32		len2;			/* rows: after tuple length; messages: payload length */
	uint32		len3;			/* messages: headers length */
} BkChunkRecord;

/* ---- writing ---------------------------------------------------------- */

typedef struct BkChunkWriter
{
	StringInfoData buf;
	uint32		nrecords;
	uint32		header_len;
} BkChunkWriter;

/* Start a rows chunk describing `desc`; key_atts/emit_atts are 1-based bitmaps (bool[natts+1]). */
extern void bk_chunk_begin_rows(BkChunkWriter *w, Relation rel, const bool *is_key,
								const bool *is_emitted);
/* The same for a descriptor that is not a relation's (chunk_io.c rebuilds restored chunks). */
extern void bk_chunk_begin_rows_desc(BkChunkWriter *w, const char *schema, const char *table,
									 Oid relid, TupleDesc desc, const bool *is_key,
									 const bool *is_emitted);
extern void bk_chunk_begin_messages(BkChunkWriter *w);
/* Append one row change; before/after may be NULL. Tuples with external TOAST are flattened. */
extern void bk_chunk_add_row(BkChunkWriter *w, char op, TupleDesc desc,
							 MinimalTuple before, MinimalTuple after);
extern void bk_chunk_add_message(BkChunkWriter *w, char op, const char *key, int keylen,
								 const char *payload, int payloadlen,
								 const char *headers, int headerslen,
								 const char *target, int targetlen);
/* Finish: patches the record count. The bytes are w->buf.data / w->buf.len. */
extern void bk_chunk_finish(BkChunkWriter *w);
extern void bk_chunk_reset(BkChunkWriter *w);

/* ---- reading ---------------------------------------------------------- */

typedef struct BkChunkReader
{
	char	   *data;			/* owned, modifiable copy of the chunk */
	Size		len;
	const BkChunkHeader *hdr;
	const char *schema;
	const char *table;
	const BkChunkAtt *atts;
	const char **attnames;
	Size		pos;			/* offset of the next record */
	uint32		next_index;		/* index of the next record */
	/* lazily built decoding descriptors (blessed: usable by row_to_json) */
	TupleDesc	emit_desc;
	TupleDesc	key_desc;
	/* fast JSON rendering of built-in types (chunk.c); NULL until first use */
	struct BkAttOut *attout;
	bool		fast_emit;		/* every emitted column has a fast renderer */
	bool		fast_key;
	HeapTupleHeader deformed;	/* tuple whose values are in values/nulls */
	Datum	   *values;
	bool	   *nulls;
	int			nkeys;
	int			key_attno;		/* the only key attribute, when nkeys == 1 */
} BkChunkReader;

typedef struct BkChunkRecordView
{
	uint32		index;			/* 0-based position in the chunk */
	char		op;
	HeapTupleHeader before;		/* rows: full tuple headers (typmod set by the reader) */
	HeapTupleHeader after;
	const char *key;			/* messages */
	int			keylen;
	const char *payload;
	int			payloadlen;
	const char *headers;
	int			headerslen;
	const char *target;
	int			targetlen;
} BkChunkRecordView;

/* Open a chunk (takes ownership of data, which must be palloc'd and MAXALIGNed). Errors on corruption. */
extern void bk_chunk_open(BkChunkReader *r, char *data, Size len);
extern bool bk_chunk_next(BkChunkReader *r, BkChunkRecordView *rec);
/* Render a row tuple as JSON: all emitted columns, or only the key columns. */
extern void bk_chunk_row_json(BkChunkReader *r, HeapTupleHeader tup, bool key_only, StringInfo out);
/* The message key: the single key column's text, or the JSON object of several. */
extern void bk_chunk_row_key_text(BkChunkReader *r, HeapTupleHeader tup, StringInfo out);
/* Call cb(name, value or NULL) for every emitted column, values as text (Redis hset). */
typedef void (*bk_chunk_field_cb) (const char *name, const char *value, void *arg);
extern void bk_chunk_row_fields(BkChunkReader *r, HeapTupleHeader tup, bk_chunk_field_cb cb,
								void *arg);
/* Text of one attribute (by name) for key templates; false if NULL or absent. */
extern bool bk_chunk_row_attr_text(BkChunkReader *r, HeapTupleHeader tup, const char *attname,
								   StringInfo out);

/* Every attribute's value of a row tuple, and whether attribute i (0-based) is shown at all. */
extern void bk_chunk_row_values(BkChunkReader *r, HeapTupleHeader tup, Datum **values,
								bool **nulls);
extern bool bk_chunk_att_live(BkChunkReader *r, int i);

#endif							/* BATCHKIT_CHUNK_H */

/*
 * chunk.c — encode and decode the packed binary chunks of the capture queue.
 *
 * See chunk.h for the layout. Writers copy MinimalTuples out of the transition
 * tables (one memcpy per record; tuples with out-of-line TOAST values are
 * flattened first, because the source's TOAST may be gone by delivery time).
 * Readers decode in place and render JSON with Postgres's own row_to_json, so
 * every type — arrays, numerics, timestamps, json, composites — looks exactly
 * as Postgres renders it.
 */
#include "postgres.h"

#include "access/heaptoast.h"
#include "access/htup_details.h"
#include "catalog/pg_type_d.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "queue/chunk.h"

static void
pad_maxalign(StringInfo buf)
{
	static const char zeros[MAXIMUM_ALIGNOF] = {0};
	int			pad = MAXALIGN(buf->len) - buf->len;

	if (pad > 0)
		appendBinaryStringInfo(buf, zeros, pad);
}

static void
writer_start(BkChunkWriter *w)
{
	if (w->buf.data == NULL)
		initStringInfo(&w->buf);
	else
		resetStringInfo(&w->buf);
	w->nrecords = 0;
	w->header_len = 0;
}

void
bk_chunk_begin_rows(BkChunkWriter *w, Relation rel, const bool *is_key, const bool *is_emitted)
{
	bk_chunk_begin_rows_desc(w, get_namespace_name(RelationGetNamespace(rel)),
							 RelationGetRelationName(rel), RelationGetRelid(rel),
							 RelationGetDescr(rel), is_key, is_emitted);
}

void
bk_chunk_begin_rows_desc(BkChunkWriter *w, const char *schema, const char *table, Oid relid,
						 TupleDesc desc, const bool *is_key, const bool *is_emitted)
{
	BkChunkHeader h;

	writer_start(w);
	memset(&h, 0, sizeof(h));
	h.magic = BK_CHUNK_MAGIC;
	h.version = BK_CHUNK_VERSION;
	h.kind = BK_CHUNK_KIND_ROWS;
	h.natts = desc->natts;
	h.relid = relid;
	appendBinaryStringInfo(&w->buf, (char *) &h, sizeof(h));
	appendBinaryStringInfo(&w->buf, schema, strlen(schema) + 1);
	appendBinaryStringInfo(&w->buf, table, strlen(table) + 1);
	pad_maxalign(&w->buf);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		BkChunkAtt	a;

		memset(&a, 0, sizeof(a));
		a.typid = att->attisdropped ? InvalidOid : att->atttypid;
		a.typmod = att->atttypmod;
		a.attlen = att->attlen;
		a.attbyval = att->attbyval;
		a.attalign = att->attalign;
		if (att->attisdropped)
			a.flags |= BK_ATT_DROPPED;
		else
		{
			if (is_key[i + 1])
				a.flags |= BK_ATT_KEY;
			if (is_emitted[i + 1])
				a.flags |= BK_ATT_EMIT;
		}
		appendBinaryStringInfo(&w->buf, (char *) &a, sizeof(a));
	}
	for (int i = 0; i < desc->natts; i++)
	{
		const char *name = NameStr(TupleDescAttr(desc, i)->attname);

		appendBinaryStringInfo(&w->buf, name, strlen(name) + 1);
	}
	pad_maxalign(&w->buf);
	w->header_len = w->buf.len;
	((BkChunkHeader *) w->buf.data)->header_len = w->header_len;
}

void
bk_chunk_begin_messages(BkChunkWriter *w)
{
	BkChunkHeader h;

	writer_start(w);
	memset(&h, 0, sizeof(h));
	h.magic = BK_CHUNK_MAGIC;
	h.version = BK_CHUNK_VERSION;
	h.kind = BK_CHUNK_KIND_MESSAGES;
	appendBinaryStringInfo(&w->buf, (char *) &h, sizeof(h));
	appendBinaryStringInfo(&w->buf, "\0\0", 2);
	pad_maxalign(&w->buf);
	w->header_len = w->buf.len;
	((BkChunkHeader *) w->buf.data)->header_len = w->header_len;
}

/* Out-of-line TOAST values point into the source's TOAST table: inline them. */
static MinimalTuple
flatten_if_external(MinimalTuple mtup, TupleDesc desc)
{
	HeapTuple	ht;
	HeapTuple	flat;

	if (mtup == NULL || !(mtup->t_infomask & HEAP_HASEXTERNAL))
		return mtup;
	ht = heap_tuple_from_minimal_tuple(mtup);
	flat = toast_flatten_tuple(ht, desc);
	return minimal_tuple_from_heap_tuple(flat);
}

static void
append_tuple(StringInfo buf, MinimalTuple mtup)
{
	int			start;

	/* room to turn the image into a HeapTupleHeader in place when reading */
	enlargeStringInfo(buf, MINIMAL_TUPLE_OFFSET + mtup->t_len + MAXIMUM_ALIGNOF);
	start = buf->len;
	memset(buf->data + start, 0, MINIMAL_TUPLE_OFFSET);
	memcpy(buf->data + start + MINIMAL_TUPLE_OFFSET, mtup, mtup->t_len);
	buf->len += MINIMAL_TUPLE_OFFSET + mtup->t_len;
	buf->data[buf->len] = '\0';
	pad_maxalign(buf);
}

void
bk_chunk_add_row(BkChunkWriter *w, char op, TupleDesc desc, MinimalTuple before, MinimalTuple after)
{
	BkChunkRecord rec;

	before = flatten_if_external(before, desc);
	after = flatten_if_external(after, desc);
	memset(&rec, 0, sizeof(rec));
	rec.op = op;
	if (before)
	{
		rec.flags |= BK_REC_HAS_BEFORE;
		rec.len1 = before->t_len;
	}
	if (after)
	{
		rec.flags |= BK_REC_HAS_AFTER;
		rec.len2 = after->t_len;
	}
	appendBinaryStringInfo(&w->buf, (char *) &rec, sizeof(rec));
	if (before)
		append_tuple(&w->buf, before);
	if (after)
		append_tuple(&w->buf, after);
	w->nrecords++;
}

void
bk_chunk_add_message(BkChunkWriter *w, char op, const char *key, int keylen, const char *payload,
					 int payloadlen, const char *headers, int headerslen,
					 const char *target, int targetlen)
{
	BkChunkRecord rec;

	memset(&rec, 0, sizeof(rec));
	rec.op = op;
	if (target)
	{
		rec.flags |= BK_REC_HAS_TARGET;
		rec.len4 = (uint16) Min(targetlen, PG_UINT16_MAX);
	}
	if (key)
	{
		rec.flags |= BK_REC_HAS_KEY;
		rec.len1 = keylen;
	}
	rec.len2 = payloadlen;
	if (headers)
	{
		rec.flags |= BK_REC_HAS_HEADERS;
		rec.len3 = headerslen;
	}
	appendBinaryStringInfo(&w->buf, (char *) &rec, sizeof(rec));
	if (key)
		appendBinaryStringInfo(&w->buf, key, keylen);
	appendBinaryStringInfo(&w->buf, payload, payloadlen);
	if (headers)
		appendBinaryStringInfo(&w->buf, headers, headerslen);
	if (target)
		appendBinaryStringInfo(&w->buf, target, rec.len4);
	pad_maxalign(&w->buf);
	w->nrecords++;
}

void
bk_chunk_finish(BkChunkWriter *w)
{
	((BkChunkHeader *) w->buf.data)->nrecords = w->nrecords;
}

void
bk_chunk_reset(BkChunkWriter *w)
{
	/* keep the header, drop the records */
	w->buf.len = w->header_len;
	w->buf.data[w->buf.len] = '\0';
	w->nrecords = 0;
}

/* ---- reading ---------------------------------------------------------- */

static void
corrupt(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("batchkit queue chunk is corrupt: %s", what)));
}

void
bk_chunk_open(BkChunkReader *r, char *data, Size len)
{
	Size		pos;

	memset(r, 0, sizeof(*r));
	r->data = data;
	r->len = len;
	if (len < sizeof(BkChunkHeader))
		corrupt("too short");
	r->hdr = (const BkChunkHeader *) data;
	if (r->hdr->magic != BK_CHUNK_MAGIC || r->hdr->version != BK_CHUNK_VERSION)
		corrupt("bad magic or version");
	if (r->hdr->header_len > len || r->hdr->header_len < sizeof(BkChunkHeader))
		corrupt("bad header length");
	pos = sizeof(BkChunkHeader);
	r->schema = data + pos;
	pos += strnlen(data + pos, len - pos) + 1;
	r->table = data + pos;
	pos += strnlen(data + pos, len - pos) + 1;
	if (r->hdr->kind == BK_CHUNK_KIND_ROWS)
	{
		pos = MAXALIGN(pos);
		if (pos + sizeof(BkChunkAtt) * r->hdr->natts > r->hdr->header_len)
			corrupt("attribute table overruns the header");
		r->atts = (const BkChunkAtt *) (data + pos);
		pos += sizeof(BkChunkAtt) * r->hdr->natts;
		r->attnames = palloc(sizeof(char *) * Max(r->hdr->natts, 1));
		for (int i = 0; i < r->hdr->natts; i++)
		{
			if (pos >= r->hdr->header_len)
				corrupt("attribute names overrun the header");
			r->attnames[i] = data + pos;
			pos += strnlen(data + pos, r->hdr->header_len - pos) + 1;
			if (r->atts[i].flags & BK_ATT_KEY)
			{
				r->nkeys++;
				r->key_attno = i + 1;
			}
		}
	}
	else if (r->hdr->kind != BK_CHUNK_KIND_MESSAGES)
		corrupt("unknown kind");
	r->pos = r->hdr->header_len;
}

static HeapTupleHeader
tuple_in_place(BkChunkReader *r, Size *pos, uint32 tlen)
{
	HeapTupleHeader h;

	if (*pos + MINIMAL_TUPLE_OFFSET + tlen > r->len)
		corrupt("tuple overruns the chunk");
	h = (HeapTupleHeader) (r->data + *pos);
	memset(h, 0, offsetof(HeapTupleHeaderData, t_infomask2));
	HeapTupleHeaderSetDatumLength(h, tlen + MINIMAL_TUPLE_OFFSET);
	HeapTupleHeaderSetTypeId(h, RECORDOID);
	*pos = MAXALIGN(*pos + MINIMAL_TUPLE_OFFSET + tlen);
	return h;
}

bool
bk_chunk_next(BkChunkReader *r, BkChunkRecordView *rec)
{
	const BkChunkRecord *cr;
	Size		pos = r->pos;

	if (r->next_index >= r->hdr->nrecords)
		return false;
	if (pos + sizeof(BkChunkRecord) > r->len)
		corrupt("record overruns the chunk");
	cr = (const BkChunkRecord *) (r->data + pos);
	pos += sizeof(BkChunkRecord);
	memset(rec, 0, sizeof(*rec));
	rec->index = r->next_index++;
	rec->op = cr->op;
	if (r->hdr->kind == BK_CHUNK_KIND_ROWS)
	{
		if (cr->flags & BK_REC_HAS_BEFORE)
			rec->before = tuple_in_place(r, &pos, cr->len1);
		if (cr->flags & BK_REC_HAS_AFTER)
			rec->after = tuple_in_place(r, &pos, cr->len2);
	}
	else
	{
		if ((Size) pos + cr->len1 + cr->len2 + cr->len3 + cr->len4 > r->len)
			corrupt("message overruns the chunk");
		if (cr->flags & BK_REC_HAS_KEY)
		{
			rec->key = r->data + pos;
			rec->keylen = cr->len1;
			pos += cr->len1;
		}
		rec->payload = r->data + pos;
		rec->payloadlen = cr->len2;
		pos += cr->len2;
		if (cr->flags & BK_REC_HAS_HEADERS)
		{
			rec->headers = r->data + pos;
			rec->headerslen = cr->len3;
			pos += cr->len3;
		}
		if (cr->flags & BK_REC_HAS_TARGET)
		{
			rec->target = r->data + pos;
			rec->targetlen = cr->len4;
			pos += cr->len4;
		}
		pos = MAXALIGN(pos);
	}
	r->pos = pos;
	return true;
}

/* A blessed descriptor of the chunk's layout showing only key or only emitted columns. */
static TupleDesc
decoding_desc(BkChunkReader *r, bool key_only)
{
	int			natts = r->hdr->natts;
	TupleDesc	desc = CreateTemplateTupleDesc(natts);

	for (int i = 0; i < natts; i++)
	{
		const BkChunkAtt *a = &r->atts[i];
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		shown = key_only ? (a->flags & BK_ATT_KEY) : (a->flags & BK_ATT_EMIT);

		if (!(a->flags & BK_ATT_DROPPED) && OidIsValid(a->typid) &&
			get_typlen(a->typid) != 0)
		{
			TupleDescInitEntry(desc, i + 1, r->attnames[i], a->typid, a->typmod, 0);
			if (att->attlen != a->attlen || att->attbyval != a->attbyval ||
				att->attalign != a->attalign)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("batchkit cannot decode queued column \"%s\" of %s.%s: its type "
								"%u changed storage layout", r->attnames[i], r->schema,
								r->table, a->typid)));
		}
		else
		{
			/* a dropped column, or a type that no longer exists: keep the layout */
			memset(att, 0, ATTRIBUTE_FIXED_PART_SIZE);
			namestrcpy(&att->attname, r->attnames[i]);
			att->attnum = i + 1;
			att->attlen = a->attlen;
			att->attbyval = a->attbyval;
			att->attalign = a->attalign;
			att->attstorage = TYPSTORAGE_PLAIN;
			att->atttypmod = -1;
			att->attisdropped = true;
			shown = false;
		}
		if (!shown)
			att->attisdropped = true;
	}
	return BlessTupleDesc(desc);
}

/*
 * Fast JSON rendering. row_to_json looks up every column's type category and
 * output function on every row; for the built-in types below the category is
 * fixed, so it is decided once per chunk and the output functions are cached.
 * The text produced is identical to row_to_json's (tests compare them). Any
 * other type (domains, arrays, composites, extension types that may cast to
 * json) makes the whole row go through row_to_json.
 */
typedef enum BkJsonCat
{
	BKJ_SLOW = 0,
	BKJ_NUMBER,					/* raw when a valid JSON number, else quoted */
	BKJ_BOOL,
	BKJ_DATETIME,				/* JsonEncodeDateTime */
	BKJ_RAW_JSON,				/* json, jsonb: output as is */
	BKJ_STRING					/* escaped output text */
} BkJsonCat;

typedef struct BkAttOut
{
	BkJsonCat	cat;
	FmgrInfo	outfn;
	char	   *qname;			/* "\"name\":" */
	int			qnamelen;
} BkAttOut;

static BkJsonCat
json_category(Oid typid)
{
	switch (typid)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
			return BKJ_NUMBER;
		case BOOLOID:
			return BKJ_BOOL;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return BKJ_DATETIME;
		case JSONOID:
		case JSONBOID:
			return BKJ_RAW_JSON;
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NAMEOID:
		case UUIDOID:
		case BYTEAOID:
		case CHAROID:
		case INTERVALOID:
		case TIMEOID:
		case TIMETZOID:
		case INETOID:
		case CIDROID:
		case MACADDROID:
			return BKJ_STRING;
		default:
			return BKJ_SLOW;
	}
}

static void
prepare_fast(BkChunkReader *r)
{
	int			natts = r->hdr->natts;
	MemoryContext cxt = CurrentMemoryContext;

	r->attout = MemoryContextAllocZero(cxt, sizeof(BkAttOut) * Max(natts, 1));
	r->values = MemoryContextAlloc(cxt, sizeof(Datum) * Max(natts, 1));
	r->nulls = MemoryContextAlloc(cxt, sizeof(bool) * Max(natts, 1));
	r->fast_emit = r->fast_key = true;
	for (int i = 0; i < natts; i++)
	{
		const BkChunkAtt *a = &r->atts[i];
		BkAttOut   *o = &r->attout[i];
		StringInfoData q;

		if (a->flags & BK_ATT_DROPPED)
			continue;
		o->cat = json_category(a->typid);
		if (o->cat == BKJ_SLOW)
		{
			if (a->flags & BK_ATT_EMIT)
				r->fast_emit = false;
			if (a->flags & BK_ATT_KEY)
				r->fast_key = false;
			continue;
		}
		if (o->cat != BKJ_BOOL && o->cat != BKJ_DATETIME)
		{
			Oid			outfunc;
			bool		isvarlena;

			getTypeOutputInfo(a->typid, &outfunc, &isvarlena);
			fmgr_info_cxt(outfunc, &o->outfn, cxt);
		}
		initStringInfo(&q);
		escape_json(&q, r->attnames[i]);
		appendStringInfoChar(&q, ':');
		o->qname = q.data;
		o->qnamelen = q.len;
	}
}

static void
deform(BkChunkReader *r, HeapTupleHeader tup)
{
	HeapTupleData htup;

	if (r->deformed == tup)
		return;
	if (r->emit_desc == NULL)
		r->emit_desc = decoding_desc(r, false);
	htup.t_len = HeapTupleHeaderGetDatumLength(tup);
	htup.t_data = tup;
	ItemPointerSetInvalid(&htup.t_self);
	htup.t_tableOid = InvalidOid;
	heap_deform_tuple(&htup, r->emit_desc, r->values, r->nulls);
	r->deformed = tup;
}

/*
 * escape_json() appends character by character; most values need no escaping,
 * so copy runs of plain characters at once. Same output as escape_json().
 */
static void
append_json_string(StringInfo out, const char *p, int len)
{
	const char *end = p + len;

	bk_append_char(out, '"');
	while (p < end)
	{
		const char *run = p;

		while (p < end && (unsigned char) *p >= 0x20 && *p != '"' && *p != '\\')
			p++;
		if (p > run)
			bk_append(out, run, p - run);
		if (p < end)
		{
			char		one[2] = {*p, '\0'};
			StringInfoData tmp;

			/* a character that needs escaping: let escape_json render it */
			initStringInfo(&tmp);
			escape_json(&tmp, one);
			/* tmp is "\"<escaped>\"": drop the quotes */
			bk_append(out, tmp.data + 1, tmp.len - 2);
			pfree(tmp.data);
			p++;
		}
	}
	bk_append_char(out, '"');
}

/*
 * int2/int4/int8 as int2out/int4out/int8out print them (always a valid JSON
 * number), without the output function's palloc and the number check.
 */
static bool
append_int(StringInfo out, Oid typid, Datum v)
{
	char		num[MAXINT8LEN + 1];
	int			n;

	switch (typid)
	{
		case INT2OID:
			n = pg_ltoa((int32) DatumGetInt16(v), num);
			break;
		case INT4OID:
			n = pg_ltoa(DatumGetInt32(v), num);
			break;
		case INT8OID:
			n = pg_lltoa(DatumGetInt64(v), num);
			break;
		default:
			return false;
	}
	bk_append(out, num, n);
	return true;
}

static void
fast_value(BkAttOut *o, Oid typid, Datum v, StringInfo out)
{
	char	   *s;
	char		buf[MAXDATELEN + 1];

	switch (o->cat)
	{
		case BKJ_BOOL:
			if (DatumGetBool(v))
				BK_APPEND_LIT(out, "true");
			else
				BK_APPEND_LIT(out, "false");
			return;
		case BKJ_DATETIME:
			bk_append_char(out, '"');
			s = JsonEncodeDateTime(buf, v, typid, NULL);
			bk_append(out, s, strlen(s));
			bk_append_char(out, '"');
			return;
		case BKJ_NUMBER:
			if (append_int(out, typid, v))
				return;
			s = OutputFunctionCall(&o->outfn, v);
			{
				int			n = strlen(s);

				if (IsValidJsonNumber(s, n))
					bk_append(out, s, n);
				else
					append_json_string(out, s, n);
			}
			break;
		case BKJ_RAW_JSON:
			s = OutputFunctionCall(&o->outfn, v);
			appendStringInfoString(out, s);
			break;
		default:
			if (typid == TEXTOID || typid == VARCHAROID)
			{
				/* no output function needed: the text is the value */
				text	   *t = DatumGetTextPP(v);

				append_json_string(out, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				if ((Pointer) t != DatumGetPointer(v))
					pfree(t);
				return;
			}
			s = OutputFunctionCall(&o->outfn, v);
			append_json_string(out, s, strlen(s));
			break;
	}
	pfree(s);
}

static void
fast_row_json(BkChunkReader *r, HeapTupleHeader tup, bool key_only, StringInfo out)
{
	uint8		want = key_only ? BK_ATT_KEY : BK_ATT_EMIT;
	bool		first = true;

	deform(r, tup);
	bk_append_char(out, '{');
	for (int i = 0; i < r->hdr->natts; i++)
	{
		const BkChunkAtt *a = &r->atts[i];

		if ((a->flags & BK_ATT_DROPPED) || !(a->flags & want))
			continue;
		if (!first)
			bk_append_char(out, ',');
		first = false;
		bk_append(out, r->attout[i].qname, r->attout[i].qnamelen);
		if (r->nulls[i])
			BK_APPEND_LIT(out, "null");
		else
			fast_value(&r->attout[i], a->typid, r->values[i], out);
	}
	bk_append_char(out, '}');
}

void
bk_chunk_row_json(BkChunkReader *r, HeapTupleHeader tup, bool key_only, StringInfo out)
{
	TupleDesc	desc;
	text	   *json;

	if (r->attout == NULL)
		prepare_fast(r);
	if (key_only ? r->fast_key : r->fast_emit)
	{
		fast_row_json(r, tup, key_only, out);
		return;
	}

	if (key_only)
	{
		if (r->key_desc == NULL)
			r->key_desc = decoding_desc(r, true);
		desc = r->key_desc;
	}
	else
	{
		if (r->emit_desc == NULL)
			r->emit_desc = decoding_desc(r, false);
		desc = r->emit_desc;
	}
	HeapTupleHeaderSetTypMod(tup, desc->tdtypmod);
	json = DatumGetTextPP(DirectFunctionCall1(row_to_json, PointerGetDatum(tup)));
	appendBinaryStringInfo(out, VARDATA_ANY(json), VARSIZE_ANY_EXHDR(json));
	pfree(json);
}

static bool
attr_text(BkChunkReader *r, HeapTupleHeader tup, int attno, StringInfo out)
{
	HeapTupleData htup;

	if (r->attout == NULL)
		prepare_fast(r);
	if (r->attout[attno - 1].cat != BKJ_SLOW && OidIsValid(r->atts[attno - 1].typid))
	{
		BkAttOut   *o = &r->attout[attno - 1];
		char	   *s;

		deform(r, tup);
		if (r->nulls[attno - 1])
			return false;
		if (o->cat == BKJ_BOOL)
		{
			appendStringInfoString(out, DatumGetBool(r->values[attno - 1]) ? "t" : "f");
			return true;
		}
		if (o->cat == BKJ_NUMBER && append_int(out, r->atts[attno - 1].typid, r->values[attno - 1]))
			return true;
		if (o->cat == BKJ_DATETIME)
		{
			Oid			outfunc;
			bool		isvarlena;

			getTypeOutputInfo(r->atts[attno - 1].typid, &outfunc, &isvarlena);
			s = OidOutputFunctionCall(outfunc, r->values[attno - 1]);
		}
		else
			s = OutputFunctionCall(&o->outfn, r->values[attno - 1]);
		appendStringInfoString(out, s);
		pfree(s);
		return true;
	}
	{
	Datum		value;
	bool		isnull;
	Oid			outfunc;
	bool		isvarlena;
	char	   *s;

	if (r->key_desc == NULL)
		r->key_desc = decoding_desc(r, true);
	htup.t_len = HeapTupleHeaderGetDatumLength(tup);
	htup.t_data = tup;
	ItemPointerSetInvalid(&htup.t_self);
	htup.t_tableOid = InvalidOid;
	/* attribute values do not depend on the dropped flags: any descriptor of the layout works */
	value = heap_getattr(&htup, attno, r->key_desc, &isnull);
	if (isnull || !OidIsValid(r->atts[attno - 1].typid))
		return false;
	getTypeOutputInfo(r->atts[attno - 1].typid, &outfunc, &isvarlena);
	s = OidOutputFunctionCall(outfunc, value);
	appendStringInfoString(out, s);
	pfree(s);
	return true;
	}
}

void
bk_chunk_row_fields(BkChunkReader *r, HeapTupleHeader tup, bk_chunk_field_cb cb, void *arg)
{
	StringInfoData v;

	initStringInfo(&v);
	for (int i = 0; i < r->hdr->natts; i++)
	{
		if (!(r->atts[i].flags & BK_ATT_EMIT) || (r->atts[i].flags & BK_ATT_DROPPED))
			continue;
		resetStringInfo(&v);
		if (attr_text(r, tup, i + 1, &v))
			cb(r->attnames[i], v.data, arg);
		else
			cb(r->attnames[i], NULL, arg);
	}
	pfree(v.data);
}

void
bk_chunk_row_key_text(BkChunkReader *r, HeapTupleHeader tup, StringInfo out)
{
	if (r->nkeys == 1)
	{
		if (!attr_text(r, tup, r->key_attno, out))
			appendStringInfoString(out, "");
	}
	else
		bk_chunk_row_json(r, tup, true, out);
}

bool
bk_chunk_row_attr_text(BkChunkReader *r, HeapTupleHeader tup, const char *attname, StringInfo out)
{
	for (int i = 0; i < r->hdr->natts; i++)
	{
		if (!(r->atts[i].flags & BK_ATT_DROPPED) && strcmp(r->attnames[i], attname) == 0)
			return attr_text(r, tup, i + 1, out);
	}
	return false;
}

/*
 * The values of every attribute of a row tuple, deformed with the chunk's
 * layout (they point into the reader, valid until the next call). An attribute
 * counts as live unless it was dropped before capture or its type no longer
 * exists: the decoder shows nothing of it, and neither does the text form.
 */
void
bk_chunk_row_values(BkChunkReader *r, HeapTupleHeader tup, Datum **values, bool **nulls)
{
	if (r->attout == NULL)
		prepare_fast(r);
	deform(r, tup);
	*values = r->values;
	*nulls = r->nulls;
}

bool
bk_chunk_att_live(BkChunkReader *r, int i)
{
	const BkChunkAtt *a = &r->atts[i];

	return !(a->flags & BK_ATT_DROPPED) && OidIsValid(a->typid) && get_typlen(a->typid) != 0;
}

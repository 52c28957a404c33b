/*
 * chunk_io.c — the text form of a queue chunk: what pg_dump writes of the
 * queue, and what pg_restore (or psql) reads back into another database.
 *
 * A chunk (chunk.h) is a server-local binary form: native endianness, type
 * OIDs, raw tuple images whose values may themselves hold OIDs (enum labels,
 * the element type of an array, the row type of a composite). None of that
 * means the same thing in another database, where every user-defined type has
 * another OID. So batchkit.queue.payload is of type batchkit.chunk, stored
 * exactly like bytea (the writers and the decoder never see a difference),
 * whose text output decodes the chunk and renders every value with its type's
 * output function, types by qualified name, as JSON:
 *
 *   {"format": 1, "kind": "rows", "schema": "public", "table": "orders",
 *    "include_before": false,
 *    "columns": [{"name": "id", "type": "integer", "key": true, "emit": true}, ...],
 *    "records": [["i", null, ["1", "ok"]], ["u", [..before..], [..after..]], ...]}
 *   {"format": 1, "kind": "messages",
 *    "records": [["m", key|null, payload, headers|null, target|null], ...]}
 *
 * and whose input parses that in the database being restored: types by name,
 * values through their input functions, into a fresh chunk with the same
 * records in the same order (record i keeps index i, so every message keeps
 * its seq = chunk_id * 100000 + i and its idempotency key). This is what
 * pg_dump does for every user table; COPY runs it in pg_dump's session, under
 * the settings pg_dump chose for table data (DateStyle, extra_float_digits...).
 * Columns dropped before the capture, or whose type was dropped since, are
 * left out: the decoder would not have shown them either.
 *
 * A session that reads chunks from text (a restore) holds delivery in its
 * database until it ends (bk_note_restoring): pg_restore loads the queue's
 * segments one after the other, and a flush worker that delivered the first
 * one loaded would send newer changes of a key before older ones.
 *
 * Only batchkit's writers and this input make chunks (there is no cast from
 * bytea), so the decoder never sees bytes it did not write.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_type.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "shmem/shmem.h"
#include "queue/chunk.h"
#include "queue/consume.h"

PG_FUNCTION_INFO_V1(batchkit_chunk_in);
PG_FUNCTION_INFO_V1(batchkit_chunk_out);

#define BK_CHUNK_TEXT_FORMAT 1

/* ---- output ---------------------------------------------------------------- */

static void
append_json_text(StringInfo out, const char *p, int len)
{
	char	   *s = pnstrdup(p, len);

	escape_json(out, s);
	pfree(s);
}

static void
append_tuple_values(StringInfo out, BkChunkReader *r, HeapTupleHeader tup, FmgrInfo *outfn)
{
	Datum	   *values;
	bool	   *nulls;
	bool		first = true;

	if (tup == NULL)
	{
		appendStringInfoString(out, "null");
		return;
	}
	bk_chunk_row_values(r, tup, &values, &nulls);
	appendStringInfoChar(out, '[');
	for (int i = 0; i < r->hdr->natts; i++)
	{
		if (!bk_chunk_att_live(r, i))
			continue;
		if (!first)
			appendStringInfoChar(out, ',');
		first = false;
		if (nulls[i])
			appendStringInfoString(out, "null");
		else
		{
			char	   *s = OutputFunctionCall(&outfn[i], values[i]);

			escape_json(out, s);
			pfree(s);
		}
	}
	appendStringInfoChar(out, ']');
}

static void
rows_to_text(BkChunkReader *r, StringInfo out)
{
	int			natts = r->hdr->natts;
	FmgrInfo   *outfn = palloc0(sizeof(FmgrInfo) * Max(natts, 1));
	BkChunkRecordView rec;
	bool		first = true;

	appendStringInfo(out, "{\"format\":%d,\"kind\":\"rows\",\"schema\":", BK_CHUNK_TEXT_FORMAT);
	escape_json(out, r->schema);
	appendStringInfoString(out, ",\"table\":");
	escape_json(out, r->table);
	appendStringInfo(out, ",\"include_before\":%s,\"columns\":[",
					 (r->hdr->flags & BK_CHUNK_FLAG_INCLUDE_BEFORE) ? "true" : "false");
	for (int i = 0; i < natts; i++)
	{
		const BkChunkAtt *a = &r->atts[i];
		Oid			func;
		bool		isvarlena;

		if (!bk_chunk_att_live(r, i))
			continue;
		getTypeOutputInfo(a->typid, &func, &isvarlena);
		fmgr_info(func, &outfn[i]);
		if (!first)
			appendStringInfoChar(out, ',');
		first = false;
		appendStringInfoString(out, "{\"name\":");
		escape_json(out, r->attnames[i]);
		appendStringInfoString(out, ",\"type\":");
		escape_json(out, format_type_extended(a->typid, a->typmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN |
											  FORMAT_TYPE_FORCE_QUALIFY));
		appendStringInfo(out, ",\"key\":%s,\"emit\":%s}",
						 (a->flags & BK_ATT_KEY) ? "true" : "false",
						 (a->flags & BK_ATT_EMIT) ? "true" : "false");
	}
	appendStringInfoString(out, "],\"records\":[");
	first = true;
	while (bk_chunk_next(r, &rec))
	{
		if (!first)
			appendStringInfoChar(out, ',');
		first = false;
		appendStringInfo(out, "[\"%c\",", rec.op);
		append_tuple_values(out, r, rec.before, outfn);
		appendStringInfoChar(out, ',');
		append_tuple_values(out, r, rec.after, outfn);
		appendStringInfoChar(out, ']');
	}
	appendStringInfoString(out, "]}");
}

static void
append_json_text_or_null(StringInfo out, const char *p, int len)
{
	if (p == NULL)
		appendStringInfoString(out, "null");
	else
		append_json_text(out, p, len);
}

static void
messages_to_text(BkChunkReader *r, StringInfo out)
{
	BkChunkRecordView rec;
	bool		first = true;

	appendStringInfo(out, "{\"format\":%d,\"kind\":\"messages\",\"records\":[",
					 BK_CHUNK_TEXT_FORMAT);
	while (bk_chunk_next(r, &rec))
	{
		if (!first)
			appendStringInfoChar(out, ',');
		first = false;
		appendStringInfo(out, "[\"%c\",", rec.op);
		append_json_text_or_null(out, rec.key, rec.keylen);
		appendStringInfoChar(out, ',');
		append_json_text(out, rec.payload, rec.payloadlen);
		appendStringInfoChar(out, ',');
		append_json_text_or_null(out, rec.headers, rec.headerslen);
		appendStringInfoChar(out, ',');
		append_json_text_or_null(out, rec.target, rec.targetlen);
		appendStringInfoChar(out, ']');
	}
	appendStringInfoString(out, "]}");
}

/* batchkit.chunk_out(batchkit.chunk) -> cstring */
Datum
batchkit_chunk_out(PG_FUNCTION_ARGS)
{
	bytea	   *payload = PG_GETARG_BYTEA_PP(0);
	Size		len = VARSIZE_ANY_EXHDR(payload);
	char	   *data = palloc(Max(len, 1));	/* MAXALIGNed copy the reader may modify */
	BkChunkReader reader;
	StringInfoData out;

	memcpy(data, VARDATA_ANY(payload), len);
	bk_chunk_open(&reader, data, len);
	initStringInfo(&out);
	if (reader.hdr->kind == BK_CHUNK_KIND_ROWS)
		rows_to_text(&reader, &out);
	else
		messages_to_text(&reader, &out);
	PG_RETURN_CSTRING(out.data);
}

/* ---- input ----------------------------------------------------------------- */

static void pg_attribute_noreturn()
bad_text(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid batchkit queue chunk: %s", what),
			 errhint("The text form of a chunk is what pg_dump wrote of batchkit's queue.")));
}

static JsonbContainer *
container_of(JsonbValue *v, bool array, const char *what)
{
	if (v == NULL || v->type != jbvBinary ||
		(array ? !JsonContainerIsArray(v->val.binary.data) :
		 !JsonContainerIsObject(v->val.binary.data)))
		bad_text(what);
	return v->val.binary.data;
}

static JsonbValue *
field(JsonbContainer *obj, const char *key)
{
	return getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);
}

/* A JSON string as a palloc'd C string; NULL for JSON null when allowed. */
static char *
string_of(JsonbValue *v, bool null_ok, const char *what)
{
	if (v != NULL && v->type == jbvNull && null_ok)
		return NULL;
	if (v == NULL || v->type != jbvString)
		bad_text(what);
	if (memchr(v->val.string.val, '\0', v->val.string.len) != NULL)
		bad_text(what);
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
bool_of(JsonbValue *v, const char *what)
{
	if (v == NULL || v->type != jbvBool)
		bad_text(what);
	return v->val.boolean;
}

static char
op_of(JsonbValue *v, bool rows)
{
	char	   *s = string_of(v, false, "a record's op must be a one-letter string");

	if (strlen(s) != 1 ||
		!(s[0] == BK_REC_INSERT || s[0] == BK_REC_UPDATE || s[0] == BK_REC_DELETE ||
		  (!rows && s[0] == BK_REC_MESSAGE)))
		bad_text("unknown record op");
	return s[0];
}

typedef struct ColumnIn
{
	FmgrInfo	infn;
	Oid			ioparam;
	int32		typmod;
} ColumnIn;

static MinimalTuple
tuple_of(JsonbValue *v, TupleDesc desc, ColumnIn *cols, Datum *values, bool *nulls)
{
	JsonbContainer *arr;

	if (v != NULL && v->type == jbvNull)
		return NULL;
	arr = container_of(v, true, "a record's tuple must be an array of values");
	if (JsonContainerSize(arr) != (uint32) desc->natts)
		bad_text("a record's tuple does not have one value per column");
	for (int i = 0; i < desc->natts; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(arr, i);
		char	   *s = string_of(e, true, "a value must be a string or null");

		nulls[i] = (s == NULL);
		values[i] = InputFunctionCall(&cols[i].infn, s, cols[i].ioparam, cols[i].typmod);
	}
	return heap_form_minimal_tuple(desc, values, nulls);
}

static void
rows_from_text(JsonbContainer *root, BkChunkWriter *w, JsonbContainer *records)
{
	char	   *schema = string_of(field(root, "schema"), false, "\"schema\" must be a string");
	char	   *table = string_of(field(root, "table"), false, "\"table\" must be a string");
	bool		include_before = bool_of(field(root, "include_before"),
										 "\"include_before\" must be true or false");
	JsonbContainer *columns = container_of(field(root, "columns"), true,
										   "\"columns\" must be an array");
	int			natts = JsonContainerSize(columns);
	TupleDesc	desc;
	ColumnIn   *cols;
	bool	   *is_key,
			   *is_emitted;
	Datum	   *values;
	bool	   *nulls;
	Oid			nsp,
				relid = InvalidOid;
	int			nrec = JsonContainerSize(records);

	if (natts > MaxTupleAttributeNumber)
		bad_text("too many columns");
	desc = CreateTemplateTupleDesc(natts);
	cols = palloc0(sizeof(ColumnIn) * natts);
	is_key = palloc0(sizeof(bool) * (natts + 1));
	is_emitted = palloc0(sizeof(bool) * (natts + 1));
	values = palloc(sizeof(Datum) * natts);
	nulls = palloc(sizeof(bool) * natts);
	for (int i = 0; i < natts; i++)
	{
		JsonbContainer *c = container_of(getIthJsonbValueFromContainer(columns, i), false,
										 "a column must be an object");
		char	   *name = string_of(field(c, "name"), false, "a column needs a \"name\"");
		char	   *type = string_of(field(c, "type"), false, "a column needs a \"type\"");
		Oid			typid,
					func;

		if (strlen(name) >= NAMEDATALEN)
			bad_text("a column name is too long");
		/* the type as the dumped database named it; a missing one is an error here */
		parseTypeString(type, &typid, &cols[i].typmod, false);
		TupleDescInitEntry(desc, i + 1, name, typid, cols[i].typmod, 0);
		getTypeInputInfo(typid, &func, &cols[i].ioparam);
		fmgr_info(func, &cols[i].infn);
		is_key[i + 1] = bool_of(field(c, "key"), "a column's \"key\" must be true or false");
		is_emitted[i + 1] = bool_of(field(c, "emit"), "a column's \"emit\" must be true or false");
	}

	/* the restored table, when there is one (informational: the decoder reads the names) */
	nsp = get_namespace_oid(schema, true);
	if (OidIsValid(nsp))
		relid = get_relname_relid(table, nsp);
	bk_chunk_begin_rows_desc(w, schema, table, relid, desc, is_key, is_emitted);
	if (include_before)
		((BkChunkHeader *) w->buf.data)->flags |= BK_CHUNK_FLAG_INCLUDE_BEFORE;

	for (int r = 0; r < nrec; r++)
	{
		JsonbContainer *rec = container_of(getIthJsonbValueFromContainer(records, r), true,
										   "a record must be an array");
		char		op;
		MinimalTuple before,
					after;

		if (JsonContainerSize(rec) != 3)
			bad_text("a rows record is [op, before, after]");
		op = op_of(getIthJsonbValueFromContainer(rec, 0), true);
		before = tuple_of(getIthJsonbValueFromContainer(rec, 1), desc, cols, values, nulls);
		after = tuple_of(getIthJsonbValueFromContainer(rec, 2), desc, cols, values, nulls);
		if ((op == BK_REC_INSERT && after == NULL) || (op == BK_REC_DELETE && before == NULL) ||
			(op == BK_REC_UPDATE && after == NULL))
			bad_text("a record lacks the tuple its op needs");
		bk_chunk_add_row(w, op, desc, before, after);
		if (before)
			heap_free_minimal_tuple(before);
		if (after)
			heap_free_minimal_tuple(after);
	}
}

static void
messages_from_text(BkChunkWriter *w, JsonbContainer *records)
{
	int			nrec = JsonContainerSize(records);

	bk_chunk_begin_messages(w);
	for (int r = 0; r < nrec; r++)
	{
		JsonbContainer *rec = container_of(getIthJsonbValueFromContainer(records, r), true,
										   "a record must be an array");
		char		op;
		char	   *key,
				   *payload,
				   *headers,
				   *target;

		if (JsonContainerSize(rec) != 5)
			bad_text("a messages record is [op, key, payload, headers, target]");
		op = op_of(getIthJsonbValueFromContainer(rec, 0), false);
		key = string_of(getIthJsonbValueFromContainer(rec, 1), true, "a key must be a string or null");
		payload = string_of(getIthJsonbValueFromContainer(rec, 2), false, "a payload must be a string");
		headers = string_of(getIthJsonbValueFromContainer(rec, 3), true,
							"headers must be a string or null");
		target = string_of(getIthJsonbValueFromContainer(rec, 4), true,
						   "a target must be a string or null");
		if (target && strlen(target) > PG_UINT16_MAX)
			bad_text("a target is too long");
		bk_chunk_add_message(w, op, key, key ? strlen(key) : 0, payload, strlen(payload),
							 headers, headers ? strlen(headers) : 0,
							 target, target ? strlen(target) : 0);
	}
}

/* batchkit.chunk_in(cstring) -> batchkit.chunk */
Datum
batchkit_chunk_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	Jsonb	   *jb;
	JsonbValue *v;
	JsonbContainer *records;
	char	   *kind;
	BkChunkWriter w;
	bytea	   *result;

	bk_note_restoring();
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(str)));
	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		bad_text("not a JSON object");
	v = field(&jb->root, "format");
	if (v == NULL || v->type != jbvNumeric ||
		DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric))) !=
		BK_CHUNK_TEXT_FORMAT)
		bad_text("unknown \"format\" (this batchkit reads format 1)");
	kind = string_of(field(&jb->root, "kind"), false, "\"kind\" must be \"rows\" or \"messages\"");
	records = container_of(field(&jb->root, "records"), true, "\"records\" must be an array");
	if (JsonContainerSize(records) >= BK_SEQ_PER_CHUNK)
		bad_text("too many records for one chunk");

	memset(&w, 0, sizeof(w));
	if (strcmp(kind, "rows") == 0)
		rows_from_text(&jb->root, &w, records);
	else if (strcmp(kind, "messages") == 0)
		messages_from_text(&w, records);
	else
		bad_text("\"kind\" must be \"rows\" or \"messages\"");
	bk_chunk_finish(&w);

	result = (bytea *) palloc(VARHDRSZ + w.buf.len);
	SET_VARSIZE(result, VARHDRSZ + w.buf.len);
	memcpy(VARDATA(result), w.buf.data, w.buf.len);
	pfree(w.buf.data);
	PG_RETURN_BYTEA_P(result);
}

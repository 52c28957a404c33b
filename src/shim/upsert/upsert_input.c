/*
 * upsert_input.c — batch_upsert's input readers: a jsonb array of objects, or
 * an array of a composite type, turned into values of the target's columns.
 *
 * Lifetime: a reader's state lives in the call's memory context; values are
 * produced in the caller's current context (the per-chunk context), and may
 * point into the input datum, which outlives the call's work.
 *
 * The jsonb reader walks the binary container directly (one pass over the key
 * names to find the input's columns and each row's signature — which columns
 * it gives — then binary-searched key lookups per value), so rows are never
 * expanded into JsonbValue trees and never re-parsed from text.
 *
 * JSON values become column values as jsonb_populate_record would read them,
 * with fast paths: strings go to text columns as they are, integral numbers to
 * integer columns without a text round trip, numbers to numeric columns as
 * they are, booleans to boolean columns; anything else goes through the
 * column type's input function (so domains, typmods and every type work), and
 * json/jsonb columns take the JSON value itself.
 *
 * Errors: bk_input_pos says which row and column is being converted, so the
 * caller can re-raise a conversion error naming them.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/typcache.h"

#include "upsert/upsert.h"

BkInputPos	bk_input_pos = {-1, NULL};

/* Interned row signatures: which target columns a row gives. */
typedef struct BkSigTable
{
	int			ncols;
	int32		nsigs;
	int32		cap;
	bool	  **sigs;
	HTAB	   *hash;			/* key: ncols bytes -> index */
} BkSigTable;

typedef struct BkSigEntry
{
	char	   *key;			/* points into sigs[idx] (must be first: hash key) */
	int32		idx;
} BkSigEntry;

static int
sig_match(const void *key1, const void *key2, Size keysize)
{
	return memcmp(*(char *const *) key1, *(char *const *) key2, keysize);
}

static uint32
sig_hash(const void *key, Size keysize)
{
	return hash_bytes(*(const unsigned char *const *) key, (int) keysize);
}

static void
sigtable_init(BkSigTable *st, int ncols)
{
	HASHCTL		ctl;

	st->ncols = ncols;
	st->nsigs = 0;
	st->cap = 8;
	st->sigs = palloc(sizeof(bool *) * st->cap);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = Max(ncols, 1);
	ctl.entrysize = sizeof(BkSigEntry);
	ctl.hash = sig_hash;
	ctl.match = sig_match;
	ctl.hcxt = CurrentMemoryContext;
	/* keysize is the bytes compared; the key stored is a pointer to them */
	st->hash = hash_create("batchkit upsert signatures", 16, &ctl,
						   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

static int32
sigtable_intern(BkSigTable *st, const bool *present)
{
	BkSigEntry *e;
	bool		found;
	char	   *key = (char *) present;

	e = hash_search(st->hash, &key, HASH_ENTER, &found);
	if (!found)
	{
		if (st->nsigs == st->cap)
		{
			st->cap *= 2;
			st->sigs = repalloc(st->sigs, sizeof(bool *) * st->cap);
		}
		st->sigs[st->nsigs] = palloc(Max(st->ncols, 1));
		memcpy(st->sigs[st->nsigs], present, st->ncols);
		e->key = (char *) st->sigs[st->nsigs];
		e->idx = st->nsigs++;
	}
	return e->idx;
}

/* ---------------------------------------------------------------- conversion */

void
bk_conv_prepare(BkTarget *t, int col)
{
	BkColumnConv *cc = &t->conv[col];
	Oid			infunc;
	Oid			typid = t->typids[col];

	if (OidIsValid(cc->typid))
		return;
	cc->typid = typid;
	cc->typmod = t->typmods[col];
	getTypeInputInfo(typid, &infunc, &cc->typioparam);
	fmgr_info(infunc, &cc->input);
	cc->is_domain = get_typtype(typid) == TYPTYPE_DOMAIN;
	cc->kind = BK_CONV_GENERIC;
	switch (typid)
	{
		case TEXTOID:
			cc->kind = BK_CONV_TEXT;
			break;
		case VARCHAROID:
			if (cc->typmod < 0)
				cc->kind = BK_CONV_TEXT;
			break;
		case INT8OID:
			cc->kind = BK_CONV_INT8;
			break;
		case INT4OID:
			cc->kind = BK_CONV_INT4;
			break;
		case INT2OID:
			cc->kind = BK_CONV_INT2;
			break;
		case NUMERICOID:
			if (cc->typmod < 0)
				cc->kind = BK_CONV_NUMERIC;
			break;
		case BOOLOID:
			cc->kind = BK_CONV_BOOL;
			break;
		case JSONBOID:
			cc->kind = BK_CONV_JSONB;
			break;
		case JSONOID:
			cc->kind = BK_CONV_JSON;
			break;
	}
}

static Datum
conv_cstring(BkColumnConv *cc, const char *s, int len)
{
	char	   *buf = palloc(len + 1);

	memcpy(buf, s, len);
	buf[len] = '\0';
	return InputFunctionCall(&cc->input, buf, cc->typioparam, cc->typmod);
}

static char *
jbv_to_json_text(JsonbValue *v)
{
	if (v->type == jbvBinary)
		return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
	return JsonbToCString(NULL, &JsonbValueToJsonb(v)->root, 0);
}

static Datum
jbv_to_datum(BkColumnConv *cc, JsonbValue *v, bool *isnull)
{
	*isnull = false;
	if (v->type == jbvNull)
	{
		*isnull = true;
		/* a domain may refuse NULL: let its input function say so */
		if (cc->is_domain)
			(void) InputFunctionCall(&cc->input, NULL, cc->typioparam, cc->typmod);
		return (Datum) 0;
	}
	if (cc->kind == BK_CONV_JSONB)
	{
		if (v->type == jbvBinary)
		{
			Jsonb	   *jb = palloc(VARHDRSZ + v->val.binary.len);

			SET_VARSIZE(jb, VARHDRSZ + v->val.binary.len);
			memcpy(&jb->root, v->val.binary.data, v->val.binary.len);
			return JsonbPGetDatum(jb);
		}
		return JsonbPGetDatum(JsonbValueToJsonb(v));
	}
	if (cc->kind == BK_CONV_JSON)
	{
		char	   *s = jbv_to_json_text(v);

		return InputFunctionCall(&cc->input, s, cc->typioparam, cc->typmod);
	}
	switch (v->type)
	{
		case jbvString:
			if (cc->kind == BK_CONV_TEXT)
				return PointerGetDatum(cstring_to_text_with_len(v->val.string.val,
																v->val.string.len));
			return conv_cstring(cc, v->val.string.val, v->val.string.len);
		case jbvNumeric:
			{
				Numeric		num = v->val.numeric;

				if (cc->kind == BK_CONV_NUMERIC)
					return NumericGetDatum(num);
				if ((cc->kind == BK_CONV_INT8 || cc->kind == BK_CONV_INT4 ||
					 cc->kind == BK_CONV_INT2) &&
					DatumGetInt32(DirectFunctionCall1(numeric_scale, NumericGetDatum(num))) == 0)
				{
					/* integral: no text round trip (out of range still errors) */
					if (cc->kind == BK_CONV_INT8)
						return DirectFunctionCall1(numeric_int8, NumericGetDatum(num));
					if (cc->kind == BK_CONV_INT4)
						return DirectFunctionCall1(numeric_int4, NumericGetDatum(num));
					return DirectFunctionCall1(numeric_int2, NumericGetDatum(num));
				}
				{
					char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
																		NumericGetDatum(num)));

					if (cc->kind == BK_CONV_TEXT)
						return PointerGetDatum(cstring_to_text(s));
					return InputFunctionCall(&cc->input, s, cc->typioparam, cc->typmod);
				}
			}
		case jbvBool:
			if (cc->kind == BK_CONV_BOOL)
				return BoolGetDatum(v->val.boolean);
			{
				const char *s = v->val.boolean ? "true" : "false";

				if (cc->kind == BK_CONV_TEXT)
					return PointerGetDatum(cstring_to_text(s));
				return conv_cstring(cc, s, strlen(s));
			}
		case jbvBinary:
			{
				/* an object or array for a non-JSON column: its JSON text */
				char	   *s = jbv_to_json_text(v);

				if (cc->kind == BK_CONV_TEXT)
					return PointerGetDatum(cstring_to_text(s));
				return InputFunctionCall(&cc->input, s, cc->typioparam, cc->typmod);
			}
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------- jsonb rows */

typedef struct JsonbInput
{
	Jsonb	   *jb;
	JsonbContainer *root;
	BkSigTable	sigs;
} JsonbInput;

static JsonbContainer *
jsonb_row(JsonbInput *ji, int64 row, uint32 offset)
{
	JsonbContainer *root = ji->root;
	int			n = JsonContainerSize(root);
	JEntry		je = root->children[row];
	char	   *base = (char *) &root->children[n];
	JsonbContainer *obj;

	if (!JBE_ISCONTAINER(je))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("row %lld is not a JSON object", (long long) row + 1)));
	obj = (JsonbContainer *) (base + INTALIGN(offset));
	if (!JsonContainerIsObject(obj))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("row %lld is not a JSON object", (long long) row + 1)));
	return obj;
}

static int
find_column(BkTarget *t, const char *key, int len)
{
	for (int c = 0; c < t->ncols; c++)
		if (strncmp(t->colnames[c], key, len) == 0 && t->colnames[c][len] == '\0')
			return c;
	return -1;
}

static void
jsonb_scan(BkInput *in, BkTarget *t, int32 *sig_of_row)
{
	JsonbInput *ji = in->state;
	JsonbContainer *root = ji->root;
	int64		n = in->nrows;
	uint32		off = 0;
	bool	   *present = palloc0(Max(t->ncols, 1));
	bool	   *prev = palloc0(Max(t->ncols, 1));
	int32		prev_sig = -1;
	int		   *cache = NULL;	/* column found at key position j of the last row */
	int			ncache = 0;
	List	   *unknown = NIL;

	sigtable_init(&ji->sigs, t->ncols);
	for (int64 i = 0; i < n; i++)
	{
		JEntry		je = root->children[i];
		uint32		end = JBE_HAS_OFF(je) ? JBE_OFFLENFLD(je) : off + JBE_OFFLENFLD(je);
		JsonbContainer *obj = jsonb_row(ji, i, off);
		int			count = JsonContainerSize(obj);
		char	   *kbase = (char *) &obj->children[count * 2];
		uint32		koff = 0;

		off = end;
		memset(present, 0, t->ncols);
		if (count > ncache)
		{
			cache = cache ? repalloc(cache, sizeof(int) * count) : palloc(sizeof(int) * count);
			for (int j = ncache; j < count; j++)
				cache[j] = -1;
			ncache = count;
		}
		for (int j = 0; j < count; j++)
		{
			JEntry		ke = obj->children[j];
			uint32		kend = JBE_HAS_OFF(ke) ? JBE_OFFLENFLD(ke) : koff + JBE_OFFLENFLD(ke);
			const char *key = kbase + koff;
			int			klen = kend - koff;
			int			c = cache[j];

			koff = kend;
			if (c < 0 || strncmp(t->colnames[c], key, klen) != 0 || t->colnames[c][klen] != '\0')
			{
				c = find_column(t, key, klen);
				cache[j] = c;
			}
			if (c < 0)
			{
				char	   *name = pnstrdup(key, klen);
				ListCell   *lc;
				bool		seen = false;

				foreach(lc, unknown)
					if (strcmp(lfirst(lc), name) == 0)
						seen = true;
				if (!seen && list_length(unknown) < 100)
					unknown = lappend(unknown, name);
				continue;
			}
			present[c] = true;
		}
		if (prev_sig < 0 || memcmp(prev, present, t->ncols) != 0)
		{
			prev_sig = sigtable_intern(&ji->sigs, present);
			memcpy(prev, present, t->ncols);
		}
		sig_of_row[i] = prev_sig;
	}
	if (unknown != NIL)
	{
		StringInfoData buf;
		ListCell   *lc;

		initStringInfo(&buf);
		foreach(lc, unknown)
			appendStringInfo(&buf, "%s\"%s\"", buf.len ? ", " : "", (char *) lfirst(lc));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg(list_length(unknown) == 1
						? "key %s of the input rows is not a column of table \"%s\""
						: "keys %s of the input rows are not columns of table \"%s\"",
						buf.data, t->name)));
	}
	in->nsignatures = ji->sigs.nsigs;
	for (int32 s = 0; s < ji->sigs.nsigs; s++)
		for (int c = 0; c < t->ncols; c++)
			if (ji->sigs.sigs[s][c])
				t->colflags[c] |= BK_UPSERT_COL_INPUT;
}

static const bool *
jsonb_signature(BkInput *in, int32 sig)
{
	JsonbInput *ji = in->state;

	return ji->sigs.sigs[sig];
}

static void
jsonb_values(BkInput *in, BkTarget *t, int64 row, const int *cols, int ncols,
			 Datum *values, bool *nulls)
{
	JsonbInput *ji = in->state;
	JsonbContainer *obj = jsonb_row(ji, row, getJsonbOffset(ji->root, (int) row));

	bk_input_pos.row = row;
	for (int i = 0; i < ncols; i++)
	{
		int			c = cols[i];
		JsonbValue	v;
		const char *name = t->colnames[c];

		bk_input_pos.column = name;
		if (getKeyJsonValueFromContainer(obj, name, strlen(name), &v) == NULL)
		{
			/* callers only ask for columns the row's signature has */
			values[i] = (Datum) 0;
			nulls[i] = true;
			continue;
		}
		values[i] = jbv_to_datum(&t->conv[c], &v, &nulls[i]);
	}
	bk_input_pos.row = -1;
	bk_input_pos.column = NULL;
}

void
bk_input_init_jsonb(BkInput *in, Datum rows)
{
	JsonbInput *ji = palloc0(sizeof(JsonbInput));

	ji->jb = DatumGetJsonbP(rows);
	ji->root = &ji->jb->root;
	if (!JsonContainerIsArray(ji->root) || JsonContainerIsScalar(ji->root))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rows must be a JSON array of objects")));
	in->state = ji;
	in->nrows = JsonContainerSize(ji->root);
	in->scan = jsonb_scan;
	in->signature = jsonb_signature;
	in->values = jsonb_values;
}

/* ---------------------------------------------------------------- composite rows */

typedef struct ArrayInput
{
	Datum	   *elems;
	bool	   *elemnulls;
	TupleDesc	tupdesc;
	int		   *attr_of_col;	/* per target column: attribute index, or -1 */
	ExprState **coerce;			/* per target column: assignment cast, or NULL */
	ExprContext *econtext;
	bool	   *sig;			/* every row gives every mapped attribute */
	Datum	   *avalues;
	bool	   *anulls;
} ArrayInput;

static void
array_scan(BkInput *in, BkTarget *t, int32 *sig_of_row)
{
	ArrayInput *ai = in->state;

	for (int64 i = 0; i < in->nrows; i++)
	{
		if (ai->elemnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("row %lld is NULL", (long long) i + 1)));
		sig_of_row[i] = 0;
	}
	in->nsignatures = 1;
	for (int c = 0; c < t->ncols; c++)
		if (ai->sig[c])
			t->colflags[c] |= BK_UPSERT_COL_INPUT;
}

static const bool *
array_signature(BkInput *in, int32 sig)
{
	return ((ArrayInput *) in->state)->sig;
}

static void
array_values(BkInput *in, BkTarget *t, int64 row, const int *cols, int ncols,
			 Datum *values, bool *nulls)
{
	ArrayInput *ai = in->state;
	HeapTupleHeader td = DatumGetHeapTupleHeader(ai->elems[row]);
	HeapTupleData tup;

	tup.t_len = HeapTupleHeaderGetDatumLength(td);
	ItemPointerSetInvalid(&tup.t_self);
	tup.t_tableOid = InvalidOid;
	tup.t_data = td;
	heap_deform_tuple(&tup, ai->tupdesc, ai->avalues, ai->anulls);
	bk_input_pos.row = row;
	for (int i = 0; i < ncols; i++)
	{
		int			c = cols[i];
		int			a = ai->attr_of_col[c];

		bk_input_pos.column = t->colnames[c];
		values[i] = ai->avalues[a];
		nulls[i] = ai->anulls[a];
		if (ai->coerce[c])
		{
			ai->econtext->caseValue_datum = values[i];
			ai->econtext->caseValue_isNull = nulls[i];
			values[i] = ExecEvalExpr(ai->coerce[c], ai->econtext, &nulls[i]);
		}
	}
	bk_input_pos.row = -1;
	bk_input_pos.column = NULL;
}

void
bk_input_init_array(BkInput *in, Datum rows, BkTarget *t)
{
	ArrayType  *arr = DatumGetArrayTypeP(rows);
	Oid			elemtype = ARR_ELEMTYPE(arr);
	int16		elmlen;
	bool		elmbyval;
	char		elmalign;
	int			nelems;
	ArrayInput *ai = palloc0(sizeof(ArrayInput));
	List	   *unknown = NIL;

	if (!type_is_rowtype(elemtype))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("rows must be an array of a composite type, not %s",
						format_type_be(get_array_type(elemtype)))));
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("rows must be a one-dimensional array")));
	ai->tupdesc = lookup_rowtype_tupdesc_copy(elemtype, -1);
	get_typlenbyvalalign(elemtype, &elmlen, &elmbyval, &elmalign);
	deconstruct_array(arr, elemtype, elmlen, elmbyval, elmalign,
					  &ai->elems, &ai->elemnulls, &nelems);
	ai->attr_of_col = palloc(sizeof(int) * Max(t->ncols, 1));
	ai->coerce = palloc0(sizeof(ExprState *) * Max(t->ncols, 1));
	ai->sig = palloc0(Max(t->ncols, 1));
	ai->avalues = palloc(sizeof(Datum) * Max(ai->tupdesc->natts, 1));
	ai->anulls = palloc(sizeof(bool) * Max(ai->tupdesc->natts, 1));
	ai->econtext = CreateStandaloneExprContext();
	for (int c = 0; c < t->ncols; c++)
		ai->attr_of_col[c] = -1;

	for (int a = 0; a < ai->tupdesc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(ai->tupdesc, a);
		const char *name = NameStr(att->attname);
		int			c;

		if (att->attisdropped)
			continue;
		c = find_column(t, name, strlen(name));
		if (c < 0)
		{
			unknown = lappend(unknown, (char *) name);
			continue;
		}
		if (t->colflags[c] & BK_UPSERT_COL_GENERATED)
		{
			/*
			 * The target's own row type carries its generated columns: accept
			 * them as long as no row gives a value (writing one is an error).
			 */
			for (int64 i = 0; i < nelems; i++)
			{
				bool		isnull = true;

				if (!ai->elemnulls[i])
				{
					HeapTupleHeader td = DatumGetHeapTupleHeader(ai->elems[i]);
					HeapTupleData tup;

					tup.t_len = HeapTupleHeaderGetDatumLength(td);
					tup.t_data = td;
					(void) heap_getattr(&tup, a + 1, ai->tupdesc, &isnull);
				}
				if (!isnull)
					ereport(ERROR,
							(errcode(ERRCODE_GENERATED_ALWAYS),
							 errmsg("cannot insert a non-DEFAULT value into column \"%s\"", name),
							 errdetail("Column \"%s\" is a generated column.", name)));
			}
			continue;
		}
		ai->attr_of_col[c] = a;
		ai->sig[c] = true;
		if (att->atttypid != t->typids[c] ||
			(t->typmods[c] >= 0 && att->atttypmod != t->typmods[c]))
		{
			CaseTestExpr *ct = makeNode(CaseTestExpr);
			Node	   *expr;

			ct->typeId = att->atttypid;
			ct->typeMod = att->atttypmod;
			ct->collation = att->attcollation;
			expr = coerce_to_target_type(NULL, (Node *) ct, att->atttypid,
										 t->typids[c], t->typmods[c],
										 COERCION_ASSIGNMENT, COERCE_IMPLICIT_CAST, -1);
			if (expr == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("attribute \"%s\" of type %s cannot be assigned to column \"%s\" of type %s",
								name, format_type_be(att->atttypid), name,
								format_type_with_typemod(t->typids[c], t->typmods[c]))));
			ai->coerce[c] = ExecInitExpr(expression_planner((Expr *) expr), NULL);
		}
	}
	if (unknown != NIL)
	{
		StringInfoData buf;
		ListCell   *lc;

		initStringInfo(&buf);
		foreach(lc, unknown)
			appendStringInfo(&buf, "%s\"%s\"", buf.len ? ", " : "", (char *) lfirst(lc));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg(list_length(unknown) == 1
						? "attribute %s of the input rows is not a column of table \"%s\""
						: "attributes %s of the input rows are not columns of table \"%s\"",
						buf.data, t->name)));
	}
	in->state = ai;
	in->nrows = nelems;
	in->scan = array_scan;
	in->signature = array_signature;
	in->values = array_values;
}

/*
 * Called in a PG_CATCH block (after switching out of ErrorContext) while
 * bk_input_pos names a row: re-raise the error with the row and column.
 */
void
bk_upsert_rethrow_at_position(void)
{
	ErrorData  *edata = CopyErrorData();
	long long	row = (long long) bk_input_pos.row + 1;
	const char *column = bk_input_pos.column ? bk_input_pos.column : "?";

	bk_input_pos.row = -1;
	bk_input_pos.column = NULL;
	FlushErrorState();
	ereport(ERROR,
			(errcode(edata->sqlerrcode),
			 errmsg("row %lld, column \"%s\": %s", row, column, edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0));
}

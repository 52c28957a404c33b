/*
 * column_list.c — batchkit.column_list: columns of one table, by number inside,
 * by name in text, as regclass is for a table.
 *
 * batchkit.capture records which columns a capture keys on and emits. The
 * capture trigger needs their attribute numbers, which a dump does not keep:
 * pg_dump recreates a table without its dropped columns, so every column after
 * a dropped one comes back with a smaller number. A column_list is written by
 * pg_dump as the table's and the columns' current names, {schema,table,col,...}
 * (a text[] literal), and read back by name in the restored database: the
 * trigger finds the same columns, also after RENAME COLUMN (the numbers do not
 * change) and after a restore (the names are those of the dump).
 *
 * A column dropped since the capture is written as NULL and read back as number
 * 0, which the trigger refuses as it refuses the dropped column itself; a table
 * that no longer exists is written as {NULL,NULL,...}.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "access/htup_details.h"
#include "catalog/pg_attribute.h"

#include "capture/capture.h"

PG_FUNCTION_INFO_V1(batchkit_column_list_in);
PG_FUNCTION_INFO_V1(batchkit_column_list_out);
PG_FUNCTION_INFO_V1(batchkit_column_list_make);
PG_FUNCTION_INFO_V1(batchkit_column_list_attnums);

/* The name of a column that exists and is not dropped, else NULL. */
static char *
live_attname(Oid relid, int16 attnum)
{
	HeapTuple	tp = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
	char	   *name = NULL;

	if (HeapTupleIsValid(tp))
	{
		Form_pg_attribute att = (Form_pg_attribute) GETSTRUCT(tp);

		if (!att->attisdropped)
			name = pstrdup(NameStr(att->attname));
		ReleaseSysCache(tp);
	}
	return name;
}

static BkColumnList *
column_list_new(Oid relid, int n)
{
	Size		size = offsetof(BkColumnList, attnums) + sizeof(int16) * n;
	BkColumnList *cl = palloc0(size);

	SET_VARSIZE(cl, size);
	cl->relid = relid;
	cl->natts = n;
	return cl;
}

/* batchkit.column_list_in(cstring) */
Datum
batchkit_column_list_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	/* array_in/array_out cache in fn_extra: they need an FmgrInfo (no DirectFunctionCall) */
	ArrayType  *a = DatumGetArrayTypeP(OidInputFunctionCall(F_ARRAY_IN, str, TEXTOID, -1));
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	Oid			relid = InvalidOid;
	BkColumnList *cl;

	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid batchkit column list \"%s\"", str)));
	deconstruct_array(a, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n < 2 || nulls[0] != nulls[1])
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid batchkit column list \"%s\"", str),
				 errdetail("A column list is {schema,table,column,...}.")));
	if (!nulls[0])
	{
		char	   *schema = TextDatumGetCString(elems[0]);
		char	   *table = TextDatumGetCString(elems[1]);

		relid = get_relname_relid(table, get_namespace_oid(schema, false));
		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("relation \"%s.%s\" does not exist", schema, table)));
	}
	cl = column_list_new(relid, n - 2);
	for (int i = 2; i < n; i++)
	{
		char	   *name;

		if (nulls[i])
			continue;			/* a column dropped before the dump: number 0 */
		name = TextDatumGetCString(elems[i]);
		if (!OidIsValid(relid) || (cl->attnums[i - 2] = get_attnum(relid, name)) <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of relation \"%s\" does not exist", name,
							OidIsValid(relid) ? get_rel_name(relid) : "(none)")));
	}
	PG_RETURN_POINTER(cl);
}

/* batchkit.column_list_out(batchkit.column_list) */
Datum
batchkit_column_list_out(PG_FUNCTION_ARGS)
{
	BkColumnList *cl = (BkColumnList *) PG_DETOAST_DATUM(PG_GETARG_DATUM(0));
	int			n = cl->natts + 2;
	Datum	   *elems = palloc0(sizeof(Datum) * n);
	bool	   *nulls = palloc0(sizeof(bool) * n);
	char	   *relname = OidIsValid(cl->relid) ? get_rel_name(cl->relid) : NULL;
	char	   *schema = relname ? get_namespace_name(get_rel_namespace(cl->relid)) : NULL;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	nulls[0] = nulls[1] = (relname == NULL || schema == NULL);
	if (!nulls[0])
	{
		elems[0] = CStringGetTextDatum(schema);
		elems[1] = CStringGetTextDatum(relname);
	}
	for (int i = 0; i < cl->natts; i++)
	{
		char	   *att = nulls[0] || cl->attnums[i] <= 0 ? NULL :
			live_attname(cl->relid, cl->attnums[i]);

		nulls[i + 2] = (att == NULL);
		if (att)
			elems[i + 2] = CStringGetTextDatum(att);
	}
	PG_RETURN_CSTRING(OidOutputFunctionCall(F_ARRAY_OUT,
											PointerGetDatum(construct_md_array(elems, nulls, 1,
																			   dims, lbs, TEXTOID,
																			   -1, false,
																			   TYPALIGN_INT))));
}

/* batchkit._column_list(source regclass, attnums int2[]): what capture() records */
Datum
batchkit_column_list_make(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	ArrayType  *a = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	BkColumnList *cl;

	deconstruct_array(a, INT2OID, 2, true, TYPALIGN_SHORT, &elems, &nulls, &n);
	cl = column_list_new(relid, n);
	for (int i = 0; i < n; i++)
	{
		if (nulls[i] || DatumGetInt16(elems[i]) <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("attribute numbers of a column list must be positive")));
		cl->attnums[i] = DatumGetInt16(elems[i]);
	}
	PG_RETURN_POINTER(cl);
}

/* batchkit._column_list_attnums(batchkit.column_list): the numbers (the sql_drop event trigger) */
Datum
batchkit_column_list_attnums(PG_FUNCTION_ARGS)
{
	BkColumnList *cl = (BkColumnList *) PG_DETOAST_DATUM(PG_GETARG_DATUM(0));
	Datum	   *elems = palloc(sizeof(Datum) * Max(cl->natts, 1));

	for (int i = 0; i < cl->natts; i++)
		elems[i] = Int16GetDatum(cl->attnums[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, cl->natts, INT2OID, 2, true, TYPALIGN_SHORT));
}

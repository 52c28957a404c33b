/*
 * sink_catalog.c — SQL entry points of the sinks catalog: create_sink,
 * alter_sink, drop_sink, pause_sink, resume_sink, and _sink_config for the
 * flush worker.
 *
 * Who may call them. The management functions are SECURITY INVOKER on
 * purpose: the privilege check must see the role that is really calling, which
 * is GetUserId() at entry — it honours SET ROLE and a SECURITY DEFINER caller.
 * Inside a SECURITY DEFINER function that identity is gone (current_user is the
 * owner), and session_user is the wrong one: it ignores SET ROLE (a superuser
 * session that SET ROLE to an unprivileged role could still manage sinks) and
 * ignores definer functions written to delegate the right on purpose. So each
 * function checks the caller first (superuser, or member of batchkit_admin),
 * then switches to the catalog's owner for its reads and writes, exactly as a
 * SECURITY DEFINER function would (SECURITY_LOCAL_USERID_CHANGE |
 * SECURITY_RESTRICTED_OPERATION), with search_path fixed to pg_catalog, pg_temp
 * by the function's SET clause and every name schema-qualified. An ERROR
 * restores the caller's identity through transaction (or subtransaction)
 * abort, as it does for SECURITY DEFINER functions.
 *
 * Options that make the server read files, run programs or load code need the
 * Postgres role that already grants that (see bk_check_option_privileges).
 *
 * Locking: alter/drop/pause/resume lock the sink's row (FOR UPDATE via
 * UPDATE/SELECT ... FOR UPDATE), so concurrent changes to one sink serialize;
 * create relies on the unique index on name (ON CONFLICT DO NOTHING).
 * drop_sink(force) also takes DROP TRIGGER's lock on each captured table.
 *
 * Everything changes in the caller's transaction: an ERROR anywhere leaves the
 * catalog as it was. Workers hear of every change through
 * NOTIFY batchkit_sinks, <sink name> (delivered at commit).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "batchkit/net_probe.h"
#include "batchkit/sink_options.h"
#include "queue/queue.h"
#include "catalog/sink_catalog.h"

/* How long create_sink/alter_sink wait for the sink's server to answer. */
#define BK_SINK_PROBE_TIMEOUT_MS 1000
#define BK_SINKS_CHANNEL "batchkit_sinks"

PG_FUNCTION_INFO_V1(batchkit_create_sink);
PG_FUNCTION_INFO_V1(batchkit_alter_sink);
PG_FUNCTION_INFO_V1(batchkit_drop_sink);
PG_FUNCTION_INFO_V1(batchkit_pause_sink);
PG_FUNCTION_INFO_V1(batchkit_resume_sink);
PG_FUNCTION_INFO_V1(batchkit_sink_config);

typedef struct BkAsOwner
{
	Oid         save_userid;
	int         save_sec_context;
} BkAsOwner;

/* ---------------------------------------------------------------- arguments */

static char *
bk_arg_cstring(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be null", argname)));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

static Jsonb *
bk_arg_jsonb(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	Jsonb      *jb;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be null", argname),
				 errhint("Pass '{}' for no options.")));
	jb = PG_GETARG_JSONB_P(argno);
	bk_jsonb_require_object(jb, argname);
	return jb;
}

/* ---------------------------------------------------------------- privileges */

static void
bk_require_sink_admin(Oid caller, const char *func)
{
	Oid         admin;

	if (superuser_arg(caller))
		return;
	admin = get_role_oid("batchkit_admin", true);
	if (OidIsValid(admin) && is_member_of_role(caller, admin))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to %s: only superusers and members of batchkit_admin "
					"manage sinks", func),
			 errdetail("The calling role is \"%s\".", GetUserNameFromId(caller, false)),
			 errhint("A superuser can run: GRANT batchkit_admin TO %s;",
					 quote_identifier(GetUserNameFromId(caller, false)))));
}

/*
 * Setting these librdkafka properties makes the worker read a server file,
 * run a program or load a library as the server's OS user: require the
 * Postgres role that already allows that, so batchkit_admin is no way around it.
 */
static void
bk_check_option_privileges(Oid caller, const char *kind, List *keys)
{
	ListCell   *lc;

	if (superuser_arg(caller))
		return;
	foreach(lc, keys)
	{
		const char *key = lfirst(lc);

		switch (bk_sink_option_privilege(kind, key))
		{
			case BK_PRIV_NONE:
				break;
			case BK_PRIV_READ_SERVER_FILES:
				if (!has_privs_of_role(caller, ROLE_PG_READ_SERVER_FILES))
					ereport(ERROR,
							(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
							 errmsg("permission denied to set option \"%s\"", key),
							 errdetail("It makes the server read a file; only superusers and "
									   "roles with privileges of pg_read_server_files may "
									   "set it.")));
				break;
			case BK_PRIV_EXECUTE_SERVER_PROGRAM:
				if (!has_privs_of_role(caller, ROLE_PG_EXECUTE_SERVER_PROGRAM))
					ereport(ERROR,
							(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
							 errmsg("permission denied to set option \"%s\"", key),
							 errdetail("It makes the server run a program; only superusers "
									   "and roles with privileges of "
									   "pg_execute_server_program may set it.")));
				break;
			case BK_PRIV_SUPERUSER:
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("permission denied to set option \"%s\"", key),
						 errdetail("It makes the server load code or write files; only "
								   "superusers may set it.")));
				break;
		}
	}
}

/* Act as the owner of batchkit.sink (the extension's installer) from here on. */
static void
bk_become_catalog_owner(BkAsOwner *s)
{
	Oid         nsp = get_namespace_oid("batchkit", false);
	Oid         relid = get_relname_relid("sink", nsp);
	HeapTuple   tup;
	Oid         owner;

	if (!OidIsValid(relid))
		elog(ERROR, "batchkit.sink is missing");
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&s->save_userid, &s->save_sec_context);
	SetUserIdAndSecContext(owner, s->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

static void
bk_restore_caller(BkAsOwner *s)
{
	SetUserIdAndSecContext(s->save_userid, s->save_sec_context);
}

/* ---------------------------------------------------------------- SPI helpers */

static int
bk_spi_exec(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	int         rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "batchkit: SPI failed (%s) running: %s", SPI_result_code_string(rc), sql);
	return rc;
}

/* The id of sink `name`, its row locked FOR UPDATE; 42704 when there is none. */
static int32
bk_lock_sink(const char *name, char **kind)
{
	Oid         types[1] = {TEXTOID};
	Datum       values[1] = {CStringGetTextDatum(name)};
	bool        isnull;
	int32       id;

	bk_spi_exec("SELECT sink_id, kind FROM batchkit.sink WHERE name = $1 FOR UPDATE",
				1, types, values, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("sink \"%s\" does not exist", name)));
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (kind)
		*kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return id;
}

static void
bk_store_secrets(int32 sink_id, Jsonb *secrets)
{
	Oid         types[2] = {INT4OID, JSONBOID};
	Datum       values[2] = {Int32GetDatum(sink_id), (Datum) 0};

	bk_spi_exec("DELETE FROM batchkit.sink_secret WHERE sink_id = $1",
				1, types, values, SPI_OK_DELETE);
	if (secrets == NULL)
		return;
	values[1] = JsonbPGetDatum(secrets);
	bk_spi_exec("INSERT INTO batchkit.sink_secret (sink_id, options) VALUES ($1, $2)",
				2, types, values, SPI_OK_INSERT);
}

/* ---------------------------------------------------------------- after a change */

static void
bk_notify_workers(const char *name)
{
	Async_Notify(BK_SINKS_CHANNEL, name);
	/* every backend drops its cached sink settings (max_queue, on_full) at commit */
	bk_invalidate_catalog_cache();
	/* and the worker reloads at once (writers do not wake it for a paused sink) */
	bk_wake_worker_at_commit();
}

/* A sink whose server cannot be reached is kept: it may simply be down. */
static void
bk_probe_and_warn(const char *name, const char *verb, const BkSinkOptions *o)
{
	bk_status   st;
	bk_code     rc;

	if (!o->has_endpoint)
		return;
	rc = bk_net_probe(o->ep_host, o->ep_port, o->ep_unix_path, BK_SINK_PROBE_TIMEOUT_MS, &st);
	CHECK_FOR_INTERRUPTS();
	if (rc == BK_OK)
		return;
	ereport(WARNING,
			(errmsg("sink \"%s\" %s, but its %s %s cannot be reached: %s",
					name, verb, o->ep_what, o->ep_display, st.message),
			 errhint("batchkit keeps the rows queued and delivers them once the server "
					 "answers; check the address if it should be up now.")));
}

/* ---------------------------------------------------------------- create_sink */

Datum
batchkit_create_sink(PG_FUNCTION_ARGS)
{
	Oid         caller = GetUserId();
	char       *name = bk_arg_cstring(fcinfo, 0, "sink name");
	char       *kind = bk_arg_cstring(fcinfo, 1, "sink kind");
	Jsonb      *options = bk_arg_jsonb(fcinfo, 2, "sink options");
	BkSinkOptions *validated;
	Jsonb      *public_opts;
	Jsonb      *secrets;
	bk_status   st;
	BkAsOwner   as;
	int32       sink_id;
	bool        isnull;

	bk_require_sink_admin(caller, "create sinks");
	if (bk_sink_name_check(name, &st) != BK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", st.message),
				 errdetail("Sink names appear in metric labels and key templates.")));
	/* before validating: validation hands values to librdkafka */
	bk_check_option_privileges(caller, kind, bk_jsonb_object_keys(options, true));
	validated = bk_sink_options_validate(kind, options);
	public_opts = bk_sink_options_public(validated);
	secrets = bk_sink_options_secrets(validated);

	bk_become_catalog_owner(&as);
	SPI_connect();
	{
		Oid         types[3] = {TEXTOID, TEXTOID, JSONBOID};
		Datum       values[3] = {CStringGetTextDatum(name), CStringGetTextDatum(kind),
								 JsonbPGetDatum(public_opts)};

		bk_spi_exec("INSERT INTO batchkit.sink (name, kind, options) VALUES ($1, $2, $3) "
					"ON CONFLICT (name) DO NOTHING RETURNING sink_id",
					3, types, values, SPI_OK_INSERT_RETURNING);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("sink \"%s\" already exists", name),
					 errhint("Use batchkit.alter_sink to change its options.")));
		sink_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											  &isnull));
		bk_store_secrets(sink_id, secrets);
	}
	SPI_finish();
	bk_restore_caller(&as);

	bk_notify_workers(name);
	bk_probe_and_warn(name, "created", validated);
	PG_RETURN_INT32(sink_id);
}

/* ---------------------------------------------------------------- alter_sink */

/*
 * The new option set: stored options (secrets overlaid in the clear) with the
 * patch merged in, a JSON null removing an option. A patch value equal to what
 * the sinks view shows for a secret ("***", a masked URL) keeps the secret, so
 * options copied from the view can be passed back without destroying it.
 * *changed receives the keys the patch really sets to a new value.
 */
static Jsonb *
bk_merge_options(int32 sink_id, Jsonb *patch, List **changed, MemoryContext cxt)
{
	Oid         types[2] = {INT4OID, JSONBOID};
	Datum       values[2] = {Int32GetDatum(sink_id), JsonbPGetDatum(patch)};
	bool        isnull;
	Datum       merged;
	Datum       keys;
	MemoryContext old;
	Jsonb      *result;
	ArrayType  *arr;
	Datum      *elems;
	int         nelems;

	bk_spi_exec("WITH cur AS ("
				"  SELECT s.options AS shown, COALESCE(x.options, '{}') AS secret"
				"    FROM batchkit.sink s LEFT JOIN batchkit.sink_secret x"
				"      ON x.sink_id = s.sink_id WHERE s.sink_id = $1),"
				" p AS ("
				"  SELECT e.key, e.value FROM cur, pg_catalog.jsonb_each($2) e"
				"   WHERE NOT COALESCE(cur.secret ? e.key AND cur.shown -> e.key = e.value, false))"
				" SELECT pg_catalog.jsonb_strip_nulls(cur.shown || cur.secret ||"
				"          COALESCE((SELECT pg_catalog.jsonb_object_agg(p.key, p.value) FROM p),"
				"                   '{}')),"
				"        ARRAY(SELECT p.key FROM p WHERE p.value <> 'null'::jsonb AND"
				"              (cur.shown || cur.secret) -> p.key IS DISTINCT FROM p.value)"
				"   FROM cur",
				2, types, values, SPI_OK_SELECT);
	if (SPI_processed != 1)
		elog(ERROR, "batchkit: sink %d vanished while locked", sink_id);
	merged = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	keys = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

	old = MemoryContextSwitchTo(cxt);
	result = DatumGetJsonbPCopy(merged);
	*changed = NIL;
	arr = DatumGetArrayTypeP(keys);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &nelems);
	for (int i = 0; i < nelems; i++)
		*changed = lappend(*changed, TextDatumGetCString(elems[i]));
	MemoryContextSwitchTo(old);
	return result;
}

Datum
batchkit_alter_sink(PG_FUNCTION_ARGS)
{
	Oid         caller = GetUserId();
	char       *name = bk_arg_cstring(fcinfo, 0, "sink name");
	Jsonb      *patch = bk_arg_jsonb(fcinfo, 1, "sink options");
	MemoryContext caller_cxt = CurrentMemoryContext;
	BkSinkOptions *validated;
	BkAsOwner   as;
	char       *kind;
	int32       sink_id;
	Jsonb      *merged;
	List       *changed;

	bk_require_sink_admin(caller, "alter sinks");

	bk_become_catalog_owner(&as);
	SPI_connect();
	sink_id = bk_lock_sink(name, &kind);
	kind = MemoryContextStrdup(caller_cxt, kind);
	merged = bk_merge_options(sink_id, patch, &changed, caller_cxt);
	/* before validating: validation hands values to librdkafka */
	bk_check_option_privileges(caller, kind, changed);
	{
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);

		validated = bk_sink_options_validate(kind, merged);
		MemoryContextSwitchTo(old);
	}
	{
		Oid         types[2] = {INT4OID, JSONBOID};
		Datum       values[2] = {Int32GetDatum(sink_id),
								 JsonbPGetDatum(bk_sink_options_public(validated))};

		bk_spi_exec("UPDATE batchkit.sink SET options = $2, updated_at = pg_catalog.now() "
					"WHERE sink_id = $1", 2, types, values, SPI_OK_UPDATE);
		bk_store_secrets(sink_id, bk_sink_options_secrets(validated));
	}
	SPI_finish();
	bk_restore_caller(&as);

	bk_notify_workers(name);
	bk_probe_and_warn(name, "altered", validated);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------- drop_sink */

typedef struct BkCaptureTrigger
{
	char       *table;          /* schema-qualified, quoted */
	char       *trigger;        /* quoted */
} BkCaptureTrigger;

Datum
batchkit_drop_sink(PG_FUNCTION_ARGS)
{
	Oid         caller = GetUserId();
	char       *name = bk_arg_cstring(fcinfo, 0, "sink name");
	bool        force;
	BkAsOwner   as;
	int32       sink_id;
	Oid         types[1] = {INT4OID};
	Datum       values[1];
	bool        isnull;
	bool        queued;
	int64       ncaptures;
	char       *tables;
	List       *triggers = NIL;
	ListCell   *lc;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("force must not be null")));
	force = PG_GETARG_BOOL(1);
	bk_require_sink_admin(caller, "drop sinks");

	bk_become_catalog_owner(&as);
	SPI_connect();
	sink_id = bk_lock_sink(name, NULL);
	values[0] = Int32GetDatum(sink_id);

	bk_spi_exec("SELECT EXISTS (SELECT 1 FROM batchkit.queue WHERE sink_id = $1)"
				"    OR EXISTS (SELECT 1 FROM batchkit.inflight WHERE sink_id = $1),"
				"       (SELECT pg_catalog.count(*) FROM batchkit.capture WHERE sink_id = $1),"
				"       (SELECT pg_catalog.string_agg(source::text, ', ' ORDER BY source::text)"
				"          FROM batchkit.capture WHERE sink_id = $1)",
				1, types, values, SPI_OK_SELECT);
	queued = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	ncaptures = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
											&isnull));
	tables = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);

	if ((queued || ncaptures > 0) && !force)
	{
		StringInfoData why;

		initStringInfo(&why);
		if (queued)
			appendStringInfoString(&why, "it has undelivered rows in the queue");
		if (queued && ncaptures > 0)
			appendStringInfoString(&why, " and ");
		if (ncaptures > 0)
			appendStringInfo(&why, "%lld %s captured into it (%s)", (long long) ncaptures,
							 ncaptures == 1 ? "table is" : "tables are", tables);
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop sink \"%s\": %s", name, why.data),
				 errhint("Let it drain (batchkit.flush) and uncapture the tables, or call "
						 "batchkit.drop_sink('%s', force => true) to discard its queue and "
						 "remove its captures.", name)));
	}

	if (force)
	{
		uint64      i;

		/* The capture triggers that exist, on tables that still exist. */
		bk_spi_exec("SELECT n.nspname, c.relname, t.tgname"
					"  FROM batchkit.capture cap"
					"  JOIN pg_catalog.pg_trigger t ON t.tgrelid = cap.source::oid"
					"  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
					"  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
					" WHERE cap.sink_id = $1 AND t.tgname = ANY (ARRAY["
					"       'batchkit_capture_' || cap.capture_id || '_ins',"
					"       'batchkit_capture_' || cap.capture_id || '_upd',"
					"       'batchkit_capture_' || cap.capture_id || '_del',"
					"       'batchkit_capture_' || cap.capture_id || '_trunc'])"
					" ORDER BY 1, 2, 3",
					1, types, values, SPI_OK_SELECT);
		for (i = 0; i < SPI_processed; i++)
		{
			BkCaptureTrigger *t = palloc(sizeof(BkCaptureTrigger));
			HeapTuple   tup = SPI_tuptable->vals[i];
			TupleDesc   desc = SPI_tuptable->tupdesc;

			t->table = quote_qualified_identifier(SPI_getvalue(tup, desc, 1),
												  SPI_getvalue(tup, desc, 2));
			t->trigger = pstrdup(quote_identifier(SPI_getvalue(tup, desc, 3)));
			triggers = lappend(triggers, t);
		}
		foreach(lc, triggers)
		{
			BkCaptureTrigger *t = lfirst(lc);
			char       *sql = psprintf("DROP TRIGGER %s ON %s", t->trigger, t->table);

			bk_spi_exec(sql, 0, NULL, NULL, SPI_OK_UTILITY);
		}
		bk_spi_exec("DELETE FROM batchkit.queue WHERE sink_id = $1", 1, types, values,
					SPI_OK_DELETE);
		bk_spi_exec("DELETE FROM batchkit.inflight WHERE sink_id = $1", 1, types, values,
					SPI_OK_DELETE);
		bk_spi_exec("DELETE FROM batchkit.capture WHERE sink_id = $1", 1, types, values,
					SPI_OK_DELETE);
	}
	/* sink_secret and sink_progress go with it (ON DELETE CASCADE) */
	bk_spi_exec("DELETE FROM batchkit.sink WHERE sink_id = $1", 1, types, values, SPI_OK_DELETE);

	if (force && (queued || ncaptures > 0))
		ereport(NOTICE,
				(errmsg("sink \"%s\" dropped%s%s%s%s", name,
						queued ? "; its undelivered rows were discarded" : "",
						ncaptures > 0 ? "; captures removed from " : "",
						ncaptures > 0 ? tables : "",
						list_length(triggers) > 0 ? " (triggers dropped)" : "")));
	SPI_finish();
	bk_restore_caller(&as);

	bk_notify_workers(name);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------- pause / resume */

static void
bk_set_paused(FunctionCallInfo fcinfo, bool paused)
{
	Oid         caller = GetUserId();
	char       *name = bk_arg_cstring(fcinfo, 0, "sink name");
	BkAsOwner   as;
	Oid         types[2] = {TEXTOID, BOOLOID};
	Datum       values[2] = {CStringGetTextDatum(name), BoolGetDatum(paused)};

	bk_require_sink_admin(caller, paused ? "pause sinks" : "resume sinks");
	bk_become_catalog_owner(&as);
	SPI_connect();
	bk_spi_exec("UPDATE batchkit.sink SET paused = $2, updated_at = pg_catalog.now() "
				"WHERE name = $1", 2, types, values, SPI_OK_UPDATE);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("sink \"%s\" does not exist", name)));
	SPI_finish();
	bk_restore_caller(&as);
	bk_notify_workers(name);
}

Datum
batchkit_pause_sink(PG_FUNCTION_ARGS)
{
	bk_set_paused(fcinfo, true);
	PG_RETURN_VOID();
}

Datum
batchkit_resume_sink(PG_FUNCTION_ARGS)
{
	bk_set_paused(fcinfo, false);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------- _sink_config */

BkSinkOptions *
bk_sink_options_load(int32 sink_id, char **kind)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	Oid         types[1] = {INT4OID};
	Datum       values[1] = {Int32GetDatum(sink_id)};
	bool        isnull;
	Jsonb      *options;
	BkSinkOptions *result;

	SPI_connect();
	bk_spi_exec("SELECT s.kind, s.options || COALESCE(x.options, '{}')"
				"  FROM batchkit.sink s LEFT JOIN batchkit.sink_secret x"
				"    ON x.sink_id = s.sink_id WHERE s.sink_id = $1",
				1, types, values, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("sink with id %d does not exist", sink_id)));
	*kind = MemoryContextStrdup(caller_cxt,
								SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	options = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
										   &isnull));
	{
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);

		result = bk_sink_options_validate(*kind, options);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	return result;
}

/* One row per effective option: key, value (secrets in the clear), flags. */
Datum
batchkit_sink_config(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32       sink_id = PG_GETARG_INT32(0);
	BkSinkOptions *o;
	char       *kind;

	/* REVOKEd from PUBLIC, and it reads sink_secret as the caller; say why clearly. */
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for batchkit._sink_config: only superusers may "
						"read sink secrets")));
	InitMaterializedSRF(fcinfo, 0);
	o = bk_sink_options_load(sink_id, &kind);
	for (int i = 0; i < o->n; i++)
	{
		Datum       v[5];
		bool        nulls[5] = {0};

		v[0] = CStringGetTextDatum(o->opts[i].key);
		v[1] = CStringGetTextDatum(o->opts[i].value);
		v[2] = BoolGetDatum(o->opts[i].secret);
		v[3] = BoolGetDatum(o->opts[i].is_default);
		v[4] = BoolGetDatum(o->opts[i].librdkafka);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}

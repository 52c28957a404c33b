/*
 * upsert_exec.c — run batch_upsert's generated statements and count what they
 * inserted and updated.
 *
 * The statements run through the executor directly (as SPI does: parse,
 * analyse with the call's query environment, plan, ExecutorStart/Run/Finish/
 * End), because the counts live in the ModifyTable node: MERGE keeps
 * mt_merge_updated, INSERT ... ON CONFLICT counts its conflicting rows in the
 * node's instrumentation (ntuples2). SPI only returns the total.
 *
 * Snapshots: each statement gets a fresh snapshot in READ COMMITTED (like a
 * statement of a VOLATILE function) and a command counter increment before and
 * after, so later statements see earlier ones' rows.
 *
 * Lock order: the source rows are sorted by key, and MERGE is planned without
 * hash joins so it visits them in that order (ON CONFLICT scans the source in
 * order anyway): every session locks keys in ascending order, so concurrent
 * calls on overlapping keys do not deadlock each other.
 *
 * Concurrency (bk_exec_merge_or_fallback): MERGE cannot see rows another
 * session inserts after its snapshot, so it can fail with a unique violation,
 * and two sessions can deadlock. MERGE runs in a subtransaction; on either
 * error the subtransaction is rolled back (nothing of it remains) and the same
 * rows go through INSERT ... ON CONFLICT, which waits for the other session
 * and then updates or inserts: no unique violation reaches the caller and no
 * update is lost. Any other error propagates unchanged.
 *
 * Lifetime: the query environment and the tuplestores it names belong to the
 * caller, created before the subtransaction (so temp files a tuplestore
 * spilled to belong to the outer resource owner and survive a rollback).
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/executor.h"
#include "executor/instrument.h"
#include "nodes/execnodes.h"
#include "parser/parser.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "upsert/upsert.h"

void
bk_exec_statement(const char *sql, QueryEnvironment *qenv, bk_upsert_sql_kind kind,
				  BkStmtResult *res)
{
	List	   *raw;
	List	   *queries;
	List	   *plans;
	PlannedStmt *stmt;
	QueryDesc  *qd;
	uint64		processed;
	uint64		updated = 0;

	raw = raw_parser(sql, RAW_PARSE_DEFAULT);
	if (list_length(raw) != 1)
		elog(ERROR, "batchkit: expected one generated statement");
	queries = pg_analyze_and_rewrite_fixedparams(linitial_node(RawStmt, raw), sql,
												 NULL, 0, qenv);
	if (list_length(queries) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("batch_upsert does not support tables with rules")));
	if (kind == BK_UPSERT_SQL_MERGE)
	{
		/*
		 * Keep MERGE processing the source in its (ascending key) order: a
		 * hash join could drive it by the target's physical order instead,
		 * and sessions locking overlapping keys in different orders deadlock.
		 * Merge and nested-loop joins both follow key order.
		 */
		int			nest = NewGUCNestLevel();

		(void) set_config_option("enable_hashjoin", "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		plans = pg_plan_queries(queries, sql, 0, NULL);
		AtEOXact_GUC(true, nest);
	}
	else
		plans = pg_plan_queries(queries, sql, 0, NULL);
	stmt = linitial_node(PlannedStmt, plans);

	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();

	qd = CreateQueryDesc(stmt, sql, GetActiveSnapshot(), InvalidSnapshot, None_Receiver,
						 NULL, qenv, kind == BK_UPSERT_SQL_ON_CONFLICT ? INSTRUMENT_ROWS : 0);
	ExecutorStart(qd, 0);
	ExecutorRun(qd, ForwardScanDirection, 0, true);
	processed = qd->estate->es_processed;
	if (IsA(qd->planstate, ModifyTableState))
	{
		ModifyTableState *mts = (ModifyTableState *) qd->planstate;

		if (kind == BK_UPSERT_SQL_MERGE)
			updated = (uint64) mts->mt_merge_updated;
		else if (mts->ps.instrument &&
				 ((ModifyTable *) mts->ps.plan)->onConflictAction == ONCONFLICT_UPDATE)
			updated = (uint64) mts->ps.instrument->ntuples2;
	}
	else
		elog(ERROR, "batchkit: unexpected plan for a generated statement");
	ExecutorFinish(qd);
	ExecutorEnd(qd);
	FreeQueryDesc(qd);
	PopActiveSnapshot();
	CommandCounterIncrement();

	if (updated > processed)
		updated = processed;
	res->updated = updated;
	res->inserted = processed - updated;
}

/*
 * MERGE in a subtransaction; on a unique violation or deadlock, roll it back
 * and run the ON CONFLICT statement instead. Returns true when it fell back.
 */
bool
bk_exec_merge_or_fallback(const char *merge_sql, const char *fallback_sql,
						  QueryEnvironment *qenv, BkStmtResult *res)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool raced = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		bk_exec_statement(merge_sql, qenv, BK_UPSERT_SQL_MERGE, res);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION &&
			edata->sqlerrcode != ERRCODE_T_R_DEADLOCK_DETECTED)
			ReThrowError(edata);
		FreeErrorData(edata);
		raced = true;
	}
	PG_END_TRY();

	if (raced)
		bk_exec_statement(fallback_sql, qenv, BK_UPSERT_SQL_ON_CONFLICT, res);
	return raced;
}

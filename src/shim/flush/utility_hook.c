/*
 * utility_hook.c — step out of the way of commands that need a database to
 * have no connections.
 *
 * A flush worker stays connected to its database, which would make DROP
 * DATABASE (even WITH (FORCE), which does not terminate background workers),
 * ALTER DATABASE ... RENAME / SET TABLESPACE and CREATE DATABASE ... TEMPLATE
 * fail with "database is being accessed by other users". Before such a
 * command runs, this hook asks the database's worker to exit, waits for it
 * (up to 10 s), and tells the launcher not to start it again for a while
 * (bk_shared->evicted_*). The worker resumes on the launcher's next round if
 * the database still exists.
 *
 * DROP EXTENSION batchkit and ALTER EXTENSION batchkit (UPDATE) take exclusive
 * locks on the queue and the catalog, in an order the worker's transactions do
 * not follow: with the worker at work they could deadlock with it (seen:
 * DROP EXTENSION aborted by the deadlock detector). The worker of the current
 * database is asked to leave first in the same way; after an ALTER (or a
 * failed DROP) the launcher may start it again at once (it waits for the
 * command's locks, so it sees the committed result).
 */
#include "postgres.h"

#include <signal.h>

#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/timestamp.h"

#include "shmem/shmem.h"
#include "metrics/metrics.h"
#include "flush/flush.h"

static ProcessUtility_hook_type prev_utility_hook = NULL;

static void
evict_worker(const char *dbname)
{
	Oid			dboid;
	int			pid = 0;

	if (bk_shared == NULL || dbname == NULL)
		return;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid))
		return;
	LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
	bk_shared->evicted_dboid = dboid;
	bk_shared->evicted_at = GetCurrentTimestamp();
	for (int i = 1; i <= bk_shared->max_workers; i++)
		if (bk_shared->slots[i].in_use && bk_shared->slots[i].dboid == dboid)
			pid = bk_shared->slots[i].pid;
	LWLockRelease(bk_shared->lock);
	if (pid == 0)
		return;
	kill(pid, SIGTERM);
	for (int i = 0; i < 1000; i++)
	{
		bool		gone = true;

		LWLockAcquire(bk_shared->lock, LW_SHARED);
		for (int j = 1; j <= bk_shared->max_workers; j++)
			if (bk_shared->slots[j].in_use && bk_shared->slots[j].pid == pid)
				gone = false;
		LWLockRelease(bk_shared->lock);
		if (gone)
			return;
		pg_usleep(10000);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Is this DROP EXTENSION / ALTER EXTENSION about batchkit? */
static bool
is_batchkit_extension_command(Node *n)
{
	if (IsA(n, DropStmt) && ((DropStmt *) n)->removeType == OBJECT_EXTENSION)
	{
		ListCell   *lc;

		foreach(lc, ((DropStmt *) n)->objects)
			if (strcmp(strVal(lfirst(lc)), "batchkit") == 0)
				return true;
	}
	else if (IsA(n, AlterExtensionStmt))
		return strcmp(((AlterExtensionStmt *) n)->extname, "batchkit") == 0;
	return false;
}

/* Let the launcher start the database's worker again without waiting out the eviction. */
static void
end_eviction(Oid dboid)
{
	if (bk_shared == NULL)
		return;
	LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
	if (bk_shared->evicted_dboid == dboid)
		bk_shared->evicted_dboid = InvalidOid;
	LWLockRelease(bk_shared->lock);
	bk_wake_launcher();
}

static void
batchkit_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				 ProcessUtilityContext context, ParamListInfo params,
				 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *n = pstmt->utilityStmt;
	Oid			dropped = InvalidOid;

	if (IsA(n, DropdbStmt))
	{
		evict_worker(((DropdbStmt *) n)->dbname);
		dropped = get_database_oid(((DropdbStmt *) n)->dbname, true);
	}
	else if (IsA(n, RenameStmt) && ((RenameStmt *) n)->renameType == OBJECT_DATABASE)
		evict_worker(((RenameStmt *) n)->subname);
	else if (IsA(n, AlterDatabaseStmt))
		evict_worker(((AlterDatabaseStmt *) n)->dbname);
	else if (IsA(n, CreatedbStmt))
	{
		ListCell   *lc;

		foreach(lc, ((CreatedbStmt *) n)->options)
		{
			DefElem    *d = lfirst_node(DefElem, lc);

			if (strcmp(d->defname, "template") == 0 && d->arg)
				evict_worker(defGetString(d));
		}
	}

	if (is_batchkit_extension_command(n))
	{
		evict_worker(get_database_name(MyDatabaseId));
		PG_TRY();
		{
			if (prev_utility_hook)
				prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								  dest, qc);
			else
				standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
										queryEnv, dest, qc);
		}
		PG_CATCH();
		{
			end_eviction(MyDatabaseId);
			PG_RE_THROW();
		}
		PG_END_TRY();
		/* after a DROP there is nothing to deliver: the eviction just runs out */
		if (!IsA(n, DropStmt))
			end_eviction(MyDatabaseId);
		return;
	}

	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
	/* the database is gone: free its sinks' shared slots (and saved statistics) */
	if (OidIsValid(dropped))
		bk_metrics_forget_database(dropped);
}

void
bk_install_utility_hook(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = batchkit_utility;
}

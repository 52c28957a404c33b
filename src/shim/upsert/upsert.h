/*
 * upsert.h — declarations shared by the batch_upsert files of the shim:
 *   upsert.c        SQL entry points and the call's orchestration
 *   upsert_input.c  reading jsonb / composite-array input into typed values
 *   upsert_exec.c   running the generated statements (MERGE, ON CONFLICT)
 *   upsert_stats.c  per-target statistics in shared memory
 *
 * Lifetime: everything of one call is palloc'd in the call's memory context
 * (a child of the function's context); per-chunk data in a context reset after
 * each chunk. No C++ object is alive while any of this can ereport.
 */
#ifndef BATCHKIT_SHIM_UPSERT_H
#define BATCHKIT_SHIM_UPSERT_H

#include "postgres.h"

#include "access/tupdesc.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "utils/queryenvironment.h"
#include "utils/relcache.h"
#include "utils/sortsupport.h"

#include "batchkit/upsert.h"

/* How one value of the input becomes a value of a target column. */
typedef struct BkColumnConv
{
	Oid			typid;
	int32		typmod;
	Oid			typioparam;
	FmgrInfo	input;			/* the type's input function */
	bool		is_domain;
	char		kind;			/* BK_CONV_*: fast paths for common types */
} BkColumnConv;

#define BK_CONV_GENERIC 'g'		/* the type's input function on the text */
#define BK_CONV_TEXT 't'		/* text, or varchar without typmod */
#define BK_CONV_INT8 '8'
#define BK_CONV_INT4 '4'
#define BK_CONV_INT2 '2'
#define BK_CONV_NUMERIC 'n'		/* numeric without typmod */
#define BK_CONV_BOOL 'b'
#define BK_CONV_JSONB 'J'
#define BK_CONV_JSON 'j'

/* The target table as the call sees it. */
typedef struct BkTarget
{
	Relation	rel;
	Oid			relid;
	char	   *schema;
	char	   *name;
	int			ncols;			/* live columns */
	AttrNumber *attnums;
	char	  **colnames;
	int		   *colflags;		/* BK_UPSERT_COL_* */
	Oid		   *typids;
	int32	   *typmods;
	Oid		   *collations;
	BkColumnConv *conv;			/* filled lazily for input columns */
	int			npk;
	int		   *pk;
	int			nunique;
	int		   *unique_ncols;
	int		  **unique_cols;
	Oid		   *unique_oids;
} BkTarget;

/*
 * Where the conversion of the input currently is, so that a type error can
 * name the 1-based row and the column (see bk_upsert_rethrow_at_position).
 */
typedef struct BkInputPos
{
	int64		row;			/* 0-based; -1 when not converting */
	const char *column;
} BkInputPos;

extern BkInputPos bk_input_pos;

/*
 * An input source. Rows are addressed by their 0-based position in the input.
 * `present` marks, per target column, whether a row gives a value for it (JSON
 * objects may omit keys; composite rows give every mapped attribute).
 */
typedef struct BkInput BkInput;
struct BkInput
{
	int64		nrows;
	/* Pass 1: mark the union of input columns in t->colflags; per row a signature. */
	void		(*scan)(BkInput *in, BkTarget *t, int32 *sig_of_row);
	/* The present flags of a signature (t->ncols bools). */
	const bool *(*signature)(BkInput *in, int32 sig);
	int32		nsignatures;
	/* Values of `ncols` columns of row `row` (into the current memory context). */
	void		(*values)(BkInput *in, BkTarget *t, int64 row, const int *cols, int ncols,
						  Datum *values, bool *nulls);
	void	   *state;
};

/* upsert_input.c */
extern void bk_input_init_jsonb(BkInput *in, Datum rows);
extern void bk_input_init_array(BkInput *in, Datum rows, BkTarget *t);
extern void bk_conv_prepare(BkTarget *t, int col);
extern void bk_upsert_rethrow_at_position(void) pg_attribute_noreturn();

/* upsert_exec.c */
typedef struct BkStmtResult
{
	uint64		inserted;
	uint64		updated;
} BkStmtResult;

extern void bk_exec_statement(const char *sql, QueryEnvironment *qenv, bk_upsert_sql_kind kind,
							  BkStmtResult *res);
extern bool bk_exec_merge_or_fallback(const char *merge_sql, const char *fallback_sql,
									  QueryEnvironment *qenv, BkStmtResult *res);

/* upsert_stats.c: per-target batch_upsert statistics (own shmem hooks) */
extern void bk_upsert_stats_install_hooks(void);
extern void bk_upsert_stats_record(Oid relid, uint64 rows_in, uint64 inserted,
								   uint64 updated, double elapsed_ms, bool raced);

#endif							/* BATCHKIT_SHIM_UPSERT_H */

/*
 * batchkit/upsert.h — the Postgres-free half of batchkit.batch_upsert.
 *
 * The shim (src/shim/upsert/upsert*.c) reads the catalogs and the input; the core
 * decides which columns are conflict, insert and update columns (validating the
 * caller's options with the messages users see) and writes the SQL statements
 * the shim executes. Every identifier the core writes is double-quoted, so any
 * name works and nothing in a name can inject SQL; values never appear in SQL.
 *
 * Memory: the caller owns every buffer. Functions that produce text write into
 * a caller-provided buffer and return the length they need (snprintf style).
 */
#ifndef BATCHKIT_UPSERT_H
#define BATCHKIT_UPSERT_H

#include <stddef.h>
#include <stdint.h>

#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What kind of user error a failed plan is: the shim maps it to a SQLSTATE. */
typedef enum bk_upsert_error {
    BK_UPSERT_ERR_NONE = 0,
    BK_UPSERT_ERR_UNDEFINED_COLUMN = 1,    /* 42703 */
    BK_UPSERT_ERR_NO_CONFLICT_TARGET = 2,  /* 42P10: no PK / no matching unique index */
    BK_UPSERT_ERR_GENERATED = 3,           /* 428C9: writing a generated/identity column */
    BK_UPSERT_ERR_INVALID_PARAMETER = 4,   /* 22023: bad option value */
    BK_UPSERT_ERR_DUPLICATE_COLUMN = 5     /* 42701 */
} bk_upsert_error;

/* Column properties the shim reads from pg_attribute. */
#define BK_UPSERT_COL_GENERATED 0x01        /* GENERATED ALWAYS AS (...) STORED */
#define BK_UPSERT_COL_IDENTITY_ALWAYS 0x02  /* GENERATED ALWAYS AS IDENTITY */
#define BK_UPSERT_COL_INPUT 0x04            /* present in the input (some row has it) */

typedef struct bk_upsert_table {
    const char *schema;          /* unquoted names */
    const char *name;
    int ncolumns;                /* live (non-dropped) columns, in attnum order */
    const char *const *columns;
    const int *column_flags;     /* BK_UPSERT_COL_* per column */
    int npk;                     /* primary key columns (indexes into columns), 0: none */
    const int *pk;
    int nunique;                 /* usable arbiters: valid, immediate, non-partial unique */
    const int *unique_ncols;     /* indexes on plain columns */
    const int *const *unique_cols;
} bk_upsert_table;

/*
 * The caller's options: names as given (NULL array = "not given", which differs
 * from an empty array). Input columns are the columns flagged BK_UPSERT_COL_INPUT.
 */
typedef struct bk_upsert_options {
    int nconflict;               /* -1: conflict_columns is NULL (use the primary key) */
    const char *const *conflict;
    int nupdate;                 /* -1: update_columns is NULL (every input column) */
    const char *const *update;
} bk_upsert_options;

/* The resolved plan, in caller-provided arrays of table->ncolumns entries each. */
typedef struct bk_upsert_plan {
    int nconflict;
    int *conflict;               /* column indexes, in the order given (or pk order) */
    int nupdate;
    int *update;                 /* column indexes, in table order */
    bk_upsert_error error;       /* set when the call fails with BK_INVALID_ARGUMENT */
    char detail[BK_STATUS_MESSAGE_MAX]; /* optional DETAIL line, "" when none */
} bk_upsert_plan;

/*
 * Validate the options against the table and resolve the conflict and update
 * columns. On a user error returns BK_INVALID_ARGUMENT with st->message the
 * error message and plan->error its kind.
 */
bk_code bk_upsert_resolve(const bk_upsert_table *table, const bk_upsert_options *opts,
                          bk_upsert_plan *plan, bk_status *st);

/* Quote an identifier: always double quotes, embedded quotes doubled. */
size_t bk_upsert_quote_ident(const char *name, char *buf, size_t buflen);

/* Which statement to build. */
typedef enum bk_upsert_sql_kind {
    /* MERGE from a source of unique keys: matched rows updated, others inserted. */
    BK_UPSERT_SQL_MERGE = 0,
    /* INSERT ... SELECT ... ON CONFLICT (keys) DO UPDATE / DO NOTHING: the path
       that is always correct under concurrency, used when MERGE raced. */
    BK_UPSERT_SQL_ON_CONFLICT = 1
} bk_upsert_sql_kind;

/*
 * A statement over a source. The source is either a named relation the shim
 * registered (an ephemeral named relation holding the typed, de-duplicated
 * rows, source_relation NULL) or a staging relation (source_schema +
 * source_relation), which the statement de-duplicates itself: DISTINCT ON the
 * conflict columns, last row in `order_by` order wins.
 */
typedef struct bk_upsert_sql_spec {
    const bk_upsert_table *table;
    const bk_upsert_plan *plan;
    int ncolumns;                   /* the statement's input columns (target column indexes) */
    const int *columns;
    const char *source_name;        /* ENR name (unquoted), when source_relation is NULL */
    const char *source_schema;      /* staging relation, unquoted */
    const char *source_relation;
    const char *const *source_columns; /* staging column name per input column (unquoted) */
    const char *const *key_casts;   /* per conflict column: SQL type name to cast the staging
                                       key to, or NULL when the types already match */
    const char *order_by;           /* staging: column (unquoted) giving input order, or NULL
                                       for physical order (ctid) */
} bk_upsert_sql_spec;

/*
 * Write the statement into buf (NUL-terminated when buflen > 0) and return its
 * length; call with buflen 0 to size. Returns (size_t)-1 with st set on error.
 */
size_t bk_upsert_build_sql(const bk_upsert_sql_spec *spec, bk_upsert_sql_kind kind, char *buf,
                           size_t buflen, bk_status *st);

/*
 * Format a list of names for an error message: "a", "b" and "c" become
 * "\"a\", \"b\", \"c\"" (at most `max` names, then ", ..."). Returns the length needed.
 */
size_t bk_upsert_format_names(const char *const *names, int n, int max, char *buf, size_t buflen);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_UPSERT_H */

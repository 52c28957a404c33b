/*
 * capture/capture.h — what the capture files share: the batchkit.column_list
 * type (column_list.c), which the capture trigger (capture_trigger.c) reads.
 */
#ifndef BATCHKIT_SHIM_CAPTURE_H
#define BATCHKIT_SHIM_CAPTURE_H

#include "postgres.h"

/* batchkit.column_list (column_list.c): columns of one table by attribute number */
typedef struct BkColumnList {
    int32 vl_len_;             /* varlena header */
    Oid relid;
    int32 natts;
    int16 attnums[FLEXIBLE_ARRAY_MEMBER]; /* 0: a column dropped before a restore */
} BkColumnList;

#endif /* BATCHKIT_SHIM_CAPTURE_H */

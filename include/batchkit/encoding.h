/*
 * batchkit/encoding.h — building message payloads and targets on the hot path.
 *
 *   bk_buf       a growable byte buffer owned by the core (malloc/realloc): the
 *                shim may read data/len directly and reset len to 0, but only
 *                bk_buf_free releases it (never pfree).
 *   envelope     the Debezium-like JSON envelope of one change.
 *   template     "{schema}.{table}" / "orders:{id}" topic and key templates,
 *                compiled once per (sink, table), rendered once per row.
 *
 * All functions are noexcept and thread-compatible (no shared state). Appending
 * may move data: keep offsets into a bk_buf, turn them into pointers once the
 * batch is complete.
 */
#ifndef BATCHKIT_ENCODING_H
#define BATCHKIT_ENCODING_H

#include <stddef.h>
#include <stdint.h>

#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bk_buf {
    char *data; /* NULL until the first append */
    size_t len;
    size_t cap;
} bk_buf;

/* clang-format off */
#define BK_BUF_INIT {NULL, 0, 0}
/* clang-format on */

/* Make room for `extra` more bytes after len (data + len .. + extra writable). */
bk_code bk_buf_reserve(bk_buf *buf, size_t extra, bk_status *st);
/* Append n bytes. */
bk_code bk_buf_append(bk_buf *buf, const void *bytes, size_t n, bk_status *st);
/* Release the memory; the buffer is empty and reusable afterwards. */
void bk_buf_free(bk_buf *buf);

/* A borrowed string: ptr == NULL means SQL NULL. */
typedef struct bk_slice {
    const char *ptr;
    size_t len;
} bk_slice;

/* One change, as the shim has it. JSON parts are valid JSON text (Postgres's
 * own rendering) and are copied as is; NULL renders as null. */
typedef struct bk_envelope {
    uint8_t op;      /* bk_op from batchkit/sink.h: insert, update, delete */
    bk_slice table;  /* "schema.name" (escaped as a JSON string) */
    bk_slice key;    /* JSON object of the key columns */
    bk_slice before; /* JSON object or NULL */
    bk_slice after;  /* JSON object or NULL */
    uint64_t txid;
    int64_t seq;
    bk_slice ts; /* commit/capture timestamp text, escaped as a JSON string */
} bk_envelope;

/*
 * Append {"op":"insert","table":"s.t","key":{..},"before":null,"after":{..},
 * "txid":N,"seq":N,"ts":"..."} to *out. On success *offset and *length (either
 * may be NULL) give where it starts and how long it is. Fails only on a bad
 * op (BK_INVALID_ARGUMENT) or out of memory; out is then unchanged.
 */
bk_code bk_envelope_append(bk_buf *out, const bk_envelope *env, size_t *offset, size_t *length,
                           bk_status *st);

/*
 * Templates: literal text with placeholders {schema}, {table}, {sink} (fixed at
 * compile time) and {<column>} for any of the given columns (rendered per row
 * from that column's text value; SQL NULL renders as an empty string). "{{" and
 * "}}" are literal braces. Compiling fails with BK_INVALID_ARGUMENT for an
 * unknown placeholder or an unbalanced brace, naming it.
 */
typedef struct bk_template bk_template;

bk_template *bk_template_compile(const char *text, const char *sink, const char *schema,
                                 const char *table, const char *const *columns, size_t ncolumns,
                                 bk_status *st);
void bk_template_free(bk_template *tpl);

/* 1 when the template uses no column (render it once per table). */
int bk_template_is_static(const bk_template *tpl);

/* Append the rendering to *out; values[i] is the text of columns[i] given to
 * bk_template_compile (nvalues must equal ncolumns). */
bk_code bk_template_render(const bk_template *tpl, const bk_slice *values, size_t nvalues,
                           bk_buf *out, size_t *offset, size_t *length, bk_status *st);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_ENCODING_H */

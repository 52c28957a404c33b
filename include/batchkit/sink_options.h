/*
 * batchkit/sink_options.h — validation and classification of sink options.
 *
 * The shim hands the core a sink's complete option set (create_sink's options,
 * or the stored options with an alter_sink patch merged in) as flat
 * {key, value as text, JSON type} triples. The core checks every option,
 * normalizes its value, says which ones are secret and what users may see of
 * them, adds the defaults, and finds the endpoint to probe. docs/sinks.md lists
 * every option.
 *
 * Memory: the result is an opaque bk_sink_config owned by the core; the caller
 * reads it with the accessors and frees it with bk_sink_config_free. Every
 * string an accessor hands out lives as long as the config. The core keeps no
 * pointer into the caller's input. All functions are noexcept and thread-safe
 * (no shared state; librdkafka's conf parser is used on a private scratch conf).
 */
#ifndef BATCHKIT_SINK_OPTIONS_H
#define BATCHKIT_SINK_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The JSON type of an option value, as the shim found it in the jsonb. */
typedef enum bk_json_type {
    BK_JSON_NULL = 0, /* ignored: a null means "not set" (alter_sink: remove it) */
    BK_JSON_STRING = 1,
    BK_JSON_NUMBER = 2,
    BK_JSON_BOOLEAN = 3,
    BK_JSON_OBJECT = 4,
    BK_JSON_ARRAY = 5
} bk_json_type;

typedef struct bk_sink_option_in {
    const char *key;
    /* string: its content; number: its text; boolean: "true"/"false";
     * object/array: its JSON text; null: may be NULL */
    const char *value;
    bk_json_type type;
} bk_sink_option_in;

/* Who interprets an option. */
typedef enum bk_option_origin {
    BK_OPT_BATCHKIT = 0,  /* batchkit's own (batch_size, topic, url, ...) */
    BK_OPT_LIBRDKAFKA = 1 /* passed to rd_kafka_conf_set as is */
} bk_option_origin;

/*
 * What setting an option may do to the server beyond the network: the shim
 * maps these to Postgres's own roles, so batchkit_admin does not become a way
 * around them.
 */
typedef enum bk_option_privilege {
    BK_PRIV_NONE = 0,
    BK_PRIV_READ_SERVER_FILES = 1,      /* names a file the server reads */
    BK_PRIV_EXECUTE_SERVER_PROGRAM = 2, /* names a program the server runs */
    BK_PRIV_SUPERUSER = 3               /* loads code into the server, or writes files */
} bk_option_privilege;

typedef struct bk_sink_option_out {
    const char *key;
    const char *value; /* normalized, in the clear (secrets included) */
    bk_json_type type; /* BK_JSON_STRING, _NUMBER or _BOOLEAN: how value is stored */
    /* What users may see: value itself, "***", or a Redis URL with its password
     * replaced by "***". A secret's shown value is always a string. */
    const char *shown;
    int secret;     /* 1: value is stored where only superusers read it */
    int is_default; /* 1: not given by the user; filled in from batchkit's defaults */
    bk_option_origin origin;
    bk_option_privilege privilege;
} bk_sink_option_out;

/* Optional second and third lines of an error (Postgres's DETAIL and HINT). */
typedef struct bk_sink_diag {
    char detail[BK_STATUS_MESSAGE_MAX];
    char hint[BK_STATUS_MESSAGE_MAX];
} bk_sink_diag;

/* Where the sink's server is, for the reachability probe. */
typedef struct bk_sink_endpoint {
    const char *what;      /* "Redis server" or "Kafka bootstrap server" */
    const char *host;      /* NULL for a Unix socket */
    int port;              /* 0 for a Unix socket */
    const char *unix_path; /* NULL unless a Unix socket */
    const char *display;   /* e.g. "127.0.0.1:6379" or "unix:/run/redis.sock" */
} bk_sink_endpoint;

typedef struct bk_sink_config bk_sink_config;

/* Sink names: 1..63 bytes of ASCII letters, digits, '_', '-' and '.'. */
#define BK_SINK_NAME_MAX 63
bk_code bk_sink_name_check(const char *name, bk_status *st);

/*
 * Validate a sink's complete option set. kind is "kafka" or "redis". On success
 * *out receives a config (free it with bk_sink_config_free); on failure *out is
 * NULL, st holds the message naming the option and what is allowed, and diag
 * (when not NULL) a detail and a hint, either possibly empty.
 */
bk_code bk_sink_config_validate(const char *kind, const bk_sink_option_in *opts, size_t nopts,
                                bk_sink_config **out, bk_status *st, bk_sink_diag *diag);

/* The options, user-given and defaults, sorted by key. */
size_t bk_sink_config_count(const bk_sink_config *cfg);
/* Fills *out with option i; returns 0 when i is out of range. */
int bk_sink_config_get(const bk_sink_config *cfg, size_t i, bk_sink_option_out *out);
/* The endpoint to probe; returns 0 when there is none. */
int bk_sink_config_endpoint(const bk_sink_config *cfg, bk_sink_endpoint *out);
void bk_sink_config_free(bk_sink_config *cfg);

/*
 * The privilege needed to set option `key` on a sink of `kind` (BK_PRIV_NONE
 * for unknown keys and kinds: validation reports those).
 */
bk_option_privilege bk_sink_option_privilege(const char *kind, const char *key);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_SINK_OPTIONS_H */

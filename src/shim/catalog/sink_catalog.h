/*
 * sink_catalog.h — the sinks catalog, as the rest of the shim sees it.
 *
 * sink_options_json.c turns a jsonb option set into the core's input, runs the
 * core's validation and copies the result into palloc'd memory
 * (BkSinkOptions); sink_catalog.c holds the SQL entry points (create_sink,
 * alter_sink, drop_sink, pause_sink, resume_sink, _sink_config).
 *
 * Storage: batchkit.sink.options holds every option the user set, each
 * secret replaced by what users may see of it ("***", or a Redis URL with its
 * password masked); batchkit.sink_secret.options holds the clear values of the
 * secret ones. Overlaying the second on the first gives the user's option set.
 */
#ifndef BATCHKIT_SINK_CATALOG_H
#define BATCHKIT_SINK_CATALOG_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "batchkit/sink_options.h"

typedef struct BkSinkOpt
{
	char       *key;
	char       *value;          /* in the clear */
	bk_json_type type;          /* of value */
	char       *shown;          /* what users see; a string when secret */
	bool        secret;
	bool        is_default;     /* batchkit's default, not set by the user */
	bool        librdkafka;     /* pass to rd_kafka_conf_set */
	bk_option_privilege privilege;
} BkSinkOpt;

typedef struct BkSinkOptions
{
	int         n;
	BkSinkOpt  *opts;           /* sorted by key */
	bool        has_endpoint;
	char       *ep_what;
	char       *ep_host;        /* NULL for a Unix socket */
	int         ep_port;
	char       *ep_unix_path;   /* NULL unless a Unix socket */
	char       *ep_display;
} BkSinkOptions;

/*
 * Validate a sink's complete option set (a jsonb object; JSON nulls are
 * ignored). Raises ERROR (22023, with the core's detail and hint) when an
 * option is invalid; the result lives in CurrentMemoryContext.
 */
extern BkSinkOptions *bk_sink_options_validate(const char *kind, Jsonb *options);

/* Raises 22023 unless jb is a JSON object; `what` names it in the message. */
extern void bk_jsonb_require_object(Jsonb *jb, const char *what);

/* The keys of a jsonb object whose values are not JSON null. */
extern List *bk_jsonb_object_keys(Jsonb *jb, bool skip_nulls);

/* What batchkit.sink.options stores: user-set options, secrets as shown. */
extern Jsonb *bk_sink_options_public(const BkSinkOptions *o);

/* What batchkit.sink_secret.options stores; NULL when there is no secret. */
extern Jsonb *bk_sink_options_secrets(const BkSinkOptions *o);

/*
 * For the flush worker (runs as a superuser in its database): the effective
 * options of sink_id — defaults plus user options, secrets in the clear —
 * validated again by the core, so a stored option librdkafka no longer takes
 * is reported rather than used. *kind receives "kafka" or "redis". Raises
 * 42704 when the sink does not exist. Uses SPI (connects itself).
 */
extern BkSinkOptions *bk_sink_options_load(int32 sink_id, char **kind);

#endif                          /* BATCHKIT_SINK_CATALOG_H */

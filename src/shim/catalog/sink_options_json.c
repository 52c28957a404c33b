/*
 * sink_options_json.c — between a jsonb option set and the core's validator.
 *
 * Lifetime contract: the core's bk_sink_config is created and freed inside
 * bk_sink_options_validate; everything it says is copied into palloc'd memory
 * under PG_TRY, so an out-of-memory ERROR while copying still frees it, and no
 * ERROR is raised while it is alive otherwise. The core never sees palloc'd
 * memory it could free: it copies its input.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "batchkit/sink_options.h"
#include "catalog/sink_catalog.h"

void
bk_jsonb_require_object(Jsonb *jb, const char *what)
{
	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON object", what),
				 errhint("For example '{\"batch_size\": 1000}'.")));
}

/* One top-level value of a jsonb object as the core's {value text, type}. */
static void
bk_jsonb_value_text(JsonbValue *v, char **text, bk_json_type *type)
{
	switch (v->type)
	{
		case jbvNull:
			*text = NULL;
			*type = BK_JSON_NULL;
			break;
		case jbvString:
			*text = pnstrdup(v->val.string.val, v->val.string.len);
			*type = BK_JSON_STRING;
			break;
		case jbvNumeric:
			*text = DatumGetCString(DirectFunctionCall1(numeric_out,
														NumericGetDatum(v->val.numeric)));
			*type = BK_JSON_NUMBER;
			break;
		case jbvBool:
			*text = pstrdup(v->val.boolean ? "true" : "false");
			*type = BK_JSON_BOOLEAN;
			break;
		case jbvBinary:
			*text = JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
			*type = JsonContainerIsArray(v->val.binary.data) ? BK_JSON_ARRAY : BK_JSON_OBJECT;
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
}

/* Flatten a jsonb object into the core's input array (palloc'd). */
static bk_sink_option_in *
bk_jsonb_to_core(Jsonb *jb, int *n)
{
	bk_sink_option_in *in;
	JsonbIterator *it;
	JsonbValue  v;
	JsonbIteratorToken tok;
	int         count = 0;
	char       *key = NULL;

	bk_jsonb_require_object(jb, "sink options");
	in = palloc0(sizeof(bk_sink_option_in) * (JB_ROOT_COUNT(jb) + 1));
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE)
		{
			char       *text;
			bk_json_type type;

			bk_jsonb_value_text(&v, &text, &type);
			in[count].key = key;
			in[count].value = text;
			in[count].type = type;
			count++;
		}
	}
	*n = count;
	return in;
}

List *
bk_jsonb_object_keys(Jsonb *jb, bool skip_nulls)
{
	List       *keys = NIL;
	bk_sink_option_in *in;
	int         n;

	in = bk_jsonb_to_core(jb, &n);
	for (int i = 0; i < n; i++)
		if (!skip_nulls || in[i].type != BK_JSON_NULL)
			keys = lappend(keys, (char *) in[i].key);
	return keys;
}

static char *
bk_pstrdup_or_null(const char *s)
{
	return s ? pstrdup(s) : NULL;
}

BkSinkOptions *
bk_sink_options_validate(const char *kind, Jsonb *options)
{
	bk_sink_option_in *in;
	int         n;
	bk_sink_config *cfg = NULL;
	bk_status   st;
	bk_sink_diag diag;
	bk_code     rc;
	BkSinkOptions *volatile result = NULL;

	in = bk_jsonb_to_core(options, &n);
	rc = bk_sink_config_validate(kind, in, (size_t) n, &cfg, &st, &diag);
	if (rc != BK_OK)
	{
		/* cfg is NULL on failure: nothing of the core's is alive here. */
		ereport(ERROR,
				(errcode(rc == BK_INVALID_ARGUMENT ? ERRCODE_INVALID_PARAMETER_VALUE :
						 rc == BK_OUT_OF_MEMORY ? ERRCODE_OUT_OF_MEMORY :
						 ERRCODE_INTERNAL_ERROR),
				 errmsg("%s", st.message),
				 diag.detail[0] ? errdetail("%s", diag.detail) : 0,
				 diag.hint[0] ? errhint("%s", diag.hint) : 0));
	}

	PG_TRY();
	{
		BkSinkOptions *r = palloc0(sizeof(BkSinkOptions));
		bk_sink_endpoint ep;

		r->n = (int) bk_sink_config_count(cfg);
		r->opts = palloc0(sizeof(BkSinkOpt) * (r->n + 1));
		for (int i = 0; i < r->n; i++)
		{
			bk_sink_option_out o;

			if (!bk_sink_config_get(cfg, (size_t) i, &o))
				elog(ERROR, "batchkit core lost sink option %d", i);
			r->opts[i].key = pstrdup(o.key);
			r->opts[i].value = pstrdup(o.value);
			r->opts[i].type = o.type;
			r->opts[i].shown = pstrdup(o.shown);
			r->opts[i].secret = o.secret != 0;
			r->opts[i].is_default = o.is_default != 0;
			r->opts[i].librdkafka = o.origin == BK_OPT_LIBRDKAFKA;
			r->opts[i].privilege = o.privilege;
		}
		if (bk_sink_config_endpoint(cfg, &ep))
		{
			r->has_endpoint = true;
			r->ep_what = pstrdup(ep.what);
			r->ep_host = bk_pstrdup_or_null(ep.host);
			r->ep_port = ep.port;
			r->ep_unix_path = bk_pstrdup_or_null(ep.unix_path);
			r->ep_display = pstrdup(ep.display);
		}
		result = r;
	}
	PG_FINALLY();
	{
		bk_sink_config_free(cfg);
	}
	PG_END_TRY();
	return result;
}

static void
bk_json_append_value(StringInfo buf, const char *text, bk_json_type type)
{
	if (type == BK_JSON_NUMBER || type == BK_JSON_BOOLEAN)
		appendStringInfoString(buf, text);  /* validated JSON scalars */
	else
		escape_json(buf, text);
}

/* Build a jsonb object from the user-set options; secrets_only picks the table. */
static Jsonb *
bk_sink_options_jsonb(const BkSinkOptions *o, bool secrets_only)
{
	StringInfoData buf;
	bool        first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < o->n; i++)
	{
		const BkSinkOpt *opt = &o->opts[i];

		if (opt->is_default || (secrets_only && !opt->secret))
			continue;
		if (!first)
			appendStringInfoString(&buf, ", ");
		first = false;
		escape_json(&buf, opt->key);
		appendStringInfoString(&buf, ": ");
		if (secrets_only)
			bk_json_append_value(&buf, opt->value, opt->type);
		else if (opt->secret)
			escape_json(&buf, opt->shown);
		else
			bk_json_append_value(&buf, opt->shown, opt->type);
	}
	appendStringInfoChar(&buf, '}');
	if (secrets_only && first)
		return NULL;
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

Jsonb *
bk_sink_options_public(const BkSinkOptions *o)
{
	return bk_sink_options_jsonb(o, false);
}

Jsonb *
bk_sink_options_secrets(const BkSinkOptions *o)
{
	return bk_sink_options_jsonb(o, true);
}

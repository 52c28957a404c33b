/*
 * flush_batch.c — decoding a claimed batch into the sink's messages: targets
 * rendered from the sink's key/topic template (compiled once per source table
 * layout), hash fields, enqueue() headers; and the batches' memory.
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "batchkit/encoding.h"
#include "batchkit/sink.h"
#include "queue/chunk.h"
#include "flush/flush_batch.h"

static size_t
arena_add(BatchBuild *b, const char *p, size_t n)
{
	size_t		off = b->arena.len;

	appendBinaryStringInfo(&b->arena, p, n);
	return off;
}

static PendingField *
next_field(BatchBuild *b)
{
	if (b->nfields == b->maxfields)
	{
		b->maxfields = b->maxfields ? b->maxfields * 2 : 1024;
		b->fields = b->fields ? repalloc(b->fields, sizeof(PendingField) * b->maxfields)
			: MemoryContextAlloc(b->cxt, sizeof(PendingField) * b->maxfields);
	}
	return &b->fields[b->nfields++];
}

static void
collect_field(const char *name, const char *value, void *arg)
{
	BatchBuild *b = (BatchBuild *) arg;
	PendingField *f = next_field(b);

	f->name_off = arena_add(b, name, strlen(name));
	f->name_len = strlen(name);
	f->isnull = value == NULL;
	if (value)
	{
		f->val_len = strlen(value);
		f->val_off = arena_add(b, value, f->val_len);
	}
}

static uint32
layout_hash(BkChunkReader *r)
{
	uint32		h = 2166136261u;

	for (int i = 0; i < r->hdr->natts; i++)
		for (const char *p = r->attnames[i]; *p; p++)
			h = (h ^ (uint8) *p) * 16777619u;
	return h ^ r->hdr->natts;
}

/* The compiled target template of a sink for a source table's current layout. */
static TemplateEntry *
template_for(BkFlushFormat *s, BkChunkReader *r, const char *source, char *err, size_t errlen)
{
	uint32		lh = r ? layout_hash(r) : 0;
	TemplateEntry *e;
	bk_status	st;
	MemoryContext old;

	for (int i = 0; i < s->ntemplates; i++)
		if (strcmp(s->templates[i].source, source) == 0 && s->templates[i].layout_hash == lh)
			return &s->templates[i];
	if (s->ntemplates == BK_TEMPLATE_CACHE)
	{
		for (int i = 0; i < s->ntemplates; i++)
			bk_template_free(s->templates[i].tpl);
		s->ntemplates = 0;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	e = &s->templates[s->ntemplates];
	memset(e, 0, sizeof(*e));
	e->source = pstrdup(source);
	e->layout_hash = lh;
	if (r)
	{
		e->cols = palloc(sizeof(char *) * Max(r->hdr->natts, 1));
		for (int i = 0; i < r->hdr->natts; i++)
			if (!(r->atts[i].flags & BK_ATT_DROPPED))
				e->cols[e->ncols++] = pstrdup(r->attnames[i]);
	}
	MemoryContextSwitchTo(old);
	e->tpl = bk_template_compile(s->target_template, s->name, r ? r->schema : "",
								 r ? r->table : "", (const char *const *) e->cols, e->ncols, &st);
	if (e->tpl == NULL)
	{
		snprintf(err, errlen, "bad %s template \"%s\": %s", s->is_redis ? "key" : "topic",
				 s->target_template, st.message);
		return NULL;
	}
	s->ntemplates++;
	return e;
}

/*
 * Top-level fields of a JSON object as hash fields: strings as their text, null
 * as NULL, anything else as its JSON text. An envelope contributes its "after".
 */
static void
json_object_fields(BatchBuild *b, const char *json, int len)
{
	Jsonb	   *jb;
	JsonbValue	after;
	JsonbValue *av;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			level = 0;

	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(json, len))));
	if (!JB_ROOT_IS_OBJECT(jb))
		return;
	av = getKeyJsonValueFromContainer(&jb->root, "after", 5, &after);
	if (av != NULL && av->type == jbvBinary)
		jb = JsonbValueToJsonb(av);
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT)
			level++;
		else if (tok == WJB_END_OBJECT)
			level--;
		else if (tok == WJB_KEY && level == 1)
		{
			PendingField *f = next_field(b);
			JsonbValue	val;

			f->name_len = v.val.string.len;
			f->name_off = arena_add(b, v.val.string.val, v.val.string.len);
			tok = JsonbIteratorNext(&it, &val, true);
			f->isnull = val.type == jbvNull;
			if (val.type == jbvString)
			{
				f->val_len = val.val.string.len;
				f->val_off = arena_add(b, val.val.string.val, f->val_len);
			}
			else if (!f->isnull)
			{
				char	   *txt;

				if (val.type == jbvBinary)
					txt = JsonbToCString(NULL, val.val.binary.data, val.val.binary.len);
				else
					txt = JsonbToCString(NULL, &JsonbValueToJsonb(&val)->root, 0);
				f->val_len = strlen(txt);
				f->val_off = arena_add(b, txt, f->val_len);
			}
		}
	}
}

static void
collect_message(BkMessage *m, void *arg)
{
	BatchBuild *b = (BatchBuild *) arg;
	BkFlushFormat *s = b->sink;
	PendingMsg *p;

	if (b->nmsgs == b->maxmsgs)
	{
		b->maxmsgs = b->maxmsgs ? b->maxmsgs * 2 : 1024;
		b->msgs = b->msgs ? repalloc(b->msgs, sizeof(PendingMsg) * b->maxmsgs)
			: MemoryContextAlloc(b->cxt, sizeof(PendingMsg) * b->maxmsgs);
	}
	p = &b->msgs[b->nmsgs++];
	memset(p, 0, sizeof(*p));
	p->seq = m->seq;
	p->captured_at = m->captured_at;
	switch (m->op)
	{
		case BK_REC_INSERT:
			p->op = BK_OP_INSERT;
			break;
		case BK_REC_UPDATE:
			p->op = BK_OP_UPDATE;
			break;
		case BK_REC_DELETE:
			p->op = BK_OP_DELETE;
			break;
		default:
			p->op = BK_OP_MESSAGE;
			break;
	}
	p->has_key = m->has_key;
	if (m->has_key)
	{
		p->key_len = m->key.len;
		p->key_off = arena_add(b, m->key.data, m->key.len);
	}
	p->val_len = m->value.len;
	p->val_off = arena_add(b, m->value.data, m->value.len);
	if (m->source && (!b->chunk_valid || b->chunk_id != m->chunk_id))
	{
		/* first row of a chunk: what the chunk's rows share */
		b->chunk_valid = true;
		b->chunk_id = m->chunk_id;
		b->chunk_src_len = strlen(m->source);
		b->chunk_src_off = arena_add(b, m->source, b->chunk_src_len);
		b->chunk_te = m->target ? NULL :
			template_for(s, m->reader, m->source, b->error, sizeof(b->error));
		b->chunk_tgt_valid = false;
	}
	if (m->source)
	{
		p->has_source = true;
		p->src_len = b->chunk_src_len;
		p->src_off = b->chunk_src_off;
	}

	/* target: explicit (replayed dead letter), outbox, or the rendered template */
	if (m->target)
	{
		p->has_target = true;
		p->tgt_len = m->targetlen;
		p->tgt_off = arena_add(b, m->target, m->targetlen);
	}
	else if (m->source == NULL)
	{
		p->has_target = true;
		p->tgt_len = strlen(s->outbox_target);
		p->tgt_off = arena_add(b, s->outbox_target, p->tgt_len);
	}
	else if (b->chunk_tgt_valid)
	{
		/* a template that names no column: rendered once for the chunk */
		p->has_target = true;
		p->tgt_len = b->chunk_tgt_len;
		p->tgt_off = b->chunk_tgt_off;
	}
	else
	{
		TemplateEntry *te = b->chunk_te;

		if (te != NULL)
		{
			bool		is_static = bk_template_is_static(te->tpl);
			bk_slice   *vals = palloc0(sizeof(bk_slice) * Max(te->ncols, 1));
			StringInfoData v;
			bk_buf		out = BK_BUF_INIT;
			size_t		off,
						len;
			bk_status	st;

			initStringInfo(&v);
			if (!is_static)
			{
				/* only the columns the template names are rendered as text */
				for (int i = 0; i < te->ncols; i++)
				{
					if (strstr(s->target_template, te->cols[i]) == NULL)
						continue;
					resetStringInfo(&v);
					if (bk_chunk_row_attr_text(m->reader, m->row, te->cols[i], &v))
						vals[i].ptr = pstrdup(v.data), vals[i].len = v.len;
				}
			}
			if (bk_template_render(te->tpl, vals, te->ncols, &out, &off, &len, &st) == BK_OK)
			{
				p->has_target = true;
				p->tgt_len = len;
				p->tgt_off = arena_add(b, out.data + off, len);
				if (is_static)
				{
					b->chunk_tgt_valid = true;
					b->chunk_tgt_off = p->tgt_off;
					b->chunk_tgt_len = len;
				}
			}
			else
				snprintf(b->error, sizeof(b->error), "rendering the target failed: %s", st.message);
			bk_buf_free(&out);
			pfree(v.data);
			pfree(vals);
		}
	}

	if (s->is_hset && m->row != NULL && m->reader != NULL)
	{
		p->field_first = b->nfields;
		bk_chunk_row_fields(m->reader, m->row, collect_field, b);
		p->nfields = b->nfields - p->field_first;
	}
	else if (s->is_hset && p->op != BK_OP_DELETE)
	{
		/* an enqueued or replayed message: its JSON object (or envelope's "after") gives the fields */
		p->field_first = b->nfields;
		json_object_fields(b, m->value.data, m->value.len);
		p->nfields = b->nfields - p->field_first;
	}
	if (m->headers && m->headerslen > 0)
	{
		/* enqueue() headers: a flat JSON object of strings, parsed by jsonb */
		Datum		j = DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(m->headers,
																				m->headerslen)));
		Jsonb	   *jb = DatumGetJsonbP(j);
		JsonbIterator *it = JsonbIteratorInit(&jb->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		PendingField *cur = NULL;

		p->header_first = b->nfields;
		while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				cur = next_field(b);
				cur->name_len = v.val.string.len;
				cur->name_off = arena_add(b, v.val.string.val, v.val.string.len);
			}
			else if (tok == WJB_VALUE && cur != NULL)
			{
				cur->isnull = v.type != jbvString;
				if (!cur->isnull)
				{
					cur->val_len = v.val.string.len;
					cur->val_off = arena_add(b, v.val.string.val, v.val.string.len);
				}
			}
		}
		p->nheaders = b->nfields - p->header_first;
	}
}

/* The core's message array of a decoded batch: pointers into its arena. */
static bk_message *
build_messages(BatchBuild *b)
{
	bk_message *msgs = palloc0(sizeof(bk_message) * Max(b->nmsgs, 1));
	bk_field   *fields = palloc0(sizeof(bk_field) * Max(b->nfields, 1));

	for (int i = 0; i < b->nfields; i++)
	{
		fields[i].name = b->arena.data + b->fields[i].name_off;
		fields[i].name_len = b->fields[i].name_len;
		fields[i].value = b->fields[i].isnull ? NULL : b->arena.data + b->fields[i].val_off;
		fields[i].value_len = b->fields[i].isnull ? 0 : b->fields[i].val_len;
	}
	for (int i = 0; i < b->nmsgs; i++)
	{
		PendingMsg *p = &b->msgs[i];
		bk_message *m = &msgs[i];

		m->op = p->op;
		m->seq = p->seq;
		if (p->has_target)
		{
			m->target = b->arena.data + p->tgt_off;
			m->target_len = p->tgt_len;
		}
		if (p->has_key)
		{
			m->key = b->arena.data + p->key_off;
			m->key_len = p->key_len;
		}
		m->value = b->arena.data + p->val_off;
		m->value_len = p->val_len;
		if (p->has_source)
		{
			m->table = b->arena.data + p->src_off;
			m->table_len = p->src_len;
		}
		if (p->nfields > 0)
		{
			m->fields = &fields[p->field_first];
			m->nfields = p->nfields;
		}
		if (p->nheaders > 0)
		{
			m->headers = &fields[p->header_first];
			m->nheaders = p->nheaders;
		}
	}
	return msgs;
}

bool
bk_flush_batch_claim(FlushBatch *f, int32 sink_id, int format, int64 max_rows, int64 max_bytes,
					 int64 after_seq)
{
	MemoryContext old = MemoryContextSwitchTo(f->cxt);
	bool		claimed = bk_claim_batch(sink_id, max_rows, max_bytes, after_seq, &f->batch);

	if (claimed)
	{
		bk_batch_decode(&f->batch, format, collect_message, &f->build);
		/* the batch's own context: claiming and decoding ran SPI, which may have switched */
		MemoryContextSwitchTo(f->cxt);
		f->msgs = build_messages(&f->build);
	}
	MemoryContextSwitchTo(old);
	return claimed;
}

FlushBatch *
bk_flush_batch_get(FlushBatch **list, BkFlushFormat *fmt)
{
	FlushBatch *f;
	MemoryContext old;

	for (f = *list; f != NULL; f = f->next)
		if (!f->in_use)
			break;
	if (f == NULL)
	{
		f = MemoryContextAllocZero(TopMemoryContext, sizeof(FlushBatch));
		f->cxt = AllocSetContextCreate(TopMemoryContext, "batchkit batch", ALLOCSET_DEFAULT_SIZES);
		f->next = *list;
		*list = f;
	}
	else
	{
		FlushBatch *next = f->next;
		MemoryContext cxt = f->cxt;

		MemoryContextReset(cxt);
		memset(f, 0, sizeof(*f));
		f->cxt = cxt;
		f->next = next;
	}
	f->in_use = true;
	f->build.sink = fmt;
	f->build.cxt = f->cxt;
	old = MemoryContextSwitchTo(f->cxt);
	initStringInfo(&f->build.arena);
	MemoryContextSwitchTo(old);
	return f;
}

void
bk_flush_batch_put(FlushBatch *f)
{
	f->in_use = false;
}

void
bk_flush_batch_free_all(FlushBatch **list)
{
	while (*list)
	{
		FlushBatch *f = *list;

		*list = f->next;
		MemoryContextDelete(f->cxt);
		pfree(f);
	}
}

void
bk_flush_format_forget_templates(BkFlushFormat *fmt)
{
	for (int i = 0; i < fmt->ntemplates; i++)
		bk_template_free(fmt->templates[i].tpl);
	fmt->ntemplates = 0;
}

-- batchkit install script, part 00: schema basics, role, version and workers.
-- (sql/batchkit--0.1.0.sql is assembled from sql/install/*.sql by the Makefile.)
\echo Use "CREATE EXTENSION batchkit" to load this file. \quit

-- Members of batchkit_admin manage sinks, capture and dead letters. Roles are
-- cluster-wide, so a second database's CREATE EXTENSION reuses it.
DO $bk$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'batchkit_admin') THEN
        CREATE ROLE batchkit_admin NOLOGIN;
    END IF;
END
$bk$;

GRANT USAGE ON SCHEMA batchkit TO PUBLIC;

CREATE FUNCTION batchkit.version() RETURNS text
    AS 'MODULE_PATHNAME', 'batchkit_version'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION batchkit.version() IS 'Version of the loaded batchkit library';

CREATE FUNCTION batchkit.preloaded() RETURNS boolean
    AS 'MODULE_PATHNAME', 'batchkit_preloaded'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION batchkit.preloaded() IS
    'Whether batchkit was loaded via shared_preload_libraries (needed for workers and statistics)';

CREATE FUNCTION batchkit._workers(
    OUT pid integer, OUT kind text, OUT database text, OUT state text, OUT sink text,
    OUT started timestamptz, OUT last_activity timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'batchkit_workers'
    LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION batchkit._workers() FROM PUBLIC;

CREATE VIEW batchkit.workers AS SELECT * FROM batchkit._workers();
COMMENT ON VIEW batchkit.workers IS 'batchkit background processes: the launcher and flush workers';

GRANT EXECUTE ON FUNCTION batchkit._workers() TO pg_monitor, batchkit_admin;
GRANT SELECT ON batchkit.workers TO pg_monitor, batchkit_admin;
-- batchkit install script, part 10: the sinks catalog.
-- A sink is a named destination (a Kafka cluster + topic template, or a Redis
-- server + command). batchkit.sink.options holds every option the user set,
-- with each secret (passwords, SASL/SSL secrets, tokens, key material, the
-- password of a Redis URL) replaced by what users may see of it: '***', or the
-- URL with '***' for its password. batchkit.sink_secret holds the clear values
-- of the secret options; only superusers can read it. Overlaying sink_secret's
-- options on sink's gives the user's option set back.
--
-- The functions are C (src/shim/sink_catalog.c), SECURITY INVOKER on purpose:
-- they check the calling role themselves (superuser or member of
-- batchkit_admin), then act as the catalog's owner, as a SECURITY DEFINER
-- function would; see the comment at the top of sink_catalog.c for why.
-- Options are validated by the C++ core (include/batchkit/sink_options.h);
-- docs/sinks.md lists them.

CREATE SEQUENCE batchkit.sink_id_seq AS integer;

CREATE TABLE batchkit.sink (
    sink_id     integer PRIMARY KEY DEFAULT nextval('batchkit.sink_id_seq'),
    -- The name rule is enforced by create_sink with a clear message; the CHECK
    -- keeps restored or hand-edited rows to it too (names end up in metric
    -- labels and key templates).
    name        text NOT NULL UNIQUE
                CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.-]{1,63}$'),
    kind        text NOT NULL CHECK (kind IN ('kafka', 'redis')),
    options     jsonb NOT NULL DEFAULT '{}'
                CHECK (pg_catalog.jsonb_typeof(options) = 'object'),
    paused      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE batchkit.sink_id_seq OWNED BY batchkit.sink.sink_id;

CREATE TABLE batchkit.sink_secret (
    sink_id     integer PRIMARY KEY REFERENCES batchkit.sink ON DELETE CASCADE,
    options     jsonb NOT NULL DEFAULT '{}'
                CHECK (pg_catalog.jsonb_typeof(options) = 'object')
);

REVOKE ALL ON batchkit.sink, batchkit.sink_secret, batchkit.sink_id_seq FROM PUBLIC;

-- pg_dump keeps the catalog (extension configuration tables).
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink_secret', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink_id_seq', '');

-- Management functions. Not STRICT: a NULL argument gets a clear error.
CREATE FUNCTION batchkit.create_sink(name text, kind text, options jsonb DEFAULT '{}')
    RETURNS integer
    AS 'MODULE_PATHNAME', 'batchkit_create_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.create_sink(text, text, jsonb) IS
    'Create a sink (kind kafka or redis) with validated options; returns its id';

CREATE FUNCTION batchkit.alter_sink(name text, options jsonb)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_alter_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.alter_sink(text, jsonb) IS
    'Merge options into a sink''s options; a JSON null removes an option';

CREATE FUNCTION batchkit.drop_sink(name text, force boolean DEFAULT false)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_drop_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.drop_sink(text, boolean) IS
    'Drop a sink; refused while rows wait in its queue or tables are captured into it, unless force';

CREATE FUNCTION batchkit.pause_sink(name text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_pause_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.pause_sink(text) IS
    'Stop delivering to a sink; capture keeps queueing';

CREATE FUNCTION batchkit.resume_sink(name text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_resume_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.resume_sink(text) IS 'Resume delivering to a paused sink';

-- For the flush worker: a sink's effective options (defaults included), secrets
-- in the clear. It reads sink_secret with the caller's rights and refuses
-- non-superusers itself, on top of the REVOKE.
CREATE FUNCTION batchkit._sink_config(sink_id integer,
    OUT key text, OUT value text, OUT secret boolean, OUT is_default boolean,
    OUT librdkafka boolean)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'batchkit_sink_config'
    LANGUAGE C VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION batchkit._sink_config(integer) FROM PUBLIC;

-- What DBAs and monitoring see: options with every secret as '***'.
CREATE VIEW batchkit.sinks AS
    SELECT sink_id, name, kind, options, paused, created_at, updated_at
      FROM batchkit.sink;
COMMENT ON VIEW batchkit.sinks IS 'Configured sinks; secret options are shown as ***';
GRANT SELECT ON batchkit.sinks TO batchkit_admin, pg_monitor;
-- batchkit install script, part 20: the durable capture queue (tables only; the
-- functions that write and read it are in 21_capture.sql and the C shim).
--
-- Design (see README "Internals" and src/shim/queue.c):
--   * one queue row = one CHUNK: up to batchkit.chunk_records records captured by
--     one statement for one sink, packed in a compact binary form with a header
--     describing how to decode them (so ALTER TABLE while rows wait is safe);
--   * the queue is partitioned into rotating SEGMENTS; writers insert into the
--     current one; the flush worker deletes chunks once the sink acknowledged
--     them and TRUNCATEs a segment that is no longer current and is empty, so
--     storage returns to empty after a drain (no vacuum needed to reclaim it);
--   * chunk ids come from a sequence; consumption is by deletion, never by a
--     "last id" cursor, so a lower id that commits late is never skipped.

CREATE SEQUENCE batchkit.chunk_id_seq AS bigint CACHE 1;

CREATE TABLE batchkit.queue (
    segment      smallint NOT NULL,
    chunk_id     bigint NOT NULL,
    sink_id      integer NOT NULL,
    source       oid,               -- captured table; NULL for enqueue()
    nrecords     integer NOT NULL,
    nbytes       integer NOT NULL,  -- encoded payload size
    txid         xid8 NOT NULL,     -- writer's transaction
    captured_at  timestamptz NOT NULL,
    done_records integer NOT NULL DEFAULT 0, -- records already acknowledged (a batch may end mid-chunk)
    payload      bytea NOT NULL
) PARTITION BY LIST (segment);

CREATE TABLE batchkit.queue_0 PARTITION OF batchkit.queue FOR VALUES IN (0);
CREATE TABLE batchkit.queue_1 PARTITION OF batchkit.queue FOR VALUES IN (1);
CREATE TABLE batchkit.queue_2 PARTITION OF batchkit.queue FOR VALUES IN (2);
CREATE INDEX ON batchkit.queue (sink_id, chunk_id);
-- Chunks are written once and deleted once. Compress them with lz4 when the
-- server has it (it halves or better the WAL and TOAST the writer pays for, at a
-- fraction of the cost of writing those bytes); pglz is too slow for the writer's
-- path, so without lz4 they are stored out of line uncompressed.
DO $bk$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['batchkit.queue', 'batchkit.queue_0', 'batchkit.queue_1', 'batchkit.queue_2'] LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN payload SET COMPRESSION lz4', t);
        EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN payload SET STORAGE EXTERNAL', t);
        END;
    END LOOP;
END
$bk$;

-- Which segment writers use now; rotated by the flush worker.
CREATE TABLE batchkit.queue_state (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    current_segment  smallint NOT NULL DEFAULT 0 CHECK (current_segment BETWEEN 0 AND 2),
    rotated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO batchkit.queue_state DEFAULT VALUES;

-- Batches claimed but not yet acknowledged: replayed, with the same sequence
-- number, after a crash. batch_seq grows by one per batch and sink.
CREATE TABLE batchkit.inflight (
    sink_id      integer NOT NULL,
    batch_seq    bigint NOT NULL,
    chunk_ids    bigint[] NOT NULL,          -- in chunk_id order
    chunk_starts integer[] NOT NULL,         -- first record index taken from each chunk
    last_end     integer,                    -- end (exclusive) in the last chunk; NULL: all of it
    nrecords     integer NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink_id, batch_seq)
);

-- Per-sink delivery sequence (durable across restarts).
CREATE TABLE batchkit.sink_progress (
    sink_id        integer PRIMARY KEY REFERENCES batchkit.sink ON DELETE CASCADE,
    last_batch_seq bigint NOT NULL DEFAULT 0,
    acked_records  bigint NOT NULL DEFAULT 0,
    acked_at       timestamptz
);

-- What is captured: one row per (source table, sink).
CREATE TABLE batchkit.capture (
    capture_id      integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    source          regclass NOT NULL,
    sink_id         integer NOT NULL REFERENCES batchkit.sink,
    events          text[] NOT NULL,
    key_columns     text[] NOT NULL,
    columns         text[],          -- NULL: every column
    include_before  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, sink_id)
);

REVOKE ALL ON batchkit.queue, batchkit.queue_0, batchkit.queue_1, batchkit.queue_2,
    batchkit.queue_state, batchkit.inflight, batchkit.sink_progress, batchkit.capture,
    batchkit.chunk_id_seq FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('batchkit.capture', '');
-- batchkit install script, part 21: capture, enqueue and the consumption API.

-- Raise a clear error unless the current role may manage batchkit.
CREATE FUNCTION batchkit._require_admin(action text) RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT (pg_catalog.pg_has_role(current_user, 'batchkit_admin', 'MEMBER')
            OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)) THEN
        RAISE EXCEPTION 'permission denied to %', action
            USING ERRCODE = '42501',
                  HINT = 'Only superusers and members of batchkit_admin manage batchkit.';
    END IF;
END
$fn$;

CREATE FUNCTION batchkit._catalog_changed() RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_catalog_changed' LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION batchkit._catalog_changed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit._catalog_changed() TO batchkit_admin;

-- The capture trigger (C, statement level, transition tables). Fired by every
-- role that may write a captured table; it writes the queue as its owner.
CREATE FUNCTION batchkit._capture_trigger() RETURNS trigger
    AS 'MODULE_PATHNAME', 'batchkit_capture_trigger' LANGUAGE C;

CREATE FUNCTION batchkit._truncate_guard() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'cannot truncate table "%": it is captured by batchkit sink "%"',
            TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = '55000',
              HINT = 'A sink cannot replay a TRUNCATE row by row. Use DELETE, or run '
                     'batchkit.uncapture() first.';
END
$fn$;

CREATE FUNCTION batchkit._column_attnums(source regclass, cols text[], what text)
    RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    c text;
    n smallint;
    nums text[] := '{}';
BEGIN
    IF cols IS NULL OR cardinality(cols) = 0 THEN
        RAISE EXCEPTION '% must name at least one column', what USING ERRCODE = '22023';
    END IF;
    FOREACH c IN ARRAY cols LOOP
        SELECT attnum INTO n FROM pg_attribute
         WHERE attrelid = source AND attname = c AND attnum > 0 AND NOT attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of table % does not exist (in %)', c, source, what
                USING ERRCODE = '42703';
        END IF;
        IF n::text = ANY (nums) THEN
            RAISE EXCEPTION 'column "%" is named twice in %', c, what USING ERRCODE = '42701';
        END IF;
        nums := nums || n::text;
    END LOOP;
    RETURN array_to_string(nums, ',');
END
$fn$;

CREATE FUNCTION batchkit.capture(source regclass, sink text,
                                 events text[] DEFAULT ARRAY['insert', 'update', 'delete'],
                                 options jsonb DEFAULT '{}')
    RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_sink_id integer;
    v_kind "char";
    v_nsp oid;
    v_keys text[];
    v_cols text[];
    v_before boolean := false;
    v_events text[] := '{}';
    v_bad text;
    v_id integer;
    v_flags text;
    v_keynums text;
    v_colnums text := '';
    v_args text;
    ev text;
BEGIN
    PERFORM batchkit._require_admin('capture tables');
    IF source IS NULL OR sink IS NULL OR events IS NULL OR options IS NULL THEN
        RAISE EXCEPTION 'batchkit.capture: source, sink, events and options must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    SELECT s.sink_id INTO v_sink_id FROM batchkit.sinks s WHERE s.name = sink;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batchkit sink "%" does not exist', sink USING ERRCODE = '42704';
    END IF;
    SELECT relkind, relnamespace INTO v_kind, v_nsp FROM pg_class WHERE oid = source;
    IF v_kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot capture %: only tables and partitioned tables can be captured', source
            USING ERRCODE = '42809';
    END IF;
    IF v_nsp = 'batchkit'::regnamespace THEN
        RAISE EXCEPTION 'cannot capture batchkit''s own table %', source USING ERRCODE = '42809';
    END IF;
    IF NOT has_table_privilege(source, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', source
            USING ERRCODE = '42501', DETAIL = 'Capturing a table sends its rows out: it needs SELECT on it.';
    END IF;
    IF EXISTS (SELECT 1 FROM batchkit.capture c WHERE c.source = capture.source AND c.sink_id = v_sink_id) THEN
        RAISE EXCEPTION 'table % is already captured by sink "%"', source, sink
            USING ERRCODE = '42710', HINT = 'Use batchkit.uncapture() first to change how it is captured.';
    END IF;

    -- events
    IF cardinality(events) = 0 THEN
        RAISE EXCEPTION 'events must name at least one of insert, update, delete' USING ERRCODE = '22023';
    END IF;
    FOREACH ev IN ARRAY events LOOP
        ev := lower(ev);
        IF ev = 'truncate' THEN
            RAISE EXCEPTION 'TRUNCATE cannot be captured'
                USING ERRCODE = '22023',
                      DETAIL = 'Captured tables refuse TRUNCATE instead (a sink cannot replay it row by row).';
        ELSIF ev NOT IN ('insert', 'update', 'delete') THEN
            RAISE EXCEPTION 'unknown event "%"', ev
                USING ERRCODE = '22023', HINT = 'Valid events are insert, update and delete.';
        END IF;
        IF NOT ev = ANY (v_events) THEN
            v_events := v_events || ev;
        END IF;
    END LOOP;

    -- options
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'capture options must be a JSON object' USING ERRCODE = '22023';
    END IF;
    SELECT string_agg(format('"%s"', k), ', ') INTO v_bad FROM jsonb_object_keys(options) k
     WHERE k NOT IN ('key_columns', 'columns', 'include_before');
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'unknown capture option %', v_bad
            USING ERRCODE = '22023', HINT = 'Valid options are key_columns, columns and include_before.';
    END IF;
    IF options ? 'key_columns' THEN
        IF jsonb_typeof(options->'key_columns') <> 'array' OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(options->'key_columns') e WHERE jsonb_typeof(e) <> 'string') THEN
            RAISE EXCEPTION 'key_columns must be a JSON array of column names' USING ERRCODE = '22023';
        END IF;
        SELECT array_agg(e ORDER BY o) INTO v_keys
          FROM jsonb_array_elements_text(options->'key_columns') WITH ORDINALITY AS t(e, o);
    ELSE
        SELECT array_agg(a.attname::text ORDER BY k.o) INTO v_keys
          FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, o), pg_attribute a
         WHERE i.indrelid = source AND i.indisprimary AND a.attrelid = source AND a.attnum = k.attnum;
        IF v_keys IS NULL THEN
            RAISE EXCEPTION 'table % has no primary key', source
                USING ERRCODE = '22023',
                      HINT = 'Name the columns that identify a row: options => ''{"key_columns": ["id"]}''.';
        END IF;
    END IF;
    v_keynums := batchkit._column_attnums(source, v_keys, 'key_columns');
    IF options ? 'columns' AND jsonb_typeof(options->'columns') <> 'null' THEN
        IF jsonb_typeof(options->'columns') <> 'array' OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(options->'columns') e WHERE jsonb_typeof(e) <> 'string') THEN
            RAISE EXCEPTION 'columns must be a JSON array of column names' USING ERRCODE = '22023';
        END IF;
        SELECT array_agg(e ORDER BY o) INTO v_cols
          FROM jsonb_array_elements_text(options->'columns') WITH ORDINALITY AS t(e, o);
        v_colnums := batchkit._column_attnums(source, v_cols, 'columns');
    END IF;
    IF options ? 'include_before' THEN
        IF jsonb_typeof(options->'include_before') <> 'boolean' THEN
            RAISE EXCEPTION 'include_before must be true or false' USING ERRCODE = '22023';
        END IF;
        v_before := (options->>'include_before')::boolean;
    END IF;

    INSERT INTO batchkit.capture (source, sink_id, events, key_columns, columns, include_before)
    VALUES (source, v_sink_id, v_events, v_keys, v_cols, v_before)
    RETURNING capture_id INTO v_id;

    v_flags := CASE WHEN v_before THEN 'b' ELSE '' END;
    v_args := format('%L, %L, %L, %L, %L', v_id, v_sink_id, v_flags, v_keynums, v_colnums);
    FOREACH ev IN ARRAY v_events LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT '
                       'EXECUTE FUNCTION batchkit._capture_trigger(%s)',
                       format('batchkit_capture_%s_%s', v_id, left(ev, 3)), upper(ev), source,
                       CASE ev WHEN 'insert' THEN 'NEW TABLE AS batchkit_new'
                               WHEN 'update' THEN 'OLD TABLE AS batchkit_old NEW TABLE AS batchkit_new'
                               ELSE 'OLD TABLE AS batchkit_old' END,
                       v_args);
    END LOOP;
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION batchkit._truncate_guard(%L)',
                   format('batchkit_capture_%s_trunc', v_id), source, sink);
    PERFORM batchkit._catalog_changed();
    RETURN v_id;
END
$fn$;
COMMENT ON FUNCTION batchkit.capture(regclass, text, text[], jsonb) IS
    'Capture inserts/updates/deletes of a table into a sink''s queue, in the writer''s transaction';

-- Drop a capture's triggers (those that still exist) and forget it. SECURITY
-- DEFINER: a batchkit_admin member may uncapture a table it does not own (DROP
-- TRIGGER needs the owner); it only ever drops batchkit's own capture triggers.
-- EXECUTE is granted to batchkit_admin only.
CREATE FUNCTION batchkit._drop_capture(v_id integer) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_source regclass;
    t text;
BEGIN
    DELETE FROM batchkit.capture WHERE capture_id = v_id RETURNING source INTO v_source;
    IF v_source IS NULL THEN
        RETURN;
    END IF;
    FOR t IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = v_source AND tgname LIKE format('batchkit\_capture\_%s\_%%', v_id) LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, v_source);
    END LOOP;
    PERFORM batchkit._catalog_changed();
END
$fn$;
REVOKE ALL ON FUNCTION batchkit._drop_capture(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit._drop_capture(integer) TO batchkit_admin;

CREATE FUNCTION batchkit.uncapture(source regclass, sink text) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_id integer;
BEGIN
    PERFORM batchkit._require_admin('uncapture tables');
    SELECT c.capture_id INTO v_id FROM batchkit.capture c JOIN batchkit.sinks s USING (sink_id)
     WHERE c.source = uncapture.source AND s.name = uncapture.sink;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not captured by sink "%"', source, sink USING ERRCODE = '42704';
    END IF;
    PERFORM batchkit._drop_capture(v_id);
END
$fn$;
COMMENT ON FUNCTION batchkit.uncapture(regclass, text) IS
    'Stop capturing a table into a sink; rows already queued are still delivered';

CREATE VIEW batchkit.captures AS
SELECT c.capture_id, c.source, s.name AS sink, c.events, c.key_columns, c.columns,
       c.include_before, c.created_at
  FROM batchkit.capture c JOIN batchkit.sink s USING (sink_id);

-- Transactional outbox.
CREATE FUNCTION batchkit.enqueue(sink text, payload jsonb, key text DEFAULT NULL,
                                 headers jsonb DEFAULT NULL) RETURNS bigint
    AS 'MODULE_PATHNAME', 'batchkit_enqueue' LANGUAGE C VOLATILE;
CREATE FUNCTION batchkit.enqueue_many(sink text, payloads jsonb[], keys text[] DEFAULT NULL,
                                      headers jsonb[] DEFAULT NULL) RETURNS bigint
    AS 'MODULE_PATHNAME', 'batchkit_enqueue_many' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION batchkit.enqueue(text, jsonb, text, jsonb) IS
    'Queue one message for a sink in the current transaction (transactional outbox)';
COMMENT ON FUNCTION batchkit.enqueue_many(text, jsonb[], text[], jsonb[]) IS
    'Queue many messages for a sink in the current transaction';

-- Consumption API (what the flush worker does, callable for tests and tools).
CREATE FUNCTION batchkit.claim_batch(sink text, max_rows integer DEFAULT 1000,
                                     max_bytes integer DEFAULT 1048576, format text DEFAULT 'envelope')
    RETURNS TABLE (batch_seq bigint, seq bigint, op text, source text, key text, message text)
    AS 'MODULE_PATHNAME', 'batchkit_claim_batch' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION batchkit.ack_batch(sink text, batch_seq bigint) RETURNS bigint
    AS 'MODULE_PATHNAME', 'batchkit_ack_batch' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION batchkit.queue_depth(sink text) RETURNS bigint
    AS 'MODULE_PATHNAME', 'batchkit_queue_depth' LANGUAGE C VOLATILE STRICT;

-- Heap bytes of a queue segment (main fork + TOAST), 0 right after TRUNCATE.
CREATE FUNCTION batchkit._segment_heap_bytes(seg integer) RETURNS bigint
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT pg_relation_size(c.oid) + COALESCE(pg_relation_size(NULLIF(c.reltoastrelid, 0)), 0)
      FROM pg_class c WHERE c.oid = format('batchkit.queue_%s', seg)::regclass
$fn$;

-- Storage: truncate drained segments, rotate the one writers use.
CREATE FUNCTION batchkit.maintain_queue(rotate_after interval DEFAULT '10 seconds',
                                        rotate_bytes bigint DEFAULT 64 * 1024 * 1024)
    RETURNS TABLE (current_segment smallint, truncated integer[], rotated boolean)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_cur smallint;
    v_next smallint;
    v_at timestamptz;
    v_empty boolean;
    seg integer;
BEGIN
    -- SECURITY DEFINER (it truncates the owner's tables): EXECUTE is granted to batchkit_admin only
    truncated := '{}';
    rotated := false;
    SELECT qs.current_segment, qs.rotated_at INTO v_cur, v_at FROM batchkit.queue_state qs;
    -- 1. a segment writers no longer use is truncated once every chunk in it is acknowledged;
    --    NOWAIT: never queue behind (and so block) a writer still inserting into it
    FOR seg IN 0..2 LOOP
        CONTINUE WHEN seg = v_cur OR batchkit._segment_heap_bytes(seg) = 0;
        BEGIN
            EXECUTE format('LOCK TABLE batchkit.queue_%s IN ACCESS EXCLUSIVE MODE NOWAIT', seg);
            -- chunks of a dropped sink: enqueue() takes no lock drop_sink() waits for, so
            -- a transaction that enqueued before the drop committed may commit after it;
            -- nobody would ever acknowledge its chunks (sink ids are never reused, and a
            -- drop that is not committed yet still shows its sink). The segment's sink ids
            -- are walked on the (sink_id, chunk_id) index, one probe per sink: this runs
            -- every second while a backlog drains, and a scan of a segment of 1M
            -- enqueue() chunks took 226 ms where the walk takes 1 ms
            EXECUTE format('WITH RECURSIVE ids(id) AS ('
                           '  SELECT min(sink_id) FROM batchkit.queue_%1$s'
                           '  UNION ALL'
                           '  SELECT (SELECT min(sink_id) FROM batchkit.queue_%1$s WHERE sink_id > ids.id)'
                           '    FROM ids WHERE ids.id IS NOT NULL) '
                           'DELETE FROM batchkit.queue_%1$s WHERE sink_id IN (SELECT id FROM ids '
                           '  WHERE id IS NOT NULL AND NOT EXISTS '
                           '  (SELECT 1 FROM batchkit.sink s WHERE s.sink_id = ids.id))', seg);
            EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM batchkit.queue_%s)', seg) INTO v_empty;
            IF v_empty THEN
                EXECUTE format('TRUNCATE batchkit.queue_%s', seg);
                truncated := truncated || seg;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    -- 2. writers move on to the next segment once it is empty and the current one is old,
    --    large, or fully drained (then it can be truncated by the next call)
    v_next := (v_cur + 1) % 3;
    IF batchkit._segment_heap_bytes(v_next) = 0 AND batchkit._segment_heap_bytes(v_cur) > 0 THEN
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM batchkit.queue_%s)', v_cur) INTO v_empty;
        IF v_empty OR now() - v_at >= rotate_after
           OR pg_total_relation_size(format('batchkit.queue_%s', v_cur)::regclass) >= rotate_bytes THEN
            UPDATE batchkit.queue_state SET current_segment = v_next, rotated_at = now();
            -- writers cache the current segment: make them read it again
            PERFORM batchkit._catalog_changed();
            v_cur := v_next;
            rotated := true;
        END IF;
    END IF;
    current_segment := v_cur;
    RETURN NEXT;
END
$fn$;
COMMENT ON FUNCTION batchkit.maintain_queue(interval, bigint) IS
    'Truncate drained queue segments and rotate the current one (the flush worker calls it)';

CREATE VIEW batchkit.queue_storage AS
SELECT s.segment, s.segment = qs.current_segment AS current,
       pg_total_relation_size(format('batchkit.queue_%s', s.segment)::regclass) AS bytes
  FROM generate_series(0, 2) AS s(segment), batchkit.queue_state qs;

-- Privileges: batchkit_admin manages captures and may use the consumption API;
-- writers of captured tables need nothing (the trigger writes as the queue owner).
GRANT SELECT, INSERT, DELETE ON batchkit.capture TO batchkit_admin;
GRANT SELECT ON batchkit.captures, batchkit.queue_storage TO batchkit_admin, pg_monitor;
REVOKE ALL ON FUNCTION batchkit.enqueue(text, jsonb, text, jsonb),
                       batchkit.enqueue_many(text, jsonb[], text[], jsonb[]),
                       batchkit.claim_batch(text, integer, integer, text),
                       batchkit.ack_batch(text, bigint),
                       batchkit.queue_depth(text),
                       batchkit.maintain_queue(interval, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit.enqueue(text, jsonb, text, jsonb),
                          batchkit.enqueue_many(text, jsonb[], text[], jsonb[]),
                          batchkit.claim_batch(text, integer, integer, text),
                          batchkit.ack_batch(text, bigint),
                          batchkit.maintain_queue(interval, bigint) TO batchkit_admin;
GRANT EXECUTE ON FUNCTION batchkit.queue_depth(text) TO batchkit_admin, pg_monitor;
-- batchkit install script, part 22: delivery — dead letters, flush(), worker wake-up.

-- Messages a sink refused for good (after max_attempts for Kafka; at once for a
-- command Redis refused inside its transaction): kept with the error, replayable.
CREATE TABLE batchkit.dead_letter (
    dead_letter_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink_id         integer NOT NULL REFERENCES batchkit.sink ON DELETE CASCADE,
    seq             bigint,
    op              text NOT NULL,
    source          text,
    target          text,
    key             text,
    message         text NOT NULL,
    error           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,
    failed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON batchkit.dead_letter (sink_id, dead_letter_id);
REVOKE ALL ON batchkit.dead_letter FROM PUBLIC;

CREATE VIEW batchkit.dead_letters AS
SELECT d.dead_letter_id AS id, s.name AS sink, d.seq, d.op, d.source, d.target, d.key,
       d.message, d.error, d.attempts, d.failed_at
  FROM batchkit.dead_letter d JOIN batchkit.sink s USING (sink_id);
COMMENT ON VIEW batchkit.dead_letters IS 'Messages a sink refused for good, with the error';

CREATE FUNCTION batchkit._requeue(sink text, ops text[], targets text[], keys text[], payloads text[])
    RETURNS bigint AS 'MODULE_PATHNAME', 'batchkit_requeue' LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION batchkit._requeue(text, text[], text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit._requeue(text, text[], text[], text[], text[]) TO batchkit_admin;

CREATE FUNCTION batchkit.replay_dead_letters(sink text, ids bigint[] DEFAULT NULL) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_sink integer;
    n bigint;
BEGIN
    PERFORM batchkit._require_admin('replay dead letters');
    SELECT s.sink_id INTO v_sink FROM batchkit.sinks s WHERE s.name = replay_dead_letters.sink;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batchkit sink "%" does not exist', sink USING ERRCODE = '42704';
    END IF;
    WITH d AS (
        DELETE FROM batchkit.dead_letter dl
         WHERE dl.sink_id = v_sink AND (ids IS NULL OR dl.dead_letter_id = ANY (ids))
        RETURNING dl.dead_letter_id, dl.op, dl.target, dl.key, dl.message)
    SELECT batchkit._requeue(replay_dead_letters.sink,
                             array_agg(d.op ORDER BY d.dead_letter_id),
                             array_agg(d.target ORDER BY d.dead_letter_id),
                             array_agg(d.key ORDER BY d.dead_letter_id),
                             array_agg(d.message ORDER BY d.dead_letter_id))
      INTO n FROM d HAVING count(*) > 0;
    RETURN COALESCE(n, 0);
END
$fn$;
COMMENT ON FUNCTION batchkit.replay_dead_letters(text, bigint[]) IS
    'Queue dead letters again (all of the sink''s, or those ids), unchanged';

CREATE FUNCTION batchkit.purge_dead_letters(sink text, older_than interval DEFAULT '0')
    RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_sink integer;
    n bigint;
BEGIN
    PERFORM batchkit._require_admin('purge dead letters');
    SELECT s.sink_id INTO v_sink FROM batchkit.sinks s WHERE s.name = purge_dead_letters.sink;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batchkit sink "%" does not exist', sink USING ERRCODE = '42704';
    END IF;
    IF older_than < '0'::interval THEN
        RAISE EXCEPTION 'older_than must not be negative' USING ERRCODE = '22023';
    END IF;
    DELETE FROM batchkit.dead_letter dl
     WHERE dl.sink_id = v_sink AND dl.failed_at <= now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION batchkit.purge_dead_letters(text, interval) IS
    'Delete a sink''s dead letters older than the given age';

CREATE FUNCTION batchkit.flush(sink text, timeout interval DEFAULT '30 seconds') RETURNS boolean
    AS 'MODULE_PATHNAME', 'batchkit_flush' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION batchkit.flush(text, interval) IS
    'Wait until every row committed before the call is acknowledged by the sink; false on timeout';

CREATE FUNCTION batchkit._wake_launcher() RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_wake_launcher' LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION batchkit._wake_launcher() FROM PUBLIC;

GRANT SELECT ON batchkit.dead_letters TO batchkit_admin;
GRANT SELECT, DELETE ON batchkit.dead_letter TO batchkit_admin;
REVOKE ALL ON FUNCTION batchkit.replay_dead_letters(text, bigint[]),
                       batchkit.purge_dead_letters(text, interval),
                       batchkit.flush(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit.replay_dead_letters(text, bigint[]),
                          batchkit.purge_dead_letters(text, interval),
                          batchkit.flush(text, interval) TO batchkit_admin;

-- Start this database's flush worker as soon as CREATE EXTENSION commits.
SELECT batchkit._wake_launcher();
-- batchkit install script, part 30: bulk upsert.
--
-- batch_upsert(target, rows, conflict_columns, update_columns, chunk_size)
-- inserts new keys and updates existing ones, last occurrence wins, with the
-- caller's rights (SECURITY INVOKER: privileges, row-level security and
-- triggers apply). See docs/upsert.md.

CREATE FUNCTION batchkit.batch_upsert(
    target regclass,
    rows jsonb,
    conflict_columns text[] DEFAULT NULL,
    update_columns text[] DEFAULT NULL,
    chunk_size integer DEFAULT 1000000,
    OUT inserted bigint,
    OUT updated bigint)
    RETURNS record
    AS 'MODULE_PATHNAME', 'batchkit_upsert_jsonb'
    LANGUAGE C VOLATILE SECURITY INVOKER PARALLEL UNSAFE;
COMMENT ON FUNCTION batchkit.batch_upsert(regclass, jsonb, text[], text[], integer) IS
    'Upsert a JSON array of objects into target: new keys inserted, existing keys updated, last occurrence wins';

-- Rows as an array of the target's row type, or of any composite type whose
-- attribute names are columns of the target (values are assigned with the
-- usual assignment casts). anyarray rather than anycompatiblearray: both
-- resolve the same way here, and anyarray reads as "any array" in \df.
CREATE FUNCTION batchkit.batch_upsert(
    target regclass,
    rows anyarray,
    conflict_columns text[] DEFAULT NULL,
    update_columns text[] DEFAULT NULL,
    chunk_size integer DEFAULT 1000000,
    OUT inserted bigint,
    OUT updated bigint)
    RETURNS record
    AS 'MODULE_PATHNAME', 'batchkit_upsert_array'
    LANGUAGE C VOLATILE SECURITY INVOKER PARALLEL UNSAFE;
COMMENT ON FUNCTION batchkit.batch_upsert(regclass, anyarray, text[], text[], integer) IS
    'Upsert an array of composite rows into target: new keys inserted, existing keys updated, last occurrence wins';

-- An untyped literal ('[{"id": 1}]', or a client's text parameter) matches both
-- jsonb and anyarray, which PostgreSQL refuses as ambiguous; this overload
-- (text is the preferred string type) takes it and reads it as JSON.
CREATE FUNCTION batchkit.batch_upsert(
    target regclass,
    rows text,
    conflict_columns text[] DEFAULT NULL,
    update_columns text[] DEFAULT NULL,
    chunk_size integer DEFAULT 1000000,
    OUT inserted bigint,
    OUT updated bigint)
    RETURNS record
    AS 'MODULE_PATHNAME', 'batchkit_upsert_text'
    LANGUAGE C VOLATILE SECURITY INVOKER PARALLEL UNSAFE;
COMMENT ON FUNCTION batchkit.batch_upsert(regclass, text, text[], text[], integer) IS
    'batch_upsert for an untyped JSON literal or text parameter';

-- The COPY-into-staging-then-merge pattern: upsert every row of a relation.
-- Named _from (as in UPDATE ... FROM / COPY ... FROM) rather than another
-- batch_upsert overload, because a relation name given as an untyped literal
-- would otherwise be taken for JSON text.
CREATE FUNCTION batchkit.batch_upsert_from(
    target regclass,
    source regclass,
    conflict_columns text[] DEFAULT NULL,
    update_columns text[] DEFAULT NULL,
    order_column text DEFAULT NULL,
    OUT inserted bigint,
    OUT updated bigint)
    RETURNS record
    AS 'MODULE_PATHNAME', 'batchkit_upsert_from'
    LANGUAGE C VOLATILE SECURITY INVOKER PARALLEL UNSAFE;
COMMENT ON FUNCTION batchkit.batch_upsert_from(regclass, regclass, text[], text[], text) IS
    'Upsert every row of source (a staging table) into target; last row wins among repeated keys';

CREATE FUNCTION batchkit._upsert_stats(
    OUT dbid oid, OUT relid oid, OUT calls bigint, OUT rows_in bigint,
    OUT inserted bigint, OUT updated bigint, OUT fallbacks bigint,
    OUT total_time_ms double precision, OUT max_time_ms double precision,
    OUT last_call timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'batchkit_upsert_stats'
    LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION batchkit._upsert_stats() FROM PUBLIC;

CREATE VIEW batchkit.upsert_stats AS
SELECT d.datname AS database,
       s.relid,
       CASE WHEN d.datname = current_database() THEN s.relid::regclass::text END AS target,
       s.calls, s.rows_in, s.inserted, s.updated, s.fallbacks,
       s.total_time_ms, s.max_time_ms, s.last_call
  FROM batchkit._upsert_stats() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid;
COMMENT ON VIEW batchkit.upsert_stats IS
    'batch_upsert calls per target since the server started (needs shared_preload_libraries)';

GRANT EXECUTE ON FUNCTION batchkit._upsert_stats() TO pg_monitor, batchkit_admin;
GRANT SELECT ON batchkit.upsert_stats TO pg_monitor, batchkit_admin;
-- batchkit install script, part 40: metrics — what a DBA sees of batching.
--
-- Counters and histograms live in shared memory (one slot per sink, written by
-- the flush worker; src/shim/metrics.c). The functions join them to the
-- catalog, so every sink of this database shows, with zero counters until it
-- first flushes. Needs shared_preload_libraries (otherwise the functions say so).
-- Granted to pg_monitor and batchkit_admin; nothing here shows a secret:
-- _sink_stats masks last_error against the sink's secret options, which it
-- reads itself (as the catalog's owner). See docs/metrics.md.

-- The functions read the catalog as its owner with a fixed search_path, so
-- nothing on a caller's path runs with the owner's rights. Their queries probe
-- the queue's (sink_id, chunk_id) index for the oldest chunk; with sequential
-- and bitmap scans off, a plan made while a queue segment was small or empty
-- cannot turn into a scan of the whole backlog on every call once it is full,
-- and with JIT off a plan whose estimate passes jit_above_cost is not compiled
-- on every call (seen: 50-65 ms of LLVM per read, a drain 20% slower under a
-- 10 Hz reader).
CREATE FUNCTION batchkit._sink_stats(
    OUT sink text, OUT kind text, OUT state text,
    OUT rows_queued bigint, OUT oldest_queued_age interval,
    OUT batches bigint, OUT rows_sent bigint, OUT rows_failed bigint,
    OUT rows_dead_lettered bigint, OUT dead_letters bigint,
    OUT bytes_sent bigint, OUT retries bigint,
    OUT last_batch_size bigint, OUT avg_batch_size double precision,
    OUT last_flush_at timestamptz, OUT last_flush_duration interval,
    OUT lag_p50_ms double precision, OUT lag_p99_ms double precision,
    OUT last_error text, OUT last_error_at timestamptz, OUT stats_reset timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'batchkit_sink_stats'
    LANGUAGE C VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;

CREATE FUNCTION batchkit._batch_histograms(
    OUT sink text, OUT metric text, OUT le double precision, OUT count bigint)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'batchkit_batch_histograms'
    LANGUAGE C VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;

-- Thin views over the functions, pg_stat_statements style: every sink of this
-- database, in name order, zero counters until it first flushes.
CREATE VIEW batchkit.sink_stats AS SELECT * FROM batchkit._sink_stats();
COMMENT ON VIEW batchkit.sink_stats IS
    'Per-sink delivery statistics since the last reset: queue depth and age, batches, rows, bytes, retries, flush times, lag, last error';

CREATE VIEW batchkit.batch_histograms AS SELECT * FROM batchkit._batch_histograms();
COMMENT ON VIEW batchkit.batch_histograms IS
    'Cumulative histogram buckets per sink: batch_size (rows), flush_duration_seconds, lag_seconds (capture to acknowledgement, per row); le = Infinity is the total';

CREATE FUNCTION batchkit.metrics() RETURNS text
    AS 'MODULE_PATHNAME', 'batchkit_metrics'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
COMMENT ON FUNCTION batchkit.metrics() IS
    'This database''s sink and upsert statistics in the Prometheus text exposition format';

CREATE FUNCTION batchkit.reset_stats(sink text DEFAULT NULL) RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_reset_stats'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.reset_stats(text) IS
    'Zero the statistics of a sink of this database (all of them when NULL); the queue is untouched';

REVOKE ALL ON FUNCTION batchkit._sink_stats(),
                       batchkit._batch_histograms(),
                       batchkit.metrics(),
                       batchkit.reset_stats(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit._sink_stats(),
                          batchkit._batch_histograms(),
                          batchkit.metrics() TO pg_monitor, batchkit_admin;
GRANT EXECUTE ON FUNCTION batchkit.reset_stats(text) TO batchkit_admin;
GRANT SELECT ON batchkit.sink_stats, batchkit.batch_histograms TO pg_monitor, batchkit_admin;

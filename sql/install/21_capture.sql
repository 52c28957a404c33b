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

    INSERT INTO batchkit.capture (source, sink_id, events, key_columns, columns, include_before,
                                  key_attnums, column_attnums)
    VALUES (source, v_sink_id, v_events, v_keys, v_cols, v_before,
            batchkit._column_list(source, string_to_array(v_keynums, ',')::smallint[]),
            CASE WHEN v_colnums <> '' THEN
                batchkit._column_list(source, string_to_array(v_colnums, ',')::smallint[]) END)
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

-- DDL that would leave a capture broken. DROP TABLE of a captured table takes its triggers
-- with it but left its capture row behind (its source then showed a bare OID); ALTER TABLE
-- ... DROP COLUMN of a column a capture needs (a key column, or one named in `columns`)
-- made every later write of the table fail in the capture trigger. This sql_drop event
-- trigger forgets the captures of dropped tables (their queued rows are still delivered:
-- a chunk carries its table's name and column layout) and refuses the DROP COLUMN itself,
-- so application writes never start failing later. The columns a capture needs are those
-- the capture trigger uses: batchkit.capture's key_attnums / column_attnums (attribute
-- numbers, which stay right across RENAME COLUMN, and by name in a dump), or for captures
-- recorded without them, its triggers' arguments.
-- SECURITY DEFINER: it runs for every role's DROP, and it only ever deletes the captures of
-- tables that pg_event_trigger_dropped_objects() reports dropped by this very command.
CREATE FUNCTION batchkit._on_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r record;
    n integer;
BEGIN
    FOR r IN
        SELECT d.objid::regclass AS source, d.address_names[3] AS col, s.name AS sink,
               CASE WHEN d.objsubid = ANY (k.keys)
                    THEN 'a key column of' ELSE 'one of the columns sent by' END AS what
          FROM pg_event_trigger_dropped_objects() d
          JOIN batchkit.capture c ON c.source::oid = d.objid
          JOIN batchkit.sink s ON s.sink_id = c.sink_id
          LEFT JOIN LATERAL (
              SELECT string_to_array(encode(t.tgargs, 'escape'), '\000') AS args
                FROM pg_trigger t
               WHERE t.tgrelid = d.objid AND t.tgnargs = 5
                 AND t.tgname LIKE format('batchkit\_capture\_%s\_%%', c.capture_id)
               LIMIT 1) a ON true
          CROSS JOIN LATERAL (
              SELECT CASE WHEN c.key_attnums IS NOT NULL
                          THEN batchkit._column_list_attnums(c.key_attnums)
                          ELSE string_to_array(a.args[4], ',')::smallint[] END AS keys,
                     CASE WHEN c.key_attnums IS NOT NULL
                          THEN coalesce(batchkit._column_list_attnums(c.column_attnums), '{}')
                          ELSE string_to_array(a.args[5], ',')::smallint[] END AS cols) k
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid > 0
           AND d.objsubid = ANY (k.keys || k.cols)
    LOOP
        RAISE EXCEPTION 'cannot drop column "%" of table %: it is % its capture into batchkit sink "%"',
                r.col, r.source, r.what, r.sink
            USING ERRCODE = '2BP01',
                  HINT = format('Run batchkit.uncapture(%L, %L) first, and batchkit.capture() again after the change.',
                                r.source::text, r.sink);
    END LOOP;

    DELETE FROM batchkit.capture c
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND c.source::oid = d.objid;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM batchkit._catalog_changed();
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION batchkit._on_sql_drop() FROM PUBLIC;

CREATE EVENT TRIGGER batchkit_sql_drop ON sql_drop
    EXECUTE FUNCTION batchkit._on_sql_drop();
COMMENT ON EVENT TRIGGER batchkit_sql_drop IS
    'Forgets the captures of dropped tables; refuses dropping a column a capture needs';

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

-- batchkit upgrade script 0.1.0 -> 0.2.0 (ALTER EXTENSION batchkit UPDATE TO '0.2.0').
--
-- Every change of SQL objects made since 0.1.0 goes here AND into sql/install/ (which
-- describes the current version for a fresh install). test_upgrade.py proves that a
-- database updated through this script has exactly the catalog of a fresh install.
-- The library (batchkit.so) serves databases still at 0.1.0 until they are updated.
\echo Use "ALTER EXTENSION batchkit UPDATE TO '0.2.0'" to load this file. \quit

-- The update takes exclusive locks on the queue and batchkit.capture, which writers of
-- captured tables also lock (in another order). So that it never holds writers up for
-- long nor makes one of them fail: it gives up after 5 s waiting for a lock (run it
-- again), and it checks for deadlocks after 10 ms where writers wait deadlock_timeout,
-- so in a deadlock it is the one aborted. (SET LOCAL: both end with its transaction.)
SET LOCAL lock_timeout = '5s';
SET LOCAL deadlock_timeout = '10ms';

-- === forget the captures of tables dropped under 0.1.0 (begin) ===
-- The captures of tables dropped while 0.1.0 was installed (their source shows a bare OID).
DELETE FROM batchkit.capture c
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = c.source::oid);
-- === (end) ===

-- === readable statistics (begin) ===
-- Averages, lags and durations shown to people at a fixed scale (0.1.0 printed the
-- function's doubles: 75.00000000000001). The views change column types: dropped and
-- created again, with their comments and grants.
DROP VIEW batchkit.sink_stats;
CREATE VIEW batchkit.sink_stats AS
SELECT sink, kind, state, rows_queued, oldest_queued_age, batches, rows_sent, rows_failed,
       rows_dead_lettered, dead_letters, bytes_sent, retries, last_batch_size,
       round(avg_batch_size::numeric, 1) AS avg_batch_size,
       last_flush_at, last_flush_duration,
       round(lag_p50_ms::numeric, 2) AS lag_p50_ms, round(lag_p99_ms::numeric, 2) AS lag_p99_ms,
       last_error, last_error_at, stats_reset
  FROM batchkit._sink_stats();
COMMENT ON VIEW batchkit.sink_stats IS
    'Per-sink delivery statistics since the last reset: queue depth and age, batches, rows, bytes, retries, flush times, lag, last error';
GRANT SELECT ON batchkit.sink_stats TO pg_monitor, batchkit_admin;

DROP VIEW batchkit.upsert_stats;
CREATE VIEW batchkit.upsert_stats AS
SELECT d.datname AS database,
       s.relid,
       CASE WHEN d.datname = current_database() THEN s.relid::regclass::text END AS target,
       s.calls, s.rows_in, s.inserted, s.updated, s.fallbacks,
       round(s.total_time_ms::numeric, 3) AS total_time_ms, round(s.max_time_ms::numeric, 3) AS max_time_ms,
       s.last_call
  FROM batchkit._upsert_stats() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid;
COMMENT ON VIEW batchkit.upsert_stats IS
    'batch_upsert calls per target since the server started (needs shared_preload_libraries)';
GRANT SELECT ON batchkit.upsert_stats TO pg_monitor, batchkit_admin;
-- === readable statistics (end) ===

-- === dump/restore (begin) ===
-- pg_dump / pg_restore carry the whole state of batchkit (README "Backups and
-- restores"): the queue in a portable text form, the chunk id sequence, the
-- captures with their columns by name, the dead letters and the id sequences.

-- The queue's payload becomes batchkit.chunk: the same bytes as bytea, with a
-- text form that a restore can read in another database (src/shim/queue/chunk_io.c).
CREATE TYPE batchkit.chunk;
CREATE FUNCTION batchkit.chunk_in(cstring) RETURNS batchkit.chunk
    AS 'MODULE_PATHNAME', 'batchkit_chunk_in' LANGUAGE C STABLE STRICT;
CREATE FUNCTION batchkit.chunk_out(batchkit.chunk) RETURNS cstring
    AS 'MODULE_PATHNAME', 'batchkit_chunk_out' LANGUAGE C STABLE STRICT;
CREATE TYPE batchkit.chunk (
    INPUT = batchkit.chunk_in, OUTPUT = batchkit.chunk_out,
    INTERNALLENGTH = VARIABLE, ALIGNMENT = int4, STORAGE = extended);
COMMENT ON TYPE batchkit.chunk IS
    'Captured records of batchkit''s queue (binary; text form for dump and restore)';
-- the stored bytes do not change (no rewrite); the cast exists only for this statement
CREATE CAST (bytea AS batchkit.chunk) WITHOUT FUNCTION;
ALTER TABLE batchkit.queue ALTER COLUMN payload TYPE batchkit.chunk USING payload::batchkit.chunk;
DROP CAST (bytea AS batchkit.chunk);
-- ALTER COLUMN ... TYPE resets the column's storage: set it again as 20_queue.sql does
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

-- Captures record their columns as batchkit.column_list (by number, by name in
-- a dump: src/shim/capture/column_list.c); the capture trigger prefers them to the
-- attribute numbers in its arguments, which a restore renumbers.
CREATE TYPE batchkit.column_list;
CREATE FUNCTION batchkit.column_list_in(cstring) RETURNS batchkit.column_list
    AS 'MODULE_PATHNAME', 'batchkit_column_list_in' LANGUAGE C STABLE STRICT;
CREATE FUNCTION batchkit.column_list_out(batchkit.column_list) RETURNS cstring
    AS 'MODULE_PATHNAME', 'batchkit_column_list_out' LANGUAGE C STABLE STRICT;
CREATE TYPE batchkit.column_list (
    INPUT = batchkit.column_list_in, OUTPUT = batchkit.column_list_out,
    INTERNALLENGTH = VARIABLE, ALIGNMENT = int4, STORAGE = plain);
CREATE FUNCTION batchkit._column_list(source regclass, attnums smallint[])
    RETURNS batchkit.column_list
    AS 'MODULE_PATHNAME', 'batchkit_column_list_make' LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION batchkit._column_list_attnums(batchkit.column_list) RETURNS smallint[]
    AS 'MODULE_PATHNAME', 'batchkit_column_list_attnums' LANGUAGE C IMMUTABLE STRICT;
ALTER TABLE batchkit.capture ADD COLUMN key_attnums batchkit.column_list,
                             ADD COLUMN column_attnums batchkit.column_list;
-- existing captures: the numbers their triggers were made with
-- (arguments: capture_id, sink_id, flags, key attnums, emitted attnums or '')
UPDATE batchkit.capture c
   SET key_attnums = batchkit._column_list(c.source, string_to_array(t.args[4], ',')::smallint[]),
       column_attnums = CASE WHEN t.args[5] <> '' THEN
           batchkit._column_list(c.source, string_to_array(t.args[5], ',')::smallint[]) END
  FROM (SELECT DISTINCT ON (tg.tgrelid, a.args[1]) tg.tgrelid, a.args
          FROM pg_catalog.pg_trigger tg,
               LATERAL (SELECT string_to_array(encode(tg.tgargs, 'escape'), '\000') AS args) a
         WHERE tg.tgfoid = 'batchkit._capture_trigger()'::regprocedure AND tg.tgnargs = 5) t
 WHERE t.tgrelid = c.source AND t.args[1] = c.capture_id::text;

CREATE OR REPLACE FUNCTION batchkit.capture(source regclass, sink text,
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

-- pg_dump keeps the queue's segments, the chunk id sequence (seq and idempotency
-- keys continue above the dumped ones), the capture id sequence, the dead
-- letters and their id sequence (sinks, secrets and captures already were)
SELECT pg_catalog.pg_extension_config_dump('batchkit.capture_capture_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.queue_0', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.queue_1', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.queue_2', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.chunk_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.dead_letter', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.dead_letter_dead_letter_id_seq', '');
-- === dump/restore (end) ===

-- === catalog hygiene (begin) ===
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
-- === catalog hygiene (end) ===

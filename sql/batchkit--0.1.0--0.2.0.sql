-- batchkit upgrade script 0.1.0 -> 0.2.0 (ALTER EXTENSION batchkit UPDATE TO '0.2.0').
--
-- Every change of SQL objects made since 0.1.0 goes here AND into sql/install/ (which
-- describes the current version for a fresh install). test_upgrade.py proves that a
-- database updated through this script has exactly the catalog of a fresh install.
-- The library (batchkit.so) serves databases still at 0.1.0 until they are updated.
\echo Use "ALTER EXTENSION batchkit UPDATE TO '0.2.0'" to load this file. \quit

-- === catalog hygiene (begin) ===
-- DDL that would leave a capture broken. DROP TABLE of a captured table takes its triggers
-- with it but left its capture row behind (its source then showed a bare OID); ALTER TABLE
-- ... DROP COLUMN of a column a capture needs (a key column, or one named in `columns`)
-- made every later write of the table fail in the capture trigger. This sql_drop event
-- trigger forgets the captures of dropped tables (their queued rows are still delivered:
-- a chunk carries its table's name and column layout) and refuses the DROP COLUMN itself,
-- so application writes never start failing later. The columns a capture needs are read
-- from its triggers' arguments (attribute numbers), which stay right across RENAME COLUMN.
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
               CASE WHEN d.objsubid::text = ANY (string_to_array(a.args[4], ','))
                    THEN 'a key column of' ELSE 'one of the columns sent by' END AS what
          FROM pg_event_trigger_dropped_objects() d
          JOIN batchkit.capture c ON c.source::oid = d.objid
          JOIN batchkit.sink s ON s.sink_id = c.sink_id
          CROSS JOIN LATERAL (
              SELECT string_to_array(encode(t.tgargs, 'escape'), '\000') AS args
                FROM pg_trigger t
               WHERE t.tgrelid = d.objid AND t.tgnargs = 5
                 AND t.tgname LIKE format('batchkit\_capture\_%s\_%%', c.capture_id)
               LIMIT 1) a
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid > 0
           AND d.objsubid::text = ANY (string_to_array(a.args[4], ',')
                                       || string_to_array(a.args[5], ','))
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

-- The captures of tables dropped while 0.1.0 was installed (their source shows a bare OID).
DELETE FROM batchkit.capture c
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = c.source::oid);
-- === catalog hygiene (end) ===

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

-- Metrics: the shapes of sink_stats, batch_histograms and metrics(), reset_stats,
-- and who may read them. Only what is deterministic without a reachable sink:
-- the sink here is paused from birth (delivery is covered by
-- test/integration/test_metrics.py).
SET client_min_messages = error;

-- ---------------------------------------------------------------- shapes
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = 'batchkit.sink_stats'::regclass AND attnum > 0
 ORDER BY attnum;
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = 'batchkit.batch_histograms'::regclass AND attnum > 0
 ORDER BY attnum;
SELECT p.oid::regprocedure AS function, pg_get_function_result(p.oid) AS returns
  FROM pg_proc p
 WHERE p.pronamespace = 'batchkit'::regnamespace
   AND p.proname IN ('metrics', 'reset_stats', '_sink_stats', '_batch_histograms')
 ORDER BY 1::text;

-- no sinks: empty views, and metrics() still declares every family
SELECT count(*) FROM batchkit.sink_stats;
SELECT count(*) FROM batchkit.batch_histograms;
SELECT line FROM regexp_split_to_table(batchkit.metrics(), E'\n') AS line
 WHERE line LIKE '# TYPE %';

-- ---------------------------------------------------------------- a sink that never flushed
BEGIN;
SELECT batchkit.create_sink('regress_m', 'redis',
    '{"url": "redis://:m3trics-pw@127.0.0.1:1/0", "command": "xadd", "key": "k"}') > 0 AS created;
SELECT batchkit.pause_sink('regress_m');
COMMIT;
-- it shows, with zero counters, before the worker ever touched it
SELECT sink, kind, state, rows_queued, oldest_queued_age, batches, rows_sent, rows_failed,
       rows_dead_lettered, dead_letters, bytes_sent, retries, last_batch_size, avg_batch_size,
       last_flush_at, last_flush_duration, lag_p50_ms, lag_p99_ms
  FROM batchkit.sink_stats;
-- rows queued to a paused sink: depth and age grow, counters do not
SELECT batchkit.enqueue('regress_m', jsonb_build_object('i', i)) > 0 AS queued
  FROM generate_series(1, 3) i;
SELECT sink, state, rows_queued, oldest_queued_age > '0'::interval AS has_age, batches
  FROM batchkit.sink_stats;
-- every bucket of the three histograms, all zero, le = Infinity last
SELECT sink, metric, le, count FROM batchkit.batch_histograms;

-- metrics(): the same numbers (the database label normalised, times left out)
SELECT replace(line, current_database(), '<db>') AS line
  FROM regexp_split_to_table(batchkit.metrics(), E'\n') AS line
 WHERE line LIKE '%regress_m%' AND line NOT LIKE '%_timestamp_seconds%'
   AND line NOT LIKE 'batch_queue_oldest_age_seconds%'
   AND (line LIKE 'batch_processing_size%' OR line NOT LIKE '%_bucket%');
SELECT split_part(line, ' ', 2)::float8 > 0 AS oldest_age_positive
  FROM regexp_split_to_table(batchkit.metrics(), E'\n') AS line
 WHERE line LIKE 'batch_queue_oldest_age_seconds{%regress_m%';

-- ---------------------------------------------------------------- reset_stats
SELECT batchkit.reset_stats('no_such_sink');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.reset_stats('regress_m');
SELECT batchkit.reset_stats();
-- the queue is not a statistic: still there
SELECT sink, rows_queued, batches FROM batchkit.sink_stats;

-- ---------------------------------------------------------------- privileges
CREATE ROLE bk_regress_m_plain;
CREATE ROLE bk_regress_m_monitor IN ROLE pg_monitor;
CREATE ROLE bk_regress_m_admin IN ROLE batchkit_admin;
SET ROLE bk_regress_m_plain;
SELECT count(*) FROM batchkit.sink_stats;
SELECT count(*) FROM batchkit.batch_histograms;
SELECT batchkit.metrics() IS NOT NULL;
SELECT * FROM batchkit._sink_stats();
SELECT batchkit.reset_stats();
RESET ROLE;
SET ROLE bk_regress_m_monitor;
SELECT sink, state, rows_queued FROM batchkit.sink_stats;
SELECT count(*) FROM batchkit.batch_histograms;
SELECT batchkit.metrics() LIKE '%operation="regress_m"%' AS sees_sink;
-- monitoring may not reset
SELECT batchkit.reset_stats();
RESET ROLE;
SET ROLE bk_regress_m_admin;
SELECT batchkit.reset_stats('regress_m');
SELECT count(*) FROM batchkit.sink_stats;
RESET ROLE;
-- no secret anywhere a monitor can look
SELECT position('m3trics-pw' IN batchkit.metrics()) AS in_metrics,
       (SELECT count(*) FROM batchkit.sink_stats s WHERE s::text LIKE '%m3trics-pw%') AS in_view;

-- ---------------------------------------------------------------- clean up
SELECT batchkit.drop_sink('regress_m', true);
DROP ROLE bk_regress_m_plain;
DROP ROLE bk_regress_m_monitor;
DROP ROLE bk_regress_m_admin;

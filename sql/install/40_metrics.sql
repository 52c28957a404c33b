-- batchkit install script, part 40: metrics — what a DBA sees of batching.
--
-- Counters and histograms live in shared memory (one slot per sink, written by
-- the flush worker; src/shim/metrics/metrics.c). The functions join them to the
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
-- database, in name order, zero counters until it first flushes. Averages and lags
-- are shown rounded, at a fixed scale (the function's doubles printed 75.00000000000001).
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

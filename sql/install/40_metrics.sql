-- batchkit install script, part 40: metrics — what a DBA sees of batching.
--
-- Counters and histograms live in shared memory (one slot per sink, written by
-- the flush worker; src/shim/metrics.c). The views join them to the catalog,
-- so every sink of this database shows, with zero counters until it first
-- flushes. Needs shared_preload_libraries (otherwise the functions say so).
-- Granted to pg_monitor and batchkit_admin; nothing here shows a secret:
-- _sink_stats masks last_error against the sink's secret options, which it
-- reads itself (as the catalog's owner), so calling it directly is as safe as
-- the view. See docs/metrics.md.

-- true, or the clear "must be loaded via shared_preload_libraries" error: in
-- the views' WHERE it runs once, even when there is no sink to show
CREATE FUNCTION batchkit._require_preload() RETURNS boolean
    AS 'MODULE_PATHNAME', 'batchkit_require_preload'
    LANGUAGE C STABLE;

CREATE FUNCTION batchkit._sink_stats(sink_id integer,
    OUT state text, OUT depth_known boolean, OUT rows_queued bigint,
    OUT batches bigint, OUT rows_sent bigint, OUT rows_failed bigint,
    OUT rows_dead_lettered bigint, OUT bytes_sent bigint, OUT retries bigint,
    OUT last_batch_size bigint, OUT avg_batch_size double precision,
    OUT last_flush_at timestamptz, OUT last_flush_duration interval,
    OUT lag_p50_ms double precision, OUT lag_p99_ms double precision,
    OUT last_error text, OUT last_error_at timestamptz, OUT stats_reset timestamptz)
    RETURNS record
    AS 'MODULE_PATHNAME', 'batchkit_sink_stats'
    LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION batchkit._batch_histograms(sink_id integer,
    OUT metric text, OUT le double precision, OUT count bigint)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'batchkit_batch_histograms'
    LANGUAGE C VOLATILE STRICT;

CREATE VIEW batchkit.sink_stats AS
SELECT s.name AS sink,
       s.kind,
       CASE WHEN s.paused THEN 'paused' ELSE st.state END AS state,
       -- the shared counter once it is rebuilt; until then (right after a
       -- restart) the queue itself is summed
       CASE WHEN st.depth_known THEN st.rows_queued
            ELSE (SELECT COALESCE(sum(q.nrecords - q.done_records), 0)::bigint
                    FROM batchkit.queue q WHERE q.sink_id = s.sink_id)
       END AS rows_queued,
       -- the oldest chunk still queued: one probe of the (sink_id, chunk_id) index
       COALESCE(now() - (SELECT q.captured_at FROM batchkit.queue q
                          WHERE q.sink_id = s.sink_id ORDER BY q.chunk_id LIMIT 1),
                '0'::interval) AS oldest_queued_age,
       st.batches,
       st.rows_sent,
       st.rows_failed,
       st.rows_dead_lettered,
       (SELECT count(*) FROM batchkit.dead_letter d WHERE d.sink_id = s.sink_id) AS dead_letters,
       st.bytes_sent,
       st.retries,
       st.last_batch_size,
       st.avg_batch_size,
       st.last_flush_at,
       st.last_flush_duration,
       st.lag_p50_ms,
       st.lag_p99_ms,
       st.last_error,
       st.last_error_at,
       st.stats_reset
  FROM batchkit.sink s
 CROSS JOIN LATERAL batchkit._sink_stats(s.sink_id) st
 WHERE batchkit._require_preload();
COMMENT ON VIEW batchkit.sink_stats IS
    'Per-sink delivery statistics since the last reset: queue depth and age, batches, rows, bytes, retries, flush times, lag, last error';

CREATE VIEW batchkit.batch_histograms AS
SELECT s.name AS sink, h.metric, h.le, h.count
  FROM batchkit.sink s
 CROSS JOIN LATERAL batchkit._batch_histograms(s.sink_id) h
 WHERE batchkit._require_preload()
 ORDER BY s.name, h.metric, h.le;
COMMENT ON VIEW batchkit.batch_histograms IS
    'Cumulative histogram buckets per sink: batch_size (rows), flush_duration_seconds, lag_seconds (capture to acknowledgement, per row); le = Infinity is the total';

CREATE FUNCTION batchkit.metrics() RETURNS text
    AS 'MODULE_PATHNAME', 'batchkit_metrics'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION batchkit.metrics() IS
    'This database''s sink and upsert statistics in the Prometheus text exposition format';

CREATE FUNCTION batchkit.reset_stats(sink text DEFAULT NULL) RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_reset_stats'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION batchkit.reset_stats(text) IS
    'Zero the statistics of a sink of this database (all of them when NULL); the queue is untouched';

REVOKE ALL ON FUNCTION batchkit._sink_stats(integer),
                       batchkit._batch_histograms(integer),
                       batchkit.metrics(),
                       batchkit.reset_stats(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit._sink_stats(integer),
                          batchkit._batch_histograms(integer),
                          batchkit.metrics() TO pg_monitor, batchkit_admin;
GRANT EXECUTE ON FUNCTION batchkit.reset_stats(text) TO batchkit_admin;
GRANT SELECT ON batchkit.sink_stats, batchkit.batch_histograms TO pg_monitor, batchkit_admin;

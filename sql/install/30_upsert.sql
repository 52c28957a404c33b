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
       round(s.total_time_ms::numeric, 3) AS total_time_ms, round(s.max_time_ms::numeric, 3) AS max_time_ms,
       s.last_call
  FROM batchkit._upsert_stats() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid;
COMMENT ON VIEW batchkit.upsert_stats IS
    'batch_upsert calls per target since the server started (needs shared_preload_libraries)';

GRANT EXECUTE ON FUNCTION batchkit._upsert_stats() TO pg_monitor, batchkit_admin;
GRANT SELECT ON batchkit.upsert_stats TO pg_monitor, batchkit_admin;

-- batchkit install script, part 00: schema basics, role, version and workers.
-- (the current version's install script, sql/batchkit--<version>.sql, is assembled
-- from sql/install/*.sql by the Makefile; released versions' scripts are frozen.)
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

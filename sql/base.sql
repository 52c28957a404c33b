-- The extension's bones: version, preload detection, launcher, role, privileges.
SELECT batchkit.version() = extversion AS version_matches
  FROM pg_extension WHERE extname = 'batchkit';
SELECT batchkit.preloaded();
SELECT count(*) AS roles FROM pg_roles WHERE rolname = 'batchkit_admin' AND NOT rolcanlogin;
-- the launcher is running and is visible in pg_stat_activity
SELECT kind, database IS NULL AS no_database, state IN ('idle', 'checking', 'starting') AS state_ok
  FROM batchkit.workers WHERE kind = 'launcher';
SELECT count(*) AS launchers FROM pg_stat_activity a
  JOIN batchkit.workers w ON w.pid = a.pid
 WHERE a.backend_type = 'batchkit launcher';
-- GUCs exist with the documented contexts
SELECT name, context FROM pg_settings WHERE name LIKE 'batchkit.%' ORDER BY name;
-- an unknown batchkit.* setting is refused (the prefix is reserved)
SET batchkit.no_such_setting = 1;
-- ordinary roles cannot look at the workers; pg_monitor members can
CREATE ROLE bk_regress_plain;
CREATE ROLE bk_regress_monitor IN ROLE pg_monitor;
SET ROLE bk_regress_plain;
SELECT count(*) FROM batchkit.workers;
RESET ROLE;
SET ROLE bk_regress_monitor;
SELECT count(*) >= 1 AS sees_launcher FROM batchkit.workers;
RESET ROLE;
DROP ROLE bk_regress_plain;
DROP ROLE bk_regress_monitor;

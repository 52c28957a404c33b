-- The sinks catalog: create/alter/drop/pause/resume, validation, secrets, privileges.
-- Servers at 127.0.0.1:1 refuse connections: those sinks are created with a
-- warning, hidden here except where the warning itself is tested.
SET client_min_messages = error;

-- ---------------------------------------------------------------- create and show
SELECT batchkit.create_sink('cache', 'redis',
    '{"url": "redis://app:s3cret@127.0.0.1:1/2", "command": "set", "ttl_ms": 60000,
      "key": "users:{id}", "batch_size": 500}') > 0 AS created;
SELECT batchkit.create_sink('events', 'kafka',
    '{"bootstrap.servers": "127.0.0.1:1", "topic": "cdc.{schema}.{table}",
      "compression.type": "zstd", "linger.ms": 20, "sasl.username": "svc",
      "sasl.password": "hunter2", "ssl.key.password": "k3y", "ssl.key.pem": "-----BEGIN..."}') > 0
    AS created;
SELECT batchkit.create_sink('plain', 'redis', '{"url": "redis://127.0.0.1:1", "command": "xadd"}') > 0 AS created;
-- options as given (normalized), every secret shown as ***
SELECT name, kind, options, paused, created_at = updated_at AS untouched
  FROM batchkit.sinks ORDER BY name;
-- the clear values live in sink_secret only
SELECT s.name, x.options FROM batchkit.sink_secret x JOIN batchkit.sink s USING (sink_id)
 ORDER BY s.name;
-- the worker's view: every effective option, defaults included, secrets in the clear
SELECT key, value, secret, is_default, librdkafka
  FROM batchkit._sink_config((SELECT sink_id FROM batchkit.sinks WHERE name = 'events'));
SELECT key, value, secret, is_default
  FROM batchkit._sink_config((SELECT sink_id FROM batchkit.sinks WHERE name = 'cache'))
 WHERE NOT is_default OR key IN ('command', 'key', 'format');
SELECT * FROM batchkit._sink_config(999999);
\echo :LAST_ERROR_SQLSTATE

-- ---------------------------------------------------------------- names, kinds, arguments
SELECT batchkit.create_sink('cache', 'redis', '{"url": "redis://127.0.0.1:1", "command": "xadd"}');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.create_sink('', 'redis', '{"url": "redis://127.0.0.1:1", "command": "xadd"}');
SELECT batchkit.create_sink('has space', 'redis', '{"url": "redis://127.0.0.1:1", "command": "xadd"}');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.create_sink(repeat('n', 64), 'redis', '{"url": "redis://127.0.0.1:1", "command": "xadd"}');
SELECT batchkit.create_sink(repeat('n', 63), 'redis', '{"url": "redis://127.0.0.1:1", "command": "xadd"}') > 0
    AS created_63_bytes;
SELECT batchkit.create_sink(NULL, 'redis', '{}');
SELECT batchkit.create_sink('x', NULL, '{}');
SELECT batchkit.create_sink('x', 'redis', NULL);
SELECT batchkit.create_sink('x', 'rabbitmq', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.create_sink('x', 'redis', '[1, 2]');
SELECT batchkit.create_sink('x', 'redis', '"redis://h"');
SELECT batchkit.create_sink('x', 'redis');  -- options default to {}: the url is missing

-- ---------------------------------------------------------------- common options
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "batch_size": 0}');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "batch_size": 1000001}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "batch_size": "500"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "batch_size": 2.5}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "max_wait_ms": -1}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "max_batch_bytes": 1023}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "max_queue": 1000000000001}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "max_attempts": 0}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "retry_backoff_ms": 0}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "on_full": "block"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "format": true}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "on_full_timeout_ms": 100}');
SELECT batchkit.create_sink('x', 'redis',
    '{"url": "redis://h", "command": "xadd", "retry_backoff_ms": 5000, "retry_backoff_max_ms": 1000}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "batch_sise": 5}');

-- ---------------------------------------------------------------- kafka options
SELECT batchkit.create_sink('x', 'kafka', '{"topic": "t"}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "compresion.type": "lz4"}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "compression.type": "brotli"}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "linger.ms": -5}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "linger.ms": {"a": 1}}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "topik": "t"}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "topic": "cdc.{tabel}"}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "topic": "orders/v1"}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "acks": 1}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "retries": 0}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "transactional.id": "t"}');
-- what librdkafka would refuse only in the worker (rd_kafka_new) is refused here
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "linger.ms": 40000}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:9092", "queue.buffering.backpressure.threshold": 10}');
SELECT batchkit.create_sink('x', 'kafka', '{"bootstrap.servers": "b:70000"}');
-- the user may override the idempotent defaults together
SELECT batchkit.create_sink('fast', 'kafka',
    '{"bootstrap.servers": "127.0.0.1:1", "acks": "1", "enable.idempotence": false}') > 0
    AS created;
SELECT key, value, is_default FROM batchkit._sink_config(
    (SELECT sink_id FROM batchkit.sinks WHERE name = 'fast'))
 WHERE key IN ('acks', 'enable.idempotence');

-- ---------------------------------------------------------------- redis options
SELECT batchkit.create_sink('x', 'redis', '{"command": "xadd"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "hset"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "rediss://h:6380/0", "command": "xadd"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://u:pw@h:99999/0", "command": "xadd"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://u:pw@h/zero", "command": "xadd"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "memcached://h", "command": "xadd"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": 6379, "command": "xadd"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "zadd"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "lpush", "maxlen": 10}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "hset", "ttl_ms": 10}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "set", "key": "users"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "key": "orders:{region"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "compression.type": "lz4"}');
SELECT batchkit.create_sink('x', 'redis', '{"url": "redis://h", "command": "xadd", "topic": "t"}');
-- none of the failed calls left anything behind
SELECT count(*) AS sinks, (SELECT count(*) FROM batchkit.sink_secret) AS secrets
  FROM batchkit.sink;

-- ---------------------------------------------------------------- alter: merge and remove
SELECT batchkit.alter_sink('cache', '{"batch_size": 1000, "max_wait_ms": 50}');
SELECT options FROM batchkit.sinks WHERE name = 'cache';
SELECT batchkit.alter_sink('cache', '{"max_wait_ms": null, "batch_size": null}');  -- null removes
SELECT options FROM batchkit.sinks WHERE name = 'cache';
-- passing back what the view shows keeps the secret
SELECT batchkit.alter_sink('cache', (SELECT options FROM batchkit.sinks WHERE name = 'cache'));
SELECT x.options FROM batchkit.sink_secret x JOIN batchkit.sink s USING (sink_id)
 WHERE s.name = 'cache';
-- a new URL replaces the secret; one without a password removes it
SELECT batchkit.alter_sink('cache', '{"url": "redis://app:n3w@127.0.0.1:1/3"}');
SELECT s.options->>'url' AS shown, x.options->>'url' AS stored
  FROM batchkit.sink s JOIN batchkit.sink_secret x USING (sink_id) WHERE s.name = 'cache';
SELECT batchkit.alter_sink('cache', '{"url": "redis://127.0.0.1:1/3"}');
SELECT options->>'url' AS url,
       EXISTS (SELECT 1 FROM batchkit.sink_secret WHERE sink_id = s.sink_id) AS has_secret
  FROM batchkit.sinks s WHERE name = 'cache';
-- Kafka secrets: change one, remove another
SELECT batchkit.alter_sink('events', '{"sasl.password": "n3w", "ssl.key.pem": null}');
SELECT options FROM batchkit.sinks WHERE name = 'events';
SELECT x.options FROM batchkit.sink_secret x JOIN batchkit.sink s USING (sink_id)
 WHERE s.name = 'events';
-- a bad alter changes nothing (options, secrets, updated_at)
CREATE TEMP TABLE before AS
    SELECT s.*, x.options AS secret FROM batchkit.sink s
      LEFT JOIN batchkit.sink_secret x USING (sink_id);
SELECT batchkit.alter_sink('cache', '{"batch_size": 0}');
SELECT batchkit.alter_sink('cache', '{"command": "hset"}');  -- ttl_ms no longer applies
SELECT batchkit.alter_sink('events', '{"sasl.password": null, "acks": "0"}');
SELECT batchkit.alter_sink('events', '{"no.such.property": 1}');
SELECT batchkit.alter_sink('events', '{"message.timeout.ms": 5}');
SELECT batchkit.alter_sink('events', '[]');
SELECT batchkit.alter_sink('events', NULL);
SELECT batchkit.alter_sink('nope', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS changed FROM (
    SELECT s.*, x.options FROM batchkit.sink s LEFT JOIN batchkit.sink_secret x USING (sink_id)
    EXCEPT SELECT * FROM before) c;
-- the removed option and a changed command together are fine
SELECT batchkit.alter_sink('cache', '{"command": "hset", "ttl_ms": null}');
SELECT options->>'command' AS command, options ? 'ttl_ms' AS has_ttl
  FROM batchkit.sinks WHERE name = 'cache';

-- ---------------------------------------------------------------- pause and resume
SELECT batchkit.pause_sink('events');
SELECT name, paused, updated_at > created_at AS updated FROM batchkit.sinks WHERE name = 'events';
SELECT batchkit.pause_sink('events');  -- pausing twice is fine
SELECT batchkit.resume_sink('events');
SELECT paused FROM batchkit.sinks WHERE name = 'events';
SELECT batchkit.pause_sink('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.resume_sink('nope');
SELECT batchkit.pause_sink(NULL);

-- ---------------------------------------------------------------- reachability warnings
RESET client_min_messages;
SELECT batchkit.create_sink('down', 'redis',
    '{"url": "redis://127.0.0.1:1/0", "command": "xadd"}') > 0 AS created;
SELECT batchkit.create_sink('nosock', 'redis',
    '{"url": "unix:///nonexistent/redis.sock", "command": "xadd"}') > 0 AS created;
SELECT batchkit.alter_sink('down', '{"batch_size": 10}');
SELECT batchkit.create_sink('kdown', 'kafka', '{"bootstrap.servers": "127.0.0.1:1,127.0.0.1:2"}') > 0
    AS created;
-- a reachable server gives no warning: this very server's Unix socket
SELECT format('{"url": "unix://%s/.s.PGSQL.%s", "command": "xadd"}',
              split_part(current_setting('unix_socket_directories'), ',', 1),
              current_setting('port')) AS self_url \gset
SELECT batchkit.create_sink('self', 'redis', :'self_url') > 0 AS created;
SET client_min_messages = error;

-- ---------------------------------------------------------------- drop: refusal and force
CREATE TABLE bk_orders (id int PRIMARY KEY, total numeric);
CREATE FUNCTION bk_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER keep_me AFTER INSERT ON bk_orders FOR EACH STATEMENT EXECUTE FUNCTION bk_noop();
INSERT INTO batchkit.capture (source, sink_id, events, key_columns)
    SELECT 'bk_orders', sink_id, '{insert,update}', '{id}' FROM batchkit.sink WHERE name = 'cache';
SELECT format('CREATE TRIGGER batchkit_capture_%s_%s AFTER %s ON bk_orders '
              'FOR EACH STATEMENT EXECUTE FUNCTION bk_noop()', capture_id, ev, upper(e))
  FROM batchkit.capture, unnest('{ins,upd}'::text[], '{insert,update}'::text[]) AS u(ev, e)
 WHERE sink_id = (SELECT sink_id FROM batchkit.sink WHERE name = 'cache') \gexec
SELECT batchkit.drop_sink('cache');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO batchkit.queue (segment, chunk_id, sink_id, nrecords, nbytes, txid, captured_at, payload)
    SELECT 0, nextval('batchkit.chunk_id_seq'), sink_id, 1, 1, pg_current_xact_id(), now(),
           '{"format": 1, "kind": "messages", "records": [["m", null, "{}", null, null]]}'
      FROM batchkit.sink WHERE name IN ('cache', 'plain');
INSERT INTO batchkit.sink_progress (sink_id)
    SELECT sink_id FROM batchkit.sink WHERE name = 'cache';
SELECT batchkit.drop_sink('cache');
SELECT batchkit.drop_sink('plain');
SELECT batchkit.drop_sink('plain', force => NULL);
RESET client_min_messages;
SELECT batchkit.drop_sink('cache', force => true);
SET client_min_messages = error;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'bk_orders'::regclass AND NOT tgisinternal;
SELECT (SELECT count(*) FROM batchkit.capture) AS captures,
       (SELECT count(*) FROM batchkit.queue) AS queued_chunks,
       (SELECT count(*) FROM batchkit.sink_progress) AS progress,
       (SELECT count(*) FROM batchkit.sinks WHERE name = 'cache') AS sinks;
SELECT batchkit.drop_sink('plain', true);
SELECT batchkit.drop_sink('fast');  -- nothing queued or captured: no force needed
SELECT batchkit.drop_sink('cache');
\echo :LAST_ERROR_SQLSTATE
SELECT name FROM batchkit.sinks ORDER BY name;

-- ---------------------------------------------------------------- privileges
CREATE ROLE bk_regress_plain;
CREATE ROLE bk_regress_admin IN ROLE batchkit_admin;
CREATE ROLE bk_regress_monitor IN ROLE pg_monitor;
CREATE ROLE bk_regress_files IN ROLE batchkit_admin, pg_read_server_files;
-- a role without batchkit_admin can neither manage sinks nor read them
SET ROLE bk_regress_plain;
SELECT batchkit.create_sink('p', 'redis', '{"url": "redis://127.0.0.1:1", "command": "xadd"}');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.alter_sink('events', '{"batch_size": 1}');
SELECT batchkit.pause_sink('events');
SELECT batchkit.resume_sink('events');
SELECT batchkit.drop_sink('events', true);
SELECT * FROM batchkit.sinks;
SELECT * FROM batchkit.sink;
SELECT * FROM batchkit.sink_secret;
SELECT * FROM batchkit._sink_config(1);
RESET ROLE;
-- a batchkit_admin member manages sinks, sees *** and never a secret
SET ROLE bk_regress_admin;
SELECT batchkit.create_sink('adm', 'kafka',
    '{"bootstrap.servers": "127.0.0.1:1", "sasl.password": "adm1n"}') > 0 AS created;
SELECT batchkit.alter_sink('adm', '{"linger.ms": 5}');
SELECT batchkit.pause_sink('adm');
SELECT name, options, paused FROM batchkit.sinks WHERE name = 'adm';
SELECT * FROM batchkit.sink_secret;
SELECT * FROM batchkit._sink_config(1);
SELECT batchkit.create_sink('adm2', 'kafka',
    '{"bootstrap.servers": "127.0.0.1:1", "ssl.ca.location": "/etc/ssl/certs/ca.pem"}');
\echo :LAST_ERROR_SQLSTATE
SELECT batchkit.alter_sink('adm', '{"sasl.kerberos.kinit.cmd": "touch /tmp/pwned"}');
SELECT batchkit.alter_sink('adm', '{"plugin.library.paths": "/tmp/evil.so"}');
RESET ROLE;
-- pg_read_server_files lets an admin name a file; what a superuser set stays
SET ROLE bk_regress_files;
SELECT batchkit.alter_sink('adm', '{"ssl.ca.location": "/etc/ssl/certs/ca.pem"}');
RESET ROLE;
SET ROLE bk_regress_admin;
SELECT batchkit.alter_sink('adm', '{"linger.ms": 10}');
SELECT batchkit.alter_sink('adm', '{"ssl.ca.location": "/etc/ssl/other.pem"}');
SELECT options->>'ssl.ca.location' AS ca FROM batchkit.sinks WHERE name = 'adm';
SELECT batchkit.drop_sink('adm');
RESET ROLE;
-- pg_monitor reads the view, manages nothing
SET ROLE bk_regress_monitor;
SELECT name, options FROM batchkit.sinks WHERE name = 'events';
SELECT batchkit.pause_sink('events');
RESET ROLE;
-- the check sees the current role (SET ROLE), not the session's login
SET ROLE bk_regress_plain;
SELECT batchkit.pause_sink('events');
RESET ROLE;
-- a SECURITY DEFINER function owned by an admin delegates on purpose
CREATE FUNCTION bk_pause_events() RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$ SELECT batchkit.pause_sink('events') $$;
ALTER FUNCTION bk_pause_events() OWNER TO bk_regress_admin;
SET ROLE bk_regress_plain;
SELECT bk_pause_events();
RESET ROLE;
SELECT paused FROM batchkit.sinks WHERE name = 'events';
DROP FUNCTION bk_pause_events();
-- no ordinary role has any privilege on the tables; the view is for admins and monitors
SELECT c.relname,
       has_table_privilege('public', c.oid, 'SELECT') AS public_reads,
       has_table_privilege('batchkit_admin', c.oid, 'SELECT') AS admin_reads,
       has_table_privilege('pg_monitor', c.oid, 'SELECT') AS monitor_reads,
       has_table_privilege('batchkit_admin', c.oid, 'INSERT, UPDATE, DELETE') AS admin_writes
  FROM pg_class c
 WHERE c.relnamespace = 'batchkit'::regnamespace
   AND c.relname IN ('sink', 'sink_secret', 'sinks') ORDER BY 1;
SELECT has_sequence_privilege('batchkit_admin', 'batchkit.sink_id_seq', 'USAGE') AS admin_seq;
SELECT p.proname, p.prosecdef, p.proconfig, p.proacl IS NULL AS default_acl
  FROM pg_proc p WHERE p.pronamespace = 'batchkit'::regnamespace
   AND p.proname IN ('create_sink', 'alter_sink', 'drop_sink', 'pause_sink', 'resume_sink',
                     '_sink_config') ORDER BY 1;
-- rows that bypass create_sink still follow the name rule
\set VERBOSITY terse
INSERT INTO batchkit.sink (name, kind) VALUES ('bad name', 'redis');
\set VERBOSITY default

-- ---------------------------------------------------------------- pg_dump keeps the catalog
SELECT c::regclass AS config_table
  FROM pg_extension, unnest(extconfig) AS c
 WHERE extname = 'batchkit' AND c::regclass::text LIKE 'batchkit.sink%' ORDER BY 1;

-- ---------------------------------------------------------------- clean up
SELECT batchkit.drop_sink(name, true) FROM batchkit.sinks;
DROP TABLE bk_orders;
DROP FUNCTION bk_noop();
DROP ROLE bk_regress_plain, bk_regress_admin, bk_regress_monitor, bk_regress_files;
RESET client_min_messages;

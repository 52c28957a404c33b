-- batchkit install script, part 10: the sinks catalog.
-- A sink is a named destination (a Kafka cluster + topic template, or a Redis
-- server + command). batchkit.sink.options holds every option the user set,
-- with each secret (passwords, SASL/SSL secrets, tokens, key material, the
-- password of a Redis URL) replaced by what users may see of it: '***', or the
-- URL with '***' for its password. batchkit.sink_secret holds the clear values
-- of the secret options; only superusers can read it. Overlaying sink_secret's
-- options on sink's gives the user's option set back.
--
-- The functions are C (src/shim/catalog/sink_catalog.c), SECURITY INVOKER on purpose:
-- they check the calling role themselves (superuser or member of
-- batchkit_admin), then act as the catalog's owner, as a SECURITY DEFINER
-- function would; see the comment at the top of sink_catalog.c for why.
-- Options are validated by the C++ core (include/batchkit/sink_options.h);
-- docs/sinks.md lists them.

CREATE SEQUENCE batchkit.sink_id_seq AS integer;

CREATE TABLE batchkit.sink (
    sink_id     integer PRIMARY KEY DEFAULT nextval('batchkit.sink_id_seq'),
    -- The name rule is enforced by create_sink with a clear message; the CHECK
    -- keeps restored or hand-edited rows to it too (names end up in metric
    -- labels and key templates).
    name        text NOT NULL UNIQUE
                CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.-]{1,63}$'),
    kind        text NOT NULL CHECK (kind IN ('kafka', 'redis')),
    options     jsonb NOT NULL DEFAULT '{}'
                CHECK (pg_catalog.jsonb_typeof(options) = 'object'),
    paused      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE batchkit.sink_id_seq OWNED BY batchkit.sink.sink_id;

CREATE TABLE batchkit.sink_secret (
    sink_id     integer PRIMARY KEY REFERENCES batchkit.sink ON DELETE CASCADE,
    options     jsonb NOT NULL DEFAULT '{}'
                CHECK (pg_catalog.jsonb_typeof(options) = 'object')
);

REVOKE ALL ON batchkit.sink, batchkit.sink_secret, batchkit.sink_id_seq FROM PUBLIC;

-- pg_dump keeps the catalog (extension configuration tables).
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink_secret', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink_id_seq', '');

-- Management functions. Not STRICT: a NULL argument gets a clear error.
CREATE FUNCTION batchkit.create_sink(name text, kind text, options jsonb DEFAULT '{}')
    RETURNS integer
    AS 'MODULE_PATHNAME', 'batchkit_create_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.create_sink(text, text, jsonb) IS
    'Create a sink (kind kafka or redis) with validated options; returns its id';

CREATE FUNCTION batchkit.alter_sink(name text, options jsonb)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_alter_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.alter_sink(text, jsonb) IS
    'Merge options into a sink''s options; a JSON null removes an option';

CREATE FUNCTION batchkit.drop_sink(name text, force boolean DEFAULT false)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_drop_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.drop_sink(text, boolean) IS
    'Drop a sink; refused while rows wait in its queue or tables are captured into it, unless force';

CREATE FUNCTION batchkit.pause_sink(name text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_pause_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.pause_sink(text) IS
    'Stop delivering to a sink; capture keeps queueing';

CREATE FUNCTION batchkit.resume_sink(name text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_resume_sink'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION batchkit.resume_sink(text) IS 'Resume delivering to a paused sink';

-- For the flush worker: a sink's effective options (defaults included), secrets
-- in the clear. It reads sink_secret with the caller's rights and refuses
-- non-superusers itself, on top of the REVOKE.
CREATE FUNCTION batchkit._sink_config(sink_id integer,
    OUT key text, OUT value text, OUT secret boolean, OUT is_default boolean,
    OUT librdkafka boolean)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'batchkit_sink_config'
    LANGUAGE C VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION batchkit._sink_config(integer) FROM PUBLIC;

-- What DBAs and monitoring see: options with every secret as '***'.
CREATE VIEW batchkit.sinks AS
    SELECT sink_id, name, kind, options, paused, created_at, updated_at
      FROM batchkit.sink;
COMMENT ON VIEW batchkit.sinks IS 'Configured sinks; secret options are shown as ***';
GRANT SELECT ON batchkit.sinks TO batchkit_admin, pg_monitor;

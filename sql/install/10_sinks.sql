-- batchkit install script, part 10: the sinks catalog.
-- A sink is a named destination (a Kafka cluster + topic template, or a Redis
-- server + command). Non-secret options live in batchkit.sink.options; secret
-- ones (passwords, SASL/SSL secrets, tokens) in batchkit.sink_secret, which no
-- ordinary role can read. batchkit.sinks (the view) shows them as '***'.

CREATE SEQUENCE batchkit.sink_id_seq AS integer;

CREATE TABLE batchkit.sink (
    sink_id     integer PRIMARY KEY DEFAULT nextval('batchkit.sink_id_seq'),
    name        text NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN ('kafka', 'redis')),
    options     jsonb NOT NULL DEFAULT '{}',
    paused      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE batchkit.sink_id_seq OWNED BY batchkit.sink.sink_id;

CREATE TABLE batchkit.sink_secret (
    sink_id     integer PRIMARY KEY REFERENCES batchkit.sink ON DELETE CASCADE,
    options     jsonb NOT NULL DEFAULT '{}'
);

REVOKE ALL ON batchkit.sink, batchkit.sink_secret, batchkit.sink_id_seq FROM PUBLIC;

-- pg_dump keeps the catalog (extension configuration tables).
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink_secret', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.sink_id_seq', '');

-- batchkit install script, part 22: delivery — dead letters, flush(), worker wake-up.

-- Messages a sink refused for good (after max_attempts for Kafka; at once for a
-- command Redis refused inside its transaction): kept with the error, replayable.
CREATE TABLE batchkit.dead_letter (
    dead_letter_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink_id         integer NOT NULL REFERENCES batchkit.sink ON DELETE CASCADE,
    seq             bigint,
    op              text NOT NULL,
    source          text,
    target          text,
    key             text,
    message         text NOT NULL,
    error           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,
    failed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON batchkit.dead_letter (sink_id, dead_letter_id);
REVOKE ALL ON batchkit.dead_letter FROM PUBLIC;
-- pg_dump keeps the dead letters (and their id sequence: new ones never reuse an id)
SELECT pg_catalog.pg_extension_config_dump('batchkit.dead_letter', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.dead_letter_dead_letter_id_seq', '');

CREATE VIEW batchkit.dead_letters AS
SELECT d.dead_letter_id AS id, s.name AS sink, d.seq, d.op, d.source, d.target, d.key,
       d.message, d.error, d.attempts, d.failed_at
  FROM batchkit.dead_letter d JOIN batchkit.sink s USING (sink_id);
COMMENT ON VIEW batchkit.dead_letters IS 'Messages a sink refused for good, with the error';

CREATE FUNCTION batchkit._requeue(sink text, ops text[], targets text[], keys text[], payloads text[])
    RETURNS bigint AS 'MODULE_PATHNAME', 'batchkit_requeue' LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION batchkit._requeue(text, text[], text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit._requeue(text, text[], text[], text[], text[]) TO batchkit_admin;

CREATE FUNCTION batchkit.replay_dead_letters(sink text, ids bigint[] DEFAULT NULL) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_sink integer;
    n bigint;
BEGIN
    PERFORM batchkit._require_admin('replay dead letters');
    SELECT s.sink_id INTO v_sink FROM batchkit.sinks s WHERE s.name = replay_dead_letters.sink;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batchkit sink "%" does not exist', sink USING ERRCODE = '42704';
    END IF;
    WITH d AS (
        DELETE FROM batchkit.dead_letter dl
         WHERE dl.sink_id = v_sink AND (ids IS NULL OR dl.dead_letter_id = ANY (ids))
        RETURNING dl.dead_letter_id, dl.op, dl.target, dl.key, dl.message)
    SELECT batchkit._requeue(replay_dead_letters.sink,
                             array_agg(d.op ORDER BY d.dead_letter_id),
                             array_agg(d.target ORDER BY d.dead_letter_id),
                             array_agg(d.key ORDER BY d.dead_letter_id),
                             array_agg(d.message ORDER BY d.dead_letter_id))
      INTO n FROM d HAVING count(*) > 0;
    RETURN COALESCE(n, 0);
END
$fn$;
COMMENT ON FUNCTION batchkit.replay_dead_letters(text, bigint[]) IS
    'Queue dead letters again (all of the sink''s, or those ids), unchanged';

CREATE FUNCTION batchkit.purge_dead_letters(sink text, older_than interval DEFAULT '0')
    RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_sink integer;
    n bigint;
BEGIN
    PERFORM batchkit._require_admin('purge dead letters');
    SELECT s.sink_id INTO v_sink FROM batchkit.sinks s WHERE s.name = purge_dead_letters.sink;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batchkit sink "%" does not exist', sink USING ERRCODE = '42704';
    END IF;
    IF older_than < '0'::interval THEN
        RAISE EXCEPTION 'older_than must not be negative' USING ERRCODE = '22023';
    END IF;
    DELETE FROM batchkit.dead_letter dl
     WHERE dl.sink_id = v_sink AND dl.failed_at <= now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION batchkit.purge_dead_letters(text, interval) IS
    'Delete a sink''s dead letters older than the given age';

CREATE FUNCTION batchkit.flush(sink text, timeout interval DEFAULT '30 seconds') RETURNS boolean
    AS 'MODULE_PATHNAME', 'batchkit_flush' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION batchkit.flush(text, interval) IS
    'Wait until every row committed before the call is acknowledged by the sink; false on timeout';

CREATE FUNCTION batchkit._wake_launcher() RETURNS void
    AS 'MODULE_PATHNAME', 'batchkit_wake_launcher' LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION batchkit._wake_launcher() FROM PUBLIC;

GRANT SELECT ON batchkit.dead_letters TO batchkit_admin;
GRANT SELECT, DELETE ON batchkit.dead_letter TO batchkit_admin;
REVOKE ALL ON FUNCTION batchkit.replay_dead_letters(text, bigint[]),
                       batchkit.purge_dead_letters(text, interval),
                       batchkit.flush(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batchkit.replay_dead_letters(text, bigint[]),
                          batchkit.purge_dead_letters(text, interval),
                          batchkit.flush(text, interval) TO batchkit_admin;

-- Start this database's flush worker as soon as CREATE EXTENSION commits.
SELECT batchkit._wake_launcher();
